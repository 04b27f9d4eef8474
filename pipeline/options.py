"""Options shared by several ``mmx`` commands, defined once so that their type, default and help agree.

Each function returns a click decorator. ``--quiet`` and ``--json`` set the command's
:class:`~mmx.pipeline.cli_output.Console` instead of reaching the command as arguments.
"""

from __future__ import annotations

import click

from mmx.pipeline.cli_output import console

PRESET_DEFAULT = "the strategy's preset"


def cache_option(param: str = "cache"):
    return click.option("--cache", param, type=click.Path(file_okay=False), default=None,
                        show_default="$MMX_CACHE, else ./.mmx-cache", help="Cache root folder.")


def dataset_option(required: bool = True, help: str = "Dataset name in the cache: the name its features are stored under.",
                   cls: type[click.Option] = click.Option):
    return click.option("--dataset", cls=cls, required=required, help=help)


def device_option(help: str = "Where the model runs: auto (CUDA when present), cpu, cuda or cuda:N."):
    return click.option("--device", default="auto", show_default=True, help=help)


def threads_option():
    return click.option("--threads", type=click.IntRange(min=0), default=0,
                        help="torch CPU threads; 0: half the cores, 1 to 4 (see mmx.cache.threads).")


def progress_option():
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Progress bars on stderr (--quiet hides them too).")


def allow_root_option():
    return click.option("--allow-root", "allowed_roots", multiple=True, type=click.Path(file_okay=False),
                        show_default="the manifest's folder",
                        help="Folder local files may be read from, symlinks resolved (repeatable).")


def _set_quiet(ctx: click.Context, _param, value: bool) -> None:
    if value:
        console(ctx).quiet = True


def _set_json(ctx: click.Context, _param, value: bool) -> None:
    if value:
        console(ctx).json = True


def quiet_option():
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                        help="Print only the summary line: no header, progress or warnings (errors still show).")


def json_option(what: str):
    return click.option("--json", is_flag=True, expose_value=False, callback=_set_json,
                        help=f"Print {what} as JSON on stdout (all other text goes to stderr).")


def given(ctx: click.Context, name: str, value):
    """``value`` when the user typed option ``name``, else None (the config's own value then applies)."""
    from click.core import ParameterSource

    return None if ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None) else value

"""The ``mmx`` command line. Each command lives in its own ``cli_*`` module.

Command modules import only click at module level, so ``mmx --help`` stays fast;
heavy libraries are imported inside the commands.
"""

from __future__ import annotations

import errno
import os

import click

from mmx.pipeline.cli_output import console, showing_warnings

from mmx import __version__


class _Group(click.Group):
    """Turns the errors a user can cause into one clear line instead of a traceback (exit 1), and
    any other exception into one line naming the file that keeps its traceback (exit 3; with
    ``MMX_DEBUG=1`` it propagates); shows every warning of a command as one ``warning: ...`` line, once."""

    def invoke(self, ctx: click.Context):
        try:
            with showing_warnings(console(ctx)):
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (ValueError, FileNotFoundError, KeyError) as exc:
            from mmx.pipeline.errors import user_error

            raise user_error(exc) from exc
        except OSError as exc:
            from mmx.pipeline.errors import no_space, os_error

            raise (no_space(exc) if exc.errno == errno.ENOSPC else os_error(exc)) from exc
        except Exception as exc:  # a bug: one line, and the traceback kept in a file for the report
            from mmx.pipeline.errors import internal_error

            if os.environ.get("MMX_DEBUG"):
                raise
            raise internal_error(exc) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="mmx")
def main() -> None:
    """mmx: multi-modal joint embeddings from a cached feature pipeline.

    \b
    Stage one:  mmx fetch -> mmx extract --modality M --dataset D   (features into a zarr cache)
    Stage two:  mmx train --dataset D --strategy S -> mmx eval RUN -> mmx compare RUN RUN
    """


def _register() -> None:
    from mmx.pipeline import cli_cache, cli_demo, cli_eval, cli_export, cli_extract, cli_fetch, cli_search, cli_sweep, cli_train
    from mmx.pipeline import cli_index, cli_serve

    for module in (cli_fetch, cli_extract, cli_cache, cli_train, cli_sweep, cli_eval, cli_search, cli_index, cli_export,
                   cli_serve, cli_demo):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()

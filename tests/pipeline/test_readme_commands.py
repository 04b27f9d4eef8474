"""Every ``mmx`` command in the README is one the CLI accepts (issue 15 done-when).

The README's shell blocks are read as a user would copy them (comments dropped, ``\\``
continuations joined); each ``mmx`` line goes through the command's own parser, so an option
or choice the README names but the CLI lacks fails here. The own-data path they describe
(fetch -> extract -> train -> eval) is run for real by test_own_data_walkthrough.py; running
every line here would need the network (fetch, hub backbones), a dask cluster or a GPU.
"""

import re
import shlex
from pathlib import Path

import click
import pytest

from mmx.pipeline.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in re.split(r"\s*&&\s*", line):
                if part.startswith("mmx "):
                    commands.append(part)
    return commands


def test_the_readme_has_the_commands_of_the_whole_path():
    names = {shlex.split(c)[1] for c in readme_commands()}
    assert {"fetch", "extract", "train", "eval", "compare", "cache", "demo"} <= names


@pytest.mark.parametrize("line", readme_commands())
def test_each_readme_command_parses(line):
    args = shlex.split(line)[1:]
    ctx = main.make_context("mmx", list(args), resilient_parsing=True)
    name, cmd, rest = main.resolve_command(ctx, ctx.protected_args + ctx.args)
    while isinstance(cmd, click.Group):  # mmx cache ls ...
        sub = cmd.make_context(name, list(rest), parent=ctx, resilient_parsing=True)
        name, cmd, rest = cmd.resolve_command(sub, sub.protected_args + sub.args)
    if "--help" in rest:
        return
    try:
        cmd.make_context(name, list(rest), parent=ctx)
    except click.BadParameter as exc:
        if isinstance(getattr(exc.param, "type", None), (click.Path, click.File)) and "does not exist" in exc.format_message():
            return  # a placeholder path ($RUN, gallery.npz): the README names a file the user will have
        pytest.fail(f"README: {line!r}: {exc.format_message()}")
    except click.UsageError as exc:  # unknown option, bad choice, missing argument
        pytest.fail(f"README: {line!r}: {exc.format_message()}")

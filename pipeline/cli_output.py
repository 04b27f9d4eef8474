"""What a command prints: :class:`Console` (lines, warnings, the summary line, ``--json``).

A command that reports prints one summary line; ``--quiet`` prints only that line (errors
still show), and ``--json`` prints the command's result as JSON on stdout, its text going to stderr.
:func:`showing_warnings` makes every :func:`warnings.warn` a single ``warning: ...`` line,
each message once per command.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import Iterator

import click

_KEY = "mmx.console"


class Console:
    """The printing state of one command: ``quiet`` and ``json`` flags and the warnings already shown."""

    def __init__(self) -> None:
        self.quiet = False
        self.json = False
        self._warned: set[str] = set()

    def line(self, text: str = "") -> None:
        """A line of the command's report (hidden by --quiet). ``warning: X`` lines go to :meth:`warn`."""
        if text.startswith("warning: "):
            self.warn(text.removeprefix("warning: "))
        elif not self.quiet:
            click.echo(text, err=self.json)

    def warn(self, message: str) -> None:
        """``warning: message`` on stderr, once per message (hidden by --quiet)."""
        key = " ".join(str(message).split())
        if self.quiet or key in self._warned:
            return
        self._warned.add(key)
        click.echo(f"warning: {message}", err=True)

    def summary(self, text: str) -> None:
        """The command's one summary line: printed even with --quiet (to stderr with --json)."""
        click.echo(text, err=self.json)

    def result(self, data) -> None:
        """The command's machine-readable result, printed only with --json."""
        if self.json:
            click.echo(json.dumps(data, ensure_ascii=False, default=str))

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """A :func:`warnings.showwarning` replacement: the message alone, no source line."""
        self.warn(str(message))


def console(ctx: click.Context | None = None) -> Console:
    """The console of the running command (one per invocation, shared by its nested contexts)."""
    ctx = ctx or click.get_current_context()
    return ctx.meta.setdefault(_KEY, Console())


@contextlib.contextmanager
def showing_warnings(con: Console) -> Iterator[Console]:
    """Route :func:`warnings.warn` to ``con`` for the enclosed block, then restore the previous display."""
    with warnings.catch_warnings():
        warnings.showwarning = con.showwarning
        yield con

"""Turning exceptions a user can cause into clear CLI messages."""

from __future__ import annotations

import click


def user_error(exc: BaseException) -> click.ClickException:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])
    return click.ClickException(msg)


def no_space(exc: OSError) -> click.ClickException:
    """A full disk, wherever it struck: what was being written, and that a rerun resumes.

    Every writer in mmx writes to a temporary and renames it, appends whole lines, or marks a
    shard complete only after its data, so what is on disk stays consistent and the same
    command continues where this one stopped once there is room.
    """
    where = f" while writing {exc.filename}" if exc.filename else ""
    return click.ClickException(f"no space left on the device{where}; free some space, then run the same "
                                "command again: it resumes where this one stopped")

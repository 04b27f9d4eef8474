"""Turning exceptions a user can cause into clear CLI messages."""

from __future__ import annotations

import click


def user_error(exc: BaseException) -> click.ClickException:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])
    return click.ClickException(msg)

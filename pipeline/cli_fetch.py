"""``mmx fetch``: see :mod:`mmx.extract`."""

import click  # noqa: F401

COMMANDS: list = []

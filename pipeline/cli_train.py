"""``mmx train``."""

import click  # noqa: F401

COMMANDS: list = []

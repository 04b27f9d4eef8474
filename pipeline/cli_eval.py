"""``mmx eval``."""

import click  # noqa: F401

COMMANDS: list = []

"""``mmx demo``."""

import click  # noqa: F401

COMMANDS: list = []

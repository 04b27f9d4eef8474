"""``mmx cache``."""

import click  # noqa: F401

COMMANDS: list = []

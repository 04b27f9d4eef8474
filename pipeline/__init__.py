"""The top floor: the click commands, config resolution and the demo. No stage imports it."""

"""MkDocs hook: every page under docs/notes/ joins the navigation under "Research notes".

The notes are written next to the code they describe and come and go with it; listing them
one by one in mkdocs.yml would make each new note a strict-build failure (a page outside
the nav) until someone edits the nav.
"""

from pathlib import Path


def on_config(config):
    notes = sorted(Path(config["docs_dir"], "notes").glob("*.md"))
    if notes:
        config["nav"].append({"Research notes": [f"notes/{p.name}" for p in notes]})
    return config

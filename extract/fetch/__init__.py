"""``mmx fetch``: download the media of a manifest, survive link rot, resume after a kill.

:func:`fetch_manifest` turns a manifest whose ``uri`` column holds URLs or local paths into a
dataset folder (:class:`FetchLayout`): validated media under ``media/<modality>/``, a journal,
status table and link-rot report under ``fetch/``, and ``manifest.fetched.csv`` listing the
available items. :class:`FetchConfig` holds its knobs. The choices behind it:
docs/notes/extract.md.
"""

from __future__ import annotations

from mmx.extract.fetch.config import FetchConfig, FetchLayout

__all__ = ["FetchConfig", "FetchLayout", "fetch_manifest"]


def fetch_manifest(manifest_path, out_dir, cfg: FetchConfig | None = None):
    """Fetch every item of a manifest into ``out_dir``; returns a :class:`FetchSummary`."""
    from mmx.extract.fetch.run import run_fetch

    return run_fetch(manifest_path, out_dir, cfg or FetchConfig())

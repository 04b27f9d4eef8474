"""``mmx fetch``: download the media of a manifest, survive link rot, resume after a kill.

URL-distributed datasets rot (paper 000, Sec. III-A: 88.2% of XMediaNet's images, 78.8% of
its videos and 82.8% of its audio were still reachable). This module turns a manifest whose
``uri`` column holds URLs or local paths into a dataset folder::

    DATASET_DIR/
      media/<modality>/<safe id>.<real extension>   validated files only
      fetch/journal.jsonl    one line per finished item (source of truth, append-only)
      fetch/status.csv       one row per manifest item, failed ones included
      fetch/report.md, fetch/report.json              link-rot report (mmx.extract.fetch.report)
      manifest.fetched.csv   the manifest of the available items, uris pointing at media/

Choices where the issue is silent:

* the updated manifest keeps text items and ``ok`` media only, so later stages never see a
  URL; every other item is in ``fetch/status.csv`` and the report with its failure kind;
* a plain rerun skips every item that already has a final status (an ``ok`` one only while its
  file is still there with the recorded size); ``retry_failed`` retries the transient kinds
  (:data:`~mmx.extract.fetch.status.TRANSIENT_KINDS`), ``retry_all`` every failure;
* memory: the manifest is never held whole; it is validated, planned, fed to the workers and
  summarised in chunks (:mod:`mmx.extract.fetch.manifest`), and a fixed pool of workers pulls
  from a queue of bounded size. What still grows with the manifest is a few bytes per item:
  one bit of the work list and 16 bytes of :class:`~mmx.extract.fetch.status.JournalIndex`
  (8 bytes of id hash while validating); see benchmarks/RESULTS.md;
* local paths (and ``file://``) are only read below ``allowed_roots`` (default: the
  manifest's folder), validated like downloads, then hard-linked, or copied when linking fails.
"""

from __future__ import annotations

from mmx.extract.fetch.config import FetchConfig, FetchLayout

__all__ = ["FetchConfig", "FetchLayout", "fetch_manifest"]


def fetch_manifest(manifest_path, out_dir, cfg: FetchConfig | None = None):
    """Fetch every item of a manifest into ``out_dir``; returns a :class:`FetchSummary`."""
    from mmx.extract.fetch.run import run_fetch

    return run_fetch(manifest_path, out_dir, cfg or FetchConfig())

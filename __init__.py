"""mmx: multi-modal joint embeddings from a cached feature pipeline.

Stage folders (installed as subpackages), from the top floor down: ``mmx.pipeline`` (the
CLI), ``mmx.extract`` (the manifest, fetching, decoding, backbones), ``mmx.train`` (heads,
fusion transformer, strategies), ``mmx.eval`` (metrics, tables, the run-folder format) and
``mmx.cache`` (the ``Modality`` vocabulary and the zarr feature store).
Heavy libraries are imported where they are used, so ``import mmx`` stays fast.
``mmx.load(PATH)`` opens a trained run or an exported bundle (:mod:`mmx.api`, docs/python-api.md).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # mmx.load and mmx.Model come from mmx.api on first use: importing it here would load torch
    # with every 'import mmx', and mmx.cache reads __version__ from this module
    if name in ("load", "Model", "Hit"):
        import importlib

        return getattr(importlib.import_module("mmx.api"), name)
    raise AttributeError(f"module 'mmx' has no attribute {name!r}")

"""mmx: multi-modal joint embeddings from a cached feature pipeline.

Stage folders (installed as subpackages), from the top floor down: ``mmx.pipeline`` (the
CLI), ``mmx.extract`` (the manifest, fetching, decoding, backbones), ``mmx.train`` (heads,
fusion transformer, strategies), ``mmx.eval`` (metrics, tables, the run-folder format) and
``mmx.cache`` (the ``Modality`` vocabulary and the zarr feature store).
Heavy libraries are imported where they are used, so ``import mmx`` stays fast.
"""

__version__ = "0.1.0"

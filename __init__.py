"""mmx: multi-modal joint embeddings from a cached feature pipeline.

Stage folders (installed as subpackages): ``mmx.pipeline`` (CLI, config, run folders),
``mmx.extract`` (fetching, decoding, backbones), ``mmx.cache`` (the zarr feature store),
``mmx.train`` (heads, fusion transformer, strategies), ``mmx.eval`` (metrics, tables).
Heavy libraries are imported where they are used, so ``import mmx`` stays fast.
"""

__version__ = "0.1.0"

"""Batch pipelines on Apache Spark.

``shoplens pipeline embed`` (:func:`shoplens.pipeline.spark.run_embed`) reads a catalogue
manifest, checks and embeds every image on Spark (``local[N]`` or any cluster) and writes
sharded Parquet embeddings, resumably; ``shoplens pipeline load``
(:func:`shoplens.pipeline.load.load_output`) puts them into a catalogue and its vector
index. Importing this package does not import PySpark.
"""

from __future__ import annotations

__all__ = ["load_output", "run_embed", "shard_of"]


def __getattr__(name: str) -> object:
    if name == "run_embed":
        from shoplens.pipeline.spark import run_embed

        return run_embed
    if name == "load_output":
        from shoplens.pipeline.load import load_output

        return load_output
    if name == "shard_of":
        from shoplens.pipeline.records import shard_of

        return shard_of
    raise AttributeError(f"module 'shoplens.pipeline' has no attribute {name!r}")

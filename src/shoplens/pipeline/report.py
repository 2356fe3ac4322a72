"""The report of a ``shoplens pipeline embed`` run and its ``_manifest.json``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from shoplens.pipeline.layout import FORMAT, Layout, write_json
from shoplens.pipeline.records import Records

#: Columns of ``embeddings/shard=K/*.parquet`` (the shard is in the folder name).
EMBEDDING_COLUMNS = [
    "sku", "title", "category", "attributes", "image", "image_key", "phash", "width",
    "height", "line", "embedding",
]  # fmt: skip


@dataclass
class EmbedReport:
    """What a pipeline run did; ``resumed`` lists shards committed by an earlier run."""

    out: str
    encoder: str
    dim: int
    shards: int
    products: int  # valid manifest rows
    embedded: int = 0
    rejected_manifest: int = 0
    rejected_images: int = 0
    computed: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    encoder_loads: int = 0  # encoders created in Spark's Python workers by this run
    master: str | None = None
    seconds: float = 0.0
    rejects: list[dict[str, Any]] = field(default_factory=list)  # the first 20, by line

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finish(
    layout: Layout,
    report: EmbedReport,
    records: Records,
    encoder: Any,
    markers: dict[int, dict[str, Any]],
    settings: dict[str, Any],
) -> None:
    """Fill the report's counts from the commit markers and write ``_manifest.json``."""
    import pyarrow.parquet as pq

    import shoplens

    report.embedded = sum(m["rows"] for m in markers.values())
    report.rejected_images = sum(m["rejected"] for m in markers.values())
    rejects: list[dict[str, Any]] = [
        {"line": e.line, "sku": e.sku, "reason": e.message} for e in records.errors[:20]
    ]
    if len(rejects) < 20 and report.rejected_images:
        for k in sorted(markers):
            folder = layout.shard_dir(layout.rejects, k)
            for name in markers[k]["files"]["rejects"]:
                rejects += [
                    {"line": r["line"], "sku": r["sku"], "reason": r["reason"]}
                    for r in pq.read_table(folder / name).to_pylist()
                ]
    report.rejects = sorted(rejects, key=lambda r: r["line"])[:20]
    manifest = {
        "format": FORMAT,
        "encoder": report.encoder,
        "encoder_name": encoder.name,
        "dim": encoder.dim,
        "modalities": sorted(encoder.modalities),
        "embedding": "column 'embedding': list<float32> of length dim, L2-normalised",
        "shards": report.shards,
        "shard_function": "first 8 bytes of sha1(sku as UTF-8), big-endian, mod shards",
        "layout": "embeddings/shard=K/*.parquet, rejects/shard=K/*.parquet (hive "
        "partitioning; rejects/shard=-1: refused while reading the manifest)",
        "columns": EMBEDDING_COLUMNS,
        **settings,
        "input": {"path": records.path, "kind": records.kind, "fingerprint": records.fingerprint},
        "rows": {
            "manifest": len(records.rows) + len(records.errors),
            "valid": len(records.rows),
            "embedded": report.embedded,
            "rejected_manifest": report.rejected_manifest,
            "rejected_images": report.rejected_images,
        },
        "per_shard": {
            str(k): {"rows": m["rows"], "rejected": m["rejected"]}
            for k, m in sorted(markers.items())
        },
        "run": {  # differs between runs that wrote the same data
            "master": report.master,
            "computed_shards": report.computed,
            "resumed_shards": report.resumed,
            "encoder_loads": report.encoder_loads,
            "seconds": round(report.seconds, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "shoplens": shoplens.__version__,
        },
    }
    write_json(layout.manifest_json, manifest)

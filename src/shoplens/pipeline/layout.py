"""Output folder of ``shoplens pipeline embed`` and its per-shard commit protocol.

Layout under ``OUT``::

    _run.json                     what the folder holds: encoder, shards, batch size,
                                  input fingerprint (a re-run must match it)
    _manifest.json                the finished run: encoder, dim, shard count, row counts,
                                  input fingerprint (written when every shard is committed)
    _commits/shard=K.json         commit marker of shard K (rows, rejects, files)
    embeddings/shard=K/part-*.parquet   embedded products of shard K
    rejects/shard=K/part-*.parquet      refused rows of shard K and why
    rejects/shard=-1/part-00000-c000.parquet rows refused while reading the manifest
    images/ab/<sha256>.<ext>      normalised images (content-addressed), for loading
    _staging/records.parquet      the validated manifest rows the shard jobs read
    _tmp/                         shard outputs being written (removed on every start)
    .lock                         held (flock) by the running pipeline

A shard is written under ``_tmp/``, renamed into ``embeddings/`` and ``rejects/``, and
then committed by writing its marker atomically: a shard without a marker does not
exist, and its folders are removed before it is computed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoplens.config import atomic_write, fsync_dir
from shoplens.errors import InvalidInputError

FORMAT = "shoplens-spark-embeddings/1"
MANIFEST_SHARD = -1  # rejects found while reading the manifest, before sharding
_PART_RE = re.compile(r"^part-(\d+)(?:-.*)?-c(\d+)\b")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic, fsynced JSON file (stable key order)."""
    with atomic_write(path) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


class Layout:
    """Paths and commit steps of one output folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(os.path.abspath(os.path.expanduser(out)))
        self.embeddings = self.out / "embeddings"
        self.rejects = self.out / "rejects"
        self.images = self.out / "images"
        self.commits = self.out / "_commits"
        self.staging = self.out / "_staging" / "records.parquet"
        self.tmp = self.out / "_tmp"
        self.run_json = self.out / "_run.json"
        self.manifest_json = self.out / "_manifest.json"

    def shard_dir(self, root: Path, shard: int) -> Path:
        return root / f"shard={shard}"

    def marker(self, shard: int) -> Path:
        return self.commits / f"shard={shard}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``OUT/.lock``; a second pipeline writing to the same folder is refused."""
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InvalidInputError(
                    f"another 'shoplens pipeline embed' is writing to {self.out}"
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock (a killed process releases it too)

    def check_run(self, run: dict[str, Any]) -> None:
        """Record ``run`` in ``_run.json``, or check that the folder holds the same run.

        Raises:
            InvalidInputError: the folder holds another run (other input, encoder, shard
                count or batch size), or is a non-empty folder that shoplens did not write.
        """
        if self.run_json.is_file():
            old = json.loads(self.run_json.read_text(encoding="utf-8"))
            diff = [k for k in sorted(run) if old.get(k) != run[k]]
            if diff:
                what = ", ".join(f"{k} {old.get(k)!r} (now {run[k]!r})" for k in diff)
                raise InvalidInputError(
                    f"{self.out} holds another pipeline run: {what}; resume with the same "
                    "settings, or use another --out"
                )
            return
        leftovers = [p.name for p in self.out.iterdir() if p.name != ".lock"]
        if leftovers:
            raise InvalidInputError(
                f"--out {self.out} is not empty and holds no pipeline run "
                f"(found {', '.join(sorted(leftovers)[:5])}); use an empty or new folder"
            )
        write_json(self.run_json, run)

    def committed(self, shards: int) -> dict[int, dict[str, Any]]:
        """Markers of the committed shards whose files are all present."""
        done: dict[int, dict[str, Any]] = {}
        for k in range(shards):
            path = self.marker(k)
            if not path.is_file():
                continue
            info = json.loads(path.read_text(encoding="utf-8"))
            files = [self.shard_dir(self.embeddings, k) / f for f in info["files"]["embeddings"]]
            files += [self.shard_dir(self.rejects, k) / f for f in info["files"]["rejects"]]
            if all(f.is_file() for f in files):
                done[k] = info
            else:  # files removed by hand: compute the shard again
                path.unlink()
        return done

    def clean(self, shards: int, committed: dict[int, dict[str, Any]]) -> None:
        """Remove temp outputs and the folders of shards that were never committed."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        for root in (self.embeddings, self.rejects):
            for d in root.glob("shard=*") if root.is_dir() else []:
                k = d.name.removeprefix("shard=")
                keep = k == str(MANIFEST_SHARD) and root == self.rejects
                if not keep and not (k.lstrip("-").isdigit() and int(k) in committed):
                    shutil.rmtree(d, ignore_errors=True)
        from shoplens.catalog.store import remove_stale_image_temps

        if self.images.is_dir():
            remove_stale_image_temps(self.images)

    def commit(self, shard: int, tmp: Path) -> dict[str, Any]:
        """Move a finished shard from ``tmp`` into place and write its marker.

        ``tmp`` holds ``embeddings/`` and ``rejects/`` as Spark wrote them; part files are
        renamed ``part-NNNNN-cMMM.parquet`` (Spark's task and file numbers) and Spark's
        ``_SUCCESS`` and ``.crc`` files dropped, so every run names the files alike.
        """
        info: dict[str, Any] = {"shard": shard, "files": {}}
        for name, root in (("embeddings", self.embeddings), ("rejects", self.rejects)):
            src = tmp / name
            files = tidy_parts(src)
            info["files"][name] = files
            info["rejected" if name == "rejects" else "rows"] = count_rows(src, files)
            dst = self.shard_dir(root, shard)
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dst, ignore_errors=True)
            os.rename(src, dst)
            fsync_dir(root)
        self.commits.mkdir(parents=True, exist_ok=True)
        write_json(self.marker(shard), info)  # the commit point
        shutil.rmtree(tmp, ignore_errors=True)
        return info


def tidy_parts(folder: Path) -> list[str]:
    """Rename Spark's part files to ``part-NNNNN-cMMM.parquet``; drop its other files."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for f in sorted(folder.iterdir()):
        m = _PART_RE.match(f.name)
        if m and f.name.endswith(".parquet"):
            new = f"part-{int(m.group(1)):05d}-c{int(m.group(2)):03d}.parquet"
            os.rename(f, folder / new)
            names.append(new)
        else:  # _SUCCESS, .part-*.crc, ._SUCCESS.crc
            f.unlink()
    for name in names:
        with (folder / name).open("rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)
    return sorted(names)


def count_rows(folder: Path, files: list[str]) -> int:
    """Rows in the Parquet files (read from their footers)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(folder / f).num_rows for f in files)

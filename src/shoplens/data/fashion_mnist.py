"""Zalando Fashion-MNIST (MIT licence): 70,000 real 28x28 grayscale product photos.

Looked up in order: an explicit ``data_dir``, ``$SHOPLENS_FASHION_MNIST_DIR``, the Debian
package path (``apt-get install dataset-fashion-mnist``), the shoplens cache, and last
the official URLs (downloaded once into the cache). Every file is sha256-checked.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from shoplens.config import cache_dir
from shoplens.errors import InvalidInputError, NotFoundError

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
    ),
    "train-labels-idx1-ubyte.gz": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
    ),
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
Split = Literal["train", "test"]


@dataclass(frozen=True)
class FashionMNIST:
    """One split: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,)."""

    split: Split
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
            out.flush()
            os.fsync(out.fileno())
        got = _sha256(Path(tmp))
        if got != sha256:
            raise InvalidInputError(f"checksum mismatch for {url}: got {got}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def candidate_dirs(data_dir: Path | None = None) -> list[Path]:
    """Folders searched for the four .gz files, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    if env := os.environ.get("SHOPLENS_FASHION_MNIST_DIR"):
        dirs.append(Path(env))
    return [*dirs, DEBIAN_DIR, cache_dir() / "fashion-mnist"]


def locate(data_dir: Path | None = None, *, download: bool = True) -> Path:
    """Return a folder holding all four verified files, downloading if needed."""
    for d in candidate_dirs(data_dir):
        if all((d / name).is_file() for name in FILES):
            bad = [n for n, s in FILES.items() if _sha256(d / n) != s]
            if bad:
                raise InvalidInputError(
                    f"Fashion-MNIST files in {d} fail their sha256 check: {bad}"
                )
            return d
    if not download:
        raise NotFoundError(
            "Fashion-MNIST not found; install it with 'apt-get install dataset-fashion-mnist' "
            f"or put the four .gz files in {candidate_dirs(data_dir)[0]}"
        )
    dest = cache_dir() / "fashion-mnist"
    for name, sha in FILES.items():
        if not (dest / name).is_file():
            try:
                _download(BASE_URL + name, dest / name, sha)
            except OSError as e:
                raise NotFoundError(
                    f"Fashion-MNIST is not installed and downloading {name} failed ({e}); "
                    "install it with 'apt-get install dataset-fashion-mnist'"
                ) from e
    return dest


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file (the MNIST format): magic, dims, big-endian uint8 payload."""
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InvalidInputError("not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise InvalidInputError(f"IDX payload has {len(data) - offset} bytes, expected {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(
    split: Split, data_dir: Path | None = None, *, download: bool = True
) -> FashionMNIST:
    """Load one split (``train``: 60,000, ``test``: 10,000 images)."""
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', not {split!r}")
    folder = locate(data_dir, download=download)
    prefix = "train" if split == "train" else "t10k"
    images = parse_idx(gzip.decompress((folder / f"{prefix}-images-idx3-ubyte.gz").read_bytes()))
    labels = parse_idx(gzip.decompress((folder / f"{prefix}-labels-idx1-ubyte.gz").read_bytes()))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise InvalidInputError(f"unexpected Fashion-MNIST shapes {images.shape}, {labels.shape}")
    return FashionMNIST(split, images, labels.astype(np.int64))

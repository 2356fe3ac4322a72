"""User catalogue sources: CSV/TSV, JSON lines, JSON arrays and image folders.

Every source needs ``sku``, ``title``, ``category`` and ``image`` per product; other
columns/keys become string attributes. Problems with the whole file raise
:class:`~shoplens.errors.InvalidInputError`; problems with one product skip it and are
reported as a :class:`RowError` with the line where its record starts.
"""

from __future__ import annotations

import json
import math
import os
import stat
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoplens.data.manifest_readers import (
    ATTR_NAME_RE,
    IMAGE_EXTENSIONS,
    MAX_SKU_CHARS,
    REQUIRED_COLUMNS,
    UNCATEGORIZED,
    kind_of,
    read_csv,
    read_folder,
    read_json,
    read_jsonl,
    slugify,
)
from shoplens.data.urls import ALLOWED_SCHEMES, check_url, url_scheme
from shoplens.errors import InvalidInputError, NotFoundError

MAX_MANIFEST_BYTES = 2 * 1024**3
MAX_FIELD_CHARS = 10_000
SUPPORTED_KINDS = "a folder of images, .csv, .tsv, .jsonl / .ndjson or .json"

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FIELD_CHARS",
    "MAX_MANIFEST_BYTES",
    "MAX_SKU_CHARS",
    "REQUIRED_COLUMNS",
    "UNCATEGORIZED",
    "Manifest",
    "ManifestRow",
    "RowError",
    "read_manifest",
    "slugify",
]


@dataclass(frozen=True)
class ManifestRow:
    """One valid product; ``line`` is where its record starts (1-based)."""

    line: int
    sku: str
    title: str
    category: str
    image: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class RowError:
    """A skipped product: where it starts, its sku if known, and why."""

    line: int
    sku: str | None
    message: str


@dataclass
class Manifest:
    """Parsed products; ``root`` is the folder image paths are relative to.

    ``source`` is the kind of source: "csv", "tsv", "jsonl", "json" or "folder".
    """

    rows: list[ManifestRow]
    errors: list[RowError]
    root: Path
    source: str


def check_manifest_file(path: str | Path, st: os.stat_result) -> None:
    """Refuse a manifest that is not a regular file or is over :data:`MAX_MANIFEST_BYTES`."""
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"manifest {str(path)!r} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise InvalidInputError(
            f"manifest {str(path)!r} is {st.st_size / 1024**3:.1f} GiB, over the limit of "
            f"{MAX_MANIFEST_BYTES / 1024**3:g} GiB: split it into smaller files"
        )


def read_manifest(path: str | Path, *, allow_outside_root: bool = False) -> Manifest:
    """Read a catalogue source, dispatching on its kind.

    Args:
        path: a folder of images (sub-folder = category) or a .csv, .tsv, .jsonl,
            .ndjson or .json manifest.
        allow_outside_root: accept local image paths outside the manifest's folder.

    Raises:
        NotFoundError: ``path`` does not exist.
        InvalidInputError: the file as a whole is unusable (see module docs).
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise NotFoundError(f"manifest not found: {str(path)!r}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read manifest {str(path)!r}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        root = Path(os.path.abspath(p))
        builder = _Builder(root, allow_outside_root)
        read_folder(root, builder, str(path))
        return Manifest(builder.rows, builder.errors, root, "folder")
    suffix = p.suffix.lower()
    kinds = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
    if suffix not in kinds:
        raise InvalidInputError(
            f"unsupported manifest type {suffix or '(no extension)'!r} for {str(path)!r}: "
            f"use {SUPPORTED_KINDS}"
        )
    check_manifest_file(path, st)
    kind = kinds[suffix]
    root = Path(os.path.abspath(p)).parent
    builder = _Builder(root, allow_outside_root)
    if kind in ("csv", "tsv"):
        read_csv(p, "\t" if kind == "tsv" else ",", builder, str(path))
    elif kind == "jsonl":
        read_jsonl(p, builder, str(path))
    else:
        read_json(p, builder, str(path))
    if builder.records == 0:
        raise InvalidInputError(f"manifest {str(path)!r} has no products")
    return Manifest(builder.rows, builder.errors, root, kind)


class _Builder:
    """Validates records and collects rows and row errors."""

    def __init__(self, root: Path, allow_outside_root: bool) -> None:
        self.root = root
        self.real_root = Path(os.path.realpath(root))
        self.allow_outside_root = allow_outside_root
        self.rows: list[ManifestRow] = []
        self.errors: list[RowError] = []
        self.first_line: dict[str, int] = {}
        self.records = 0

    def error(self, line: int, sku: str | None, message: str) -> None:
        self.records += 1
        self.errors.append(RowError(line, sku, message))

    def add(self, line: int, fields: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Validate one record; keep it as a row or record why it was skipped."""
        self.records += 1
        problems: list[str] = []
        values: dict[str, str] = {}
        for name in REQUIRED_COLUMNS:
            raw = fields.get(name)
            text = _scalar_text(raw)
            if text is None:
                problems.append(f"{name} must be text, not {kind_of(raw)}")
                continue
            if name != "sku":
                text = text.strip()
            if not text.strip():
                problems.append(f"missing {name}" if raw is None else f"empty {name}")
            elif len(text) > MAX_FIELD_CHARS:
                problems.append(f"{name} is longer than {MAX_FIELD_CHARS:,} characters")
            values[name] = text
        sku = values.get("sku") or None
        if sku is not None and not problems:
            problems.extend(_sku_problems(sku))
        attributes = _attributes(attrs, problems)
        image = values.get("image", "")
        if image and len(image) <= MAX_FIELD_CHARS:
            problem = self._image_problem(image)
            if problem:
                problems.append(problem)
        short_sku = sku[:MAX_SKU_CHARS] if sku else None
        if not problems and sku in self.first_line:
            problems.append(f"duplicate sku {sku!r} (first on line {self.first_line[sku]})")
        if problems:
            self.errors.append(RowError(line, short_sku, "; ".join(problems)))
            return
        assert sku is not None
        self.first_line[sku] = line
        self.rows.append(
            ManifestRow(line, sku, values["title"], values["category"], image, attributes)
        )

    def _image_problem(self, image: str) -> str | None:
        scheme = url_scheme(image)
        if scheme is not None:
            if scheme not in ALLOWED_SCHEMES:
                return f"image URL scheme {scheme!r} is not allowed (use http, https or a path)"
            try:
                check_url(image)
            except InvalidInputError as exc:
                return exc.message
            return None
        if self.allow_outside_root:
            return None
        full = os.path.normpath(os.path.join(self.root, os.path.expanduser(image)))
        for root in (str(self.root), str(self.real_root)):
            if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
                return None
        return f"image path {image!r} escapes the manifest folder {str(self.root)!r}"


def _sku_problems(sku: str) -> list[str]:
    problems = []
    if len(sku) > MAX_SKU_CHARS:
        problems.append(f"sku is longer than {MAX_SKU_CHARS} characters")
    if sku != sku.strip():
        problems.append(f"sku {sku!r} has leading or trailing whitespace")
    if "/" in sku:
        problems.append(f"sku {sku!r} contains '/'")
    if any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in sku):
        problems.append(f"sku {sku!r} contains control characters")
    return problems


def _scalar_text(value: Any) -> str | None:
    """Text of a required field: str, or a number stringified; None if unusable."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):  # not NaN / Infinity
        return str(value)
    return None


def _attr_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _attributes(attrs: Mapping[str, Any], problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in attrs.items():
        if not isinstance(name, str) or not ATTR_NAME_RE.match(name):
            problems.append(
                f"invalid attribute name {str(name)[:80]!r}: use 1-64 letters, digits, "
                "'_', '-' or spaces"
            )
            continue
        text = _attr_text(value)
        if len(text) > MAX_FIELD_CHARS:
            problems.append(f"attribute {name!r} is longer than {MAX_FIELD_CHARS:,} characters")
        elif text:
            out[name] = text
    return out

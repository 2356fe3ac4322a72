"""Readers for each manifest kind; they feed records to a :class:`RecordSink`.

Used by :mod:`shoplens.data.manifest`, which validates the records.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from shoplens.errors import InvalidInputError

REQUIRED_COLUMNS = ("sku", "title", "category", "image")
MAX_SKU_CHARS = 128
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
UNCATEGORIZED = "uncategorized"
ATTR_NAME_RE = re.compile(r"^[A-Za-z0-9_ -]{1,64}$")
_CSV_FIELD_LIMIT = 2**31 - 1  # a long field must reach the per-row check, not csv.Error


class RecordSink(Protocol):
    """Receives records: ``add`` validates one, ``error`` skips one with a reason."""

    allow_outside_root: bool
    real_root: Path

    def add(self, line: int, fields: Mapping[str, Any], attrs: Mapping[str, Any]) -> None: ...

    def error(self, line: int, sku: str | None, message: str) -> None: ...


def kind_of(value: Any) -> str:
    """Describe a JSON value's type for error messages."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN/Infinity"
    return "a number" if not isinstance(value, bool) else "true/false"


# --- CSV / TSV ------------------------------------------------------------------------


def read_csv(path: Path, delimiter: str, b: RecordSink, name: str) -> None:
    """Read a CSV/TSV manifest whose first line names the columns."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            columns: list[str] | None = None
            prev = 0
            try:
                for record in reader:
                    start, prev = prev + 1, reader.line_num
                    if not any(cell.strip() for cell in record):
                        continue  # blank line
                    if columns is None:
                        columns = _csv_header(record, name)
                        continue
                    _csv_record(b, start, columns, record)
            except csv.Error as exc:
                raise InvalidInputError(
                    f"malformed CSV in {name!r} in the record starting on line {prev + 1}: {exc}"
                ) from None
    except UnicodeDecodeError:
        raise _utf8_error(path, name) from None


def _csv_header(record: list[str], name: str) -> list[str]:
    columns = [c.strip() for c in record]
    lowered = [c.lower() for c in columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in lowered]
    if missing:
        found = ", ".join(c for c in columns if c) or "none"
        raise InvalidInputError(
            f"manifest {name!r} is missing required column(s) {', '.join(missing)} "
            f"(found: {found}); the first line must name the columns "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    out: list[str] = []
    seen: set[str] = set()
    for col, low in zip(columns, lowered, strict=True):
        key = low if low in REQUIRED_COLUMNS else col
        if key and key.lower() in seen:
            raise InvalidInputError(f"manifest {name!r} has the column {col!r} twice")
        if key and key not in REQUIRED_COLUMNS and not ATTR_NAME_RE.match(key):
            raise InvalidInputError(
                f"manifest {name!r} has an invalid column name {col[:80]!r}: use 1-64 "
                "letters, digits, '_', '-' or spaces"
            )
        seen.add(key.lower())
        out.append(key)  # "" marks an unnamed column, ignored
    return out


def _csv_record(b: RecordSink, line: int, columns: list[str], record: list[str]) -> None:
    if len(record) != len(columns):
        sku = record[columns.index("sku")] if len(record) > columns.index("sku") else None
        b.error(
            line,
            sku[:MAX_SKU_CHARS] if sku else None,
            f"expected {len(columns)} fields, found {len(record)}",
        )
        return
    fields: dict[str, str] = {}
    attrs: dict[str, str] = {}
    for col, value in zip(columns, record, strict=True):
        if col in REQUIRED_COLUMNS:
            fields[col] = value
        elif col:
            attrs[col] = value
    b.add(line, fields, attrs)


# --- JSON lines / JSON array ----------------------------------------------------------


def read_jsonl(path: Path, b: RecordSink, name: str) -> None:
    """Read one JSON object per line; blank lines are skipped."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _utf8_message(name, lineno, exc.start) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                b.error(lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except (ValueError, RecursionError) as exc:  # huge integer, nested too deeply
                b.error(lineno, None, f"invalid JSON: {_json_limit(exc)}")
                continue
            _json_record(b, lineno, obj)


def read_json(path: Path, b: RecordSink, name: str) -> None:
    """Read a JSON array of product objects, keeping each element's start line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _utf8_error(path, name) from None
    for line, obj in _iter_json_array(text, name):
        _json_record(b, line, obj)


def _iter_json_array(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """Yield (start line, element) for each element of a top-level JSON array."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")

    def skip(i: int) -> int:
        m = ws.match(text, i)
        return m.end() if m else i

    i = skip(0)
    if i == len(text):
        return
    if text[i] != "[":
        hint = " (for one object per line use a .jsonl file)" if text[i] == "{" else ""
        raise InvalidInputError(f"manifest {name!r} must be a JSON array of product objects{hint}")
    line, counted = 1, 0
    i = skip(i + 1)
    if i < len(text) and text[i] == "]":
        i = skip(i + 1)
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise _json_error(name, exc) from None
            except (ValueError, RecursionError) as exc:  # huge integer, nested too deeply
                line += text.count("\n", counted, i)
                raise InvalidInputError(
                    f"invalid JSON in manifest {name!r} in the element starting on line "
                    f"{line}: {_json_limit(exc)}"
                ) from None
            line += text.count("\n", counted, i)
            counted = i
            yield line, obj
            i = skip(end)
            if i < len(text) and text[i] == ",":
                i = skip(i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i = skip(i + 1)
                break
            raise _json_error(name, json.JSONDecodeError("expected ',' or ']'", text, i))
    if i != len(text):
        raise _json_error(name, json.JSONDecodeError("extra data after the array", text, i))


def _json_limit(exc: Exception) -> str:
    """Why Python's JSON parser gave up on valid-looking JSON (not a syntax error)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"a number is too long ({str(exc).split(':')[0]})"


def _json_error(name: str, exc: json.JSONDecodeError) -> InvalidInputError:
    return InvalidInputError(
        f"invalid JSON in manifest {name!r} at line {exc.lineno} column {exc.colno}: {exc.msg}"
    )


def _json_record(b: RecordSink, line: int, obj: Any) -> None:
    if not isinstance(obj, dict):
        b.error(line, None, f"expected a JSON object for each product, found {kind_of(obj)}")
        return
    fields = {k: obj.get(k) for k in REQUIRED_COLUMNS}
    attrs: dict[str, Any] = {
        k: v for k, v in obj.items() if k not in REQUIRED_COLUMNS and k != "attributes"
    }
    nested = obj.get("attributes")
    if isinstance(nested, dict):
        attrs.update(nested)
    elif nested is not None:
        raw_sku = obj.get("sku")
        sku = raw_sku[:MAX_SKU_CHARS] if isinstance(raw_sku, str) and raw_sku else None
        b.error(line, sku, f"'attributes' must be a JSON object, found {kind_of(nested)}")
        return
    b.add(line, fields, attrs)


# --- encoding errors ------------------------------------------------------------------


def _utf8_error(path: Path, name: str) -> InvalidInputError:
    """Find the first invalid UTF-8 byte in ``path`` and describe where it is."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        if head in (b"\xff\xfe", b"\xfe\xff"):
            return InvalidInputError(
                f"manifest {name!r} is UTF-16 encoded: save it as UTF-8 (e.g. 'CSV UTF-8')"
            )
        fh.seek(0)
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _utf8_message(name, lineno, exc.start)
    return InvalidInputError(f"manifest {name!r} is not valid UTF-8: save it as UTF-8")


def _utf8_message(name: str, line: int, byte: int) -> InvalidInputError:
    return InvalidInputError(
        f"manifest {name!r} is not valid UTF-8 (line {line}, byte {byte + 1} of that line): "
        "save it as UTF-8"
    )


# --- image folders --------------------------------------------------------------------


def slugify(text: str) -> str:
    """Lower-case ASCII slug: [a-z0-9] runs joined by single '-'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def read_folder(root: Path, b: RecordSink, name: str) -> None:
    """Turn a folder of images (sub-folder = category) into records, sorted by path."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fname in filenames:
            ext = fname.rsplit(".", 1)[-1].lower() if "." in fname else ""
            if fname.startswith(".") or ext not in IMAGE_EXTENSIONS:
                continue
            rel = fname if rel_dir == "." else os.path.join(rel_dir, fname)
            files.append(Path(rel).as_posix())
    if not files:
        raise InvalidInputError(
            f"folder {name!r} has no images (looked for "
            f"{', '.join('.' + e for e in sorted(IMAGE_EXTENSIONS))} files in sub-folders)"
        )
    files.sort()
    used: set[str] = set()
    for index, rel in enumerate(files, 1):
        parts = rel.split("/")
        category = parts[0] if len(parts) > 1 else UNCATEGORIZED
        stem = parts[-1].rsplit(".", 1)[0]
        base = slugify("-".join([category, *parts[1:-1], stem]))[:100].strip("-") or "item"
        sku, n = base, 1
        while sku in used:
            n += 1
            sku = f"{base}-{n}"
        used.add(sku)
        title = " ".join(re.sub(r"[_-]+", " ", stem).split()) or stem
        real = Path(os.path.realpath(root / rel))
        if not b.allow_outside_root and not real.is_relative_to(b.real_root):
            b.error(index, sku, f"image path {rel!r} is a link leading outside the folder")
            continue
        b.add(index, {"sku": sku, "title": title, "category": category, "image": rel}, {})

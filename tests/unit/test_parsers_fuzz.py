"""Property tests (hypothesis) for every parser that reads untrusted input.

Each parser may only fail with a :class:`~shoplens.errors.ShoplensError` (one line, exit 2
/ HTTP 4xx), never another exception (a crash, HTTP 500); what it accepts must satisfy
the rules it documents. Runs are derandomized so failures reproduce.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from shoplens.config import load_config
from shoplens.data.images import decode_image
from shoplens.data.manifest import MAX_SKU_CHARS, read_manifest
from shoplens.data.urls import check_url, is_forbidden_ip
from shoplens.errors import ImageError, InvalidInputError, PayloadTooLargeError, ShoplensError
from shoplens.personalize.events import (
    MAX_CLOCK_SKEW_S,
    csv_records,
    parse_timestamp,
    validate_event,
)
from shoplens.serve.app import parse_attr_params
from shoplens.training.experiment import ExperimentConfig

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = 1_767_225_600.0
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ("sku", "title", "category", "image", "colour", "attributes")
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6)


# ---- manifests -----------------------------------------------------------------------------


def _read(data: bytes, suffix: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        path = root / f"manifest{suffix}"
        path.write_bytes(data)
        try:
            return read_manifest(path)
        except ShoplensError as e:
            assert "\n" not in e.message
            return e


def _check_rows(manifest: Any) -> None:
    if isinstance(manifest, ShoplensError):
        return
    for row in manifest.rows:  # what is kept obeys the manifest rules
        assert 0 < len(row.sku) <= MAX_SKU_CHARS and "/" not in row.sku
        assert not any(unicodedata.category(c) == "Cc" for c in row.sku)
        assert row.title.strip() and row.category.strip() and row.image
        assert all(isinstance(v, str) for v in row.attributes.values())


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]))
@example(data=b"[" * 50_000, suffix=".json")
@example(data=b'[{"sku": ' + b"9" * 5000 + b"}]", suffix=".json")
@example(data=b"sku,title,category,image\nx,t,c,img/a.png\x00.jpg\n", suffix=".csv")
def test_manifest_of_random_bytes_fails_cleanly(data: bytes, suffix: str) -> None:
    _check_rows(_read(data, suffix))


@FUZZ
@given(rows=st.lists(records, max_size=5), kind=st.sampled_from(["json", "jsonl", "csv"]))
@example(
    rows=[{"sku": math.nan, "title": math.inf, "category": "c", "image": "a.png"}], kind="json"
)
def test_manifest_of_random_records_keeps_only_valid_rows(
    rows: list[dict[str, Any]], kind: str
) -> None:
    if kind == "json":
        data = json.dumps(rows).encode()
    elif kind == "jsonl":
        data = "\n".join(json.dumps(r) for r in rows).encode()
    else:
        columns = ["sku", "title", "category", "image"]
        lines = [",".join(columns)] + [
            ",".join(json.dumps(str(r.get(c, "")))[1:-1].replace(",", " ") for c in columns)
            for r in rows
        ]
        data = "\n".join(lines).encode("utf-8", "surrogatepass")
    _check_rows(_read(data, "." + kind))


# ---- events --------------------------------------------------------------------------------


@FUZZ
@given(value=json_values | st.datetimes() | st.text(alphabet="0123456789-:T.+Z ", max_size=30))
@example(value=10**400)
@example(value="9999-12-31T23:59:59-14:00")
def test_parse_timestamp_is_finite_or_an_input_error(value: Any) -> None:
    try:
        ts = parse_timestamp(value, now=NOW)
    except InvalidInputError:
        return
    assert math.isfinite(ts) and 0 <= ts <= NOW + MAX_CLOCK_SKEW_S


def test_iso_dates_are_never_read_as_milliseconds() -> None:
    assert parse_timestamp("2026-01-01T00:00:00Z", now=NOW) == NOW
    with pytest.raises(InvalidInputError, match="future"):  # year 9999, not 1970
        parse_timestamp("9999-12-31T23:59:59-14:00", now=NOW)
    assert parse_timestamp(NOW * 1000, now=NOW) == NOW  # numbers may be milliseconds


@FUZZ
@given(raw=st.dictionaries(
    st.sampled_from(["event_id", "customer_id", "sku", "type", "timestamp", "simulated"]),
    json_values | st.sampled_from(["view", "purchase", "\ud800", "sim-1", "2026-01-01"]),
))  # fmt: skip
@example(raw={"event_id": "\udc80", "customer_id": "c", "sku": "s", "type": "view", "timestamp": 1})
def test_validate_event_accepts_only_storable_events(raw: dict[str, Any]) -> None:
    try:
        event = validate_event(raw, now=NOW)
    except InvalidInputError as e:
        assert "\n" not in e.message
        return
    for text in (event.event_id, event.customer_id, event.sku):
        text.encode("utf-8")  # storable and echoable as UTF-8
        assert 0 < len(text) <= 128
    assert math.isfinite(event.ts) and 0 <= event.ts <= NOW + MAX_CLOCK_SKEW_S


@FUZZ
@given(text=st.text(max_size=600))
@example(text='event_id,customer_id\n"unterminated\n')
def test_events_csv_parsing_fails_cleanly(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.csv"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            rows = list(csv_records(path, ("event_id", "sku"), "events file"))
        except InvalidInputError:
            return
    for line, row in rows:
        assert line >= 1 and isinstance(row, (str, dict))


# ---- service query parameters and config overrides -----------------------------------------


@FUZZ
@given(values=st.lists(st.text(max_size=20), max_size=6))
def test_parse_attr_params(values: list[str]) -> None:
    try:
        out = parse_attr_params(values)
    except InvalidInputError:
        assert any("=" not in v or v.startswith("=") for v in values)
        return
    last = {v.partition("=")[0]: v.partition("=")[2] for v in values}
    assert out == last  # every key=value pair, the last one winning


KEYS = st.sampled_from(
    ["train.lr", "train.epochs", "train.betas", "train.schedule", "data.held_out", "model",
     "data.limit", "tracking.alias", "model_overrides.depth", "train", "nope.key", ""]
)  # fmt: skip
YAML_VALUES = st.sampled_from(
    ["3e-4", "1" + "0" * 400, ".nan", ".inf", "-1", "[1, 2]", "{a: 1}", "!!python/object:os.system",
     "[", "'unterminated", "null", "true", "cosine", "- a\n- b", "&a [*a]", "0x10", "1_000"]
) | st.text(max_size=20)  # fmt: skip


@FUZZ
@given(overrides=st.lists(st.tuples(KEYS | st.text(max_size=10), YAML_VALUES), max_size=4))
@example(overrides=[("train.epochs", "1" + "0" * 400)])
def test_config_overrides_fail_cleanly(overrides: list[tuple[str, str]]) -> None:
    items = [f"{k}={v}" for k, v in overrides]
    try:
        cfg = load_config(ExperimentConfig, overrides=items)
    except InvalidInputError as e:
        assert e.message
        return
    assert isinstance(cfg, ExperimentConfig) and cfg.train.epochs >= 1


# ---- URLs ----------------------------------------------------------------------------------


SCHEMES = st.sampled_from(["http", "https", "file", "gopher", "HTTP", "ftp"])


@FUZZ
@given(url=st.text(max_size=80) | st.builds("{}://{}/a.png".format, SCHEMES, st.text(max_size=30)))
def test_check_url_accepts_only_http_urls_with_a_host(url: str) -> None:
    try:
        parsed = check_url(url)
    except InvalidInputError:
        return
    assert isinstance(parsed, httpx.URL) and parsed.scheme in ("http", "https") and parsed.host


FORBIDDEN_NETS = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "::1/128", "fc00::/7",
    "fe80::/10", "ff00::/8",
)]  # fmt: skip


@FUZZ
@given(ip=st.ip_addresses())
def test_is_forbidden_ip_covers_every_non_public_address(ip: Any) -> None:
    forbidden = is_forbidden_ip(ip)
    if any(ip in net for net in FORBIDDEN_NETS if net.version == ip.version) or not ip.is_global:
        assert forbidden
    if ip.version == 4:  # the IPv4-mapped IPv6 form is judged like the IPv4 address
        assert is_forbidden_ip(ipaddress.IPv6Address(f"::ffff:{ip}")) == forbidden


# ---- images --------------------------------------------------------------------------------


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


@FUZZ
@given(data=st.binary(max_size=4096) | st.binary(max_size=64).map(lambda tail: PNG[:33] + tail))
def test_decode_image_of_random_bytes(data: bytes) -> None:
    try:
        img = decode_image(data, max_bytes=4000, max_pixels=100_000)
    except (ImageError, PayloadTooLargeError):
        return
    assert img.mode == "RGB" and img.width * img.height <= 100_000


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(0, 255)), max_size=6))
def test_decode_image_of_corrupted_png(flips: list[tuple[int, int]]) -> None:
    data = bytearray(PNG)
    for pos, value in flips:
        data[pos] = value
    try:
        img = decode_image(bytes(data))
    except ImageError:
        return
    assert img.mode == "RGB" and img.size == (16, 16)


@pytest.mark.parametrize("bad", [b"", b"\x89PNG\r\n\x1a\n", PNG[:40]])
def test_decode_image_examples(bad: bytes) -> None:
    with pytest.raises(ImageError):
        decode_image(bad)

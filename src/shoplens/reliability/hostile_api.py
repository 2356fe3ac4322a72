"""Hostile requests for the API, made by walking the service's OpenAPI document.

:class:`ApiCases` makes the cases for image uploads, image URLs, JSON bodies (shape,
types, numbers, strings, sizes), events, products, query and path parameters; the web
side (headers, multipart, methods, UI pages, random) is in :mod:`.hostile_web`.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from shoplens.reliability.hostile import HostileCase, Target
from shoplens.reliability.hostile_files import (
    Expect,
    ImagePayload,
    UrlCase,
    encode,
    sample_image,
)

#: POST routes that only read (no write key needed, safe to send valid bodies to).
READ_POSTS = frozenset({"/v1/search"})
#: Routes whose valid requests write, but harmlessly for the corpus (events only).
SAFE_WRITES = frozenset({"/v1/events"})
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "TRACE", "OPTIONS", "PROPFIND", "FOO")


# ---- the OpenAPI walk ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    path: str
    method: str
    params: tuple[dict[str, Any], ...]
    body: dict[str, Any] | None  # resolved JSON body schema
    multipart: dict[str, Any] | None

    @property
    def keyed(self) -> bool:
        return self.method != "GET" and self.path not in READ_POSTS

    @property
    def valid_bodies(self) -> bool:
        """Valid bodies may be sent (they only read, or write harmlessly)."""
        return self.path in READ_POSTS or self.path in SAFE_WRITES


def _resolve(spec: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    if isinstance(schema, dict) and "$ref" in schema and depth < 8:
        target: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        return _resolve(spec, target, depth + 1)
    return schema


def operations(spec: dict[str, Any]) -> list[_Op]:
    """Every operation of an OpenAPI document, JSON body schemas resolved."""
    ops = []
    for path, item in sorted(spec.get("paths", {}).items()):
        for method, op in sorted(item.items()):
            if method.upper() not in METHODS or not isinstance(op, dict):
                continue
            content = op.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            multipart = content.get("multipart/form-data", {}).get("schema")
            params = tuple(_resolve(spec, p) for p in op.get("parameters", []))
            ops.append(
                _Op(path, method.upper(), params, _resolve(spec, body), _resolve(spec, multipart))
            )
    return ops


def _types(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    schema = _resolve(spec, schema)
    if "type" in schema:
        t = schema["type"]
        return set(t) if isinstance(t, list) else {t}
    out: set[str] = set()
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= _types(spec, sub)
    return out


WRONG_TYPES: dict[str, list[Any]] = {
    "string": [{}, [], 12345, [["nested"]]],
    "integer": ["abc", 1.5, {}, [], "1 OR 1=1"],
    "number": ["abc", {}, [], "1,5"],
    "boolean": ["maybe", {}, [], 2],
    "array": ["x", {}, 5],
    "object": ["x", [], 5],
}
ODD_STRINGS = [
    "\u0000",
    "a\u0000b",
    "\ud800",
    "\udfff\ud800",
    "\u202eevil",
    "\u200b\u200c\u200d\ufeff",
    "e" + "\u0301" * 5000,
    "\U0001f4a9" * 100,
    "<script>alert(1)</script>",
    "' OR '1'='1' --",
    "{{7*7}}${7*7}",
    "${jndi:ldap://127.0.0.1/a}",
    "../../../../etc/passwd",
    "\r\nSet-Cookie: x=1",
    "   ",
    "",
]
ODD_NUMBERS = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "9" * 5000, "-0", "1e-400"]
PATH_VALUES = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2E%2E",
    "%2E",
    "%00",
    "a%00b",
    "%E2%80%AE",
    "%F0%9F%92%A9",
    "x" * 10_000,
    "%FF%FE",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "%27%20OR%20%271%27%3D%271",
    "CON",
    "%20",
    "a%2Fb",
    "~root",
    "%24%7Bjndi%3Aldap%3A%2F%2Fx%7D",
    "%25",
    "%",
]
INT_VALUES_BAD = ["-1", "0", "1000000000", "abc", "1.5", "9" * 5000, "NaN", "0x10", "1e3"]
INT_VALUES_ODD = ["", " 5", "+5", "05"]
STR_VALUES = ["x" * 10_000, "\x00", "\u202e", "../../etc/passwd", "' OR 1=1 --", "%", "a=b"]
BAD_AUTH = [
    "Bearer",
    "Bearer not-a-key",
    "Basic dXNlcjpwYXNz",
    "Bearer " + "A" * 8_000,
    "Bearer ../../etc/passwd",
    "bearer' OR '1'='1",
    "Token abc",
    "Bearer sl_0000000000000000.0000000000000000",
]


class ApiCases:
    """Builds the API cases into ``self.cases`` (one method per group)."""

    def __init__(self, spec: dict[str, Any], target: Target, rng: random.Random) -> None:
        self.spec, self.t, self.rng = spec, target, rng
        self.ops = operations(spec)
        self.cases: list[HostileCase] = []
        self.ids: Counter[str] = Counter()

    # helpers
    def add(self, group: str, name: str, method: str, path: str, expect: Expect, **kw: Any) -> None:
        self.ids[f"{group}/{name}"] += 1
        n = self.ids[f"{group}/{name}"]
        case_id = f"{group}/{name}" + (f"#{n}" if n > 1 else "")
        self.cases.append(HostileCase(case_id, group, method, path, expect, **kw))

    def auth(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        key = key or self.t.write_key
        return (("Authorization", f"Bearer {key}"),) if key else ()

    def fill(self, op: _Op, **override: str) -> str:
        path = op.path
        for p in op.params:
            if p.get("in") != "path":
                continue
            name = p["name"]
            value = override.get(name) or quote(self._path_default(name), safe="")
            path = path.replace("{" + name + "}", value)
        return path

    def _path_default(self, name: str) -> str:
        if "sku" in name:
            return self.t.sku
        if "customer" in name:
            return self.t.customer
        return {"alias": "champion", "name": "hostile-model"}.get(name, "x")

    def base_body(self, op: _Op) -> dict[str, Any]:
        """A valid body for the read routes and events; an invalid one elsewhere."""
        if op.path == "/v1/search":
            return {"text": self.t.text, "k": 3}
        if op.path == "/v1/events":
            return {"events": [self._event(0)]}
        if op.path == "/v1/products":
            return {"products": [self._product("H-base", image_base64="!!not base64!!")]}
        return {"__hostile__": True}

    def _event(self, i: int, **over: Any) -> dict[str, Any]:
        event = {
            "event_id": f"hostile-{i}",
            "customer_id": self.t.customer,
            "sku": self.t.sku,
            "type": "view",
            "timestamp": 1_767_225_600 + i,
        }
        return {**event, **over}

    def _product(self, sku: str, **over: Any) -> dict[str, Any]:
        return {"sku": sku, "title": "Hostile product", "category": "Hostile", **over}

    def json_case(
        self, group: str, name: str, op: _Op, body: bytes, expect: Expect, **kw: Any
    ) -> None:
        headers = (("Content-Type", "application/json"), *self.auth())
        unavailable = op.path == "/v1/generate"
        self.add(
            group,
            name,
            op.method,
            self.fill(op),
            expect,
            content=body,
            headers=headers,
            unavailable_ok=unavailable,
            **kw,
        )

    # groups
    def images(self, payloads: list[ImagePayload]) -> None:
        search = next((o for o in self.ops if o.path == "/v1/search" and o.multipart), None)
        ingest = any(o.path == "/v1/products" and o.method == "POST" for o in self.ops)
        generate = any(o.path == "/v1/generate" for o in self.ops)
        for i, p in enumerate(payloads):
            upload = (("image", (p.filename, p.data, p.content_type)),)
            if search is not None:
                self.add(
                    "images",
                    p.name,
                    "POST",
                    "/v1/search",
                    p.expect,
                    why=p.why,
                    files=upload,
                    data=(("k", "3"),),
                )
                if i % 4 == 0:
                    data = (("k", "3"), ("text", self.t.text))
                    # an empty file part is what browsers send for "no file": text only
                    with_text: Expect = "either" if not p.data else p.expect
                    self.add(
                        "images",
                        p.name + "+text",
                        "POST",
                        "/v1/search",
                        with_text,
                        why=p.why,
                        files=upload,
                        data=data,
                    )
            if self.t.ui:
                self.add(
                    "images-ui",
                    p.name,
                    "POST",
                    "/search",
                    p.expect,
                    why=p.why,
                    files=upload,
                    data=(("q", ""),),
                    ui=True,
                )
            b64 = base64.b64encode(p.data).decode()
            if ingest:
                product = self._product(f"HX-{i:03d}", image_base64=b64)
                body = json.dumps({"products": [product]}).encode()
                op = next(o for o in self.ops if o.path == "/v1/products" and o.method == "POST")
                self.json_case("images-ingest", p.name, op, body, p.expect, why=p.why)
            if generate and p.expect == "reject" and p.data:  # empty: no init image
                op = next(o for o in self.ops if o.path == "/v1/generate")
                body = json.dumps({"prompt": "a bag", "init_image": b64}).encode()
                self.json_case("images-generate", p.name, op, body, "reject")

    def urls(self, cases: list[UrlCase]) -> None:
        op = next((o for o in self.ops if o.path == "/v1/products" and o.method == "POST"), None)
        if op is None:
            return
        for c in cases:
            body = json.dumps({"products": [self._product(f"HU-{c.name}", image=c.url)]})
            self.json_case("urls", c.name, op, body.encode(), "reject")

    def json_bodies(self) -> None:
        for op in self.ops:
            if op.body is None:
                continue
            name = f"{op.method} {op.path}"
            base = self.base_body(op)
            props = {k: _resolve(self.spec, v) for k, v in op.body.get("properties", {}).items()}
            required = list(op.body.get("required", []))
            valid = op.valid_bodies

            def case(
                label: str, body: bytes, expect: Expect, op: _Op = op, name: str = name, **kw: Any
            ) -> None:
                self.json_case("json", f"{name}:{label}", op, body, expect, **kw)

            for label, raw in (
                ("array", b"[]"),
                ("string", b'"text"'),
                ("number", b"123"),
                ("null", b"null"),
                ("true", b"true"),
                ("empty", b""),
                ("truncated", b'{"a": '),
                ("single-quotes", b"{'text': 'x'}"),
                ("trailing-comma", b'{"text": "x",}'),
                ("comments", b'{"text": "x" /* c */}'),
                ("deep-array", b"[" * 100_000 + b"]" * 100_000),
                ("deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
                ("invalid-utf8", b'{"text": "\xff\xfe\xc0\xaf"}'),
                ("overlong-utf8", b'{"text": "\xc0\xae\xc0\xae/"}'),
                ("utf16-bom", json.dumps(base).encode("utf-16")),
                ("nul-bytes", b'{"text"\x00: "x"}'),
                ("big-body", b'{"text": "' + b"A" * 3_000_000 + b'"}'),
                ("huge-int-literal", b'{"k": ' + b"9" * 10_000 + b"}"),
            ):
                expect: Expect = "either" if label == "utf16-bom" and valid else "reject"
                case(label, raw, expect, transport_may_reject=label == "big-body")
            for prop in required:
                rest = {k: v for k, v in base.items() if k != prop}
                case(f"missing-{prop}", json.dumps(rest).encode(), "reject")
            for prop, schema in props.items():
                allowed = _types(self.spec, schema)
                for t in sorted(allowed):
                    for wrong in WRONG_TYPES.get(t, []):
                        if _json_type(wrong) in allowed or (
                            "number" in allowed and _json_type(wrong) == "integer"
                        ):
                            continue
                        body = json.dumps({**base, prop: wrong}).encode()
                        case(f"{prop}={json.dumps(wrong)[:20]}", body, "reject")
                if allowed & {"integer", "number"}:
                    bounded = any(k in schema for k in ("maximum", "minimum", "exclusiveMaximum"))
                    for lit in ODD_NUMBERS:
                        body = _with_raw(base, prop, lit)
                        odd: Expect = "reject" if bounded or not valid else "either"
                        if lit in ("-0", "1e-400") and valid:
                            odd = "either"
                        case(f"{prop}={lit[:12]}", body, odd)
                if "string" in allowed and valid:
                    limit = schema.get("maxLength")
                    for s in ODD_STRINGS:
                        body = json.dumps({**base, prop: s}).encode()
                        case(f"{prop}-odd-{ODD_STRINGS.index(s)}", body, "either")
                    if limit:
                        long = json.dumps({**base, prop: "x" * (int(limit) + 1)}).encode()
                        case(f"{prop}-over-maxLength", long, "reject")
                if "array" in allowed:
                    many = int(schema.get("maxItems", 100_000)) + 1
                    body = json.dumps({**base, prop: ["x"] * min(many, 20_001)}).encode()
                    case(
                        f"{prop}-huge-array",
                        body,
                        "reject" if "maxItems" in schema or not valid else "either",
                    )
            if valid and base:
                first = next(iter(base))
                dup = json.dumps(base)[:-1] + f", {json.dumps(first)}: {json.dumps(base[first])}}}"
                case("duplicate-keys", dup.encode(), "either")
                proto = json.dumps({**base, "__proto__": {"admin": True}}).encode()
                case("extra-key", proto, "either")

    def events(self) -> None:
        op = next((o for o in self.ops if o.path == "/v1/events" and o.method == "POST"), None)
        if op is None:
            return

        def raw_ts(event_id: str, literal: str) -> str:
            """An events body whose timestamp is a raw JSON literal."""
            ev = self._event(0, event_id=event_id, timestamp="__TS__")
            return json.dumps({"events": [ev]}).replace('"__TS__"', literal)

        bad: list[tuple[str, dict[str, Any] | str]] = [
            ("future", self._event(1, timestamp=4_102_444_800)),
            ("negative-ts", self._event(2, timestamp=-1)),
            ("huge-int-ts", raw_ts("h3", "9" * 400)),
            ("nan-ts", raw_ts("h4", "NaN")),
            ("inf-ts", raw_ts("h5", "Infinity")),
            ("year-0-ts", self._event(6, timestamp="0000-01-01T00:00:00")),
            ("year-1-tz", self._event(7, timestamp="0001-01-01T00:00:00+14:00")),
            ("year-9999-tz", self._event(8, timestamp="9999-12-31T23:59:59-14:00")),
            ("bad-iso", self._event(9, timestamp="2026-13-45T99:99:99")),
            ("unknown-sku", self._event(10, sku="../../etc/passwd")),
            ("unknown-type", self._event(11, type="<script>")),
            ("bool-ts", self._event(12, timestamp=True)),
            ("list-id", self._event(13, event_id=["a"])),
            ("long-id", self._event(14, event_id="x" * 200)),
            ("nul-customer", self._event(15, customer_id="a\u0000b")),
            ("lone-surrogate-id", self._event(18, event_id="\udc80x")),
            ("lone-surrogate-sku", self._event(19, sku="\ud800")),
            ("sim-prefix", self._event(16, customer_id="sim-123")),
            ("simulated-weird", self._event(17, simulated="perhaps")),
            ("event-not-object", "not an object"),
        ]
        for name, ev in bad:
            text = (
                ev if isinstance(ev, str) and ev.startswith("{") else json.dumps({"events": [ev]})
            )
            self.json_case("events", name, op, text.encode(), "reject")
        for name, ev in (
            ("lone-surrogate-customer", self._event(20, customer_id="\ud800")),
            ("rtl-customer", self._event(21, customer_id="\u202ec-1")),
            ("emoji-customer", self._event(22, customer_id="\U0001f4a9" * 30)),
            ("ms-timestamp", self._event(23, timestamp=1_767_225_600_000)),
            ("numeric-id", self._event(24, event_id=12345678901234567890)),
        ):
            body = json.dumps({"events": [ev]}).encode()
            self.json_case("events", name, op, body, "either", why="odd but well-formed")
        many = json.dumps({"events": [self._event(100 + i) for i in range(20_000)]}).encode()
        self.json_case("events", "20k-events", op, many, "reject")
        strict = json.dumps(
            {"events": [self._event(30), self._event(31, sku="nope")], "strict": True}
        )
        self.json_case("events", "strict-mixed", op, strict.encode(), "either")

    def products(self) -> None:
        op = next((o for o in self.ops if o.path == "/v1/products" and o.method == "POST"), None)
        if op is None:
            return
        png = base64.b64encode(encode(sample_image(50), "PNG")).decode()
        cases: list[tuple[str, Any]] = [
            ("slash-sku", self._product("a/../b", image_base64=png)),
            ("nul-sku", self._product("a\u0000b", image_base64=png)),
            ("long-sku", self._product("s" * 200, image_base64=png)),
            ("space-sku", self._product(" s ", image_base64=png)),
            ("both-images", self._product("HP-1", image_base64=png, image="http://127.0.0.1/")),
            ("no-image", self._product("HP-2")),
            ("bad-base64", self._product("HP-3", image_base64="%%%")),
            ("huge-title", self._product("HP-4", title="T" * 20_000, image_base64=png)),
            ("bad-attr-name", self._product("HP-5", image_base64=png, attributes={"<x>": 1})),
            ("nested-attr", self._product("HP-6", image_base64=png, attributes={"a": {"b": 1}})),
            ("extra-field", self._product("HP-7", image_base64=png, admin=True)),
            ("not-object", "just a string"),
            ("null-product", None),
        ]
        for name, product in cases:
            body = json.dumps({"products": [product]}).encode()
            self.json_case("products", name, op, body, "reject")
        dup = [self._product("HP-8", image_base64=png), self._product("HP-8", image_base64="!")]
        self.json_case(
            "products", "duplicate-sku", op, json.dumps({"products": dup}).encode(), "reject"
        )
        many = [self._product(f"HP-m{i}", image_base64="!") for i in range(5_000)]
        self.json_case(
            "products", "5000-products", op, json.dumps({"products": many}).encode(), "reject"
        )

    def queries(self) -> None:
        for op in self.ops:
            query = [p for p in op.params if p.get("in") == "query"]
            for p in query:
                name, types = p["name"], _types(self.spec, p.get("schema", {}))
                numeric = bool(types & {"integer", "number"})
                values: list[tuple[str, Expect]] = []
                if numeric:
                    values += [(v, "reject") for v in INT_VALUES_BAD]
                    values += [(v, "either") for v in INT_VALUES_ODD]
                else:
                    values += [(v, "either") for v in STR_VALUES]
                    if name == "attr":
                        values += [("no-equals", "reject"), ("=x", "reject")]
                for v, expect in values:
                    self.add(
                        "query",
                        f"{op.method} {op.path}?{name}={v[:16]}",
                        op.method,
                        self.fill(op),
                        expect,
                        params=((name, v),),
                        headers=self.auth(),
                        transport_may_reject=len(v) > 4000,
                        unavailable_ok=True,
                    )
                rep = tuple((name, "3") for _ in range(300))
                self.add(
                    "query",
                    f"{op.method} {op.path}?{name}x300",
                    op.method,
                    self.fill(op),
                    "either",
                    params=rep,
                    headers=self.auth(),
                )
            if op.method == "GET":
                junk = (("__proto__", "1"), ("debug", "true"), ("k", "2"), ("k", "3"))
                self.add(
                    "query",
                    f"{op.path}?junk",
                    op.method,
                    self.fill(op),
                    "either",
                    params=junk,
                    headers=self.auth(),
                )

    def paths(self) -> None:
        for op in self.ops:
            for p in op.params:
                if p.get("in") != "path":
                    continue
                name = p["name"]
                expect: Expect = "either" if "customer" in name else "reject"
                for v in PATH_VALUES:
                    path = self.fill(op, **{name: v})
                    self.add(
                        "path",
                        f"{op.method} {op.path}:{name}={v[:16]}",
                        op.method,
                        path,
                        expect,
                        headers=self.auth(),
                        content=self._body_for(op),
                        transport_may_reject=len(v) > 4000,
                    )

    def _body_for(self, op: _Op) -> bytes | None:
        return json.dumps(self.base_body(op)).encode() if op.body is not None else None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _with_raw(base: dict[str, Any], prop: str, literal: str) -> bytes:
    """``base`` as JSON with ``prop`` set to a raw literal (NaN, 1e400, 9999...)."""
    text = json.dumps({**base, prop: "__RAW__"})
    return text.replace('"__RAW__"', literal).encode()

"""Hostile requests at the HTTP edge: headers, multipart forms, methods, web UI pages and
seeded random requests; :func:`build` assembles the whole corpus."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from shoplens.reliability.hostile import HostileCase, Target
from shoplens.reliability.hostile_api import (
    BAD_AUTH,
    METHODS,
    ODD_STRINGS,
    PATH_VALUES,
    ApiCases,
)
from shoplens.reliability.hostile_files import (
    Expect,
    encode,
    image_payloads,
    sample_image,
    url_cases,
)


class CorpusBuilder(ApiCases):
    """:class:`ApiCases` plus the cases at the HTTP edge."""

    def header_cases(self) -> None:
        for op in self.ops:
            path, body = self.fill(op), self._body_for(op)
            ctype = (("Content-Type", "application/json"),) if body is not None else ()
            need: Expect = "reject" if op.keyed else "either"
            label = f"{op.method} {op.path}"
            self.add(
                "headers", f"{label}:no-key", op.method, path, need, headers=ctype, content=body
            )
            for i, auth in enumerate(BAD_AUTH):
                hdrs = (*ctype, ("Authorization", auth))
                self.add(
                    "headers",
                    f"{label}:bad-auth-{i}",
                    op.method,
                    path,
                    need,
                    headers=hdrs,
                    content=body,
                )
            hdrs = (*ctype, ("X-API-Key", "' OR 1=1 --"))
            self.add(
                "headers",
                f"{label}:bad-x-api-key",
                op.method,
                path,
                need,
                headers=hdrs,
                content=body,
            )
            if self.t.read_key and op.keyed:
                hdrs = (*ctype, *self.auth(self.t.read_key))
                self.add(
                    "headers",
                    f"{label}:read-key",
                    op.method,
                    path,
                    "reject",
                    headers=hdrs,
                    content=body,
                )
            if not op.valid_bodies and op.keyed:
                continue  # the rest would be valid requests to a writing route
            for name, extra in (
                ("huge-header", (("X-Junk", "j" * 20_000),)),
                ("many-headers", tuple((f"X-H{i}", "v") for i in range(300))),
                ("accept-xml", (("Accept", "application/xml"),)),
                ("accept-png", (("Accept", "image/png"),)),
                ("forwarded", (("X-Forwarded-For", "127.0.0.1, 10.0.0.1"),)),
                ("crlf-value", (("X-Note", "a\tb"),)),
            ):
                self.add(
                    "headers",
                    f"{label}:{name}",
                    op.method,
                    path,
                    "either",
                    headers=(*ctype, *self.auth(), *extra),
                    content=body,
                    transport_may_reject=name in ("huge-header", "many-headers"),
                )
            if body is not None:
                for name, ct, expect in (
                    ("text-plain", "text/plain", "reject"),
                    ("xml", "application/xml", "reject"),
                    ("form", "application/x-www-form-urlencoded", "reject"),
                    ("multipart-no-boundary", "multipart/form-data", "reject"),
                    ("json-utf16-charset", "application/json; charset=utf-16", "either"),
                    ("json-garbage-params", "application/json;;;boundary=\x7f", "either"),
                ):
                    hdrs = (("Content-Type", ct), *self.auth())
                    self.add(
                        "headers",
                        f"{label}:ctype-{name}",
                        op.method,
                        path,
                        expect,  # type: ignore[arg-type]
                        headers=hdrs,
                        content=body,
                    )
                self.add(
                    "headers",
                    f"{label}:no-content-type",
                    op.method,
                    path,
                    "either",
                    headers=self.auth(),
                    content=body,
                )

    def multipart(self) -> None:
        if not any(o.path == "/v1/search" and o.multipart for o in self.ops):
            return
        png = encode(sample_image(60), "PNG")
        targets = [("/v1/search", False)] + ([("/search", True)] if self.t.ui else [])

        def raw(boundary: bytes, parts: list[tuple[bytes, bytes]], close: bool = True) -> bytes:
            out = b""
            for head, data in parts:
                out += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n"
            return out + (b"--" + boundary + b"--\r\n" if close else b"")

        img_head = b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
        img_head += b"Content-Type: image/png"
        good = [(img_head, png)]
        for path, ui in targets:
            auth = self.auth()
            bodies: list[tuple[str, str, bytes, Expect]] = [
                ("no-boundary", "multipart/form-data", raw(b"B", good), "reject"),
                (
                    "wrong-boundary",
                    "multipart/form-data; boundary=OTHER",
                    raw(b"B", good),
                    "reject",
                ),
                # the body does use the (empty) boundary it declares
                ("empty-boundary", "multipart/form-data; boundary=", raw(b"", good), "either"),
                (
                    "long-boundary",
                    "multipart/form-data; boundary=" + "b" * 1000,
                    raw(b"b" * 1000, good),
                    "either",
                ),
                (
                    "unterminated",
                    "multipart/form-data; boundary=B",
                    raw(b"B", good, False),
                    "either",
                ),
                (
                    "no-final-crlf",
                    "multipart/form-data; boundary=B",
                    raw(b"B", good)[:-2],
                    "either",
                ),
                ("garbage", "multipart/form-data; boundary=B", b"\x00" * 1000, "reject"),
                ("json-body", "multipart/form-data; boundary=B", b'{"text": "x"}', "reject"),
                ("mixed", "multipart/mixed; boundary=B", raw(b"B", good), "reject"),
                (
                    "no-disposition",
                    "multipart/form-data; boundary=B",
                    raw(b"B", [(b"Content-Type: image/png", png)]),
                    "reject",
                ),
                (
                    "nameless",
                    "multipart/form-data; boundary=B",
                    raw(b"B", [(b"Content-Disposition: form-data", png)]),
                    "reject",
                ),
                ("two-files", "multipart/form-data; boundary=B", raw(b"B", good * 2), "reject"),
                (
                    "many-fields",
                    "multipart/form-data; boundary=B",
                    raw(
                        b"B",
                        good
                        + [
                            (b'Content-Disposition: form-data; name="f%d"' % i, b"v")
                            for i in range(200)
                        ],
                    ),
                    "reject",
                ),
                (
                    "image-as-text",
                    "multipart/form-data; boundary=B",
                    raw(b"B", [(b'Content-Disposition: form-data; name="image"', b"x")]),
                    "reject",
                ),
                (
                    "traversal-filename",
                    "multipart/form-data; boundary=B",
                    raw(b"B", [(img_head.replace(b"a.png", b"../../../etc/passwd"), png)]),
                    "accept",
                ),
                (
                    "nul-filename",
                    "multipart/form-data; boundary=B",
                    raw(b"B", [(img_head.replace(b"a.png", b"a\x00.png"), png)]),
                    "either",
                ),
                (
                    "huge-part-header",
                    "multipart/form-data; boundary=B",
                    raw(b"B", [(img_head + b"\r\nX-Junk: " + b"j" * 20_000, png)]),
                    "either",
                ),
                (
                    "base64-encoding",
                    "multipart/form-data; boundary=B",
                    raw(
                        b"B",
                        [
                            (
                                img_head + b"\r\nContent-Transfer-Encoding: base64",
                                base64.b64encode(png),
                            )
                        ],
                    ),
                    "either",
                ),
            ]
            for name, ct, body, expect in bodies:
                self.add(
                    "multipart-ui" if ui else "multipart",
                    name,
                    "POST",
                    path,
                    expect,
                    headers=(("Content-Type", ct), *auth),
                    content=body,
                    ui=ui,
                )
            if not ui:
                for name, extra, expect in (
                    ("k-text", (("k", "abc"),), "reject"),
                    ("k-negative", (("k", "-1"),), "reject"),
                    ("k-huge", (("k", "9" * 100),), "reject"),
                    ("text-too-long", (("text", "t" * 5_000),), "reject"),
                    ("weight-nan", (("text", "x"), ("text_weight", "nan")), "reject"),
                    ("weight-inf", (("text", "x"), ("image_weight", "inf")), "reject"),
                    ("compose-odd", (("text", "x"), ("compose", "maybe")), "reject"),
                    ("attr-no-equals", (("attr", "colour"),), "reject"),
                    ("unknown-category", (("category", "\u202eNope"),), "either"),
                ):
                    self.add(
                        "multipart",
                        name,
                        "POST",
                        path,
                        expect,  # type: ignore[arg-type]
                        files=(("image", ("a.png", png, "image/png")),),
                        data=extra,
                    )

    def methods(self) -> None:
        by_path: dict[str, set[str]] = {}
        for op in self.ops:
            by_path.setdefault(op.path, set()).add(op.method)
        for path, allowed in sorted(by_path.items()):
            op = next(o for o in self.ops if o.path == path)
            for m in (*METHODS, "HEAD"):
                if m in allowed or (m == "HEAD" and "GET" in allowed):
                    continue
                expect: Expect = "either" if m == "OPTIONS" else "reject"
                why = "a CORS preflight may be answered" if m == "OPTIONS" else ""
                self.add(
                    "methods", f"{m} {path}", m, self.fill(op), expect, why=why, headers=self.auth()
                )

    def ui_pages(self) -> None:
        if not self.t.ui:
            return
        for i, q in enumerate([*ODD_STRINGS, "x" * 3000]):
            if not _encodable(q):
                continue  # a lone surrogate cannot be sent in a URL
            self.add("ui", f"search-q-{i}", "GET", "/search", "either", params=(("q", q),), ui=True)
        for v in ("colour", "=x", "a=b"):
            expect: Expect = "either" if v == "a=b" else "reject"
            self.add(
                "ui",
                f"search-attr-{v}",
                "GET",
                "/search",
                expect,
                params=(("q", "x"), ("attr", v)),
                ui=True,
            )
        self.add(
            "ui",
            "search-category-long",
            "GET",
            "/search",
            "either",
            params=(("q", "x"), ("category", "c" * 5000)),
            ui=True,
        )
        for v in PATH_VALUES:
            self.add(
                "ui",
                f"product-{v[:16]}",
                "GET",
                f"/products/{v}",
                "reject",
                ui=True,
                transport_may_reject=len(v) > 4000,
            )
            self.add(
                "ui",
                f"customer-{v[:16]}",
                "GET",
                f"/customers/{v}",
                "either",
                ui=True,
                transport_may_reject=len(v) > 4000,
            )
        for v in ("x" * 200, "\u202e", "../../etc/passwd", " "):
            self.add(
                "ui",
                f"customers-id-{v[:8]}",
                "GET",
                "/customers",
                "either",
                params=(("id", v),),
                ui=True,
            )
        for path in (
            "/static/../../../../etc/passwd",
            "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/static/..%2f..%2fapp.py",
            "/static/ui.css%00.html",
            "/.env",
            "/.git/config",
            "/wp-login.php",
            "/admin",
            "/server-status",
            "/%00",
        ):
            self.add("ui", f"page-{path[:24]}", "GET", path, "reject", ui=True)
        for m in ("PUT", "DELETE", "PATCH"):
            self.add("ui", f"{m} /", m, "/", "reject", ui=True)
        self.add(
            "ui",
            "photo-form-not-multipart",
            "POST",
            "/search",
            "reject",
            ui=True,
            headers=(("Content-Type", "text/plain"),),
            content=b"q=x",
        )
        self.add(
            "ui", "photo-form-urlencoded", "POST", "/search", "reject", ui=True, data=(("q", "x"),)
        )

    def random_cases(self, n: int) -> None:
        rng = self.rng
        for i in range(n):
            op = rng.choice(self.ops)
            kind = rng.choice(("json", "bytes", "query"))
            headers: tuple[tuple[str, str], ...] = self.auth()
            if kind == "json" and op.body is not None:
                body = json.dumps(_random_json(rng, 4), allow_nan=True).encode()
                headers = (("Content-Type", "application/json"), *headers)
                expect: Expect = "either" if op.valid_bodies else "reject"
                if not op.valid_bodies and not isinstance(json.loads(body), dict):
                    expect = "reject"
                self.add(
                    "random",
                    f"{i}-json",
                    op.method,
                    self.fill(op),
                    expect,
                    headers=headers,
                    content=body,
                    unavailable_ok=True,
                )
            elif kind == "bytes" and op.method != "GET":
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
                ct = rng.choice(
                    (
                        "application/json",
                        "multipart/form-data; boundary=x",
                        "application/octet-stream",
                        "image/png",
                    )
                )
                self.add(
                    "random",
                    f"{i}-bytes",
                    op.method,
                    self.fill(op),
                    "reject",
                    headers=(("Content-Type", ct), *headers),
                    content=body,
                )
            else:
                params = tuple(
                    (_random_text(rng, 12), _random_text(rng, 40))
                    for _ in range(rng.randrange(1, 6))
                )
                self.add(
                    "random",
                    f"{i}-query",
                    op.method,
                    self.fill(op),
                    "either",
                    params=params,
                    headers=headers,
                    content=self._body_for(op),
                    unavailable_ok=True,
                )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _random_text(rng: random.Random, n: int) -> str:
    alphabet = "abc=&%/?#.\\ \u00e9\u202e\U0001f4a90123\x00\x7f"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(n + 1)))


def _random_json(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.choice((0, -1, 2**63, 10**30, 1.5, float("nan"), float("inf"), -0.0))
    if kind in (3, 4):
        return _random_text(rng, 20)
    if kind == 5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    keys = ("text", "sku", "k", "events", "products", "categories", "prompt", "n", "x")
    return {rng.choice(keys): _random_json(rng, depth - 1) for _ in range(rng.randrange(5))}


def build(
    spec: dict[str, Any],
    target: Target,
    *,
    seed: int = 0,
    random_cases: int = 200,
    max_url_cases: int | None = None,
) -> list[HostileCase]:
    """The hostile requests for the service whose OpenAPI document is ``spec``.

    ``max_url_cases`` sends a seeded sample of the image URLs through the ingest route
    (each costs a guarded fetch attempt); :func:`run_url_cases` tries all of them.
    """
    b = CorpusBuilder(spec, target, random.Random(seed))
    b.images(image_payloads(seed))
    if target.url_port is not None:
        urls = url_cases(target.url_port, target.redirect_base)
        if max_url_cases is not None and len(urls) > max_url_cases:
            urls = random.Random(seed).sample(urls, max_url_cases)
        b.urls(urls)
    b.json_bodies()
    b.events()
    b.products()
    b.queries()
    b.paths()
    b.header_cases()
    b.multipart()
    b.methods()
    b.ui_pages()
    b.random_cases(random_cases)
    return b.cases

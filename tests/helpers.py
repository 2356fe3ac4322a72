"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .conftest import make_product_image


def png_bytes(category: str = "Green triangle", seed: int = 201) -> bytes:
    """A generated product photo of ``category`` as PNG bytes."""
    buf = io.BytesIO()
    make_product_image(category, seed).save(buf, format="PNG")
    return buf.getvalue()


def assert_error(resp: Any, status: int, code: str | None = None) -> None:
    """``resp`` (an httpx.Response) is a JSON error ``{"error": {"code", "message"}}``."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code


SHOPLENS = str(Path(sys.executable).parent / "shoplens")


def auth(key: str) -> dict[str, str]:
    """The Authorization header carrying API key ``key``."""
    return {"Authorization": f"Bearer {key}"}


def make_client(catalog: str, **settings: Any) -> Any:
    """A TestClient of the service for ``catalog``, loaded at start-up, with ``settings``."""
    from fastapi.testclient import TestClient

    from shoplens.serve import ServiceSettings, create_app

    return TestClient(
        create_app(ServiceSettings(catalog=catalog, load_in_background=False, **settings))
    )


def run_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``shoplens`` CLI with ``SHOPLENS_HOME=home`` and no stdin."""
    env = {**os.environ, "SHOPLENS_HOME": str(home)}
    proc = subprocess.run(
        [SHOPLENS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(home: Path, *args: str) -> Iterator[str]:
    """``shoplens serve ARGS`` in a subprocess; yields its base URL once /readyz is 200."""
    port = free_port()
    env = {**os.environ, "SHOPLENS_HOME": str(home)}
    proc = subprocess.Popen(
        [SHOPLENS, "serve", *args, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.3)
        else:
            raise AssertionError("server did not become ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


FASHION_CATEGORIES = [
    "Ankle boot",
    "Bag",
    "Coat",
    "Dress",
    "Pullover",
    "Sandal",
    "Shirt",
    "Sneaker",
    "T-shirt/top",
    "Trouser",
]


def random_item_space(
    n_per_category: int = 20,
    categories: list[str] | None = None,
    dim: int = 16,
    text_dim: int | None = 8,
    seed: int = 0,
) -> Any:
    """A tiny ItemSpace: per category a random centre, items scattered around it."""
    from shoplens.personalize.types import ItemSpace

    names = sorted(categories or FASHION_CATEGORIES)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(names), dim))
    cats = np.repeat(np.arange(len(names)), n_per_category)
    image = centres[cats] + 0.7 * rng.normal(size=(len(cats), dim))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = None
    if text_dim:
        tc = rng.normal(size=(len(names), text_dim))
        text = tc[cats] + 0.3 * rng.normal(size=(len(cats), text_dim))
        text /= np.linalg.norm(text, axis=1, keepdims=True)
    n = len(cats)
    return ItemSpace(
        ids=np.arange(1, n + 1, dtype=np.int64),
        skus=[f"SKU-{i:04d}" for i in range(n)],
        categories=cats.astype(np.int64),
        category_names=names,
        image=image.astype(np.float32),
        text=None if text is None else text.astype(np.float32),
        encoder="random-test",
    )


OUTFITS = {0: 1, 1: 0, 2: 3, 3: 2}  # category code -> the category bought with it
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def sku(category: int, i: int) -> str:
    """The sku ``write_catalog`` gives product ``i`` of category code ``category``."""
    return f"SKU-{category}{i:02d}"


def outfit_events(n_customers: int, per_category: int, prefix: str = "c") -> list[dict[str, Any]]:
    """Events over a ``write_catalog`` catalogue: each customer views and clicks in a
    favourite category, then buys three outfits (an item of it with one of the category
    ``OUTFITS`` pairs it with: Red circle + Blue square, Green triangle + Yellow stripes)."""
    events: list[dict[str, Any]] = []
    for c in range(n_customers):
        fav, cid = c % 4, f"{prefix}{c}"
        t = T0 + c * 86_400
        for j in range(6):
            events.append(
                {
                    "event_id": f"{cid}-e{j}",
                    "customer_id": cid,
                    "sku": sku(fav, (c + j) % per_category),
                    "type": "view" if j % 3 else "click",
                    "timestamp": t + 60 * j,
                }
            )
        for n in range(3):
            for m, s in enumerate((sku(fav, n), sku(OUTFITS[fav], n))):
                events.append(
                    {
                        "event_id": f"{cid}-p{n}{m}",
                        "customer_id": cid,
                        "sku": s,
                        "type": "purchase",
                        "timestamp": t + 3600 * (n + 1) + 60 * m,
                    }
                )
    return events


def tiny_generator(folder: Path, steps: int = 4) -> Path:
    """A diffusion-test-tiny model trained ``steps`` steps on the catalogue's product
    images (categories of ``CATEGORIES``), conditioned through an untrained clip-test-tiny
    saved beside it; saved like a trained model. Returns the model folder."""
    import torch

    from shoplens.models.diffusion import to_model_pixels
    from shoplens.models.io import save_model
    from shoplens.registry import create_model

    from .conftest import CATEGORIES

    torch.manual_seed(0)
    names = list(CATEGORIES)
    save_model(create_model("clip-test-tiny", class_names=names), folder / "clip")
    model = create_model(
        "diffusion-test-tiny", class_names=names, cond_encoder=f"trained:{folder / 'clip'}"
    )
    gray = np.stack(
        [
            np.asarray(make_product_image(c, s).convert("L").resize((28, 28)))
            for c in names
            for s in range(4)
        ]
    )  # (16, 28, 28) uint8
    batch = {
        "image": to_model_pixels(torch.from_numpy(gray), model.cfg.image_size),
        "label": torch.arange(len(names)).repeat_interleave(4),
    }
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.training_step(batch)["loss"].backward()
        opt.step()
    return save_model(model.eval(), folder / "model")


EVENT_NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z: the clock of the event-store tests


def ev(event_id: str, customer: str = "c1", sku: str = "A1", **kw: Any) -> dict[str, Any]:
    """A raw event (a view 1000 s before :data:`EVENT_NOW` unless ``kw`` says otherwise)."""
    return {
        "event_id": event_id,
        "customer_id": customer,
        "sku": sku,
        "type": kw.pop("type", "view"),
        "timestamp": kw.pop("timestamp", EVENT_NOW - 1000),
        **kw,
    }

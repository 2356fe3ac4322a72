"""schemathesis against the OpenAPI schema of the real app (ASGI, in process).

A short, derandomized run: a few examples per operation (schema-valid and -invalid ones),
with a write key so the write routes are exercised past their key check. Checks: no 5xx
(except the documented 503 of /v1/generate when no diffusion model is installed), every
response conforms to its schema, and its content type is the documented one. The long run
is in benchmarks/bench_reliability.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from shoplens.reliability.hostile import UNAVAILABLE_CODES
from shoplens.serve import ServiceSettings, create_app

from ..conftest import write_catalog

CATALOG = "fuzz"
SETTINGS = {"load_in_background": False, "rate_limit_per_s": 0, "rate_limit_key_per_s": 0}


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document, built in a throwaway home (no state is read)."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"SHOPLENS_HOME": tmp}):
        app = create_app(ServiceSettings(catalog=CATALOG, **SETTINGS))
        app.state.keys.close()
        return app.openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except a documented 503 JSON error saying a model is not installed."""
    if response.status_code < 500:
        return None
    if response.status_code == 503:
        body = response.json()
        if body.get("error", {}).get("code") in UNAVAILABLE_CODES:
            return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


@pytest.fixture(scope="module")
def served(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """Catalogue ``fuzz`` (its own: fuzzing posts events), the app, and a write key."""
    from shoplens.catalog.ingest import ingest_manifest
    from shoplens.catalog.store import Catalog
    from shoplens.index.build import build_indexes

    ingest_manifest(write_catalog(tmp_path_factory.mktemp("fuzz-src"), 2), CATALOG)
    with Catalog.open(CATALOG) as cat:
        build_indexes(cat, "test-tiny", text_encoder="test-tiny-text")
    app = create_app(ServiceSettings(catalog=CATALOG, **SETTINGS))
    return app, str(app.state.keys.create("write", "schemathesis")[1])


@schema.parametrize()
@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_openapi_operations(case: Any, served: tuple[Any, str]) -> None:
    app, write_key = served
    case.call_and_validate(
        app=app,  # in process; schemathesis runs the app's lifespan
        timeout=120,  # the first model promote starts MLflow: seconds on a busy machine
        headers={"Authorization": f"Bearer {write_key}"},
        checks=[no_server_error, response_schema_conformance, content_type_conformance],
    )

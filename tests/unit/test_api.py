from __future__ import annotations

from pathlib import Path

import pytest

import shoplens
from shoplens.errors import InvalidInputError


def test_python_api_round_trip(home: Path, catalog_dir: Path) -> None:
    report = shoplens.ingest(catalog_dir, name="api")
    assert report.added == 24
    built = shoplens.build_index("api", "test-tiny", text_encoder="test-tiny-text")
    assert built.image["count"] == 24 and built.text is not None
    engine = shoplens.open_search("api")
    assert engine.search(text="red circle", k=1)[0].category == "Red circle"
    assert engine.similar("SKU-300", k=1)[0].category == "Yellow stripes"
    with pytest.raises(InvalidInputError):
        shoplens.ingest(catalog_dir)
    with pytest.raises(AttributeError):
        shoplens.no_such_thing  # noqa: B018

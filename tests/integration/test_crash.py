"""Crash consistency: SIGKILL at random points (the harness), at chosen points of an index
publish, acknowledgements of ``events import``, and checks that do catch broken stores."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoplens.catalog.store import Catalog, ProductRecord
from shoplens.index.store import publish_build, remove_stale_temps
from shoplens.personalize import events as events_mod
from shoplens.personalize.events import EventStore
from shoplens.reliability import CrashConfig, CrashHarness, run_crash_harness
from shoplens.reliability.crash import (
    CATALOG,
    CheckFailed,
    catalog_state,
    check_acknowledged,
    check_groups,
    check_indexes,
    leftovers,
)

from ..helpers import run_cli

TINY = CrashConfig(products=60, events=11_000, http_events=600, http_batch=100)


def test_random_sigkills_lose_no_acknowledged_write(tmp_path: Path) -> None:
    """Every job kind killed at seeded random points: stores open, acknowledged writes are
    there, no half-built index is served, and the re-run ends where an uninterrupted run
    does (the harness runs every check itself; here its verdicts are asserted)."""
    kills = {"ingest": 1, "index": 1, "events": 1, "http": 1}  # 55 in benchmarks/bench_crash.py
    report = run_crash_harness(tmp_path, kills, TINY, seed=19)  # kills at 51-78 %
    summary = report.summary()
    assert summary["failures"] == []
    assert summary["kills"] == sum(kills.values()) == summary["survived"]
    assert summary["reruns_completed"] == summary["kills"]
    for rec in report.records:
        assert 0 <= rec.delay_s <= rec.duration_s
        names = {"store_opens", "rerun", "final_state", "no_leftovers"}
        names |= {"index_served"} if rec.job == "index" else {"acknowledged", "all_or_nothing"}
        assert names <= set(rec.checks), rec.checks
    assert set(report.durations) == set(kills)
    json.dumps(report.to_dict())  # the benchmark writes it as JSON


# ---- checks catch what they are for ----------------------------------------------------
@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> CrashHarness:
    cfg = CrashConfig(products=20, events=30, http_events=10, http_batch=5)
    return CrashHarness(tmp_path_factory.mktemp("crash"), cfg, seed=1)


def test_events_check_catches_lost_partial_and_stray_events(harness: CrashHarness) -> None:
    before = harness.before["events"]
    groups = harness.src.http_batches  # 2 groups of 5 events
    full = harness.after["http"]
    check_groups(full, before, groups)
    check_acknowledged(full, groups, {0, 1})
    group0 = {r["event_id"] for r in groups[0]}
    first = {k: v for k, v in full.items() if k in before or k in group0}
    check_groups(first, before, groups)
    check_acknowledged(first, groups, {0})  # group 1 not acknowledged: may be missing
    with pytest.raises(CheckFailed, match="acknowledged group 1"):
        check_acknowledged(first, groups, {0, 1})
    changed_ack = {**full, groups[0][2]["event_id"]: ("c", "SKU-00001", "view", 1.0, False)}
    with pytest.raises(CheckFailed, match="acknowledged group 0"):
        check_acknowledged(changed_ack, groups, {0})
    second = {k: v for k, v in full.items() if k not in group0}
    with pytest.raises(CheckFailed, match="later group"):
        check_groups(second, before, groups)
    half = dict(full)
    del half[groups[1][0]["event_id"]]
    with pytest.raises(CheckFailed, match="group 1: 4 of 5 stored"):
        check_groups(half, before, groups)
    stray = {**full, "zzz": ("c", "s", "view", 1.0, False)}
    with pytest.raises(CheckFailed, match="should not be"):
        check_groups(stray, before, groups)
    changed = {**full, next(iter(before)): ("other", "SKU-00000", "view", 1.0, False)}
    with pytest.raises(CheckFailed, match="changed or vanished"):
        check_groups(changed, before, groups)


def test_catalogue_and_index_checks_catch_damage(harness: CrashHarness, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(harness.bases["events"], home, symlinks=True)
    assert len(catalog_state(home)) == 20
    served = check_indexes(home, fresh=True)
    assert {len(v) for v in served.values()} == {20}
    with Catalog(home / "catalogs" / CATALOG) as cat:
        image = cat.image_path(cat.get("SKU-00003").image_key)
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckFailed, match="SKU-00003: image bytes"):
        catalog_state(home)
    meta = home / "catalogs" / CATALOG / "indexes/test-tiny/current/meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "count": 19}))
    with pytest.raises(CheckFailed, match="meta count 19"):
        check_indexes(home, fresh=False)


# ---- publish_build killed at chosen points (the bug the harness found) ------------------
KILLER = """
import os, signal, sys
from pathlib import Path
from shoplens.index.store import publish_build

point = sys.argv[2]
real_replace = os.replace

def replace(src, dst):
    if point == "link" and Path(src).name.startswith(".current-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

def write(tmp):
    (tmp / "vectors.bin").write_bytes(b"x" * 4096)
    if point == "write":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"n": 2}

os.replace = replace
publish_build(Path(sys.argv[1]), write)
"""


def _write(n: int) -> Any:
    def write(tmp: Path) -> dict[str, Any]:
        (tmp / "vectors.bin").write_bytes(bytes([n]) * 4096)
        return {"n": n}

    return write


@pytest.mark.parametrize("point", ["write", "link"])
def test_killed_publish_keeps_old_build_and_next_publish_cleans_up(
    tmp_path: Path, point: str
) -> None:
    root = tmp_path / "index"
    publish_build(root, _write(1))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(root), point], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((root / "current" / "meta.json").read_text()) == {"n": 1}
    left = [*root.glob("builds/.tmp-*"), *root.glob(".current-*")]
    assert len(left) == 1  # what the kill left behind, which nothing used to remove
    publish_build(root, _write(3))
    assert json.loads((root / "current" / "meta.json").read_text()) == {"n": 3}
    assert not [*root.glob("builds/.tmp-*"), *root.glob(".current-*")]


def test_temps_of_live_builds_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "index"
    (root / "builds").mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        live_mine = root / "builds" / f".tmp-20260101-000000-{os.getpid()}-000001"
        live_child = root / "builds" / f".tmp-20260101-000000-{child.pid}-000002"
        gone = root / "builds" / f".tmp-20260101-000000-{int(dead.stdout)}-000003"
        link = root / f".current-20260101-000000-{int(dead.stdout)}-000004"
        for d in (live_mine, live_child, gone):
            d.mkdir()
        os.symlink("builds/nothing", link)
        assert sorted(remove_stale_temps(root)) == sorted([gone, link])
        assert live_mine.is_dir() and live_child.is_dir() and not os.path.lexists(link)
    finally:
        child.kill()
        child.wait()


IMAGE_KILLER = """
import os, signal, sys
from shoplens.catalog.store import Catalog

os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # die before the rename
Catalog.create("shop").put_image(b"png bytes", "ab" + "0" * 62, "png")
"""


def test_killed_image_write_is_cleaned_by_the_next_ingest(home: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", IMAGE_KILLER])
    assert child.wait() == -signal.SIGKILL
    folder = home / "catalogs" / "shop" / "images" / "ab"
    (left,) = folder.glob(".tmp-*")  # the killed write's temp file, named with its pid
    assert left.name.startswith(f".tmp-{child.pid}-") and left.read_bytes() == b"png bytes"
    live = folder / f".tmp-{os.getpid()}-abc"  # a write still running in this process
    live.write_bytes(b"")
    Catalog.create("shop").close()  # what an ingest opens the catalogue with
    assert not left.exists() and live.exists()


# ---- acknowledgements of events import -------------------------------------------------
@pytest.fixture
def shop(home: Path) -> Path:
    with Catalog.create("shop") as cat:
        cat.upsert(ProductRecord(sku=f"S{i}", title="t", category="c", image_key="k.png")
                   for i in range(3))  # fmt: skip
    return home


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"e{i}",
            "customer_id": "c",
            "sku": f"S{i % 4}",
            "type": "view",
            "timestamp": 1_700_000_000 + i,
        }
        for i in range(n)
    ]


def test_on_commit_acknowledges_only_durable_chunks(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_mod, "CHUNK", 4)
    seen: list[tuple[int, int]] = []
    with Catalog.open("shop") as cat, EventStore.open(cat) as store:

        def ack(n: int, report: Any) -> None:
            with contextlib.closing(sqlite3.connect(store.db_path)) as other:  # another reader
                stored = other.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            seen.append((n, stored))
            assert stored == report.accepted

        report = store.add(_events(10), on_commit=ack)
    assert [n for n, _ in seen] == [4, 8, 10]
    assert [s for _, s in seen] == [3, 6, 8]  # sku S3 is unknown: rejected, not stored
    assert report.accepted == 8 and report.rejected_count == 2


def test_events_import_prints_acknowledgements(shop: Path, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in _events(7)))
    proc = run_cli(shop, "events", "import", str(path), "--catalog", "shop", "--json")
    acks = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert acks == [{"committed": 7, "accepted": 6, "duplicates": 0, "rejected": 1}]
    assert json.loads(proc.stdout)["total_events"] == 6
    human = run_cli(shop, "events", "import", str(path), "--catalog", "shop")
    assert "committed 7 events (0 stored, 6 already there, 1 rejected)" in human.stderr


def test_leftovers_lists_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "catalogs" / CATALOG
    (root / "images" / "ab").mkdir(parents=True)
    (root / "images" / "ab" / ".tmp-x").write_bytes(b"")
    assert leftovers(tmp_path) == [f"catalogs/{CATALOG}/images/ab/.tmp-x"]
    assert leftovers(tmp_path / "none") == []

"""Crash-consistency harness: SIGKILL shoplens jobs at random points, then check the stores.

Job kinds: ``ingest`` (a manifest of generated PNGs over an older catalogue), ``index``
(``shoplens index build`` over a stale index), ``events`` (``shoplens events import``) and
``http`` (``POST /v1/events`` batches to a ``shoplens serve`` subprocess). Each trial copies
a prepared SHOPLENS_HOME, starts the job as a real subprocess (``python -m shoplens ...``),
kills it with SIGKILL after a seeded random delay drawn over the job's measured
uninterrupted duration, and checks:

- ``store_opens``: every SQLite file passes ``PRAGMA integrity_check`` and the catalogue and
  events stores open through their classes;
- ``acknowledged``: every acknowledged write is stored with the same content (images
  verified against their sha256 key);
- ``all_or_nothing``: each transaction is all there or not at all (an ingest, an events
  chunk of :data:`~shoplens.personalize.events.CHUNK`, an HTTP request);
- ``index_served``: every ``current`` index loads, its ids exist in the catalogue, its
  vector count matches its metadata and a :class:`SearchEngine` searches it;
- ``rerun`` / ``final_state`` / ``no_leftovers``: the same command run again exits 0 and
  leaves the state of an uninterrupted run, without temp files of the killed run.

Acknowledgements: ``ingest`` and ``index build`` acknowledge with their final ``--json``
report (an ingest is one transaction); ``events import --json`` prints
``{"committed": N, ...}`` on stderr after each commit (the first N rows of the file are
stored); an HTTP post is acknowledged by its 200 answer.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shoplens.catalog.store import Catalog

Job = Literal["ingest", "index", "events", "http"]
JOBS: tuple[Job, ...] = ("ingest", "index", "events", "http")
CATALOG = "crash-shop"  # unlike the names other tests serve
T0 = 1_700_000_000.0  # first event timestamp (2023-11-14), safely in the past


@dataclass(frozen=True)
class CrashConfig:
    """Sizes of the generated workload and how the jobs are run."""

    products: int = 800  # products of the full manifest; the older one has the first 70 %
    events: int = 80_000  # rows of the events file (1 in 97 has an unknown sku)
    http_events: int = 12_000  # events posted over HTTP
    http_batch: int = 200  # events per POST
    encoder: str = "test-tiny"
    text_encoder: str = "test-tiny-text"
    python: str = sys.executable
    timeout_s: float = 300.0  # per job run


@dataclass
class KillRecord:
    """One trial: the kill, what was acknowledged before it, and the checks."""

    job: str
    trial: int
    delay_s: float
    duration_s: float  # the uninterrupted run the delay was drawn over
    killed: bool  # False: the job finished before the kill came
    acknowledged: int  # products, events or index builds acknowledged before the kill
    ack: str  # the acknowledgement, in words
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings that fail no check
    job_s: float = 0.0  # how long the job ran: to its kill, or to its end
    rerun_s: float = 0.0

    @property
    def survived(self) -> bool:
        return self.killed and bool(self.checks) and all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "survived": self.survived}


@dataclass
class CrashReport:
    """Every trial of a harness run plus the reference durations."""

    config: CrashConfig
    durations: dict[str, float]
    records: list[KillRecord]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """Kills, kills survived, acknowledged writes checked and re-runs completed, per job."""

        def totals(recs: list[KillRecord]) -> dict[str, int]:
            kills = [r for r in recs if r.killed]
            return {
                "kills": len(kills),
                "survived": sum(r.survived for r in kills),
                "acknowledged_checked": sum(r.acknowledged for r in kills),
                "reruns_completed": sum(r.checks.get("rerun", False) for r in kills),
                "finished_before_kill": len(recs) - len(kills),
            }

        return {
            **totals(self.records),
            "seconds": round(self.seconds, 1),
            "jobs": {j: totals([r for r in self.records if r.job == j]) for j in self.durations},
            "failures": [f"{r.job}#{r.trial}: {f}" for r in self.records for f in r.failures],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": {k: v for k, v in asdict(self.config).items() if k != "python"},
            "durations_s": self.durations,
            "summary": self.summary(),
            "records": [r.to_dict() for r in self.records],
        }


class CheckFailed(Exception):
    """A crash-consistency check did not hold."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


class _Checks:
    def __init__(self) -> None:
        self.results: dict[str, bool] = {}
        self.failures: list[str] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one check and return its result; any exception is recorded as a failure."""
        try:
            out = fn()
        except Exception as e:  # a store that does not open is a finding too
            self.results[name] = False
            self.failures.append(f"{name}: {type(e).__name__}: {e}"[:500])
            return None
        self.results.setdefault(name, True)
        return out


# ---- workload ------------------------------------------------------------------------
@dataclass
class _Sources:
    manifest_old: Path
    manifest_new: Path
    events_file: Path
    events_head: Path  # the first tenth of the events file, imported in the base
    rows: list[dict[str, Any]]  # rows of events_file
    http_batches: list[list[dict[str, Any]]]


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)  # (H, W, 3)


def _event(n: int, prefix: str, rng: random.Random, products: int) -> dict[str, Any]:
    from shoplens.personalize.types import EVENT_TYPES

    sku = f"NOPE-{n}" if n % 97 == 13 else f"SKU-{rng.randrange(products):05d}"
    return {
        "event_id": f"{prefix}{n:07d}",
        "customer_id": f"c{n % 499}",
        "sku": sku,
        "type": EVENT_TYPES[n % len(EVENT_TYPES)],
        "timestamp": T0 + n,
    }


def write_sources(folder: Path, cfg: CrashConfig, seed: int = 0) -> _Sources:
    """Manifests (older: 70 % of the products; newer: all, every 5th older one changed with
    a new title and image), an events JSONL file and the HTTP event batches."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    n_old = int(cfg.products * 0.7)
    old, new = [], []
    for i in range(cfg.products):
        row = {"sku": f"SKU-{i:05d}", "title": f"product {i}", "category": f"cat{i % 5}",
               "image": f"img/{i:05d}-a.png", "color": ("red", "blue")[i % 2]}  # fmt: skip
        _png(folder / row["image"], seed * 1_000_003 + i)
        if i < n_old:
            old.append(row)
        if i < n_old and i % 5 == 0:
            row = {**row, "title": f"product {i} (new)", "image": f"img/{i:05d}-b.png"}
            _png(folder / row["image"], seed * 1_000_003 + 500_000 + i)
        new.append(row)
    manifests = []
    for name, part in (("old.csv", old), ("new.csv", new)):
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(part[0]))
            w.writeheader()
            w.writerows(part)
        manifests.append(folder / name)
    rng = random.Random(seed)
    rows = [_event(n, "e", rng, cfg.products) for n in range(cfg.events)]
    paths = [folder / "events.jsonl", folder / "events-head.jsonl"]
    for path, lines in zip(paths, (rows, rows[: cfg.events // 10]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    posted = [_event(n, "h", rng, cfg.products) for n in range(cfg.http_events)]
    batches = [posted[i : i + cfg.http_batch] for i in range(0, len(posted), cfg.http_batch)]
    return _Sources(manifests[0], manifests[1], paths[0], paths[1], rows, batches)


@contextlib.contextmanager
def _home(path: Path) -> Iterator[None]:
    """SHOPLENS_HOME=path for in-process library calls (not thread-safe)."""
    old = os.environ.get("SHOPLENS_HOME")
    os.environ["SHOPLENS_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SHOPLENS_HOME", None)
        else:
            os.environ["SHOPLENS_HOME"] = old


# ---- state and checks ----------------------------------------------------------------
def _root(home: Path) -> Path:
    return home / "catalogs" / CATALOG


def check_integrity(home: Path) -> None:
    """Every SQLite store under ``home`` opens and passes ``PRAGMA integrity_check``."""
    for path in [home / "keys.sqlite", *sorted(_root(home).glob("*.sqlite"))]:
        if path.is_file():
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
            _require(rows == [("ok",)], f"{path.name}: integrity_check says {rows[:3]}")


def catalog_state(home: Path) -> dict[str, tuple[Any, ...]]:
    """sku -> (title, category, attributes, image_key, phash); each image checked by hash."""
    _require((_root(home) / "catalog.sqlite").is_file(), "no catalog.sqlite")
    state: dict[str, tuple[Any, ...]] = {}
    with Catalog(_root(home)) as cat:
        for p in cat.iter_products():
            path = cat.image_path(p.image_key)
            _require(path.is_file(), f"{p.sku}: image {p.image_key} is missing")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            _require(p.image_key.startswith(digest), f"{p.sku}: image bytes do not match key")
            attrs = json.dumps(p.attributes, sort_keys=True)
            state[p.sku] = (p.title, p.category, attrs, p.image_key, p.phash)
    return state


def events_state(home: Path) -> dict[str, tuple[Any, ...]]:
    """event_id -> (customer_id, sku, type, timestamp, simulated) of the stored events."""
    from shoplens.personalize.events import EventStore

    with Catalog(_root(home)) as cat, EventStore(cat) as store:
        return {
            e.event_id: (e.customer_id, e.sku, e.type, e.timestamp, e.simulated)
            for e in store.iter_events()
        }


def _expected(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["customer_id"], row["sku"], row["type"], float(row["timestamp"]), False)


def _valid(row: Mapping[str, Any]) -> bool:
    return not str(row["sku"]).startswith("NOPE-")


def leftovers(home: Path) -> list[str]:
    """Temp files of interrupted writes: index builds, ``current`` links, images."""
    root = _root(home)
    found = [*root.glob("indexes/*/builds/.tmp-*"), *root.glob("indexes/*/.current-*")]
    found += root.glob("images/*/.tmp-*")
    return sorted(str(p.relative_to(home)) for p in found)


def check_indexes(home: Path, *, fresh: bool) -> dict[str, dict[str, np.ndarray]]:
    """Every served index is complete and searchable; returns name -> sku -> vector.

    ``fresh``: the indexes must have been built from the catalogue as it is now.
    """
    from shoplens.index.store import load_build
    from shoplens.search.engine import SearchEngine

    out: dict[str, dict[str, np.ndarray]] = {}
    with Catalog(_root(home)) as cat:
        products = {p.id: p for p in cat.iter_products()}
        for folder in sorted((cat.root / "indexes").glob("*")):
            current = folder / "current"
            _require(current.exists() or not current.is_symlink(), f"{folder.name}: dangling")
            if not current.exists():
                continue
            name = json.loads((current / "meta.json").read_text())["name"]
            b = load_build(cat, name)
            n = int(b.meta["count"])
            sizes = (len(b.ids), len(b.keys), b.embeddings.shape[0], b.index.ntotal)
            _require(sizes == (n,) * 4, f"{name}: meta count {n}, ids/keys/vectors/index {sizes}")
            _require(b.embeddings.shape[1] == b.meta["dim"], f"{name}: wrong dim")
            missing = [int(i) for i in b.ids if int(i) not in products]
            _require(not missing, f"{name}: ids {missing[:3]} are not in the catalogue")
            is_fresh = b.meta["catalog_version"] == cat.version()
            _require(is_fresh or not fresh, f"{name}: acknowledged build is not current")
            if is_fresh and b.meta["kind"] == "image":
                keys = [products[int(i)].image_key for i in b.ids]
                _require(keys == b.keys, f"{name}: fresh build's image keys differ")
            if n:
                scores, _ = b.index.search(np.asarray(b.embeddings[:8]), 1)  # (8, 1)
                _require(bool(np.all(scores[:, 0] > 0.999)), f"{name}: self-search fails")
            out[name] = {
                products[int(i)].sku: np.asarray(v)
                for i, v in zip(b.ids, b.embeddings, strict=True)
            }
        if out:
            engine = SearchEngine(cat)
            sku = products[int(engine.image_build.ids[0])].sku
            _require(bool(engine.search(sku=sku, k=3)), "search by sku found nothing")
            if engine.text_build is not None:
                _require(bool(engine.search(text="product", k=3)), "text search found nothing")
    return out


# ---- running jobs ----------------------------------------------------------------------
@dataclass
class _Run:
    rc: int | None
    stdout: str
    stderr: list[str]  # complete lines only
    seconds: float
    killed: bool


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "SHOPLENS_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def run_job(cmd: list[str], home: Path, kill_after: float | None, timeout: float) -> _Run:
    """Run ``cmd``; with ``kill_after``, SIGKILL it after that many seconds if still running."""
    proc = subprocess.Popen(
        cmd, env=_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    out: list[str] = []
    err: list[str] = []  # read line by line: the acknowledgements of a killed run count
    readers = [
        threading.Thread(target=lambda: out.append(stdout.read())),
        threading.Thread(target=lambda: err.extend(iter(stderr.readline, ""))),
    ]
    for t in readers:
        t.start()
    start = time.monotonic()
    killed = False
    try:
        proc.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        killed = kill_after is not None
        proc.wait()
    finally:  # the harness was interrupted: leave no job running
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.monotonic() - start
    for t in readers:
        t.join()
    lines = [line for line in err if line.endswith("\n")]
    return _Run(proc.returncode, "".join(out), lines, seconds, killed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(cfg: CrashConfig, home: Path, tries: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``shoplens serve`` on ``home`` and wait for /readyz; returns (process, base URL).

    A free port can be taken by another process before the server binds it: then the
    server exits and a new port is tried. Rate limits are off (429s are not the subject).
    """
    import httpx

    env = {**_env(home), "SHOPLENS_RATE_LIMIT_PER_S": "0", "SHOPLENS_RATE_LIMIT_KEY_PER_S": "0"}
    for _ in range(tries):
        base = f"http://127.0.0.1:{_free_port()}"
        with (home / "serve.log").open("ab") as log:
            proc = subprocess.Popen(
                [cfg.python, "-m", "shoplens", "serve", "--catalog", CATALOG, "--port",
                 base.rsplit(":", 1)[1]],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + cfg.timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, ValueError):
                r = httpx.get(f"{base}/readyz", timeout=10)
                if r.status_code == 200 and r.json().get("catalog") == CATALOG:
                    time.sleep(0.2)  # a server of ours that lost the port exits at bind
                    if proc.poll() is None:
                        return proc, base
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise CheckFailed(f"the server did not become ready in {cfg.timeout_s:.0f}s")
    raise CheckFailed(f"the server exited before it was ready, {tries} times (see serve.log)")


def post_events(
    cfg: CrashConfig, home: Path, key: str, batches: list[list[dict[str, Any]]],
    kill_after: float | None,
) -> tuple[list[tuple[int, Any]], float, bool]:  # fmt: skip
    """Serve ``home`` and post ``batches`` in order; SIGKILL the server after ``kill_after`` s.

    Returns ((status, JSON body) of every POST answered, posting seconds, killed).
    """
    import httpx

    proc, base = _serve(cfg, home)
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        os.kill(proc.pid, signal.SIGKILL)

    answers: list[tuple[int, Any]] = []
    timer = threading.Timer(kill_after or 0.0, kill)
    start = time.monotonic()
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as client:
            if kill_after is not None:
                timer.start()
            for batch in batches:
                try:
                    r = client.post("/v1/events", json={"events": batch})
                except httpx.TransportError:
                    break
                try:
                    answers.append((r.status_code, r.json()))
                except ValueError:
                    answers.append((r.status_code, r.text[:200]))
        seconds = time.monotonic() - start
    finally:
        timer.cancel()
        if not fired.is_set() and proc.poll() is None:
            proc.terminate()  # graceful stop when no kill came
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return answers, seconds, fired.is_set()


def _replayed(status: int, body: Any, batch: list[dict[str, Any]]) -> bool:
    """A 422 "no event stored" for a POST whose valid events were all stored already."""
    report = body.get("report", {}) if isinstance(body, dict) else {}
    valid = sum(_valid(r) for r in batch)
    return status == 422 and report.get("accepted") == 0 and report.get("duplicates") == valid


# ---- the harness -----------------------------------------------------------------------
State = dict[str, tuple[Any, ...]]


def check_groups(state: State, before: State, groups: list[list[dict[str, Any]]]) -> None:
    """Each group of events (a chunk of the file, an HTTP request) is stored whole or not at
    all, in order (no group without the ones before it), with its content; nothing else is
    stored and nothing stored before the job changed."""
    changed = [i for i in before if state.get(i) != before[i]]
    _require(not changed, f"events stored before the job changed or vanished: {changed[:3]}")
    expected = {r["event_id"]: _expected(r) for g in groups for r in g if _valid(r)}
    stray = [i for i in state if i not in before and i not in expected]
    _require(not stray, f"events stored that should not be: {stray[:3]}")
    flags = []
    for n, group in enumerate(groups):
        new = [r["event_id"] for r in group if _valid(r) and r["event_id"] not in before]
        there = [i for i in new if i in state]
        _require(len(there) in (0, len(new)), f"group {n}: {len(there)} of {len(new)} stored")
        wrong = [i for i in there if state[i] != expected[i]]
        _require(not wrong, f"group {n}: stored with other content: {wrong[:3]}")
        if new:
            flags.append(bool(there))
    _require(flags == sorted(flags, reverse=True), "a later group without an earlier one")


def check_acknowledged(state: State, groups: list[list[dict[str, Any]]], acked: set[int]) -> None:
    """Every valid event of an acknowledged group is stored with the same content."""
    for n in sorted(acked):
        lost = [
            r["event_id"]
            for r in groups[n]
            if _valid(r) and state.get(r["event_id"]) != _expected(r)
        ]
        _require(not lost, f"acknowledged group {n}: events {lost[:3]} missing or changed")


class CrashHarness:
    """Workload, base homes and reference runs under ``workdir``; :meth:`trial` kills a job.

    Base homes: ``ingest`` holds the older catalogue; ``index`` the newer catalogue with an
    index built before it changed; ``events`` and ``http`` add a fresh index, a write key and
    the first tenth of the events file.
    """

    def __init__(self, workdir: Path, config: CrashConfig | None = None, *, seed: int = 0) -> None:
        self.dir = Path(workdir)
        self.cfg = config or CrashConfig()
        self.src = write_sources(self.dir / "src", self.cfg, seed)
        self.chunks = self._chunks()
        self.bases: dict[str, Path] = {}
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.durations: dict[str, float] = {}
        self.key = ""
        self._prepare()

    def _chunks(self) -> list[list[dict[str, Any]]]:
        from shoplens.personalize.events import CHUNK

        rows = self.src.rows
        return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]

    def command(self, job: str) -> list[str]:
        """The command line of ``job`` (not ``http``, which serves and posts)."""
        base = [self.cfg.python, "-m", "shoplens"]
        if job == "ingest":
            return [*base, "ingest", str(self.src.manifest_new), "--name", CATALOG, "--json"]
        if job == "index":
            return [*base, "index", "build", "--catalog", CATALOG, "--encoder", self.cfg.encoder,
                    "--text-encoder", self.cfg.text_encoder, "--json"]  # fmt: skip
        events = str(self.src.events_file)
        return [*base, "events", "import", events, "--catalog", CATALOG, "--json"]

    def _build(self, home: Path) -> None:
        from shoplens.index.build import build_indexes

        with Catalog(_root(home)) as cat:
            build_indexes(cat, self.cfg.encoder, text_encoder=self.cfg.text_encoder)

    def _prepare(self) -> None:
        from shoplens.catalog.ingest import ingest_manifest
        from shoplens.personalize.events import EventStore, import_events
        from shoplens.serve.keys import KeyStore

        shutil.rmtree(self.dir / "bases", ignore_errors=True)
        homes = {j: self.dir / "bases" / j for j in ("ingest", "index", "events")}
        with _home(homes["ingest"]):
            ingest_manifest(self.src.manifest_old, CATALOG)
        shutil.copytree(homes["ingest"], homes["index"], symlinks=True)
        self._build(homes["index"])
        with _home(homes["index"]):
            ingest_manifest(self.src.manifest_new, CATALOG)
        shutil.copytree(homes["index"], homes["events"], symlinks=True)
        self._build(homes["events"])
        keys = KeyStore(homes["events"] / "keys.sqlite")
        try:
            self.key = keys.create("write", "crash harness")[1]
        finally:
            keys.close()
        with Catalog(_root(homes["events"])) as cat, EventStore(cat) as store:
            import_events(store, self.src.events_head)
        self.bases = {**homes, "http": homes["events"]}
        self.before = {"ingest": catalog_state(homes["ingest"])}
        self.before["events"] = self.before["http"] = events_state(homes["events"])
        posted = [r for b in self.src.http_batches for r in b]
        for job, rows in (("events", self.src.rows), ("http", posted)):
            self.after[job] = {
                **self.before[job],
                **{r["event_id"]: _expected(r) for r in rows if _valid(r)},
            }

    def reference(self, job: str) -> float:
        """Run ``job`` uninterrupted on a copy of its base; keep its state and duration."""
        home = self.dir / "ref" / job
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(self.bases[job], home, symlinks=True)
        if job == "http":
            answers, seconds, _ = post_events(self.cfg, home, self.key, self.src.http_batches, None)
            ok = [a for a in answers if a[0] == 200]
            _require(len(ok) == len(self.src.http_batches), f"http answers: {answers[:3]}")
        else:
            run = run_job(self.command(job), home, None, self.cfg.timeout_s)
            _require(run.rc == 0, f"{job} failed uninterrupted: {''.join(run.stderr[-3:])}")
            seconds = run.seconds
        if job == "ingest":
            self.after[job] = catalog_state(home)
        elif job == "index":
            self.after[job] = check_indexes(home, fresh=True)
        else:
            _require(events_state(home) == self.after[job], f"{job}: reference run lost events")
        self.durations[job] = round(seconds, 3)
        return seconds

    def trial(self, job: str, n: int, delay: float, duration: float | None = None) -> KillRecord:
        """Copy the base, start ``job``, SIGKILL it after ``delay`` s, check, re-run, check.

        ``duration``: the uninterrupted run ``delay`` was drawn over (default: the reference).
        """
        home = self.dir / "trials" / f"{job}-{n:03d}"
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(self.bases[job], home, symlinks=True)
        checks = _Checks()
        batches = self.src.http_batches
        if job == "http":
            answers, seconds, killed = post_events(self.cfg, home, self.key, batches, delay)
            odd = [f"POST {i}: {a}"[:300] for i, a in enumerate(answers) if a[0] != 200]
            checks.run("answers", lambda: _require(not odd, "; ".join(odd[:2])))
            groups = {i for i, a in enumerate(answers) if a[0] == 200}
            count = sum(_valid(r) for i in groups for r in batches[i])
            text = f"{len(groups)} of {len(batches)} POSTs answered 200"
        else:
            run = run_job(self.command(job), home, delay, self.cfg.timeout_s)
            killed, seconds = run.killed, run.seconds
            groups, count, text = self._acks(job, run)
        duration = self.durations[job] if duration is None else duration
        rec = KillRecord(job, n, round(delay, 3), round(duration, 3), killed, count, text)
        rec.job_s = round(seconds, 3)
        checks.run("store_opens", lambda: check_integrity(home))
        self._after_kill(job, home, groups, checks)
        if left := leftovers(home):
            rec.notes.append(f"the killed run left {len(left)} temp file(s): {left[:2]}")
        start = time.monotonic()
        if job == "http":
            answers, _, _ = post_events(self.cfg, home, self.key, batches, None)
            done = [a[0] == 200 or _replayed(*a, b) for a, b in zip(answers, batches, strict=False)]
            if replays := sum(a[0] == 422 for a in answers):
                rec.notes.append(f"rerun: {replays} POST(s) of stored events answered 422")
            ok = len(done) == len(batches) and all(done)
            checks.run("rerun", lambda: _require(ok, f"{sum(done)} of {len(batches)} settled"))
        else:
            r = run_job(self.command(job), home, None, self.cfg.timeout_s)
            checks.run("rerun", lambda: _require(r.rc == 0, f"exit {r.rc}: {r.stderr[-2:]}"))
        rec.rerun_s = round(time.monotonic() - start, 3)
        checks.run("store_opens", lambda: check_integrity(home))
        checks.run("final_state", lambda: self._final(job, home))
        checks.run("no_leftovers", lambda: _require(not leftovers(home), str(leftovers(home))))
        rec.checks, rec.failures = checks.results, checks.failures
        if rec.survived or not killed:
            shutil.rmtree(home, ignore_errors=True)  # failing homes are kept to inspect
        return rec

    def _acks(self, job: str, run: _Run) -> tuple[set[int], int, str]:
        """(acknowledged groups, acknowledged writes, in words) from a killed run's output."""
        if job == "events":
            committed = 0
            for line in run.stderr:
                with contextlib.suppress(ValueError, AttributeError, TypeError):  # other lines
                    committed = max(committed, int(json.loads(line).get("committed", 0)))
            from shoplens.personalize.events import CHUNK

            done = {
                i
                for i in range(len(self.chunks))
                if min((i + 1) * CHUNK, len(self.src.rows)) <= committed
            }
            count = sum(_valid(r) for r in self.src.rows[:committed])
            return done, count, f"first {committed} of {len(self.src.rows)} rows committed"
        try:
            report = json.loads(run.stdout)
        except ValueError:
            return set(), 0, "no report"
        if job == "ingest":
            return {0}, self.cfg.products, f"report: {report['total']} products"
        return {0}, 2, f"report: image index of {report['image']['count']} vectors + text index"

    def _after_kill(self, job: str, home: Path, groups: set[int], checks: _Checks) -> None:
        if job == "ingest":
            state = checks.run("store_opens", lambda: catalog_state(home))
            if state is not None:
                old, new = self.before[job], self.after[job]
                checks.run(
                    "all_or_nothing", lambda: _require(state in (old, new), "half an ingest")
                )
                checks.run("acknowledged", lambda: _require(not groups or state == new, "lost"))
        elif job == "index":
            checks.run("store_opens", lambda: catalog_state(home))
            checks.run("index_served", lambda: check_indexes(home, fresh=bool(groups)))
        else:
            state = checks.run("store_opens", lambda: events_state(home))
            if state is not None:
                parts = self.chunks if job == "events" else self.src.http_batches
                checks.run("all_or_nothing", partial(check_groups, state, self.before[job], parts))
                checks.run("acknowledged", partial(check_acknowledged, state, parts, groups))

    def _final(self, job: str, home: Path) -> None:
        if job == "ingest":
            _require(catalog_state(home) == self.after[job], "catalogue differs from reference")
        elif job == "index":
            got, ref = check_indexes(home, fresh=True), self.after[job]
            _require(got.keys() == ref.keys(), f"indexes {sorted(got)} != {sorted(ref)}")
            for name in ref:
                _require(got[name].keys() == ref[name].keys(), f"{name}: other products")
                far = [
                    s for s in ref[name] if not np.allclose(got[name][s], ref[name][s], atol=1e-5)
                ]
                _require(not far, f"{name}: vectors differ from reference for {far[:3]}")
        else:
            state = events_state(home)
            _require(
                state == self.after[job], f"{len(state)} events, expected {len(self.after[job])}"
            )


def run_crash_harness(
    workdir: Path, kills: Mapping[str, int], config: CrashConfig | None = None, *,
    seed: int = 0, log: Callable[[str], None] | None = None,
) -> CrashReport:  # fmt: skip
    """Prepare the workload, time each job uninterrupted, then kill each job ``kills[job]``
    times at seeded random delays in [0, duration).

    ``duration`` is the job's last uninterrupted run: the reference run, or a trial that
    finished before its kill came (load from other work makes durations drift). Such a
    trial is recorded (``killed=False``) and retried with a new delay, up to
    ``2 * kills + 3`` tries; so is a trial the harness itself could not run (its error is
    in ``failures``)."""
    say = log or (lambda _m: None)
    started = time.monotonic()
    h = CrashHarness(workdir, config, seed=seed)
    rng = random.Random(seed)
    records: list[KillRecord] = []
    for job in (j for j in JOBS if kills.get(j)):
        duration = h.reference(job)
        say(f"{job}: uninterrupted run {duration:.2f}s")
        done = tries = 0
        while done < kills[job] and tries < 2 * kills[job] + 3:
            delay = rng.uniform(0.0, duration)
            try:
                rec = h.trial(job, tries, delay, duration)
            except Exception as e:  # the harness itself failed (e.g. no server start): retry
                rec = KillRecord(job, tries, delay, duration, False, 0, "none", {"harness": False})
                rec.failures.append(f"harness: {type(e).__name__}: {e}"[:500])
            records.append(rec)
            tries += 1
            done += rec.killed
            verdict = "survived" if rec.survived else "; ".join(rec.failures) or "not killed"
            say(f"{job} #{rec.trial}: kill at {rec.delay_s:.2f}s, acked {rec.ack}: {verdict}")
            if not rec.killed and rec.job_s > 0:
                duration = rec.job_s  # it ran uninterrupted: the newest measurement
    return CrashReport(h.cfg, h.durations, records, time.monotonic() - started)

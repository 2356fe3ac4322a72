"""Multi-process serving: ``shoplens serve --workers N``, throughput and latency, N=1 vs 2.

Starts ``shoplens serve --catalog CATALOG --workers N`` for every N (default 1 and 2; 1
is the single-process server and the baseline) as subprocesses on a catalogue (default:
the demo catalogue ``fashion-mnist`` in ``$SHOPLENS_HOME``, only read), each worker with
one torch and one FAISS thread, and drives them over loopback with the load generator of
``bench_http.py`` (``httpx.AsyncClient`` with C connections, each sending one request at
a time). For image search, text search and the product page (similar products) at
concurrency 8 and 32, every round runs each service once, the order alternating between
rounds, so load from other work hits all of them alike. Reported per service: requests/s
in each round, p50 / p99 pooled over the rounds, the paired median throughput ratio to one
worker, how the requests were spread over the workers (``X-Shoplens-Worker``), and the
memory (RSS) of each worker.

Writes the "## Multi-process serving" section of docs/BENCHMARKS.md and the raw numbers
to docs/bench/workers.json::

    SHOPLENS_HOME=~/.shoplens python benchmarks/bench_workers.py
    python benchmarks/bench_workers.py --quick --no-write       # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_http  # benchmarks/bench_http.py: the load generator and the workloads
import common  # benchmarks/common.py, next to this script
from shoplens.serve.workers import WORKER_HEADER

HEADING = "## Multi-process serving"
ROUTES = ("image search", "text search", "product page")
Row = dict[str, Any]


# ---- the services ----
@contextmanager
def service(catalog: str, workers: int, timeout: float = 900) -> Iterator[tuple[str, int]]:
    """``shoplens serve --workers N`` in a subprocess; yields (URL, its pid) once every
    worker answers /readyz."""
    port = common.free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in bench_http.UNSET},
        "SHOPLENS_RATE_LIMIT_PER_S": "0",  # a load generator on one address: no limit
        "SHOPLENS_TORCH_THREADS": "1",
        "SHOPLENS_FAISS_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "shoplens", "serve", "-c", catalog, "--port", str(port)]
    with tempfile.TemporaryFile("w+") as log:  # a file: a full pipe would stall the service
        proc = subprocess.Popen(
            [*cmd, "--workers", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,  # the access log
            stderr=log,
            stdin=subprocess.DEVNULL,
        )

        def output() -> str:
            log.seek(0)
            return log.read()

        base = f"http://127.0.0.1:{port}"
        try:
            common.wait_ready(proc, base, timeout, output)
            wait_workers(base, workers, timeout)
            yield base, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)  # drains, stops the workers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_workers(base: str, workers: int, timeout: float) -> set[int]:
    """Ask /readyz over new connections until ``workers`` distinct workers said ready."""
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(ready)} of {workers} workers became ready")
        with contextlib.suppress(httpx.TransportError):
            r = httpx.get(f"{base}/readyz", timeout=10)
            if r.status_code == 200:
                ready.add(int(r.headers[WORKER_HEADER]))
                continue
        time.sleep(0.3)
    return ready


def memory_mb(pid: int) -> dict[str, Any]:
    """RSS (MiB) of the service process and of each of its worker processes."""
    import psutil

    proc = psutil.Process(pid)
    kids = [p for p in proc.children() if "spawn_main" in " ".join(p.cmdline())]
    mb = 1024 * 1024
    return {
        "supervisor_rss_mb": round(proc.memory_info().rss / mb, 1),
        "worker_rss_mb": [round(p.memory_info().rss / mb, 1) for p in kids],
    }


# ---- the measurement ----
def counted(counts: Counter[str]) -> bench_http.Observe:
    """Counts which worker answered (the response's worker header)."""

    def see(headers: dict[str, str]) -> None:
        counts[headers.get(WORKER_HEADER.lower(), "?")] += 1

    return see


def compare(
    bases: dict[str, str], make: bench_http.Make, concurrency: int, n: int, rounds: int, warmup: int
) -> Row:
    """Interleaved rounds over the services (the first is the baseline): each round runs
    every service once, the order reversed every other round; speedup = median over rounds
    of throughput / the baseline's throughput in the same round."""
    names = list(bases)
    runs: dict[str, list[Row]] = {k: [] for k in names}
    spread: dict[str, Counter[str]] = {k: Counter() for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            see = counted(spread[name])
            runs[name].append(
                bench_http.run_load(bases[name], make, concurrency, n, warmup, observe=see)
            )
    base = names[0]
    configs: dict[str, Row] = {}
    for name in names:
        pooled = bench_http.summarize([x for run in runs[name] for x in run["samples_s"]])
        pooled.pop("histogram")
        ratios = [
            a["throughput_rps"] / b["throughput_rps"]
            for a, b in zip(runs[name], runs[base], strict=True)
        ]
        total = sum(spread[name].values())
        configs[name] = {
            **pooled,
            "throughput_rps": [x["throughput_rps"] for x in runs[name]],
            "errors": sum(x["errors"] for x in runs[name]),
            "error_examples": [e for x in runs[name] for e in x["error_examples"]][:3],
            "speedup_paired_median": statistics.median(ratios),
            "speedup_each": ratios,
            "worker_share": sorted((c / total for c in spread[name].values()), reverse=True),
        }
    for name in names:
        configs[name]["p99_ratio"] = configs[name]["p99_ms"] / configs[base]["p99_ms"]
    return {
        "concurrency": concurrency,
        "rounds": rounds,
        "requests_per_round": n,
        "baseline": base,
        "configs": configs,
    }


def label(workers: int) -> str:
    return f"{workers} worker" + ("s" if workers > 1 else "")


def main(argv: list[str] | None = None) -> Row:
    s = parse_args(argv)
    say = print
    if s.render_only:  # re-render the section from saved raw numbers
        return common.rerender(s.docs, "workers", render, write=not s.no_write, say=say)
    load = [common.load_average()]
    makers = bench_http.workloads(s.catalog, customers=[])
    results: dict[str, list[Row]] = {}
    with contextlib.ExitStack() as stack:
        say(f"starting `shoplens serve --workers N` for N in {s.workers} ...")
        started = {label(n): stack.enter_context(service(s.catalog, n)) for n in s.workers}
        bases = {name: base for name, (base, _) in started.items()}
        ready = httpx.get(f"{bases[label(s.workers[0])]}/readyz", timeout=30).json()
        memory_before = {name: memory_mb(pid) for name, (_, pid) in started.items()}
        for route in ROUTES:
            n = s.requests // 2 if route == "text search" else s.requests
            results[route] = []
            for c in s.levels:
                say(f"{route}, concurrency {c}, {s.rounds} rounds ...")
                row = compare(bases, makers[route], c, n, s.rounds, s.warmup)
                results[route].append(row)
                for name, x in row["configs"].items():
                    say(
                        f"  {name:<10} {statistics.median(x['throughput_rps']):7.1f} req/s  "
                        f"p50 {x['p50_ms']:7.1f} ms  p99 {x['p99_ms']:7.1f} ms  "
                        f"{x['speedup_paired_median']:.2f}x  errors {x['errors']}"
                    )
                load.append(common.load_average())
        memory_after = {name: memory_mb(pid) for name, (_, pid) in started.items()}
    result = {
        "machine": common.machine(),
        "load_average": load,
        "catalog": s.catalog,
        "served": {k: ready.get(k) for k in ("encoder", "vectors")},
        "settings": {
            "workers": s.workers,
            "levels": s.levels,
            "requests": s.requests,
            "warmup": s.warmup,
            "rounds": s.rounds,
            "torch_threads": 1,
            "faiss_threads": 1,
        },
        "results": results,
        "memory_ready": memory_before,
        "memory_after": memory_after,
        "versions": bench_http.versions(),
    }
    if not s.no_write:  # the raw numbers first: they survive a failure to render
        common.write_json(s.docs / "bench" / "workers.json", result)
    section = render(result)
    say("\n" + section)
    if not s.no_write:
        common.write_section(s.docs / "BENCHMARKS.md", section)
        say(f"wrote {s.docs / 'BENCHMARKS.md'} and {s.docs / 'bench' / 'workers.json'}")
    return result


# ---- the report ----
def render(r: Row) -> str:
    m = r["machine"]
    st = r["settings"]
    load = max(r["load_average"])
    v = r["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "faiss-cpu", "uvicorn", "httpx") if k in v)
    where = f"{m['cpu']}, {m['nproc']} cores, commit {m['commit']}"
    names = [label(n) for n in st["workers"]]
    base = names[0]
    lines = [
        HEADING,
        "",
        common.measured_line(
            "bench_workers.py", "torch and FAISS threads 1 per worker", vers, load, m
        ),
        "",
        f"`shoplens serve --workers N` for N = {', '.join(map(str, st['workers']))} serves "
        f"catalogue `{r['catalog']}` ({r['served']['vectors']:,} products, encoder "
        f"`{bench_http._short(r['served']['encoder'])}`): uvicorn's supervisor and N worker "
        "processes on one port, each with its own copy of the model and indexes (one "
        "worker is the single-process server). The load generator of `bench_http.py` runs "
        "in another process on the same machine over loopback: C connections, each "
        f"sending one request at a time, {st['requests']} requests per run (text search: "
        f"half) after {st['warmup']} warm-up requests; {st['rounds']} rounds, each running "
        "every service once, the order reversed every other round. Latencies pooled over "
        "the rounds; speedup = median over rounds of throughput / one worker's throughput "
        "in the same round. The kernel hands each new connection to one worker, so the "
        "spread of the requests over the workers (last column) follows the connections. "
        f"Load average while measuring: {', '.join(f'{x:.1f}' for x in r['load_average'])} "
        f"(max {load:.1f}) on {m['nproc']} cores: the workers share the cores with the load "
        "generator and with other jobs, so more workers than free cores cannot add "
        "throughput.",
        "",
        f"Machine: {where}. Baseline: {base} (`--workers {st['workers'][0]}`), the same "
        "route and concurrency in the same rounds.",
        "",
        "| route | concurrency | workers | rounds x requests | errors | req/s (each round) | "
        "p50 ms | p99 ms | throughput vs baseline | p99 vs baseline | requests per worker |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for route, rows in r["results"].items():
        for row in rows:
            for name in names:
                x = row["configs"][name]
                share = " / ".join(f"{100 * f:.0f}%" for f in x["worker_share"])
                lines.append(
                    f"| {bench_http.ROUTES[route]} | {row['concurrency']} | {name} | "
                    f"{row['rounds']} x {row['requests_per_round']} | {x['errors']} | "
                    f"{', '.join(f'{t:.1f}' for t in x['throughput_rps'])} | "
                    f"{x['p50_ms']:.1f} | {x['p99_ms']:.1f} | "
                    f"{x['speedup_paired_median']:.2f}x | {x['p99_ratio']:.2f}x | {share} |"
                )
    lines += ["", f"Memory (RSS) after the runs, machine: {where}:", ""]
    for name, mem in r["memory_after"].items():
        workers = ", ".join(f"{x:,.0f}" for x in mem["worker_rss_mb"])
        if workers:
            what = f"supervisor {mem['supervisor_rss_mb']:,.0f} MiB, workers {workers} MiB"
        else:
            what = f"the one process {mem['supervisor_rss_mb']:,.0f} MiB"
        lines.append(f"- {name}: {what}.")
    lines += [
        "",
        "Every worker holds its own model and index, so memory grows with N; rate limits "
        "are kept per worker (README, *Several worker processes*). Raw numbers: "
        "`docs/bench/workers.json`.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", default="fashion-mnist", help="catalogue in $SHOPLENS_HOME")
    p.add_argument("--workers", default="1,2", help="worker counts; the first is the baseline")
    p.add_argument("--levels", default="8,32", help="concurrency levels, comma-separated")
    p.add_argument("--requests", type=int, default=400, help="requests per run")
    p.add_argument("--warmup", type=int, default=40, help="warm-up requests before each run")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per level")
    p.add_argument("--quick", action="store_true", help="few requests: a smoke test")
    p.add_argument(
        "--render-only", action="store_true", help="rewrite the section from the raw JSON"
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--docs", type=Path, default=common.DOCS, help="where the results go")
    s = p.parse_args(argv)
    s.workers = [int(x) for x in str(s.workers).split(",") if x]
    s.levels = [int(x) for x in str(s.levels).split(",") if x]
    if s.quick:
        s.requests, s.warmup, s.rounds = 40, 5, 2
    return s


if __name__ == "__main__":
    main()

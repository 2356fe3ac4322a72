"""Crash consistency: SIGKILL ingest, index build, events import and HTTP event posting at
seeded random points (55 kills by default) and check the stores after each kill and re-run.

    python benchmarks/bench_crash.py                  # prints, writes docs/bench/crash.json
    python benchmarks/bench_crash.py --kills ingest=2,index=2,events=2,http=2 --no-write

Each kill: a copy of a prepared SHOPLENS_HOME, the job as a real ``python -m shoplens``
subprocess, SIGKILL after a delay drawn uniformly over the job's uninterrupted duration,
then the checks of :mod:`shoplens.reliability.crash` (stores open and pass
``PRAGMA integrity_check``, acknowledged writes present with the same content, all-or-nothing
transactions, the served index complete and searchable), a re-run of the same command and
a comparison with the state an uninterrupted run leaves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shoplens.reliability import JOBS, CrashConfig, run_crash_harness

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/common.py, next to this script

DEFAULT_KILLS = "ingest=15,index=15,events=15,http=10"


def parse_kills(text: str) -> dict[str, int]:
    """``"ingest=15,index=15"`` -> ``{"ingest": 15, "index": 15}`` (job names checked)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        job, _, n = part.partition("=")
        if job not in JOBS or not n.isdigit():
            raise SystemExit(f"--kills: {part!r} must be JOB=N with JOB one of {', '.join(JOBS)}")
        out[job] = int(n)
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    lines = [
        f"{s['kills']} kills, {s['survived']} survived, {s['acknowledged_checked']:,} "
        f"acknowledged writes checked, {s['reruns_completed']} re-runs completed "
        f"({s['finished_before_kill']} runs finished before their kill), {s['seconds']:.0f} s",
        "",
        "| job | uninterrupted s | kills | survived | acknowledged checked | re-runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for job, t in s["jobs"].items():
        lines.append(
            f"| {job} | {result['durations_s'][job]:.2f} | {t['kills']} | {t['survived']} "
            f"| {t['acknowledged_checked']:,} | {t['reruns_completed']} |"
        )
    notes = [f"{r['job']}#{r['trial']}: {n}" for r in result["records"] for n in r["notes"]]
    lines += ["", f"failures: {len(s['failures'])}", *s["failures"]]
    lines += [f"notes: {len(notes)}", *notes]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", default=DEFAULT_KILLS, help="JOB=N,... per job kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--http-events", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, help="keep homes here (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    kills = parse_kills(args.kills)
    cfg = CrashConfig(products=args.products, events=args.events, http_events=args.http_events)
    load = common.load_average()
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="shoplens-crash-") as tmp:
        report = run_crash_harness(args.workdir or Path(tmp), kills, cfg, seed=args.seed, log=log)
    result = {
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/bench_crash.py " + " ".join(sys.argv[1:]),
        "machine": common.machine(),
        "load_average": round(load, 2),
        "seed": args.seed,
        **report.to_dict(),
    }
    print("\n".join(summary_lines(result)))
    if not args.no_write:
        common.write_json(common.DOCS / "bench" / "crash.json", result)


if __name__ == "__main__":
    main()

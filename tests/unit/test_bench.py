"""Benchmark plumbing: doc sections, repository finder, ``shoplens bench``, a tiny ANN run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from shoplens import bench
from shoplens.errors import InvalidInputError, ShoplensError

REPO = Path(__file__).resolve().parents[2]
DOC = "# Benchmarks\n\nIntro.\n\n## A\n\na1\n\n## B\n\nb1\nb2\n\n## C\n\nc1\n"


def _load(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common() -> ModuleType:
    return _load("common")


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """A checkout with two benchmark scripts; ``echo`` writes its arguments to out.json."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shoplens"\n')
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_echo.py").write_text(
        '"""Echo: writes its arguments.\n\nMore text."""\n'
        "import json, pathlib, sys\n"
        "pathlib.Path('out.json').write_text(json.dumps(sys.argv[1:]))\n"
        "sys.exit(3 if '--fail' in sys.argv else 0)\n"
    )
    (tmp_path / "benchmarks" / "bench_alpha.py").write_text('"""Alpha benchmark."""\n')
    (tmp_path / "benchmarks" / "common.py").write_text('"""Not a benchmark."""\n')
    return tmp_path


def test_replace_section_keeps_the_other_sections(common: ModuleType) -> None:
    new = common.replace_section(DOC, "## B\n\nnew b\n")
    assert new == "# Benchmarks\n\nIntro.\n\n## A\n\na1\n\n## B\n\nnew b\n\n## C\n\nc1\n"
    assert common.replace_section(new, "## B\n\nnew b\n") == new  # idempotent
    last = common.replace_section(DOC, "## C\n\nnew c")
    assert last.endswith("## B\n\nb1\nb2\n\n## C\n\nnew c\n")
    appended = common.replace_section(DOC, "## D\n\nd1\n")
    assert appended == DOC + "\n## D\n\nd1\n"
    assert common.replace_section(DOC, "## A more\n\nx\n").count("## A") == 2  # exact title
    with pytest.raises(ValueError, match="## "):
        common.replace_section(DOC, "# Not a section\n")


def test_write_section_creates_then_replaces(common: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    common.write_section(doc, "## X\n\none\n")
    common.write_section(doc, "## Y\n\ntwo\n")
    common.write_section(doc, "## X\n\nthree\n")
    assert doc.read_text() == "# Benchmarks\n\n## X\n\nthree\n\n## Y\n\ntwo\n"
    assert [p.name for p in doc.parent.iterdir()] == ["BENCHMARKS.md"]  # no temp files left


def test_find_repo(
    fake_repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (fake_repo / "benchmarks" / "deep").mkdir()
    assert bench.find_repo(fake_repo / "benchmarks" / "deep") == fake_repo.resolve()
    assert bench.find_repo(REPO / "src") == REPO  # this checkout
    other = tmp_path_factory.mktemp("elsewhere")  # not inside fake_repo
    (other / "benchmarks").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert bench.find_repo(other) == REPO  # editable install: from the package location
    monkeypatch.setattr(bench, "__file__", str(other / "site-packages" / "shoplens" / "x.py"))
    with pytest.raises(ShoplensError, match="run from a clone"):
        bench.find_repo(other)


def test_bench_list_and_run(fake_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fake_repo / "benchmarks")
    runner = CliRunner()
    listed = runner.invoke(bench.bench_app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "alpha  Alpha benchmark.",
        "echo   Echo: writes its arguments.",
    ]
    as_json = runner.invoke(bench.bench_app, ["list", "--json"])
    assert json.loads(as_json.output) == {
        "alpha": "Alpha benchmark.",
        "echo": "Echo: writes its arguments.",
    }
    ran = runner.invoke(bench.bench_app, ["run", "echo", "--", "--quick", "-x", "1"])
    assert ran.exit_code == 0, ran.output
    assert json.loads((fake_repo / "out.json").read_text()) == ["--quick", "-x", "1"]  # repo root
    failed = runner.invoke(bench.bench_app, ["run", "bench_echo.py", "--fail"])
    assert failed.exit_code == 1 and "bench_echo (exit 3)" in failed.output
    assert runner.invoke(bench.bench_app, ["run", "all", "--", "--no-write"]).exit_code == 0
    unknown = runner.invoke(bench.bench_app, ["run", "nope"])
    assert isinstance(unknown.exception, InvalidInputError)
    assert "alpha, echo, all" in str(unknown.exception)


def test_real_benchmarks_are_listed() -> None:
    found = bench.list_benchmarks(REPO)
    assert {"ann", "train_loop"} <= set(found)
    assert found["ann"].startswith("Vector index") and found["train_loop"]


def test_bench_ann_quick(common: ModuleType, tmp_path: Path) -> None:
    ann = _load("bench_ann")
    docs = tmp_path / "docs"
    (docs).mkdir()
    (docs / "BENCHMARKS.md").write_text("# Benchmarks\n\n## Other\n\nkept\n")
    args = "--quick --sizes 1500 --queries 40 --ivf IVF16,PQ8np --nprobe 1,16 --ef-search 8,64"
    result = ann.main([*args.split(), "--threads", "1", "--repeats", "1", "--docs", str(docs)])
    rows = {(r["factory"], r["param"]): r for r in result["rows"]}
    assert rows[("Flat", "")]["recall"] == 1.0
    assert rows[("exact", "numpy")]["recall"] == pytest.approx(1.0, abs=0.01)  # ties aside
    hnsw = rows[("HNSW32", "efC=200 efSearch=64")]  # the served default build
    assert hnsw["recall"] > 0.9 and hnsw["bytes_per_vector"] > 128 * 4  # vectors + graph
    assert rows[("IVF16,PQ8np", "nprobe=1")]["recall"] < 1.0
    text = (docs / "BENCHMARKS.md").read_text()
    assert "## Other\n\nkept" in text and ann.HEADING in text and "Target" in text
    assert 0 < (docs / "img" / "bench-ann.png").stat().st_size < 100_000
    saved = json.loads((docs / "bench" / "ann.json").read_text())
    assert len(saved["rows"]) == len(result["rows"]) == 6
    again = ann.main(["--from-json", str(docs / "bench" / "ann.json"), "--docs", str(docs)])
    assert again["rows"] == saved["rows"] and (docs / "BENCHMARKS.md").read_text() == text


def test_verdict_needs_1m_and_20x(common: ModuleType) -> None:
    ann = _load("bench_ann")

    def row(kind: str, recall: float, qps: float, n: int = 1_000_000) -> dict[str, object]:
        factory = "Flat" if kind == "exact" else "HNSW32"
        speeds = {"qps_single": qps, "qps_batch_1t": qps, "qps_batch_2t_wall": qps}
        hnsw = {"ef_construction": 40, "ef_search": qps} if kind == "HNSW" else {}
        base = {"n": n, "index": kind, "factory": factory, "param": f"q{qps}", "recall": recall}
        return base | speeds | hnsw | {"qps_batch_1t_wall": qps}

    rows = [row("exact", 1.0, 10), row("HNSW", 0.97, 900), row("HNSW", 0.99, 250)]
    assert ann.verdict(rows, 2) | {"speedup": None} == {
        "n": 1_000_000,
        "recall_target": 0.98,
        "speedup_target": 20.0,
        "met": True,
        "hnsw": "q250",
        "recall": 0.99,
        "speedup": None,
    }
    assert not ann.verdict([*rows[:2], row("HNSW", 0.99, 150)], 2)["met"]  # only 15x
    assert ann.verdict(rows[:2], 2)["hnsw"] is None
    small = [row("exact", 1.0, 10, n=1000), row("HNSW", 0.99, 900, n=1000)]
    assert not ann.verdict(small, 2)["met"]
    text = "\n".join(
        ann.conclusions(
            rows,
            ann.verdict(rows, 2),
            2,
            {"ef_construction": 40, "ef_search": 900, "nprobe": 16},
            1.0,
        )
    )
    assert "**met** one query at a time" in text and "q250 (recall 0.9900), 25x exact" in text
    assert "efC=40: efSearch 250 (recall 0.9900, 25x exact)" in text
    assert "Served default at 1,000,000 (q900): recall@10 0.9700, 90x" in text


def test_machine_names_the_vector_units(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two CPUs sold as "AMD EPYC" time differently (AVX2 vs AVX-512 BF16): the machine
    line every benchmark table opens with says which one measured."""
    from shoplens.eval import report

    assert report.vector_units({"sse2", "avx2", "avx512f", "avx512_bf16"}) == "AVX-512 with BF16"
    assert report.vector_units({"avx2", "avx512f"}) == "AVX-512"
    assert report.vector_units({"sse2", "avx2"}) == "AVX2"
    assert report.vector_units({"fp", "asimd", "bf16"}) == "Arm BF16"
    assert report.vector_units({"sse2"}) == ""
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu avx512f\n"
    )
    from shoplens.models import hardware

    real_path = hardware.Path
    monkeypatch.setattr(
        hardware, "Path", lambda p: real_path(info) if str(p) == "/proc/cpuinfo" else real_path(p)
    )
    hardware.cpu_info.cache_clear()
    try:
        assert hardware.cpu_info() == ("AMD EPYC", frozenset({"fpu", "sse2", "avx2"}))
        assert report.machine_info()["cpu"] == "AMD EPYC, AVX2"
    finally:
        hardware.cpu_info.cache_clear()  # the real CPU for later tests

"""``shoplens bench``: list and run the benchmark scripts of the source repository.

The benchmarks live in ``benchmarks/bench_*.py`` of a clone (not in the installed
package); each one measures something, prints a markdown section and replaces its own
section of docs/BENCHMARKS.md (raw results in docs/bench/, plots in docs/img/).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from shoplens.errors import InvalidInputError, ShoplensError

bench_app = typer.Typer(
    help="Benchmarks (source repository only): results go to docs/BENCHMARKS.md.",
    no_args_is_help=True,
)


def _is_repo(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    if not (folder / "benchmarks").is_dir() or not pyproject.is_file():
        return False
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return False
    return 'name = "shoplens"' in text


def find_repo(start: Path | None = None) -> Path:
    """The shoplens source checkout: ``start`` (default cwd) or a parent, else the one the
    package was installed from in editable mode.

    Raises:
        ShoplensError: No such folder (an installed wheel has no benchmarks).
    """
    here = (start or Path.cwd()).resolve()
    package = Path(__file__).resolve().parent
    for folder in [here, *here.parents, *package.parents]:
        if _is_repo(folder):
            return folder
    raise ShoplensError(
        "benchmarks are in the source repository; run from a clone "
        "(no folder with benchmarks/ and shoplens's pyproject.toml above "
        f"{here} or {package})"
    )


def list_benchmarks(repo: Path) -> dict[str, str]:
    """Benchmark name (``bench_NAME.py``) -> first line of its docstring, sorted by name."""
    out: dict[str, str] = {}
    for script in sorted((repo / "benchmarks").glob("bench_*.py")):
        try:
            doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        except (OSError, SyntaxError, ValueError):
            doc = ""
        out[script.stem.removeprefix("bench_")] = doc.strip().split("\n", 1)[0]
    return out


def _script(repo: Path, name: str) -> Path:
    known = list_benchmarks(repo)
    short = name.removesuffix(".py").removeprefix("benchmarks/").removeprefix("bench_")
    if short not in known:
        raise InvalidInputError(
            f"unknown benchmark {name!r}; choose from: {', '.join([*known, 'all']) or 'all'}"
        )
    return repo / "benchmarks" / f"bench_{short}.py"


@bench_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """List the benchmarks with what each one measures."""
    found = list_benchmarks(find_repo())
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    width = max((len(n) for n in found), default=0)
    for name, doc in found.items():
        typer.echo(f"{name:<{width}}  {doc}")


@bench_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def run_command(
    name: Annotated[str, typer.Argument(help="Benchmark name (see `shoplens bench list`) or all.")],
    args: Annotated[
        list[str] | None,
        typer.Argument(help="Passed on to the script, e.g. -- --quick --no-write."),
    ] = None,
) -> None:
    """Run benchmarks/bench_NAME.py with this Python from the repository root.

    Each script prints its results and replaces its section of docs/BENCHMARKS.md (most
    take --no-write to print only; see `shoplens bench run NAME -- --help`). NAME 'all'
    runs every benchmark in turn with the same extra arguments.
    """
    repo = find_repo()
    names = list(list_benchmarks(repo)) if name == "all" else [name]
    failed: list[str] = []
    for each in names:
        script = _script(repo, each)
        if len(names) > 1:
            typer.echo(f"== {script.relative_to(repo)}", err=True)
        code = subprocess.call([sys.executable, str(script), *(args or [])], cwd=repo)
        if code != 0:
            failed.append(f"{script.stem} (exit {code})")
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)

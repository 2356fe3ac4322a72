"""``shoplens train`` and ``shoplens models`` (Typer commands registered in shoplens.cli)."""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated, Any

import typer

from shoplens import progress
from shoplens.training.config import list_recipes  # no torch import

models_app = typer.Typer(help="Model configs, registered models and aliases.", no_args_is_help=True)


def _echo(as_json: bool, payload: Any, human: str) -> None:
    typer.echo(json.dumps(payload, indent=2) if as_json else human)


def train_command(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Config overrides section.key=value, e.g. train.lr=3e-4 model=clip-small "
            "data.held_out=[Sandal,Bag] tracking.register_as=fm-clip.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="YAML file or built-in recipe (" + ", ".join(list_recipes()) + "); "
            "defaults <- YAML <- overrides.",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Refuse to resume an existing run folder of the same name."),
    ] = False,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the resolved config and exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Train a model (classifier, CLIP-style, combiner); prints the MLflow run id.

    The resolved config is saved as config.yaml in the run folder
    (SHOPLENS_HOME/runs/RUN_NAME) and logged to MLflow. Run it again with the same
    run_name to resume after a crash; under torchrun it trains with DDP.
    """
    import yaml

    from shoplens.config import config_to_dict, load_config
    from shoplens.training.experiment import (
        ExperimentConfig,
        resolve_config_path,
        run_experiment,
    )

    cfg = load_config(ExperimentConfig, resolve_config_path(config), overrides or [])
    if show_config:
        _echo(as_json, config_to_dict(cfg), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return
    progress.set_mode("off" if as_json else "auto")
    if not as_json:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("shoplens.training").setLevel(logging.INFO)
    result = run_experiment(cfg, resume=not fresh).to_dict()
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items()))
    human = [
        f"run {result['run_name']} finished in {result['wall_time_s']:.0f}s "
        f"({result['samples_per_s']:.0f} samples/s)",
        f"metrics: {metrics}",
        f"model: {result['model_spec']}",
    ]
    if result["registered"]:
        r = result["registered"]
        human.append(f"registered: {r['name']} version {r['version']} as @{r['alias']}")
    human.append(f"mlflow run id: {result['run_id']}")
    _echo(as_json, result, "\n".join(human))


@models_app.command("list")
def models_list(
    registered: Annotated[
        bool,
        typer.Option(
            "--registered", help="List registered models (versions, aliases) instead of configs."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Model configs that `shoplens train model=NAME` accepts (--registered: the registry)."""
    if registered:
        from shoplens.training.tracking import MlflowTracker

        models = MlflowTracker().list_registered_models()
        _echo(as_json, models, _registered_table(models))
        return
    from shoplens.registry import list_models, resolve_model_config

    rows = [{"name": n, "family": resolve_model_config(n)[0]} for n in list_models()]
    _echo(as_json, rows, "\n".join(f"{r['name']:<24} {r['family']}" for r in rows))


def _registered_table(models: list[dict[str, Any]]) -> str:
    if not models:
        return "no registered models yet (shoplens train ... tracking.register_as=NAME)"
    lines = []
    for m in models:
        lines.append(m["name"])
        for v in m["versions"]:
            tags = "".join(f" @{a}" for a in v["aliases"])
            lines.append(f"  version {v['version']:<4} run {v['run_id'] or '-'}{tags}")
        for alias, version in sorted(m["previous"].items()):
            lines.append(f"  rollback of @{alias} -> version {version}")
    return "\n".join(lines)


def _check_alias_option(alias: str) -> str:
    if alias not in ("champion", "challenger"):
        raise typer.BadParameter("use champion or challenger")
    return alias


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(min=1, help="Model version to promote.")],
    alias: Annotated[
        str, typer.Option(help="champion or challenger.", callback=_check_alias_option)
    ] = "champion",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Point an alias at a version; the version it pointed at is kept for rollback.

    A service started with --model NAME@ALIAS picks the change up within its poll
    interval and swaps models without dropping requests.
    """
    from shoplens.training.tracking import MlflowTracker

    old, info = MlflowTracker().promote(name, version, alias)
    _echo_move(as_json, alias, old, info, f"version {old or '(none)'}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[
        str, typer.Option(help="champion or challenger.", callback=_check_alias_option)
    ] = "champion",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Move an alias back to the version it pointed at before the last promote.

    Rolling back twice returns to where you started.
    """
    from shoplens.training.tracking import MlflowTracker

    old, info = MlflowTracker().rollback(name, alias)
    _echo_move(as_json, alias, old, info, f"rolled back version {old}")


def _echo_move(as_json: bool, alias: str, old: str | None, info: Any, was: str) -> None:
    """Report an alias moved from version ``old`` to ``info.version``."""
    payload = {
        "name": info.name,
        "alias": alias,
        "previous_version": old,
        "version": info.version,
        "run_id": info.run_id,
        "encoder_spec": f"trained:{info.source_dir}",
    }
    human = f"{info.name}@{alias}: {was} -> {info.version} (trained:{info.source_dir})"
    _echo(as_json, payload, human)


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(min=1, help="Model version to point the alias at.")],
    alias: Annotated[str, typer.Argument(help="champion or challenger.")] = "champion",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Point an alias (champion / challenger) of a registered model at a version."""
    from shoplens.training.tracking import MlflowTracker

    _, info = MlflowTracker().promote(name, version, alias)  # remembered for rollback
    _echo(
        as_json,
        {**info.__dict__, "encoder_spec": f"trained:{info.source_dir}"},
        f"{info.name}@{alias} -> version {info.version} (trained:{info.source_dir})",
    )


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Which version an alias points at, and the encoder spec that serves it."""
    from shoplens.training.tracking import MlflowTracker

    info = MlflowTracker().get_model_version_by_alias(name, alias)  # type: ignore[arg-type]
    _echo(
        as_json,
        {**info.__dict__, "encoder_spec": f"trained:{info.source_dir}"},
        f"{info.name}@{alias}: version {info.version}, run {info.run_id}\n"
        f"encoder spec: trained:{info.source_dir}",
    )

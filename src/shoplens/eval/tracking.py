"""MLflow logging of an evaluation run (imported lazily; MLflow's own logging kept quiet).

Tracking URI :func:`shoplens.config.tracking_uri`, artefacts under
:func:`shoplens.config.artifact_root`, experiment ``shoplens-eval``. Params are prefixed
``eval.`` and metrics ``eval/`` so logging into an existing (training) run never collides
with its own keys; in an existing run the settings go to tags (MLflow params cannot be
changed, and the run may be evaluated more than once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shoplens.config import tracking_uri
from shoplens.errors import NotFoundError

if TYPE_CHECKING:
    from mlflow import MlflowClient

EXPERIMENT = "shoplens-eval"
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]+")


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's and alembic's INFO lines and warnings for the duration."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def client() -> MlflowClient:
    """An MLflow client on shoplens' tracking URI."""
    from shoplens.training.tracking import mlflow_client

    with quiet_mlflow():
        return mlflow_client(tracking_uri())


def check_run(run_id: str) -> None:
    """Fail early, with a clear message, when ``run_id`` is not an existing MLflow run."""
    from mlflow.exceptions import MlflowException

    try:
        with quiet_mlflow():
            client().get_run(run_id)
    except MlflowException as e:
        raise NotFoundError(f"MLflow run {run_id!r} not found at {tracking_uri()}") from e


def flat_metrics(tree: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Every finite number in a nested dict, keyed ``prefix/a/b`` (lists and bools left out)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{_BAD_KEY_CHARS.sub('_', str(key))}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, name))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[name] = float(value)
    return out


def log_eval(
    results: dict[str, Any], params: dict[str, Any], run_name: str, run_id: str | None = None
) -> str:
    """Log params, metrics and the results JSON; into ``run_id`` if given. Returns the run id."""
    from mlflow.entities import Metric, Param, RunTag

    from shoplens.training.tracking import ensure_experiment

    with quiet_mlflow():
        c = client()
        if run_id is None:
            exp_id = ensure_experiment(c, EXPERIMENT, tracking_uri())
            run_id = c.create_run(exp_id, run_name=run_name).info.run_id
            created = True
        else:
            created = False
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in flat_metrics(results).items()]
        settings = {f"eval.{k}": str(v) for k, v in params.items()}
        if created:
            c.log_batch(run_id, params=[Param(k, v) for k, v in settings.items()])
        else:
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in settings.items()])
        for s in range(0, len(metrics), 1000):  # MLflow's batch limit
            c.log_batch(run_id, metrics=metrics[s : s + 1000])
        c.log_dict(run_id, results, f"eval/{run_name}.json")
        if created:
            c.set_terminated(run_id)
    return run_id

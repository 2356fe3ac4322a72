"""MLflow tracking of real (tiny) runs: params, metrics, artefacts, failures, registry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.training import MlflowTracker, TrainConfig, fit
from shoplens.training.distributed_demo import DemoData, build_model, make_datasets, mse_eval

torch.set_num_threads(1)

DATA = DemoData(samples=32, dim=4, hidden=8)
CFG = TrainConfig(epochs=2, batch_size=8, log_every=2, lr=0.01)


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SHOPLENS_HOME (and MLflow database) shared by this module's tests."""
    home = tmp_path_factory.mktemp("tracking-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPLENS_HOME", str(home))
        mp.delenv("SHOPLENS_TRACKING_URI", raising=False)
        yield home


def train(run_dir: Path, tracker: MlflowTracker, **kw: object) -> str | None:
    data, held_out = make_datasets(DATA)
    result = fit(
        build_model(DATA),
        data,
        CFG,
        run_dir=run_dir,
        tracker=tracker,
        eval_fn=mse_eval(held_out),
        **kw,  # type: ignore[arg-type]
    )
    return result.run_id


def test_run_is_logged_quietly(
    mlflow_home: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tracker = MlflowTracker("tiny", run_name="ok", params={"data": {"samples": 32}})
    run_id = train(tmp_path, tracker)
    out, err = capfd.readouterr()
    assert out == "" and "INFO" not in err and "View run" not in err, (out, err)

    assert run_id is not None and tracker.run_id == run_id
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.01" and run.data.params["data.samples"] == "32"
    assert (mlflow_home / "mlflow.db").is_file()
    assert run.info.artifact_uri.startswith((mlflow_home / "mlartifacts").as_uri())
    per_epoch = tracker.client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in per_epoch] == [4, 8]
    per_step = tracker.client.get_metric_history(run_id, "train_step/loss")
    assert [m.step for m in per_step] == [2, 4, 6, 8]
    assert len(tracker.client.get_metric_history(run_id, "eval/mse")) == 2
    artifacts = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.json", "model"} <= artifacts
    model_files = {a.path for a in tracker.client.list_artifacts(run_id, "model")}
    assert "model/weights.pt" in model_files


def test_crashed_run_is_failed_and_cannot_be_registered(mlflow_home: Path, tmp_path: Path) -> None:
    def crash(step: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise RuntimeError("killed")

    tracker = MlflowTracker("tiny", run_name="crash")
    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path, tracker, on_step=crash)
    assert tracker.run_id is not None
    assert tracker.client.get_run(tracker.run_id).info.status == "FAILED"
    assert (tmp_path / "checkpoints" / "last.pt").is_file()  # the epoch-1 checkpoint stays
    with pytest.raises(InvalidInputError, match="FAILED"):
        tracker.register_model(tracker.run_id, "model", "tiny-reg")

    # Resuming reopens the same MLflow run and finishes it.
    failed_id = tracker.run_id
    resumed = MlflowTracker("tiny", run_name="crash")
    assert train(tmp_path, resumed) == failed_id
    assert resumed.client.get_run(failed_id).info.status == "FINISHED"


def test_register_and_resolve_aliases(mlflow_home: Path, tmp_path: Path) -> None:
    tracker = MlflowTracker("tiny")
    first = train(tmp_path / "a", tracker)
    second = train(tmp_path / "b", MlflowTracker("tiny"))
    assert first is not None and second is not None and first != second

    v1 = tracker.register_model(first, "model", "tiny-reg", alias="champion")
    assert tracker.get_model_version_by_alias("tiny-reg", "champion").run_id == first
    v2 = tracker.register_model(second, "model", "tiny-reg", alias="challenger")
    assert int(v2.version) == int(v1.version) + 1
    assert tracker.get_model_version_by_alias("tiny-reg", "challenger").run_id == second
    tracker.register_model(second, "model", "tiny-reg", alias="champion")  # promote
    champion = tracker.get_model_version_by_alias("tiny-reg", "champion")
    assert champion.run_id == second and champion.source.endswith("/model")

    with pytest.raises(InvalidInputError, match="no artefact"):
        tracker.register_model(first, "missing", "tiny-reg")
    with pytest.raises(InvalidInputError, match="champion"):
        tracker.register_model(first, "model", "tiny-reg", alias="best")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        tracker.get_model_version_by_alias("never-registered", "champion")


def test_tracking_module_does_not_import_mlflow() -> None:
    code = (
        "import sys, shoplens.training.tracking, shoplens.training.loop; "
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Experiment tracking: MLflow behind a four-method interface, or nothing.

:class:`MlflowTracker` logs to ``shoplens.config.tracking_uri()`` (SQLite under
``SHOPLENS_HOME`` by default) with artefacts under ``shoplens.config.artifact_root()``,
and manages the model registry (aliases ``champion`` / ``challenger``). MLflow is imported
on first use, with its telemetry, URL banners and INFO logs off. :class:`NullTracker` is
the tracker when tracking is off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from shoplens.config import artifact_root, check_name, tracking_uri
from shoplens.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from mlflow import MlflowClient

Status = Literal["FINISHED", "FAILED", "KILLED"]
Alias = Literal["champion", "challenger"]
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call
PREVIOUS_TAG = "previous_"  # model tag previous_<alias>: the version rollback restores
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class Tracker(Protocol):
    """What the training loop needs from a tracker."""

    run_id: str | None

    def start(self, params: Mapping[str, Any], *, run_id: str | None = None) -> str | None:
        """Open a run (or reopen ``run_id``) and log ``params``; returns the run id."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at optimizer step ``step``."""
        ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder into the run's artefacts."""
        ...

    def end(self, status: Status = "FINISHED") -> None:
        """Close the run with ``status``."""
        ...


class NullTracker:
    """Tracking off: every call does nothing."""

    run_id: str | None = None

    def start(self, params: Mapping[str, Any], *, run_id: str | None = None) -> str | None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None

    def end(self, status: Status = "FINISHED") -> None:
        return None


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version: where its files are and which run produced it."""

    name: str
    version: str
    run_id: str | None
    source: str

    @property
    def source_dir(self) -> str:
        """The version's files as a local folder (for ``trained:DIR``) when stored locally."""
        if self.source.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return unquote(urlparse(self.source).path)
        return self.source


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"section.key": value}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def mlflow_client(uri: str) -> MlflowClient:
    """An MlflowClient for ``uri`` (tracking and registry), imported quietly on first use."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class MlflowTracker:
    """Tracks one run in MLflow experiment ``experiment``; also reads/writes the registry.

    Args:
        experiment: experiment name (created on first use).
        run_name: display name of the run (MLflow picks one when None).
        params: extra params logged with the run, e.g. the whole resolved app config.
        tags: run tags.
        uri: tracking (and registry) URI; default ``shoplens.config.tracking_uri()``.
    """

    def __init__(
        self,
        experiment: str = "shoplens",
        *,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        uri: str | None = None,
    ) -> None:
        self.experiment = check_name(experiment, "experiment name")
        self.run_name = run_name
        self.extra_params = dict(params or {})
        self.tags = dict(tags or {})
        self.uri = uri or tracking_uri()
        self.run_id: str | None = None
        self._mlflow: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """The MlflowClient (created, and MLflow imported, on first access)."""
        if self._mlflow is None:
            self._mlflow = mlflow_client(self.uri)
        return self._mlflow

    def start(self, params: Mapping[str, Any], *, run_id: str | None = None) -> str:
        """Open a new run, or reopen ``run_id`` (a resumed training run); log params."""
        from mlflow.exceptions import MlflowException

        logged: Mapping[str, str] = {}
        if run_id is not None:
            try:
                logged = self.client.get_run(run_id).data.params
                self.client.update_run(run_id, status="RUNNING")
            except MlflowException:  # the run lives in another tracking store: start anew
                self.tags["shoplens.resumed_from"] = run_id
                run_id = None
        if run_id is None:
            run = self.client.create_run(
                self._experiment_id(), run_name=self.run_name, tags=self.tags
            )
            run_id = run.info.run_id
        self.run_id = run_id
        all_params = {**flatten(params), **flatten(self.extra_params)}
        self._log_params({k: v for k, v in all_params.items() if k not in logged})
        return run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self._active(), metrics=rows)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self._active(), str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self._active(), str(path), artifact_path)

    def end(self, status: Status = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def register_model(
        self, run_id: str, artifact_path: str, name: str, alias: Alias = "challenger"
    ) -> ModelVersionInfo:
        """Register ``artifact_path`` of a FINISHED run as a new version of model ``name``.

        The version gets ``alias`` (moved from any older version). A failed, killed or
        still running run, or a missing artefact, raises InvalidInputError.
        """
        from mlflow.exceptions import MlflowException

        _check_alias(alias)
        check_name(name, "registered model name")
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise NotFoundError(f"no MLflow run {run_id!r} in {self.uri}") from None
        if run.info.status != "FINISHED":
            raise InvalidInputError(
                f"run {run_id} is {run.info.status}: only a FINISHED run's model can be registered"
            )
        if not self.client.list_artifacts(run_id, artifact_path):
            raise InvalidInputError(f"run {run_id} has no artefact {artifact_path!r} to register")
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name, f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id
        )
        self.client.set_registered_model_alias(name, alias, version.version)
        return ModelVersionInfo(name, str(version.version), run_id, str(version.source))

    def get_model_version_by_alias(self, name: str, alias: Alias) -> ModelVersionInfo:
        """The version of model ``name`` that ``alias`` points to (NotFoundError if none)."""
        from mlflow.exceptions import MlflowException

        _check_alias(alias)
        try:
            v = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise NotFoundError(f"registered model {name!r} has no {alias!r} version") from None
        return ModelVersionInfo(v.name, str(v.version), v.run_id, str(v.source))

    def set_alias(self, name: str, version: int | str, alias: str) -> ModelVersionInfo:
        """Point ``alias`` of model ``name`` at ``version`` (e.g. promote to champion)."""
        from mlflow.exceptions import MlflowException

        _check_alias(alias)
        try:
            v = self.client.get_model_version(name, str(version))
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException:
            raise NotFoundError(f"registered model {name!r} has no version {version}") from None
        return ModelVersionInfo(v.name, str(v.version), v.run_id, str(v.source))

    def list_registered_models(self) -> list[dict[str, Any]]:
        """Every registered model with its versions and aliases, by name.

        Each entry: ``{"name", "aliases": {alias: version}, "versions": [{"version",
        "run_id", "source", "aliases"}], "previous": {alias: version}}`` (``previous`` is
        what :meth:`rollback` would restore).
        """
        out = []
        page_token = None
        models: list[Any] = []
        while True:
            page = self.client.search_registered_models(max_results=100, page_token=page_token)
            models.extend(page)
            page_token = page.token
            if not page_token:
                break
        for m in sorted(models, key=lambda m: m.name):
            aliases = {a: str(v) for a, v in (m.aliases or {}).items()}
            versions = sorted(
                self.client.search_model_versions(f"name='{_quote(m.name)}'"),
                key=lambda v: int(v.version),
            )
            out.append(
                {
                    "name": m.name,
                    "aliases": aliases,
                    "previous": {
                        k.removeprefix(PREVIOUS_TAG): v
                        for k, v in (m.tags or {}).items()
                        if k.startswith(PREVIOUS_TAG)
                    },
                    "versions": [
                        {
                            "version": str(v.version),
                            "run_id": v.run_id,
                            "source": str(v.source),
                            "aliases": sorted(a for a, n in aliases.items() if n == str(v.version)),
                        }
                        for v in versions
                    ],
                }
            )
        return out

    def promote(
        self, name: str, version: int | str, alias: str = "champion"
    ) -> tuple[str | None, ModelVersionInfo]:
        """Point ``alias`` at ``version``, remembering the version it pointed at before.

        The old version is kept in the model tag ``previous_<alias>`` so :meth:`rollback`
        can restore it. Returns (old version or None, new version info).
        """
        _check_alias(alias)
        old = self._alias_version(name, alias)
        info = self.set_alias(name, version, alias)
        if old is not None and old != info.version:
            self.client.set_registered_model_tag(name, f"{PREVIOUS_TAG}{alias}", old)
        return old, info

    def rollback(self, name: str, alias: str = "champion") -> tuple[str | None, ModelVersionInfo]:
        """Move ``alias`` back to the version it pointed at before the last promote.

        The version rolled back from becomes the remembered one, so a second rollback
        undoes the first. NotFoundError when nothing is remembered for ``alias``.
        Returns (version rolled back from, restored version info).
        """
        from mlflow.exceptions import MlflowException

        _check_alias(alias)
        try:
            tags = self.client.get_registered_model(name).tags or {}
        except MlflowException:
            raise NotFoundError(f"no registered model {name!r}") from None
        previous = tags.get(f"{PREVIOUS_TAG}{alias}")
        if previous is None:
            raise NotFoundError(
                f"registered model {name!r} has no previous {alias!r} version to roll back "
                f"to; promote one with 'shoplens models promote {name} VERSION --alias {alias}'"
            )
        return self.promote(name, previous, alias)

    def _alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            raise NotFoundError(f"no registered model {name!r}") from None
        version = (model.aliases or {}).get(alias)
        return None if version is None else str(version)

    def _active(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker.start() must be called before logging")
        return self.run_id

    def _experiment_id(self) -> str:
        return ensure_experiment(self.client, self.experiment, self.uri)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        rows = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(rows), MLFLOW_BATCH):
            self.client.log_batch(self._active(), params=rows[i : i + MLFLOW_BATCH])


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created when missing (by another process too)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    # A local SQLite store keeps artefacts under SHOPLENS_HOME (not ./mlruns);
    # a tracking server decides for itself.
    location = f"{artifact_root()}/{name}" if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _check_alias(alias: str) -> None:
    if alias not in get_args(Alias):
        raise InvalidInputError(f"model alias {alias!r} is not one of 'champion', 'challenger'")


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def parse_model_ref(ref: str) -> tuple[str, Alias]:
    """``"NAME@ALIAS"`` (or ``"NAME"``, alias champion) -> (name, alias), validated."""
    name, _, alias = ref.strip().partition("@")
    alias = alias or "champion"
    check_name(name, "registered model name")
    _check_alias(alias)
    return name, alias  # type: ignore[return-value]

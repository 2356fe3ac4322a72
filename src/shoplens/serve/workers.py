"""Several service processes on one port: ``shoplens serve --workers N``.

uvicorn's own supervisor (:class:`uvicorn.supervisors.Multiprocess`, the code behind
``uvicorn --workers N``) binds the socket once and spawns N workers; each builds its own
app with :func:`app_from_env` from the ``SHOPLENS_*`` environment, so each loads its
own copy of the models and indexes. uvicorn rather than gunicorn: it is already the
single-process server (same HTTP parser and header limits for any N), it is a declared
dependency (gunicorn only comes with MLflow, and uvicorn's gunicorn worker class is
deprecated), and its supervisor does what gunicorn's arbiter would do here: SIGTERM or
SIGINT stops the workers, each draining its in-flight requests (at most
``GRACEFUL_S``) before the parent exits 0; a worker that dies or stops answering the
supervisor's ping is replaced; SIGHUP replaces the workers one at a time, each
replacement serving before the old worker stops; SIGTTIN / SIGTTOU add or remove one.
What gunicorn has and this lacks: a per-request worker timeout (a worker whose event
loop is blocked still answers the ping from its own thread).

What the workers share and what each keeps:

* Stores are shared through their files (SQLite in WAL mode: catalogue, events, API
  keys; PostgreSQL when ``SHOPLENS_DATABASE_URL`` is set), so an event stored through one
  worker is in every worker's next recommendation, and a new or revoked key counts in
  all of them at once.
* Each worker follows the model alias (``registry_poll_s``) and the indexes' ``current``
  builds (``index_poll_s``) itself: a promote or ``shoplens index build`` reaches every
  worker within one interval. ``POST /v1/index/reload`` reloads only the worker that
  answers it; the others follow at their next check.
* Rate limits are kept per worker: a client whose requests land on several workers can
  get up to N times the configured rate (one keep-alive connection stays with one
  worker, so it gets exactly the configured rate). Divide ``SHOPLENS_RATE_LIMIT_*`` by N
  for a hard cap across the workers.
* Every response names the worker that made it in ``X-Shoplens-Worker`` (its pid).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("shoplens.serve")
WORKER_HEADER = "X-Shoplens-Worker"
GRACEFUL_S = 30  # in-flight requests get this long to finish after SIGTERM
HEALTHCHECK_S = 30  # a worker that does not answer the supervisor's ping so long is replaced
PARENT_CHECK_S = 1.0  # how often a worker checks that its supervisor is still there
FACTORY = "shoplens.serve.workers:app_from_env"
SUPERVISOR_ENV = "SHOPLENS_SUPERVISOR_PID"  # set by run_workers for its workers


class WorkerHeaderMiddleware:
    """Adds ``X-Shoplens-Worker: <pid>`` to every response (errors and 429s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = (WORKER_HEADER.lower().encode(), str(os.getpid()).encode())

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def app_from_env() -> FastAPI:
    """The app of one worker process, configured by the ``SHOPLENS_*`` environment."""
    from tqdm import tqdm

    from shoplens.serve import ServiceSettings, create_app

    # tqdm (bm25s tokenizes with it) would make a multiprocessing lock: a named semaphore
    # that a worker never unlinks, as uvicorn ends each drained worker by re-raising its
    # SIGTERM (the supervisor's resource tracker then warns of a leak). A thread lock does.
    tqdm.set_lock(threading.RLock())
    stop_with_parent()
    return create_app(ServiceSettings())


def stop_with_parent() -> None:
    """Drain and stop this worker (SIGTERM to itself) once its supervisor is gone.

    A supervisor killed with SIGKILL cannot stop its workers; without this they would
    keep serving the port as orphans. The supervisor is named by ``SUPERVISOR_ENV`` (so
    a worker orphaned while it was still starting stops too), else the parent process.
    """
    parent = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        log.warning("worker %d: the supervisor (pid %d) is gone; stopping", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="shoplens-parent-watch", daemon=True).start()


def export_settings(catalog: str, encoder: str | None, model: str | None) -> None:
    """Put the command line's settings into ``os.environ``, which the workers inherit.

    The same precedence as one process: ``--encoder`` replaces ``SHOPLENS_ENCODER`` (and
    its absence clears it), ``--model`` replaces ``SHOPLENS_MODEL`` only when given.
    """
    os.environ["SHOPLENS_CATALOG"] = catalog
    os.environ.pop("SHOPLENS_ENCODER", None)
    if encoder is not None:
        os.environ["SHOPLENS_ENCODER"] = encoder
    if model is not None:
        os.environ["SHOPLENS_MODEL"] = model


def run_workers(
    workers: int,
    *,
    catalog: str,
    encoder: str | None,
    model: str | None,
    host: str,
    port: int,
) -> None:
    """Serve with ``workers`` processes until SIGTERM / SIGINT; returns once all drained.

    Raises InvalidInputError for a bad ``SHOPLENS_*`` setting (before any worker starts);
    exits with status 3 (as uvicorn does for one process) when a worker cannot start.
    """
    import uvicorn
    from pydantic import ValidationError
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from shoplens.errors import InvalidInputError
    from shoplens.serve.protocol import server_options
    from shoplens.serve.settings import ServiceSettings

    if workers < 2:
        raise ValueError("run_workers needs at least 2 workers")
    extra: dict[str, Any] = {"model": model} if model else {}
    try:  # what every worker will read, checked once here
        settings = ServiceSettings(catalog=catalog, encoder=encoder, **extra)
    except ValidationError as e:
        first = e.errors()[0]
        loc = "_".join(str(x) for x in first["loc"]).upper()
        name = f"SHOPLENS_{loc}" if loc else "settings"
        raise InvalidInputError(f"{name}: {first['msg']}") from e
    export_settings(catalog, encoder, model)
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    config = uvicorn.Config(
        FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_S,
        timeout_worker_healthcheck=HEALTHCHECK_S,
        **server_options(settings),  # as one process
    )
    if settings.rate_limit_per_s or settings.rate_limit_key_per_s:
        logging.getLogger("uvicorn.error").info(
            "%d workers: rate limits are kept per worker, so a client spread over them gets "
            "up to %dx the configured rate",
            workers,
            workers,
        )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        sys.exit(STARTUP_FAILURE)

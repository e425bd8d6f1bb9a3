"""Running the answer service in-process with uvicorn's Python API (no ``uvicorn`` on ``PATH`` needed).

``mlflow models serve`` starts ``uvicorn`` through ``bash -c``, so it fails with ``uvicorn: not found`` unless the
virtualenv's ``bin/`` is on ``PATH``. Here the app is built in this interpreter and handed to
``uvicorn.Server``; ``evertune serve`` and the embedded stack's ``serve`` component both run
``sys.executable -m evertune serve``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.serving.answers import Search
    from evertune.serving.cache import AnswerCache
    from evertune.serving.follower import RegistryFollower
    from evertune.settings import Settings

HOST = "127.0.0.1"
#: Environment variable of the port (the embedded stack sets it; see ``evertune_airflow.stack_env.PORT_VARS``).
PORT_VAR = "EVERTUNE_SERVE_PORT"
DEFAULT_PORT = 8090
#: MLflow's HTTP client retries a failed request 7 times with backoff (minutes); a poll should fail fast.
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def default_port() -> int:
    """``$EVERTUNE_SERVE_PORT``, else :data:`DEFAULT_PORT`."""
    raw = os.environ.get(PORT_VAR) or str(DEFAULT_PORT)
    try:
        return int(raw)
    except ValueError:
        from evertune.errors import ConfigError

        raise ConfigError(f"{PORT_VAR} must be a port number, got {raw!r}") from None


@dataclass
class Service:
    """A built service: the follower, the app and its answer cache (``None``: off), not yet listening."""

    follower: RegistryFollower
    app: Any
    cache: AnswerCache | None = None


def build_service(params: Params, settings: Settings, *, search: Search | None = None,
                  follower: RegistryFollower | None = None) -> Service:
    """The follower (not started) and the app for these params and settings."""
    from evertune.serving.answers import kb_search
    from evertune.serving.app import build_app
    from evertune.serving.cache import AnswerCache
    from evertune.serving.follower import RegistryFollower

    for key, value in MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    follower = follower or RegistryFollower(params, settings)
    cache = AnswerCache.from_params(params, settings, serving=lambda: (s.versions() if (s := follower.peek()) else None))
    return Service(follower, build_app(follower, params.serve, search or kb_search(params, settings), cache), cache)


def uvicorn_server(app: Any, host: str, port: int) -> Any:
    """A ``uvicorn.Server`` for the app (one process, no reload, access log on)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, workers=1, log_level="info",
                                         lifespan="off", timeout_graceful_shutdown=10))


def serve_forever(params: Params, settings: Settings, host: str = HOST, port: int | None = None) -> None:
    """Start the follower, then serve HTTP until SIGINT/SIGTERM, then stop the follower.

    uvicorn shuts down gracefully on either signal (requests in flight finish, up to 10 s) and then re-raises
    it; SIGINT's ``KeyboardInterrupt`` is a normal end here (exit 0).
    """
    service = build_service(params, settings)
    service.follower.start()
    try:
        uvicorn_server(service.app, host, port or default_port()).run()
    except KeyboardInterrupt:
        pass
    finally:
        service.follower.stop()


@contextlib.contextmanager
def running(service: Service, host: str = HOST, port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Serve in a background thread of this process (tests, benchmarks); yields the base URL.

    The follower is started too; both stop when the block ends.
    """
    server = uvicorn_server(service.app, host, port or default_port())
    server.install_signal_handlers = lambda: None  # not the main thread
    thread = threading.Thread(target=server.run, name="answer-service", daemon=True)
    service.follower.start()
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            service.follower.stop()
            raise RuntimeError(f"answer service did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)
        service.follower.stop()


__all__ = ["DEFAULT_PORT", "HOST", "PORT_VAR", "Service", "build_service", "default_port", "running",
           "serve_forever", "uvicorn_server"]

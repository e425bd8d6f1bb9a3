"""``python -m evertune_airflow.airflow_loopback <airflow args>``: the Airflow CLI with its log servers on 127.0.0.1.

The scheduler (with LocalExecutor), the triggerer and each Celery worker start Airflow's log server
(``airflow.utils.serve_logs``) in a child process, and Airflow 3.3 hard-codes its bind address: ``uvicorn.run(...,
host="")``, every interface, with no setting to change it (``[logging] worker_log_server_port`` sets only the
port). The embedded stack promises that every port it opens listens on 127.0.0.1, so the stack starts those
components through this module: it wraps ``uvicorn.run`` so that a call for the log-server app with an
all-interfaces host binds 127.0.0.1 instead, then hands over to Airflow's own ``main()``. Nothing else changes.

The wrapper lives in this process's memory; the log server's child inherits it because Airflow starts it with
``multiprocessing`` and Linux's default start method on Python 3.11 is ``fork``. Under ``spawn``/``forkserver``
(Python 3.14's default, or ``[core] mp_start_method``) the child re-imports uvicorn and binds every interface
again. The stack's scheduler runs under ``forkserver`` (it preloads the task libraries, ``stack_env.TASK_PRELOAD``),
so its forkserver imports :mod:`evertune_airflow.loopback_preload` first, which applies the same wrapper there.
Either way, :func:`evertune_airflow.stack_processes.listening_addresses` is what ``tests/integration/test_stack.py``
checks, so that regression would fail the suite, not pass silently.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

LOOPBACK = "127.0.0.1"
#: The ASGI app path Airflow's log server passes to ``uvicorn.run``.
LOG_SERVER_APP = "airflow.utils.serve_logs"
_ALL_INTERFACES = ("", "0.0.0.0", "::", "[::]")


def bind_log_server_to_loopback() -> None:
    """Wrap ``uvicorn.run`` so the log-server app binds :data:`LOOPBACK` (idempotent)."""
    import uvicorn

    original = uvicorn.run
    if getattr(original, "_evertune_loopback", False):
        return

    @functools.wraps(original)
    def run(app: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(app, str) and app.startswith(LOG_SERVER_APP) and kwargs.get("host", "") in _ALL_INTERFACES:
            kwargs["host"] = LOOPBACK
        return original(app, *args, **kwargs)

    run._evertune_loopback = True  # type: ignore[attr-defined]
    uvicorn.run = run


def main(argv: list[str] | None = None) -> int:
    """Run ``airflow <argv>`` with the log server bound to loopback; returns Airflow's exit code."""
    bind_log_server_to_loopback()
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *(sys.argv[1:] if argv is None else argv)]
    return airflow_main() or 0


if __name__ == "__main__":
    sys.exit(main())

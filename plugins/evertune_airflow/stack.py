"""The embedded stack: Airflow and MLflow as local processes. This module is its command line.

Run it as ``python -m evertune_airflow.stack up|down|status|env|password|fab-admin``.

Components are separate processes, never ``airflow standalone``: ``airflow scheduler``,
``airflow dag-processor``, ``airflow api-server``, ``airflow triggerer`` and ``mlflow server``
(the last one only when the tracking URI is local). The parts:

* :mod:`evertune_airflow.stack_env`: ports, executor and auth choice, secrets, :func:`airflow_env` (all
  Airflow configuration; the stack, the demo and the tests share it);
* :mod:`evertune_airflow.stack_processes`: the components, spawning, PID files, finding and stopping every
  process, memory;
* :mod:`evertune_airflow.stack_control`: database migration, ``up``, health checks, status;
* :mod:`evertune_airflow.stack_client`: the REST client (demo, tests) with the stall diagnosis;
* :mod:`evertune_airflow.supervise`: the restart-on-crash wrapper each component runs under.

None of them has side effects at import time, and their imports are cheap.
"""

from __future__ import annotations

import argparse
import os
import sys

from evertune.errors import EvertuneError
from evertune.settings import get_settings
from evertune_airflow.stack_control import status_text, up
from evertune_airflow.stack_env import ADMIN_USER, StackError, admin_password, airflow_env
from evertune_airflow.stack_processes import log_dir, stop


def _cmd_fab_admin(_args: argparse.Namespace) -> int:
    """Create the FAB ``admin`` user with ``EVERTUNE_ADMIN_PASSWORD`` unless it exists (idempotent)."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import (
        get_application_builder,
    )

    password = os.environ.get("EVERTUNE_ADMIN_PASSWORD")
    if not password:
        raise StackError("EVERTUNE_ADMIN_PASSWORD is not set")
    with get_application_builder() as appbuilder:
        if appbuilder.sm.find_user(ADMIN_USER):
            print(f"user {ADMIN_USER} exists")
            return 0
        role = appbuilder.sm.find_role("Admin")
        if not appbuilder.sm.add_user(ADMIN_USER, "evertune", "admin", f"{ADMIN_USER}@localhost", role, password):
            raise StackError(f"FAB refused to create user {ADMIN_USER}")
    print(f"user {ADMIN_USER} created with role Admin")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    result = up(timeout=args.timeout)
    print(result.describe())
    settings = get_settings()
    print(f"  state       {settings.home}\n  logs        {log_dir(settings)}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    result = stop(timeout=args.timeout)
    if not result.stopped:
        print("evertune stack: nothing was running")
        return 0
    summary = ", ".join(f"{name} ({count} procs)" for name, count in result.stopped.items())
    forced = f"; SIGKILL needed for {len(result.killed)}" if result.killed else ""
    print(f"evertune stack stopped in {result.seconds:.1f} s: {summary}{forced}")
    return 0


def _cmd_status(_args: argparse.Namespace) -> int:
    print(status_text())
    return 0


def _cmd_env(_args: argparse.Namespace) -> int:
    import shlex

    for key, value in sorted(airflow_env().items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _cmd_password(_args: argparse.Namespace) -> int:
    password = admin_password()
    if not password:
        print("no password yet: run `make up` first", file=sys.stderr)
        return 1
    print(password)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m evertune_airflow.stack``."""
    parser = argparse.ArgumentParser(prog="python -m evertune_airflow.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the stack (idempotent) and wait until healthy")
    up_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for health")
    up_parser.set_defaults(func=_cmd_up)
    down_parser = sub.add_parser("down", help="stop every process of the stack")
    down_parser.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL, per round")
    down_parser.set_defaults(func=_cmd_down)
    sub.add_parser("status", help="what runs, memory, health").set_defaults(func=_cmd_status)
    sub.add_parser("env", help="print the Airflow environment as shell exports").set_defaults(func=_cmd_env)
    sub.add_parser("password", help="print the admin password").set_defaults(func=_cmd_password)
    sub.add_parser("fab-admin", help="create the FAB admin user (EVERTUNE_AUTH_MANAGER=fab; run by `up`)"
                   ).set_defaults(func=_cmd_fab_admin)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EvertuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

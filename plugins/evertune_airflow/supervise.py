"""A small process supervisor for the embedded stack: restart a component that crashes.

``python -m evertune_airflow.supervise --name scheduler -- airflow scheduler``

Production runs Airflow's components under systemd, Kubernetes or compose, which restart a crashed
scheduler. The embedded stack had nothing, and on SQLite a scheduler can exit when the shared
database stays locked for too long on a starved machine (its DB retries are short): its queued runs
then wait forever. This wrapper is what ``restart: on-failure`` is in compose:

* the child stays in the wrapper's session and process group (the wrapper is the session leader the
  stack records), so ``stack_processes.stop``'s one signal per group reaches both;
* when the child exits without having been asked to stop, it logs the exit and starts it again after a
  growing back-off;
* it gives up (and exits with the child's code) after ``--max-fast-failures`` consecutive exits that
  came sooner than ``--min-uptime`` seconds after their start: a broken configuration must surface as a
  dead component, not as an endless restart loop.

Standard library only; no side effects at import time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


def _log(name: str, message: str) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(f"==== {stamp} supervise[{name}]: {message}", flush=True)


def supervise(argv: Sequence[str], name: str, min_uptime: float = 30.0, max_fast_failures: int = 3,
              max_backoff: float = 30.0) -> int:
    """Run ``argv`` until it exits on request; restart it when it crashes.

    Args:
        argv: The command.
        name: Component name, for the log lines.
        min_uptime: A run shorter than this counts as a fast failure.
        max_fast_failures: Consecutive fast failures before giving up.
        max_backoff: Longest wait between two starts, in seconds.

    Returns:
        The exit code to leave with: the child's last one (0 when it was stopped on request).
    """
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        # Not passed on: the stack signals whole process groups, so the child got the same signal, and
        # a second SIGINT would make Airflow skip its graceful shutdown.
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    fast_failures = 0
    backoff = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(list(argv))
        code = child.wait()
        uptime = time.monotonic() - started
        if stopping:
            return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code
        fast_failures = fast_failures + 1 if uptime < min_uptime else 0
        if fast_failures >= max_fast_failures:
            _log(name, f"exited with {code} after {uptime:.1f} s, {fast_failures} times in a row; giving up")
            return code or 1
        backoff = backoff * 2 if uptime < min_uptime else 1.0
        wait = min(backoff, max_backoff)
        _log(name, f"exited with {code} after {uptime:.1f} s without being asked to; restarting in {wait:.0f} s")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.2)
        if stopping:
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m evertune_airflow.supervise")
    parser.add_argument("--name", required=True)
    parser.add_argument("--min-uptime", type=float, default=30.0)
    parser.add_argument("--max-fast-failures", type=int, default=3)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    return supervise(command, args.name, args.min_uptime, args.max_fast_failures)


if __name__ == "__main__":
    sys.exit(main())

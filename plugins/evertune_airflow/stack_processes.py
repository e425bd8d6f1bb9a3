"""The embedded stack's processes: what runs, how each is started, found, measured and stopped.

Each component runs in its own session (``setsid``) with default SIGINT/SIGTERM handling, under the
restart-on-crash wrapper :mod:`evertune_airflow.supervise`, so one signal to its process group reaches
uvicorn workers and LocalExecutor workers alike. PID files live in ``$EVERTUNE_HOME/run/``, logs in
``$EVERTUNE_HOME/logs/``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from evertune.settings import Settings, get_settings
from evertune_airflow.stack_env import (
    HOST,
    STACK_MARKER,
    StackError,
    StackPorts,
    celery_workers,
    executor,
    mlflow_accounts,
    mlflow_auth,
    mlflow_backend_uri,
    serve_enabled,
)


@dataclass(frozen=True)
class Component:
    """One long-running process of the stack."""

    name: str
    argv: tuple[str, ...]
    #: Key in Airflow's ``/api/v2/monitor/health`` answer, if any.
    health_key: str | None = None
    port: int | None = None
    #: Started only once the API server answers: its tasks and triggers call the Execution API.
    needs_api: bool = False
    #: Extra environment of this component only (a Celery worker's log port and identity).
    env: tuple[tuple[str, str], ...] = ()


def console_script(name: str) -> list[str]:
    """The console script of this interpreter's environment (falls back to ``python -m``)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def stack_components(settings: Settings, ports: StackPorts | None = None) -> list[Component]:
    """The processes of the embedded stack, in start order."""
    ports = ports or StackPorts.from_env()
    airflow = console_script("airflow")
    # Components that run Airflow's log server start through the loopback launcher: upstream binds it to
    # every interface (see evertune_airflow.airflow_loopback).
    serving = (sys.executable, "-m", "evertune_airflow.airflow_loopback")
    celery = executor() == "CeleryExecutor"
    components = [
        Component("api-server", (*airflow, "api-server"), "metadatabase", ports.airflow),
        Component("dag-processor", (*airflow, "dag-processor"), "dag_processor"),
        # With LocalExecutor the scheduler runs the tasks and serves their logs; with Celery the workers do.
        Component("scheduler", (*serving, "scheduler"), "scheduler", None if celery else ports.worker_log,
                  needs_api=True),
        Component("triggerer", (*serving, "triggerer"), "triggerer", ports.triggerer_log, needs_api=True),
    ]
    if celery:
        for index, worker in enumerate(celery_workers()):
            log_port = ports.worker_log + index
            argv = (*serving, "celery", "worker", "--queues", ",".join(worker.queues),
                    "--concurrency", str(worker.concurrency), "--celery-hostname", f"{worker.name}@%h")
            components.append(Component(worker.name, argv, None, log_port, needs_api=True, env=(
                ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(log_port)), ("EVERTUNE_WORKER", worker.name))))
    backend = mlflow_backend_uri(settings, ports)
    if backend is not None:
        # EVERTUNE_MLFLOW_AUTH=basic: MLflow's basic-auth app (its config and admin: stack_mlflow_auth.server_env).
        auth = ("--app-name", "basic-auth") if mlflow_auth() == "basic" else ()
        argv = (*console_script("mlflow"), "server", *auth,
                "--artifacts-destination", settings.mlflow_artifact_root, "--serve-artifacts",
                "--host", HOST, "--port", str(ports.mlflow), "--workers", "1")
        # The store URL may hold a database password: environment, not argv (`ps` shows argv to everyone).
        components.append(Component("mlflow", argv, None, ports.mlflow, env=(("MLFLOW_BACKEND_STORE_URI", backend),)))
    if serve_enabled():
        # The answer service: uvicorn in-process (no console script needed), champion + production KB, loopback.
        # Against a basic-auth MLflow it only reads the registry: the reader account, not the pipeline's.
        reader = mlflow_accounts(settings).readers if backend is not None and mlflow_auth() == "basic" else ()
        components.append(Component("serve", (sys.executable, "-m", "evertune", "serve", "--host", HOST,
                                              "--port", str(ports.serve)), None, ports.serve,
                                    env=tuple(reader[0].env().items()) if reader else ()))
    # Each command runs under the restart-on-crash wrapper (what compose's `restart:` does in production).
    return [Component(c.name, _supervised(c.name, c.argv), c.health_key, c.port, c.needs_api, c.env)
            for c in components]


def _supervised(name: str, argv: Sequence[str]) -> tuple[str, ...]:
    return (sys.executable, "-m", "evertune_airflow.supervise", "--name", name, "--", *argv)


def run_dir(settings: Settings) -> Path:
    """Folder of the PID files."""
    return settings.home / "run"


def log_dir(settings: Settings) -> Path:
    """Folder of the component logs."""
    return settings.home / "logs"


def pid_path(settings: Settings, name: str) -> Path:
    """The PID file of component ``name`` (its session leader's PID)."""
    return run_dir(settings) / f"{name}.pid"


def _restore_default_signals() -> None:
    # A shell starts background jobs with SIGINT ignored and children inherit SIG_IGN across exec;
    # Airflow and MLflow then never see Ctrl-C / `kill -INT`. Give every component the defaults back.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def spawn(component: Component, env: dict[str, str], settings: Settings) -> int:
    """Start one component in its own session; write its PID file; return the PID."""
    log_path = log_dir(settings) / f"{component.name}.log"
    with open(log_path, "ab") as log:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        log.write(f"\n==== {stamp} start {' '.join(component.argv)}\n".encode())
        log.flush()
        # preexec_fn: the only way to undo an inherited SIG_IGN in the child; `up` runs no threads here.
        proc = subprocess.Popen(
            component.argv, env={**env, **dict(component.env)}, cwd=settings.home, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            preexec_fn=_restore_default_signals,  # noqa: PLW1509 - only resets signal handlers, no locks taken
        )
    pid_file = pid_path(settings, component.name)
    tmp = pid_file.with_suffix(".tmp")
    started = _seconds_since_boot(proc.pid)
    tmp.write_text(f"{proc.pid}\n" if started is None else f"{proc.pid} {started:.2f}\n")
    tmp.replace(pid_file)
    return proc.pid


def _seconds_since_boot(pid: int) -> float | None:
    """When ``pid`` started, in seconds since boot (``None``: gone). Unlike psutil's wall-clock start time (boot
    time + ticks), a clock step (a VM's time sync) cannot move it."""
    import psutil

    try:
        return psutil.Process(pid).create_time() - psutil.boot_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def session_leader(settings: Settings, name: str):
    """The live session leader recorded in ``name``'s PID file, or ``None``."""
    import psutil

    pid_file = pid_path(settings, name)
    try:
        fields = pid_file.read_text().split()
        pid = int(fields[0])
        proc = psutil.Process(pid)
        # Against PID reuse: the process started when recorded (old files: before the file) and leads its session.
        if len(fields) > 1:
            started = _seconds_since_boot(pid)
            reused = started is None or abs(started - float(fields[1])) > 0.5
        else:
            reused = proc.create_time() > pid_file.stat().st_mtime + 1.0
        if reused or os.getsid(pid) != pid:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        return proc
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _reap(pid: int) -> None:
    # Only possible when the caller started the process itself (tests); otherwise init reaps it.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _own_lineage() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def stack_processes(settings: Settings) -> dict[str, list]:
    """Every live process of the stack, by component (``"other"``: marked processes outside a session).

    A component's processes are the members of its session (the LocalExecutor puts each task in its
    own process group, but not in its own session) plus descendants of its leader.
    """
    import psutil

    leaders = {c.name: session_leader(settings, c.name) for c in known_components(settings)}
    by_sid = {p.pid: name for name, p in leaders.items() if p is not None}
    found: dict[str, list] = {name: [] for name in leaders}
    found["other"] = []
    seen: set[int] = set()
    skip = _own_lineage()
    marker = str(settings.home)
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid in skip or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            sid = os.getsid(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if sid in by_sid:
            found[by_sid[sid]].append(proc)
            seen.add(proc.pid)
            continue
        try:
            if proc.environ().get(STACK_MARKER) == marker:
                found["other"].append(proc)
                seen.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    for name, leader in leaders.items():
        if leader is None:
            continue
        try:
            for child in leader.children(recursive=True):
                if child.pid not in seen and child.pid not in skip:
                    found[name].append(child)
                    seen.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def known_components(settings: Settings) -> list[Component]:
    """Configured components plus any other with a PID file (e.g. mlflow from an earlier config)."""
    components = stack_components(settings)
    names = {c.name for c in components}
    if run_dir(settings).is_dir():
        for pid_file in sorted(run_dir(settings).glob("*.pid")):
            if pid_file.stem not in names:
                components.append(Component(pid_file.stem, ()))
    return components


def listening_addresses(settings: Settings) -> dict[str, set[tuple[str, int]]]:
    """The TCP addresses each component's processes listen on (``{name: {(ip, port), ...}}``)."""
    import psutil

    found: dict[str, set[tuple[str, int]]] = {}
    for name, procs in stack_processes(settings).items():
        for proc in procs:
            try:
                connections = proc.net_connections(kind="tcp")
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            found.setdefault(name, set()).update(
                (c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN)
    return found


def port_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True



def log_tail(settings: Settings, component: str, lines: int = 60) -> str:
    """The last ``lines`` lines of a component's log (for error messages and test failures)."""
    return tail_file(log_dir(settings) / f"{component}.log", lines)


def tail_file(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""



@contextlib.contextmanager
def stack_lock(settings: Settings) -> Iterator[None]:
    """Serialize ``up`` and ``down`` of one state folder (two terminals, or `make demo` beside `make up`)."""
    import fcntl

    if not run_dir(settings).is_dir():  # nothing was ever started here: nothing to race with
        yield
        return
    with open(run_dir(settings) / "stack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass
class StopResult:
    """What :func:`stop` did."""

    stopped: dict[str, int]
    killed: list[int]
    seconds: float


#: Stopped last: running tasks report their end through the API server, and tasks may log to MLflow.
SERVERS_LAST = ("api-server", "mlflow")
#: Components whose processes must be gone before the servers stop (the triggerer cleans up on its own).
API_CLIENTS = ("scheduler", "dag-processor", "other")


def stop(settings: Settings | None = None, timeout: float = 20.0, names: Iterable[str] | None = None) -> StopResult:
    """Stop the stack: signal every process group, wait, SIGKILL what is left, then verify.

    Two rounds: first SIGINT to the scheduler, DAG processor and triggerer sessions (every process
    group in them, tasks included), and a wait until the scheduler's tasks are gone, so interrupted
    tasks can still report to the API server; then SIGTERM to the API and MLflow servers. What is
    still alive ``timeout`` seconds after its signal gets SIGKILL. Finally no process of the stack
    may remain and its ports must be free.

    Args:
        settings: Deployment settings; read from the environment when omitted.
        timeout: Seconds between the polite signal and SIGKILL, per round.
        names: Only these components (default: all, plus any marked stray process).

    Returns:
        Processes stopped per component, PIDs that needed SIGKILL, seconds taken.

    Raises:
        StackError: A process survived SIGKILL or a port is still taken.
    """
    settings = settings or get_settings()
    with stack_lock(settings):
        return stop_unlocked(settings, timeout, names)


def stop_unlocked(settings: Settings, timeout: float, names: Iterable[str] | None) -> StopResult:
    """:func:`stop` for a caller that already holds :func:`stack_lock` (``up`` cleaning up after a failed start)."""
    import psutil

    ports = StackPorts.from_env()
    begin = time.monotonic()
    wanted = set(names) if names is not None else None
    found = {name: procs for name, procs in stack_processes(settings).items()
             if wanted is None or name in wanted}
    leaders = [leader for name in found if name != "other" and (leader := session_leader(settings, name)) is not None]
    first = [p for name, procs in found.items() if name not in SERVERS_LAST for p in procs]
    servers = [p for name, procs in found.items() if name in SERVERS_LAST for p in procs]
    killed: list[int] = []

    def finish(procs: list, deadline: float) -> None:
        _gone, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
        if alive:
            killed.extend(p.pid for p in alive)
            _signal_groups(alive, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)

    # SIGINT first: Airflow 3 tasks only run on_kill() on SIGTERM and keep going, while SIGINT raises
    # KeyboardInterrupt in the task; scheduler, triggerer and DAG processor treat both signals alike.
    _signal_groups(first, signal.SIGINT)
    first_deadline = time.monotonic() + timeout
    finish([p for name, procs in found.items() if name in API_CLIENTS for p in procs], first_deadline)
    _signal_groups(servers, signal.SIGTERM)
    finish(servers, time.monotonic() + timeout)
    finish(first, first_deadline)
    for leader in leaders:
        _reap(leader.pid)

    remaining = {name: [p.pid for p in procs] for name, procs in stack_processes(settings).items()
                 if (wanted is None or name in wanted) and procs}
    if remaining:
        raise StackError(f"processes survived SIGKILL: {remaining}")
    for name in found:
        if name != "other":
            pid_path(settings, name).unlink(missing_ok=True)
    if wanted is None and any(found.values()):
        _wait_ports_free(ports.all(), timeout=10)
    return StopResult({name: len(procs) for name, procs in found.items() if procs}, killed,
                      time.monotonic() - begin)


def _signal_groups(procs: Iterable, signum: int) -> None:
    """Signal the process group of each process once (and the process itself if it has no group of its own)."""
    groups: set[int] = set()
    for proc in procs:
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            continue
        if pgid in groups:
            continue
        groups.add(pgid)
        try:
            if pgid == os.getpgrp():
                # Never signal our own group (tests start the stack from the pytest process).
                os.kill(proc.pid, signum)
            else:
                os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def _wait_ports_free(ports: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        busy = {name: port for name, port in ports.items() if not port_free(port)}
        if not busy:
            return
        if time.monotonic() > deadline:
            raise StackError(f"ports still in use after stopping the stack: {busy}")
        time.sleep(0.2)


def memory(settings: Settings | None = None) -> dict[str, dict[str, float]]:
    """Processes and memory (RSS and PSS, MiB) per component.

    RSS double-counts pages shared between forked workers; PSS splits them fairly.
    """
    import psutil

    settings = settings or get_settings()
    report: dict[str, dict[str, float]] = {}
    for name, procs in stack_processes(settings).items():
        rss = pss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        if procs:
            report[name] = {"processes": len(procs), "rss_mib": rss / 2**20, "pss_mib": pss / 2**20}
    return report


"""A stack component's PID file: it finds the process it started even after the wall clock moves, and never a
process that reused the PID."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from evertune.settings import get_settings
from evertune_airflow.stack_processes import Component, log_dir, pid_path, run_dir, session_leader, spawn


@pytest.fixture
def sleeper(evertune_home: Path):
    settings = get_settings()
    for folder in (run_dir(settings), log_dir(settings)):
        folder.mkdir(parents=True, exist_ok=True)
    pid = spawn(Component("sleeper", ("sleep", "30")), dict(os.environ), settings)
    yield settings, pid
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def test_the_started_process_is_found_though_the_clock_moved_after_its_pid_file_was_written(sleeper) -> None:
    settings, pid = sleeper
    assert session_leader(settings, "sleeper").pid == pid
    # A clock stepped forward by a VM's time sync after the file was written: the file now looks 30 s older than
    # the process (psutil's start time follows the wall clock). A start-time-vs-mtime check called it PID reuse,
    # and `up` reported a healthy component as "exited during start-up".
    pid_file = pid_path(settings, "sleeper")
    past = time.time() - 30
    os.utime(pid_file, (past, past))
    assert session_leader(settings, "sleeper").pid == pid


def test_a_process_that_reused_the_pid_is_not_the_component(sleeper) -> None:
    settings, pid = sleeper
    pid_file = pid_path(settings, "sleeper")
    recorded_pid, started = pid_file.read_text().split()
    assert int(recorded_pid) == pid
    pid_file.write_text(f"{pid} {float(started) - 60:.2f}\n")  # the component started a minute before this process
    assert session_leader(settings, "sleeper") is None


def test_a_pid_file_of_an_older_release_still_works(sleeper) -> None:
    settings, pid = sleeper
    pid_path(settings, "sleeper").write_text(f"{pid}\n")  # written after the process started: not reuse
    assert session_leader(settings, "sleeper").pid == pid

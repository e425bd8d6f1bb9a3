"""The embedded stack's restart-on-crash wrapper, with real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SUPERVISE = [sys.executable, "-m", "evertune_airflow.supervise"]


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "child.py"
    path.write_text(body)
    return path


def test_a_crashing_child_is_restarted_until_it_stays_up(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    # Crash on the first two starts, then run until signalled.
    child = _script(tmp_path, f"""
import pathlib, sys, time
p = pathlib.Path({str(counter)!r})
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
if n < 3:
    sys.exit(7)
time.sleep(60)
""")
    proc = subprocess.Popen([*SUPERVISE, "--name", "probe", "--max-fast-failures", "5", "--", sys.executable,
                             str(child)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (counter.exists() and counter.read_text() == "3"):
            time.sleep(0.1)
        assert counter.read_text() == "3"
        time.sleep(0.5)
        assert proc.poll() is None, "the supervisor must keep running while the child is up"
        # A stop signal to the group ends both, without another restart.
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert output.count("restarting") == 2, output
    assert counter.read_text() == "3"


def test_a_child_that_keeps_failing_fast_is_given_up(tmp_path: Path) -> None:
    child = _script(tmp_path, "import sys; sys.exit(3)\n")
    proc = subprocess.run([*SUPERVISE, "--name", "broken", "--max-fast-failures", "2", "--", sys.executable,
                           str(child)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3
    assert "giving up" in proc.stdout

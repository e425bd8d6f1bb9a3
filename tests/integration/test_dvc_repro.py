"""``dvc repro`` of the generated dvc.yaml, for real, on one interval in a scratch copy of the repository.

The refresh stages of 2026-11-01 run (demo data, ingest .. publish, with real GX, DVC, LanceDB and MiniLM); a
second ``dvc repro`` must run nothing, and a changed retrieval knob must invalidate exactly the stages that
read it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = "publish_index@2026-11-01"
pytestmark = pytest.mark.slow


def _copy_repo(dest: Path) -> None:
    """The repository's files as git sees them (tracked and untracked, not ignored), in a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and name != "dvc.lock":
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dvc-repo")
    _copy_repo(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "EVERTUNE_", "MLFLOW_"))}
    if "EVERTUNE_MODELS_DIR" in os.environ:
        env["EVERTUNE_MODELS_DIR"] = os.environ["EVERTUNE_MODELS_DIR"]
    # The stages' `python -m evertune` is this interpreter, running the copy's code with its default .evertune/.
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": f"{root / 'include'}{os.pathsep}{root / 'plugins'}", "DVC_NO_ANALYTICS": "1"})
    return {"root": root, "env": env}


def dvc(scratch: dict, *args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=scratch["root"],
                          env=scratch["env"], capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def test_repro_twice_runs_nothing_the_second_time(scratch: dict) -> None:
    first = dvc(scratch, "repro", TARGET)
    ran = [line for line in first.splitlines() if line.startswith("Running stage")]
    assert len(ran) == 9, first[-3000:]  # demo_data and the eight refresh steps of the interval
    receipts = scratch["root"] / ".evertune" / "work" / "receipts" / "refresh" / "ds=2026-11-01"
    assert sorted(p.stem for p in receipts.glob("*.json")) == sorted(
        ["ingest", "validate", "version", "plan", "embed", "sync", "evaluate", "publish"])

    second = dvc(scratch, "repro", TARGET)
    assert "Running stage" not in second, second
    assert "didn't change, skipping" in second
    assert "up to date" in dvc(scratch, "status", TARGET).lower()


def test_a_changed_knob_invalidates_only_the_stages_that_read_it(scratch: dict) -> None:
    params = scratch["root"] / "params.yaml"
    text = params.read_text()
    assert "\n  k: 5\n" in text
    params.write_text(text.replace("\n  k: 5\n", "\n  k: 6\n"))
    try:
        status = dvc(scratch, "status", "--with-deps", TARGET)
    finally:
        params.write_text(text)
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith("\t")
               and line.strip().endswith(":")}
    assert changed == {"evaluate_retrieval@2026-11-01", "publish_index@2026-11-01"}, status

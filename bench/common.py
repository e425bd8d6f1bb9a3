"""Shared plumbing for the benchmarks: an isolated environment, machine facts, statistics, result files."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
#: Bootstrapped checkpoints are read from here unless EVERTUNE_MODELS_DIR says otherwise (read-only use).
DEFAULT_MODELS_DIR = REPO_ROOT / ".evertune" / "models"
PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "lancedb",
    "pyarrow",
    "trl",
    "peft",
    "datasets",
    "accelerate",
)


def work_root() -> Path:
    """Scratch folder of the benchmarks (``EVERTUNE_BENCH_WORK`` or ``<tmp>/evertune-bench-<uid>``)."""
    env = os.environ.get("EVERTUNE_BENCH_WORK")
    root = Path(env) if env else Path(tempfile.gettempdir()) / f"evertune-bench-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepare_env() -> Path:
    """Make this process offline and isolated: its own ``EVERTUNE_HOME``, shared read-only model folder.

    Returns:
        The ``EVERTUNE_HOME`` used.
    """
    sys.path.insert(0, str(REPO_ROOT / "include"))  # harmless when the package is installed
    from evertune.runtime import apply_offline_env
    from evertune.settings import LOCATION_ENV_VARS  # a benchmark must never inherit them

    apply_offline_env()
    home = work_root() / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["EVERTUNE_HOME"] = str(home)
    for var in LOCATION_ENV_VARS:
        os.environ.pop(var, None)
    if "EVERTUNE_MODELS_DIR" not in os.environ and DEFAULT_MODELS_DIR.is_dir():
        os.environ["EVERTUNE_MODELS_DIR"] = str(DEFAULT_MODELS_DIR)
    return home


def settings_with_lancedb(uri: Path) -> Any:
    """The current settings with ``lancedb_uri`` pointed at ``uri``."""
    from evertune.settings import get_settings

    return dataclasses.replace(get_settings(), lancedb_uri=str(uri))


def load_bench_params(**sections: dict[str, Any]) -> Any:
    """``params.yaml`` with some fields of some sections replaced, e.g. ``train={"max_steps": 10}``."""
    from evertune.config import load_params, parse_params

    data = load_params().to_dict()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return parse_params(data, source="bench")


# ----------------------------------------------------------------------------- machine facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_sha() -> str:
    from evertune.tuning.train import git_sha

    sha = git_sha(REPO_ROOT)
    return sha if sha == "unknown" else sha[:7] + sha[40:]


def machine_info() -> dict[str, Any]:
    """CPU, memory, load, torch threads, package versions and git revision of this run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "git": _git_sha(),
        "versions": versions,
    }
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        info["memory_gb"] = round(mem_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


# ----------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    """Median (``nan`` for no values)."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` in [0, 100], linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and mean of durations in seconds, as milliseconds, and their count."""
    return {"p50_ms": round(1000 * percentile(values, 50), 2),
            "p95_ms": round(1000 * percentile(values, 95), 2),
            "mean_ms": round(1000 * sum(values) / len(values), 2), "n": len(values)}  # fmt: skip


@contextmanager
def stopwatch():
    """``with stopwatch() as t: ...`` then ``t()`` gives the elapsed seconds (frozen at exit)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def load_average() -> float:
    """The 1-minute load average (how busy the shared machine was)."""
    return round(os.getloadavg()[0], 2)


# ----------------------------------------------------------------------------- output


def banner(title: str) -> None:
    """Print a section header."""
    print(f"\n=== {title} ===", flush=True)


def save_result(name: str, quick: bool, record: dict[str, Any]) -> Path:
    """Write the benchmark's record to ``bench/results/<name>[-quick].json`` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    print(f"results written to {path.relative_to(REPO_ROOT)}", flush=True)
    return path


def verdict(ok: bool) -> str:
    """``MEETS`` / ``MISSES`` for a target check."""
    return "MEETS" if ok else "MISSES"

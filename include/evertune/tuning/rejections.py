"""The log of training datasets rejected before training (``PoisonedDataError``), one JSON object per line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from evertune.errors import PoisonedDataError
from evertune.settings import Settings

log = logging.getLogger("evertune.tuning.steps")

REJECTIONS_FILE = "rejections.jsonl"


def rejections_path(settings: Settings) -> Path:
    """The append-only log of datasets rejected before training (one JSON object per line)."""
    return settings.work_dir / "tune" / REJECTIONS_FILE


def read_rejections(settings: Settings) -> list[dict[str, Any]]:
    """The entries of :func:`rejections_path`, oldest first (empty when nothing was ever rejected)."""
    path = rejections_path(settings)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def record_rejection(settings: Settings, as_of: str, dag_run_id: str | None, exc: PoisonedDataError) -> None:
    """Append a rejected dataset (``PoisonedDataError``) to :func:`rejections_path` and name its rows in the log.

    The dataset is never written, so this line (and the task log) is where the rejected rows are named.
    """
    report = exc.report
    entry = {
        "as_of": as_of,
        "dag_run_id": dag_run_id or "",
        "error": type(exc).__name__,
        "message": str(exc),
        "checked": report.get("checked"),
        "ungrounded": report.get("ungrounded"),
        "ungrounded_fraction": report.get("ungrounded_fraction"),
        "max_ungrounded_fraction": report.get("max_ungrounded_fraction"),
        "by_interval": report.get("by_interval", {}),
        "excluded": report.get("excluded", []),
    }
    path = rejections_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
    log.error("dataset as of %s rejected before training: %s", as_of, exc)
    log_excluded(report.get("excluded", []), logging.ERROR)


def log_excluded(rows: list[dict[str, Any]], level: int, limit: int = 20) -> None:
    """Name the first ``limit`` QA rows the groundedness check excluded in the task log."""
    for row in rows[:limit]:
        log.log(level, "  %s (%s, %s): %s, support %s, missing %s", row["qa_id"], row["doc_id"], row["interval"],
                row["reason"], row["support"], row["missing_values"])


__all__ = ["REJECTIONS_FILE", "log_excluded", "read_rejections", "record_rejection", "rejections_path"]

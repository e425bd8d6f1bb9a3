"""Print where a demo's time went: per DAG run, its wall time and the time of each task, from the Airflow DB.

Usage: ``.venv/bin/python scripts/profile_demo.py [EVERTUNE_HOME]`` (default ``.evertune``). It reads the
embedded stack's SQLite metadata database read-only, so it works with the stack up or down. Mapped tasks are
summed per task id (their count is shown). This is the profile behind docs/benchmarks.md section 9.
"""

from __future__ import annotations

import sqlite3
import sys
from collections import defaultdict
from pathlib import Path


def _rows(db: Path) -> list[sqlite3.Row]:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    return connection.execute(
        "select r.dag_id, r.run_id, r.start_date as run_start, r.end_date as run_end, r.state as run_state, "
        "t.task_id, t.map_index, t.duration, t.state "
        "from dag_run r left join task_instance t on t.dag_id = r.dag_id and t.run_id = r.run_id "
        "order by r.start_date, t.start_date").fetchall()


def _seconds(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main(home: str = ".evertune") -> int:
    db = Path(home) / "airflow" / "airflow.db"
    if not db.exists():
        print(f"no Airflow database at {db}")
        return 1
    runs: dict[tuple[str, str], dict] = {}
    for row in _rows(db):
        run = runs.setdefault((row["dag_id"], row["run_id"]), {
            "wall": _seconds(row["run_start"], row["run_end"]), "state": row["run_state"],
            "tasks": defaultdict(lambda: [0.0, 0])})
        if row["task_id"] is not None:
            entry = run["tasks"][row["task_id"]]
            entry[0] += row["duration"] or 0.0
            entry[1] += 1
    totals: dict[str, float] = defaultdict(float)
    for (dag_id, run_id), run in runs.items():
        wall = f"{run['wall']:.0f} s" if run["wall"] is not None else "running"
        print(f"{dag_id} {run_id} [{run['state']}]: {wall}")
        for task_id, (seconds, count) in sorted(run["tasks"].items(), key=lambda item: -item[1][0]):
            if seconds >= 1.0:
                print(f"    {task_id:<22} {seconds:7.1f} s" + (f"  ({count} mapped)" if count > 1 else ""))
            totals[f"{dag_id}.{task_id}"] += seconds
        if run["wall"] is not None:
            totals[f"{dag_id} (wall)"] += run["wall"]
    print("\ntotals over all runs:")
    for name, seconds in sorted(totals.items(), key=lambda item: -item[1])[:25]:
        print(f"    {name:<40} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

"""``make demo``'s verdict on the poisoned day: only a run stopped by the data check counts as the expected
rejection, and the champion must not move (the full demo takes ~40 minutes; this checks its judgement)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune.settings import get_settings
from evertune.tuning import rejections
from evertune_airflow import demo

POISONED = {"poisoned": ["2026-11-06"]}
STOPPED = {"build_dataset": "failed", "check_drift": "upstream_failed", "train": "upstream_failed"}


class FakeClient:
    """Task states per run, as the Airflow REST API lists them."""

    def __init__(self, states: dict[str, dict[str, str]]) -> None:
        self.states = states

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return [{"task_id": task, "state": state} for task, state in self.states[run_id].items()]


def rejection(run_id: str, as_of: str = "2026-11-06", error: str = "PoisonedDataError") -> dict:
    return {"as_of": as_of, "dag_run_id": run_id, "error": error, "checked": 149, "ungrounded": 30,
            "ungrounded_fraction": 0.2013, "max_ungrounded_fraction": 0.05}


def test_only_runs_stopped_by_the_poisoned_data_count_as_rejected(evertune_home: Path) -> None:
    settings = get_settings()
    path = rejections.rejections_path(settings)
    path.parent.mkdir(parents=True)
    entries = [rejection("asset__poisoned"), rejection("manual__good_day", as_of="2026-11-05"),
               rejection("asset__trained"), rejection("asset__other", error="CriticalValidationError")]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    runs = [{"dag_id": demo.TUNE_DAG, "dag_run_id": run_id, "state": "failed"}
            for run_id in ("asset__poisoned", "manual__good_day", "asset__trained", "asset__other", "asset__no_record")]
    runs.append({"dag_id": demo.TUNE_DAG, "dag_run_id": "manual__ok", "state": "success"})
    client = FakeClient({
        "asset__poisoned": STOPPED, "manual__good_day": STOPPED, "asset__other": STOPPED,
        "asset__no_record": STOPPED, "manual__ok": {},
        "asset__trained": {**STOPPED, "train": "success"},  # a rejection on record, but training ran
    })
    rejected = demo._rejected_before_training(client, settings, runs, POISONED)
    assert list(rejected) == ["asset__poisoned"]
    assert "30 of 149 QA rows (20.1%)" in rejected["asset__poisoned"] and "limit 5%" in rejected["asset__poisoned"]


@pytest.mark.parametrize(
    ("aliases", "versions", "expected"),
    [
        ({"champion": "1"}, [], []),
        ({"champion": "2"}, [], ["champion moved from v1 to v2"]),
        ({}, [], ["no champion after tuning on the good data"]),
        ({"champion": "1", "challenger": "2"}, [{"version": 2, "tags": {"airflow.run_id": "asset__poisoned"}}],
         ["version 2 was registered from the poisoned data"]),
        ({"champion": "2"}, [{"version": 2, "tags": {"as_of": "2026-11-06"}}],
         ["champion moved from v1 to v2", "version 2 trained on poisoned data holds champion"]),
    ],
)
def test_the_champion_must_stay(monkeypatch: pytest.MonkeyPatch, aliases: dict, versions: list,
                                expected: list[str]) -> None:
    import evertune.reporting

    summary = {"available": True, "aliases": aliases, "versions": versions}
    monkeypatch.setattr(evertune.reporting, "model_summary", lambda params, settings: summary)
    problems = demo._check_gate_expectations(None, None, POISONED, "1", ["asset__poisoned"])
    assert len(problems) == len(expected)
    assert all(problem.startswith(prefix) for problem, prefix in zip(problems, expected, strict=True)), problems

"""``make demo``'s day 7: its tune run counts as rejected while the window holds the poisoned day, and the summary
prints one served answer to a changed fact and the fresh share with its Wilson interval."""

from __future__ import annotations

import json
from pathlib import Path

from evertune.settings import get_settings
from evertune.tuning import rejections
from evertune_airflow import demo

DATES = {"poisoned": ["2026-11-06"], "fresh": ["2026-11-07"]}
STOPPED = {"build_dataset": "failed", "train": "upstream_failed"}


class FakeClient:
    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return [{"task_id": task, "state": state} for task, state in STOPPED.items()]


def test_a_post_tuning_run_rejected_for_the_poisoned_window_is_expected(evertune_home: Path) -> None:
    settings = get_settings()
    path = rejections.rejections_path(settings)
    path.parent.mkdir(parents=True)
    entries = [{"as_of": day, "dag_run_id": f"asset__{day}", "error": "PoisonedDataError", "checked": 160,
                "ungrounded": 30, "ungrounded_fraction": 0.1875, "max_ungrounded_fraction": 0.05}
               for day in ("2026-11-05", "2026-11-06", "2026-11-07")]  # fmt: skip
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    runs = [{"dag_id": demo.TUNE_DAG, "dag_run_id": e["dag_run_id"], "state": "failed"} for e in entries]
    rejected = demo._rejected_before_training(FakeClient(), settings, runs, DATES)
    assert sorted(rejected) == ["asset__2026-11-06", "asset__2026-11-07"]  # day 5 holds no poisoned day
    assert demo._rejected_before_training(FakeClient(), settings, runs, {**DATES, "fresh": []}).keys() == {
        "asset__2026-11-06"}


def test_format_freshness() -> None:
    report = {"interval": "2026-11-07", "champion_version": "1", "champion_as_of": "2026-11-05",
              "kb_version": "kb_chunks@v8", "n": 44, "fresh": 40, "fresh_share": 40 / 44, "ci": [0.788, 0.964],
              "ci_alpha": 0.05, "both_values": 1, "old_only": 2, "token_f1": 0.6123,
              "examples": [{"probe_id": "p", "question": "How many API calls per minute can one token make?",
                            "answer": "The API allows 1200 requests per minute per token.",
                            "old_value": "600 requests per minute", "new_value": "1200 requests per minute",
                            "fresh": True}]}  # fmt: skip
    text = demo.format_freshness(report)
    assert "== Freshness after the 2026-11-07 refresh" in text
    assert "champion v1 (trained on data as of 2026-11-05), KB kb_chunks@v8" in text
    assert "served answer: The API allows 1200 requests per minute per token." in text
    assert "new value '1200 requests per minute' (was '600 requests per minute'): fresh" in text
    assert "fresh share: 40/44 = 91% (95% Wilson CI 79%-96%); both values 1, old value only 2; token-F1 0.612" in text
    stale = demo.format_freshness({**report, "examples": [{**report["examples"][0], "fresh": False}]})
    assert "): NOT fresh" in stale

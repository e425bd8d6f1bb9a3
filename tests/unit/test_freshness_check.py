"""The post-publish freshness check against a real MLflow store: no champion / no probes say so, a champion with
probes is measured and logged once per (interval, KB version, champion version)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evertune.data import snapshot
from evertune.settings import get_settings
from evertune.tuning import freshness_check
from evertune.tuning.freshness import score_freshness

PUBLISHED = {"table": "kb_chunks", "table_version": 9, "changed": True}


def _probe(probe_id: str, changed_on: str) -> dict:
    return {"probe_id": probe_id, "question": f"How big can attachment {probe_id} be?", "doc_id": "attachments",
            "fact_key": "attachment_limit", "old_value": "25 MB", "new_value": "100 MB",
            "answer": "Each attachment can be up to 100 MB.", "changed_on": changed_on}


def _doc(day: str) -> dict:
    return {"doc_id": "attachments", "title": "Attachments", "text": f"Up to 100 MB ({day}).", "source": "help-center",
            "url": "https://x.example/attachments", "updated_at": f"{day}T08:00:00+00:00", "content_hash": day,
            "metadata": "{}", "record_ref": "docs/attachments.md"}  # fmt: skip


def _register_champion(as_of: str) -> int:
    from evertune.config import load_params
    from evertune.tuning.tracking import mlflow_client

    name = load_params().registry.model_name
    client = mlflow_client(get_settings())
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(get_settings().work_dir), tags={"as_of": as_of})
    client.set_registered_model_alias(name, "champion", version.version)
    return int(version.version)


@pytest.mark.usefixtures("evertune_home")
def test_check_freshness_measures_once_per_interval_kb_and_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    settings.ensure_local_dirs()
    validated = settings.data_repo / "validated"
    for day, probes in (("2026-11-05", [_probe("f-early", "2026-11-03")]),
                        ("2026-11-07", [_probe("f-1", "2026-11-07"), _probe("f-2", "2026-11-07")])):
        snapshot.write(validated / f"ds={day}", {"documents": [_doc(day)], "tombstones": [], "qa": [],
                                                   "golden_freshness": probes})  # fmt: skip
    assert freshness_check.check_freshness("2026-11-07", PUBLISHED)["status"] == "no_champion"

    champion = _register_champion("2026-11-05")
    calls: list[tuple[list[str], int, int]] = []

    def measure(params, settings, probes, table_version, champion_v):
        calls.append(([p.probe_id for p in probes], table_version, champion_v))
        answers = ["Attachments can be up to 100MB.", "It went from 25 MB to 100 MB."]
        return {**score_freshness(answers, probes), "answers": answers}, answers

    monkeypatch.setattr(freshness_check, "_measure", measure)
    assert freshness_check.check_freshness("2026-11-05", PUBLISHED)["status"] == "no_probes"  # nothing after as_of
    first = freshness_check.check_freshness("2026-11-07", PUBLISHED)
    assert calls == [(["f-1", "f-2"], 9, champion)]  # f-early changed before the champion's data: not asked
    assert first["status"] == "measured" and not first["reused"]
    assert (first["n"], first["fresh"], first["both_values"], first["fresh_share"]) == (2, 1, 1, 0.5)
    assert first["kb_version"] == "kb_chunks@v9" and first["champion_as_of"] == "2026-11-05"
    assert first["examples"][0]["answer"] == "Attachments can be up to 100MB." and first["examples"][0]["fresh"]

    again = freshness_check.check_freshness("2026-11-07", PUBLISHED)
    assert len(calls) == 1 and again["reused"] and again["run_id"] == first["run_id"]
    assert {k: again[k] for k in ("n", "fresh", "ci", "token_f1")} == {k: first[k] for k in ("n", "fresh", "ci",
                                                                                          "token_f1")}
    from evertune.tuning.tracking import mlflow_client

    client = mlflow_client(settings)
    experiment = client.get_experiment_by_name("evertune-freshness")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["fresh_share"] == 0.5
    assert runs[0].data.tags["champion_version"] == str(champion) and runs[0].data.tags["interval"] == "2026-11-07"
    recorded = freshness_check.recorded_freshness("2026-11-07")
    assert recorded["fresh"] == 1 and recorded["kb_version"] == "kb_chunks@v9" and recorded["examples"]
    assert freshness_check.recorded_freshness("2026-11-06") is None
    # Another KB version is another measurement.
    freshness_check.check_freshness("2026-11-07", {**PUBLISHED, "table_version": 10})
    assert len(calls) == 2 and len(client.search_runs([experiment.experiment_id])) == 2


def test_disabled_says_so(evertune_home: Path) -> None:
    result = freshness_check.check_freshness("2026-11-07", PUBLISHED, {"freshness.enabled": False})
    assert result["status"] == "disabled" and result["kb_version"] == "kb_chunks@v9"

"""A poisoned training set (answers that contradict the articles) is rejected, and the champion stays.

The demo drops of days 1-6 go through the real refresh steps up to the versioned snapshot (ingest, Great
Expectations validation, DVC); day 6 is the demo's poisoned QA drop. A champion is registered first (the tiny
model, MLflow SQLite in the isolated home). Then ``tune_model``'s first step runs as the DAG runs it, inside the
Airflow error mapping: the poisoned window fails the task for good (no retry), nothing is written or versioned,
and ``champion`` still points at the same version. The good window before it builds normally.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.errors import PoisonedDataError
from evertune.settings import get_settings
from evertune.tuning.gate import GateDecision

# About 28 s alone on 2 cores (GX validation of 6 days, 3 DVC versions, one MLflow registration, the tiny model);
# the quick loop keeps tests/unit/test_dataset.py's demo-data test, which checks the same data in under a second.
pytestmark = pytest.mark.slow

PASS = GateDecision(passed=True, action="promote", reasons=("registered by the test as the standing champion",))


@pytest.fixture
def poisoned_home(evertune_home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Validated and versioned demo days 1-6, the KB of days 1-5 published, and a champion (v1) registered."""
    from conftest import write_tiny_dag_params
    from evertune.demo.generator import generate_range
    from evertune.kb import refresh
    from evertune.tuning.promotion import promote
    from evertune.tuning.registry import register_candidate

    # The tiny model's tokenizer (the base model's) counts the training prompts' tokens.
    monkeypatch.setenv("EVERTUNE_PARAMS", str(write_tiny_dag_params(evertune_home, tiny_model_dir)))
    params, settings = load_params(), get_settings()
    settings.ensure_local_dirs()
    manifests = generate_range(settings.landing_uri, start_date=params.demo.start_date, days=6,
                               seed=params.demo.seed, n_articles=params.demo.n_articles,
                               max_file_bytes=params.ingest.max_file_bytes)
    days = [manifest["date"] for manifest in manifests]
    for day in days:
        refresh.ingest_documents(day)
        refresh.validate_documents(day)
    for day in days[-2:]:  # the tuning step only needs its as_of day versioned; the rest is read from disk
        refresh.version_snapshot(day)
    for day in days[:-1]:  # training prompts hold chunks of the published KB (the good window's)
        synced = refresh.sync_index(day)
        refresh.publish_index(day, None, synced, refresh.evaluate_retrieval(day, None, synced), {})
    champion = register_candidate(tiny_model_dir, params, run_id=None, data_version="sft/earlier@test",
                                  kb_table_version=1, base_model=str(tiny_model_dir), settings=settings)
    promote(params.registry.model_name, champion.version, PASS, settings=settings)
    return {"days": days, "poisoned_ids": manifests[-1]["poisoned_qa_ids"], "champion": champion.version}


def _champion(settings) -> int | None:
    from evertune.tuning.registry import champion_version

    return champion_version(load_params().registry.model_name, settings=settings)


def test_poisoned_window_fails_the_tuning_step_and_the_champion_stays(poisoned_home: dict) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from evertune.data.versioning import DataRepo
    from evertune.tuning import rejections, steps
    from evertune_airflow.errors import task_states

    settings = get_settings()
    good_day, poisoned_day = poisoned_home["days"][-2:]
    assert _champion(settings) == poisoned_home["champion"] == 1

    # The good window (days 1-5) builds: nothing is dropped as ungrounded.
    good = steps.build_dataset(good_day, {}, "manual__good")
    assert good["stats"]["grounding"]["ungrounded"] == 0 and good["stats"]["grounding"]["checked"] > 100
    assert good["n_train"] > 0 and good["kb_version"] == good["stats"]["context"]["kb_version"]

    # The poisoned window: the domain error, then the same call as the DAG task makes it, through its mapping.
    with pytest.raises(PoisonedDataError, match=r"max_ungrounded_fraction=5\.0%"):
        steps.build_dataset(poisoned_day, {}, "manual__poisoned")
    with pytest.raises(AirflowFailException, match="PoisonedDataError: .* not grounded"), task_states():
        steps.build_dataset(poisoned_day, {}, "manual__poisoned_dag")

    # Nothing was trained on, written or versioned for the poisoned window; the champion did not move.
    assert _champion(settings) == poisoned_home["champion"]
    assert not (settings.data_repo / steps.dataset_folder(poisoned_day)).exists()
    assert DataRepo(settings).lookup(f"sft/{poisoned_day}", steps.dataset_folder(poisoned_day)) is None

    # The rejection is on record, with the rows that caused it.
    rejection = rejections.read_rejections(settings)[-1]
    assert (rejection["as_of"], rejection["dag_run_id"], rejection["error"]) == (
        poisoned_day, "manual__poisoned_dag", "PoisonedDataError")
    assert rejection["ungrounded_fraction"] > rejection["max_ungrounded_fraction"]
    flagged = {row["qa_id"] for row in rejection["excluded"] if row["reason"] == "answer_not_grounded"}
    poisoned = set(poisoned_home["poisoned_ids"])
    assert flagged <= poisoned and len(flagged) >= 0.9 * len(poisoned), json.dumps(sorted(flagged))

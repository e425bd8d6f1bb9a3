"""``promote``: compare-and-set on a real MLflow registry (SQLite), for approvals, rejections and supersession.

Versions are registered without model files: promotion reads and moves aliases and tags only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evertune.errors import NothingToDo, PromotionConflict
from evertune.tuning.release import promote_candidate, record_review
from evertune.tuning.tracking import mlflow_client
from module_home import module_home

NAME = "evertune-assistant"
APPROVED = {"chosen_options": ["Approve"], "params_input": {}, "responded_by_user": {"id": "1", "name": "alice"},
            "responded_at": "2026-11-05T10:00:00+00:00"}
REJECTED = {**APPROVED, "chosen_options": ["Reject"], "responded_by_user": {"id": "2", "name": "bob"}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One MLflow SQLite store for the module (creating one costs seconds)."""
    with module_home(tmp_path_factory, "release-home") as (settings, patch):
        yield mlflow_client(settings), patch


@pytest.fixture
def registry(store, tmp_path: Path):
    """A fresh registered model with versions 1-3, champion v1 and challenger v2."""
    client, _ = store
    if client.search_registered_models(f"name = '{NAME}'"):
        client.delete_registered_model(NAME)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=str(tmp_path))
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    return client


def held(version: int = 2, expected: int | None = 1, action: str = "require_approval") -> dict:
    return {"candidate": {"model_name": NAME, "version": version}, "decision": action,
            "reasons": ["HOLD drift: severe"], "expected_champion": expected}


def aliases(client) -> dict[str, int]:
    return {alias: int(version) for alias, version in client.get_registered_model(NAME).aliases.items()}


def test_approval_moves_champion_and_records_the_approver(registry) -> None:
    with pytest.raises(NothingToDo, match="waits for approval"):
        promote_candidate(held(), review=None)
    with pytest.raises(NothingToDo, match="bob rejected evertune-assistant v2"):
        promote_candidate(held(), review=REJECTED)
    with pytest.raises(NothingToDo, match="gate rejected"):
        promote_candidate(held(action="reject"), review=None)
    assert aliases(registry)["champion"] == 1

    result = promote_candidate(held(), review=APPROVED)
    assert result["promotion"]["changed"] and result["approved_by"] == "alice"
    assert aliases(registry)["champion"] == 2 and "challenger" not in aliases(registry)
    tags = registry.get_model_version(NAME, "2").tags
    assert tags["approved_by"] == "alice" and tags["gate.action"] == "require_approval"
    with pytest.raises(NothingToDo, match="already the champion"):
        promote_candidate(held(), review=APPROVED)


def test_an_approval_refuses_when_champion_moved_while_it_waited(registry) -> None:
    registry.set_registered_model_alias(NAME, "champion", "3")  # e.g. a rollback or a manual promote meanwhile
    with pytest.raises(PromotionConflict, match="champion moved from v1 to v3"):
        promote_candidate(held(), review=APPROVED)
    assert aliases(registry)["champion"] == 3
    assert "champion moved from v1 to v3" in registry.get_model_version(NAME, "2").tags["promotion.refused"]


def test_a_newer_candidate_supersedes_a_waiting_one(registry) -> None:
    registry.set_registered_model_alias(NAME, "challenger", "3")  # registered while v2 waited
    with pytest.raises(PromotionConflict, match="superseded: challenger is now v3"):
        promote_candidate(held(), review=APPROVED)
    assert aliases(registry)["champion"] == 1


def test_a_first_champion_and_a_passing_decision_need_no_approval(registry) -> None:
    registry.delete_registered_model_alias(NAME, "champion")
    with pytest.raises(PromotionConflict, match="champion moved from v1 to no champion"):
        promote_candidate(held(action="promote"))
    result = promote_candidate(held(expected=None, action="promote"))
    assert result["approved_by"] == "gate" and result["promotion"]["previous_champion"] is None
    assert aliases(registry)["champion"] == 2


def test_record_review_tags_the_version_with_the_answer_and_the_reviewer(registry) -> None:
    assert record_review(held(), None) is None  # the gate did not hold: nothing to record
    tags = record_review(held(version=2), REJECTED)
    assert tags == {"review.answer": "Reject", "review.by": "bob", "review.at": "2026-11-05T10:00:00+00:00"}
    recorded = registry.get_model_version(NAME, "2").tags
    assert {k: recorded[k] for k in tags} == tags
    record_review(held(version=3), {"chosen_options": ["Reject"], "params_input": {}})  # the timeout answered
    assert registry.get_model_version(NAME, "3").tags["review.by"] == "timeout-default"
    assert aliases(registry) == {"champion": 1, "challenger": 2}  # recording never moves an alias

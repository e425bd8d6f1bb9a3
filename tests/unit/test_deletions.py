"""Deletion reaches the models: on a real MLflow registry (SQLite) and a real validated history, a version trained
on a tombstoned document is tagged and a version without it is not; ``model status`` shows it; the ``block``
policy refuses promotion and rollback with the reason, ``flag`` allows them; re-running is idempotent.

(That future training sets exclude a deleted document is tested in tests/unit/test_dataset.py,
``dropped_deleted_doc``, and for replayed rows in tests/integration/test_train.py, ``replay_dropped_deleted_doc``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune.cli import main as cli_main
from evertune.config import apply_overrides, load_params
from evertune.errors import QualityGateFailed
from evertune.settings import get_settings
from evertune.tuning import deletions
from evertune.tuning.promotion import promote, rollback
from evertune.tuning.registry import model_status
from evertune.tuning.tracking import configure_mlflow
from validated_drops import document, tombstone, write_drop

PASS = {"passed": True, "action": "promote", "reasons": ["token_f1 up"]}
DOCS = [document(d, d.title(), f"All about {d}.", "2026-11-01T08:00:00+00:00") for d in ("export", "sync", "plans")]


@pytest.fixture
def kb(evertune_home: Path):
    """Validated history: three documents on 11-01, ``sync`` tombstoned on 11-02; an empty registered model."""
    settings = get_settings()
    settings.ensure_local_dirs()
    root = settings.data_repo / "validated"
    write_drop(root / "ds=2026-11-01", DOCS)
    write_drop(root / "ds=2026-11-02", [], [tombstone("sync", "2026-11-02T09:00:00+00:00")])
    params = load_params()
    client, experiment_id = configure_mlflow(params, settings)
    client.create_registered_model(params.registry.model_name)
    return settings, params, client, experiment_id


def _row(qa_id: str, doc_id: str, context: list[str]) -> dict:
    return {"id": qa_id, "doc_id": doc_id, "context_doc_ids": context, "question": "q?", "answer": "a."}


def _version(kb, folder: Path, rows: list[dict], warm_from: int | None = None, record: bool = True) -> int:
    """A registered version with a training run and a dataset folder (recorded as register_candidate does)."""
    settings, params, client, experiment_id = kb
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_id = client.create_run(experiment_id).info.run_id
    if warm_from is not None:
        client.set_tag(run_id, "warm_start_from", f"v{warm_from}")
    version = int(client.create_model_version(params.registry.model_name, source=str(folder), run_id=run_id).version)
    if record:
        deletions.record_training_docs(params.registry.model_name, version, folder, warm_start_from=warm_from,
                                       settings=settings)
    return version


def _tags(kb, version: int) -> dict[str, str]:
    return dict(kb[2].get_model_version(kb[1].registry.model_name, str(version)).tags)


def test_rows_carry_their_document_and_their_context_documents(tmp_path: Path) -> None:
    assert deletions.row_doc_ids(_row("q", "a", ["b", "None", "a"])) == {"a", "b"}
    assert deletions.row_doc_ids({"id": "q", "doc_id": None}) == set()
    (tmp_path / "validation.jsonl").write_text(json.dumps(_row("v", "c", [])) + "\n", encoding="utf-8")
    assert deletions.dataset_doc_ids(tmp_path) == {"c"}
    assert deletions.docs_sha256(["b", "a", "a"]) == deletions.docs_sha256(["a", "b"])


def test_a_tombstone_tags_the_versions_trained_on_it_and_only_those(kb, tmp_path: Path, capsys) -> None:
    settings, params, client, _ = kb
    name = params.registry.model_name
    v1 = _version(kb, tmp_path / "v1", [_row("q1", "export", ["export", "sync"])])  # sync shown in a prompt
    v2 = _version(kb, tmp_path / "v2", [_row("q2", "export", ["export", "plans"])])  # never saw sync
    v3 = _version(kb, tmp_path / "v3", [_row("q3", "plans", ["plans"])], warm_from=v1)  # continues v1's adapter
    assert _tags(kb, v3)[deletions.TRAINING_DOCS_COUNT] == "3"  # its own plans + v1's export and sync
    client.set_registered_model_alias(name, "champion", str(v1))

    before = deletions.apply_deletions("2026-11-01")  # sync is not deleted yet
    assert before["deleted_docs"] == 0 and before["models"]["tagged"] == {}
    first = deletions.apply_deletions("2026-11-02")
    assert first["models"]["tagged"] == {str(v1): ["sync"], str(v3): ["sync"]} and first["models"]["changed"] == [v1, v3]
    assert first["models"]["champion"] == v1 and not first["models"]["champion_blocked"]  # policy flag
    tagged = _tags(kb, v1)
    assert (tagged["deleted_docs"], tagged["deleted_docs_count"], tagged["deleted_docs_since"]) == ("sync", "1",
                                                                                                      "2026-11-02")
    assert "deleted_docs" not in _tags(kb, v2)

    snapshot = {v: _tags(kb, v) for v in (v1, v2, v3)}
    again = deletions.apply_deletions("2026-11-02")  # a re-run (or retry) of the same interval
    assert again["models"]["tagged"] == first["models"]["tagged"] and again["models"]["changed"] == []
    assert {v: _tags(kb, v) for v in (v1, v2, v3)} == snapshot
    deletions.apply_deletions("2026-11-03")  # a later day: the same deletions, nothing new
    assert {v: _tags(kb, v) for v in (v1, v2, v3)} == snapshot

    assert cli_main(["model", "status"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {v["version"]: v["deletion"] for v in shown["versions"]} == {v1: "flagged", v2: "clean", v3: "flagged"}
    assert shown["deletion"] == {"policy": "flag", "flagged": [v1, v3], "blocked": [], "unknown": [],
                                 "champion_blocked": False}
    assert shown["versions"][0]["tags"]["deleted_docs"] == "sync"

    # flag: a tagged version may still be promoted
    assert promote(name, v3, PASS, settings=settings, params=params).changed


def test_block_refuses_promotion_and_rollback_and_keeps_a_blocked_champion(kb, tmp_path: Path) -> None:
    settings, params, client, _ = kb
    name = params.registry.model_name
    block = apply_overrides(params, {"deletion.model_policy": "block"})
    v1 = _version(kb, tmp_path / "v1", [_row("q1", "sync", ["sync"])])
    v2 = _version(kb, tmp_path / "v2", [_row("q2", "export", ["export"])])
    assert promote(name, v1, PASS, settings=settings, params=params).changed  # flag: allowed, nothing tagged yet
    assert "deleted_docs" not in _tags(kb, v1)
    summary = deletions.tag_versions_with_deleted_docs({"sync": "2026-11-02"}, settings, block)
    assert summary["tagged"] == {str(v1): ["sync"]} and summary["champion_blocked"]
    # No alias moves by itself: the blocked champion keeps serving and is reported.
    assert model_status(name, settings=settings)["aliases"]["champion"] == v1
    status = deletions.model_status_with_deletions(name, settings, "block")
    assert status["deletion"]["blocked"] == [v1] and status["deletion"]["champion_blocked"]

    assert deletions.blocked_reason(name, v2, settings, block) is None
    reason = deletions.blocked_reason(name, v1, settings, block)
    assert "v1 was trained on 1 deleted document(s) (sync)" in reason and "since 2026-11-02" in reason
    assert deletions.blocked_reason(name, v1, settings, params) is None  # flag never blocks

    assert promote(name, v2, PASS, settings=settings, params=block).changed  # a clean retrain replaces it
    v3 = _version(kb, tmp_path / "v3", [_row("q3", "sync", ["export", "sync"])])  # sync deleted on 11-02 already
    with pytest.raises(QualityGateFailed, match="v3 was trained on 1 deleted"):  # before apply_deletions runs
        promote(name, v3, PASS, settings=settings, params=block)
    assert _tags(kb, v3)["deleted_docs"] == "sync"
    with pytest.raises(QualityGateFailed, match="deletion.model_policy is block") as refused:
        rollback(name, settings=settings, params=block)  # would restore the blocked v1
    assert refused.value.reasons == [reason]
    assert model_status(name, settings=settings)["aliases"]["champion"] == v2
    with pytest.raises(QualityGateFailed, match="trained on 1 deleted"):
        promote(name, v1, None, approved_by="ops", force=True, settings=settings, params=block)  # force: still no
    assert _tags(kb, v1)["promotion.refused"] == reason
    assert model_status(name, settings=settings)["aliases"]["champion"] == v2
    assert rollback(name, settings=settings, params=params).to_version == v1  # flag: allowed


def test_a_long_deleted_list_goes_to_an_artifact_and_merges(kb, tmp_path: Path) -> None:
    settings, params, _, _ = kb
    many = [f"doc-{i:05d}" for i in range(700)]  # > 5000 characters as a comma list
    v1 = _version(kb, tmp_path / "v1", [_row(f"q{i}", doc, [doc]) for i, doc in enumerate(many)])
    deletions.tag_versions_with_deleted_docs(many[:400], settings, params, interval="2026-11-05")
    deletions.tag_versions_with_deleted_docs(dict.fromkeys(many[300:], "2026-11-03"), settings, params)
    tags = _tags(kb, v1)
    assert tags["deleted_docs"] == "700 documents, see deletions/v1.json" and tags["deleted_docs_count"] == "700"
    assert tags["deleted_docs_since"] == "2026-11-03"  # the earliest deletion among them
    mv = kb[2].get_model_version(params.registry.model_name, str(v1))
    assert deletions.recorded_deleted_docs(kb[2], mv) == set(many)


def test_a_version_without_a_record_is_restored_from_dvc_or_unknown(kb, tmp_path: Path) -> None:
    from evertune.data.versioning import DataRepo

    settings, params, client, _ = kb
    name = params.registry.model_name
    folder = settings.data_repo / "datasets/sft/as_of=2026-11-01"
    old = _version(kb, folder, [_row("q1", "sync", ["sync"])], record=False)  # registered before recording
    version = DataRepo(settings).version_folder("datasets/sft/as_of=2026-11-01", "sft/2026-11-01", "SFT dataset")
    client.set_model_version_tag(name, str(old), "data_git_rev", version.git_rev)
    client.set_model_version_tag(name, str(old), "data_folder", "datasets/sft/as_of=2026-11-01")
    lost = _version(kb, tmp_path / "lost", [_row("q2", "sync", ["sync"])], record=False)  # no lineage tags
    assert deletions.model_status_with_deletions(name, settings, "flag")["deletion"]["unknown"] == [old, lost]

    summary = deletions.apply_deletions("2026-11-02")
    assert summary["models"]["tagged"] == {str(old): ["sync"]} and summary["models"]["unknown"] == [lost]
    tags = _tags(kb, old)
    assert tags[deletions.TRAINING_DOCS] == "restored" and tags["deleted_docs"] == "sync"
    assert _tags(kb, lost)[deletions.TRAINING_DOCS] == "unknown"
    block = apply_overrides(params, {"deletion.model_policy": "block"})
    assert deletions.blocked_reason(name, lost, settings, block) is None  # unknown is reported, never blocks


def test_a_warm_start_never_continues_a_champion_trained_on_deleted_documents(kb, tmp_path: Path) -> None:
    from evertune.tuning.steps import _warm_start

    settings, params, client, _ = kb
    warm = apply_overrides(params, {"train.warm_start_from_champion": True})
    name = params.registry.model_name
    v1 = _version(kb, tmp_path / "v1", [_row("q1", "sync", ["sync"])])
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    mv = client.get_model_version(name, str(v1))
    client.log_artifacts(mv.run_id, str(adapter), artifact_path="adapter")
    client.set_model_version_tag(name, str(v1), "data_git_rev", "abc")
    client.set_model_version_tag(name, str(v1), "data_folder", "datasets/sft/as_of=2026-11-01")
    client.set_registered_model_alias(name, "champion", str(v1))
    assert _warm_start(warm, settings)[0]["version"] == v1  # before the deletion: continued
    deletions.apply_deletions("2026-11-02")
    assert _warm_start(warm, settings) == (None, None)  # cold: its adapter would carry sync on

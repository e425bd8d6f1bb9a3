"""The one-line run notes: what each kind of run decided, from its task results and states."""

from __future__ import annotations

import pytest

from evertune.run_notes import MAX_NOTE_CHARS, refresh_note, tune_note

CANDIDATE = {"candidate": {"model_name": "evertune-assistant", "version": 3}, "expected_champion": 2}
EVALUATION = {"challenger": {"token_f1": 0.354}, "champion": {"token_f1": 0.31}, "champion_version": 2}
APPROVE = {"chosen_options": ["Approve"], "responded_by_user": {"id": "1", "name": "alice"}}
REJECT = {"chosen_options": ["Reject"], "responded_by_user": {"id": "2", "name": "bob"}}
HELD = {**CANDIDATE, "decision": "require_approval", "reasons": ["PASS floor: ok", "HOLD drift: severe drift"]}


@pytest.mark.parametrize(("results", "states", "rejection", "expected"), [
    ({"register": {**CANDIDATE, "decision": "promote", "reasons": ["PASS floor"]}, "evaluate": EVALUATION,
      "promote": {"approved_by": "gate"}}, {}, None,
     "promoted v3 to champion (token_f1 0.354 vs v2 0.31), by the gate"),
    ({"register": HELD, "evaluate": EVALUATION, "approval": APPROVE, "promote": {"approved_by": "alice"}}, {}, None,
     "promoted v3 to champion (token_f1 0.354 vs v2 0.31), approved by alice"),
    ({"register": HELD, "approval": REJECT}, {"promote": "skipped"}, None,
     "v3 held (HOLD drift: severe drift) and rejected by bob; champion unchanged"),
    ({"register": HELD}, {"approval": "awaiting_input"}, None,
     "v3 held for approval (awaiting_input): HOLD drift: severe drift"),
    ({"register": HELD, "approval": APPROVE}, {"promote": "failed"}, None,
     "v3 approved by alice but not promoted: champion or challenger moved while it waited (see the promote log)"),
    ({"register": {**CANDIDATE, "decision": "reject", "reasons": ["PASS floor", "FAIL regression: worse"]},
      "evaluate": EVALUATION}, {}, None,
     "gate reject: v3 stays challenger (token_f1 0.354 vs v2 0.31); FAIL regression: worse"),
    ({}, {"build_dataset": "failed"}, {"error": "PoisonedDataError", "ungrounded": 12, "checked": 60},
     "data rejected before training (PoisonedDataError): 12 of 60 QA rows not grounded in their article; "
     "nothing trained"),
    ({}, {"build_dataset": "failed"}, None,
     "failed at build_dataset: no training dataset; nothing trained, champion unchanged"),
    ({"train": {"skipped": True}}, {"register": "skipped"}, None,
     "no new candidate: an identical candidate is already registered (training skipped)"),
    ({}, {"train": "failed", "evaluate": "upstream_failed"}, None, "failed at train; champion unchanged"),
    ({}, {"build_dataset": "skipped", "train": "skipped"}, None,
     "nothing to tune on: no validated data or no published knowledge base yet (build_dataset skipped)"),
])
def test_tune_note(results, states, rejection, expected) -> None:
    assert tune_note(results, states, rejection) == expected


PUBLISHED = {"table": "kb_chunks_x", "table_version": 12, "changed": True}
RESULTS = {
    "ingest_documents": {"partition_found": True, "documents": 40, "tombstones": 2, "quarantined": 3},
    "validate_documents": {"quarantine_by_reason": {"pii": 1, "too_short": 2}},
    "sync_index": {"chunks_embedded": 120, "chunks_updated": 4, "chunks_deleted": 2},
    "evaluate_retrieval": {"k": 5, "candidate": {"recall_at_k": 0.91, "mrr": 0.8}},
}


@pytest.mark.parametrize(("results", "states", "expected"), [
    ({**RESULTS, "publish_index": PUBLISHED, "check_freshness": {"freshness": {"fresh_share": 0.4375}}}, {},
     "published kb_chunks_x v12 (recall@5 0.91, MRR 0.8); 40 docs, 2 tombstones, 3 quarantined; 120 chunks "
     "embedded, 4 updated, 2 deleted; champion fresh share 0.438"),
    ({**RESULTS, "publish_index": {**PUBLISHED, "changed": False}}, {},
     "production already at kb_chunks_x v12 (recall@5 0.91, MRR 0.8); 40 docs, 2 tombstones, 3 quarantined; 120 "
     "chunks embedded, 4 updated, 2 deleted"),
    (RESULTS, {"publish_index": "failed", "check_freshness": "upstream_failed"},
     "not published: the retrieval gate refused the candidate (recall@5 0.91, MRR 0.8); 40 docs, 2 tombstones, 3 "
     "quarantined; 120 chunks embedded, 4 updated, 2 deleted"),
    ({"ingest_documents": {"partition_found": False}}, {},
     "no landing partition for this interval: nothing ingested, production unchanged"),
    ({"ingest_documents": RESULTS["ingest_documents"]}, {"validate_documents": "failed"},
     "failed at validate_documents; production unchanged; 40 docs, 2 tombstones, 3 quarantined"),
])
def test_refresh_note(results, states, expected) -> None:
    assert refresh_note(results, states) == expected


def test_notes_are_one_line_within_airflows_limit() -> None:
    long_reason = "FAIL regression: " + "x\n" * 2000
    note = tune_note({"register": {**CANDIDATE, "decision": "reject", "reasons": [long_reason]}}, {})
    assert len(note) <= MAX_NOTE_CHARS and "\n" not in note and note.endswith("…")

"""Freshness scoring (new value with its unit, not the old one; Wilson CI) and the probe sets (carried, derived)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.data import snapshot
from evertune.kb.golden import FRESHNESS, parse_line
from evertune.kb.records import Reject
from evertune.tuning.freshness import (
    FreshnessProbe,
    contains_value,
    freshness_probes,
    score_freshness,
    value_tokens,
    wilson_interval,
)
from evertune.tuning.probes import value_change

PRICE = FreshnessProbe("p1", "What does Pro cost?", "billing-plans", "pro_price", "$8 per user per month",
                       "$10 per user per month", "The Pro plan costs $10 per user per month.", "2026-11-07")
LIMIT = FreshnessProbe("p2", "How big can an attachment be?", "attachments", "attachment_limit", "200 MB",
                       "100 MB", "Attachments can be up to 100 MB.", "2026-11-07")


@pytest.mark.parametrize(("text", "value", "expected"), [
    ("Pro costs $10 per user per month.", "$10 per user per month", True),
    ("Pro costs $10/user/month", "$10 per user per month", True),  # "/" reads as "per"
    ("Pro costs $10.00 per user per month", "$10 per user per month", True),  # trailing zero decimals
    ("PRO COSTS $10 PER USER PER MONTH", "$10 per user per month", True),  # case
    ("Pro costs $10", "$10 per user per month", False),  # the unit is part of the value
    ("Pro costs $10 a user a month", "$10 per user per month", False),  # wording is strict
    ("Pro costs $100 per user per month", "$10 per user per month", False),  # whole numbers only
    ("Files up to 100MB", "100 MB", True),  # glued unit
    ("a 100-MB limit", "100 MB", True),
    ("Files up to 1100 MB", "100 MB", False),
    ("Files up to 100 GB", "100 MB", False),
    ("up to 1,000 notes", "1000 notes", True),  # thousands separator
    ("99.9 % uptime", "99.9% uptime", True),
])  # fmt: skip
def test_contains_value(text: str, value: str, expected: bool) -> None:
    assert contains_value(text, value) is expected


def test_value_tokens_normalise() -> None:
    assert value_tokens("$10/user/month") == ["$10", "per", "user", "per", "month"]
    assert value_tokens("100MB, 14-day") == ["100", "mb", "14", "day"]


def test_score_fresh_both_old_and_other() -> None:
    answers = [
        "The Pro plan costs $10/user/month.",  # fresh
        "It used to be $8 per user per month, now it is $10 per user per month.",  # both: not fresh
        "Attachments can be up to 200 MB.",  # old only
        "I don't know.",  # neither
    ]
    probes = [PRICE, PRICE, LIMIT, LIMIT]
    scores = score_freshness(answers, probes)
    assert (scores["n"], scores["fresh"], scores["both_values"], scores["old_only"]) == (4, 1, 1, 1)
    assert scores["fresh_share"] == 0.25
    assert [item["fresh"] for item in scores["per_item"]] == [True, False, False, False]
    assert [item["both"] for item in scores["per_item"]] == [False, True, False, False]
    assert [item["old"] for item in scores["per_item"]] == [False, False, True, False]
    lo, hi = scores["ci"]
    assert lo < 0.25 < hi
    assert scores["per_item"][0]["token_f1"] >= 0.5 and scores["per_item"][3]["token_f1"] == 0.0
    assert scores["token_f1"] == pytest.approx(sum(i["token_f1"] for i in scores["per_item"]) / 4)


def test_old_value_inside_the_new_one_is_not_both() -> None:
    probe = FreshnessProbe("p", "q", "d", "", "5 GB", "5 GB per user", "5 GB per user", "2026-11-07")
    assert score_freshness(["You get 5 GB per user."], [probe])["fresh"] == 1
    assert score_freshness(["5 GB, or 5 GB per user"], [probe])["both_values"] == 1


def test_score_empty_and_length_mismatch() -> None:
    empty = score_freshness([], [])
    assert (empty["n"], empty["fresh_share"], empty["ci"], empty["token_f1"]) == (0, None, None, None)
    with pytest.raises(ValueError, match="2 answers for 1 probes"):
        score_freshness(["a", "b"], [PRICE])


def test_wilson_interval_known_values() -> None:
    # Wilson 95 % for 9/10 is about [0.596, 0.982]; for 0/10 [0, 0.278]; for 10/10 [0.722, 1].
    assert wilson_interval(9, 10) == pytest.approx((0.5958, 0.9821), abs=1e-3)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-3)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-3)
    assert wilson_interval(45, 50, alpha=0.1)[0] > wilson_interval(45, 50)[0]
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.mark.parametrize(("before", "after", "expected"), [
    ("The Pro plan costs $8 per user per month.", "The Pro plan costs $10 per user per month.",
     ("$8 per user per month", "$10 per user per month")),
    ("You can request a refund within 14 days of the charge.", "You can request a refund within 30 days of the charge.",
     ("14 days", "30 days")),
    ("Attachments can be up to 200 MB.", "Attachments can be up to 100 MB.", ("200 MB", "100 MB")),
    ("Same answer.", "Same answer", None),
    ("Short.", "A completely different and much longer answer that rewrites everything it says.", None),
])  # fmt: skip
def test_value_change(before: str, after: str, expected) -> None:
    assert value_change(before, after) == expected


def test_freshness_line_parses_and_rejects() -> None:
    line = {"probe_id": "f-1", "question": "What does Pro cost now?", "doc_id": "billing-plans",
            "fact_key": "pro_price", "old_value": "$8 per user per month", "new_value": "$10 per user per month",
            "changed_on": "2026-11-07"}  # fmt: skip
    parsed = parse_line(FRESHNESS, dict(line))
    assert parsed["answer"] == "$10 per user per month"  # defaults to the new value
    assert parse_line(FRESHNESS, {"probe_id": "f-1", "retire": True})["retire"] is True
    for bad in ({"changed_on": "7 Nov"}, {"new_value": "$8 per user per month"}, {"doc_id": "Bad Id"}):
        with pytest.raises(Reject):
            parse_line(FRESHNESS, {**line, **bad})


def _doc(doc_id: str, text: str, day: str) -> dict:
    return {"doc_id": doc_id, "title": doc_id, "text": text, "source": "help-center",
            "url": f"https://x.example/{doc_id}", "updated_at": f"{day}T08:00:00+00:00",
            "content_hash": f"{doc_id}-{day}", "metadata": "{}", "record_ref": f"docs/{doc_id}.md"}  # fmt: skip


def _day(root: Path, day: str, **contents) -> None:
    snapshot.write(root / f"ds={day}", {"documents": [], "tombstones": [], "qa": [], **contents})


def _probe_line(probe_id: str, changed_on: str, doc_id: str = "plans") -> dict:
    return {"probe_id": probe_id, "question": f"Question {probe_id}?", "doc_id": doc_id, "fact_key": "k",
            "old_value": "200 MB", "new_value": "100 MB", "answer": "Up to 100 MB.", "changed_on": changed_on}


def test_freshness_probes_carried_and_derived(tmp_path: Path) -> None:
    gold = {"qa_id": "g1", "question": "What does Pro cost?", "doc_id": "plans", "fact_key": "pro_price"}
    _day(tmp_path, "2026-11-01", documents=[_doc("plans", "Pro costs $8.", "2026-11-01")],
         golden_qa=[{**gold, "answer": "The Pro plan costs $8 per user per month."}],
         golden_freshness=[_probe_line("f-old", "2026-11-01")])
    _day(tmp_path, "2026-11-03", documents=[_doc("plans", "Pro costs $10.", "2026-11-03")],
         golden_qa=[{**gold, "answer": "The Pro plan costs $10 per user per month."}])
    _day(tmp_path, "2026-11-05", golden_freshness=[_probe_line("f-new", "2026-11-05")])
    _day(tmp_path, "2026-11-09", golden_freshness=[_probe_line("f-later", "2026-11-09")])  # after as_of
    probes = freshness_probes(tmp_path, "2026-11-05", "2026-11-02")
    assert [p.probe_id for p in probes] == ["f-new", "qa:g1"]
    derived = probes[1]
    assert (derived.old_value, derived.new_value, derived.changed_on) == (
        "$8 per user per month", "$10 per user per month", "2026-11-03")
    # Nothing changed after 2026-11-03 but f-new; since=None takes every carried probe and the first answer.
    assert [p.probe_id for p in freshness_probes(tmp_path, "2026-11-05", "2026-11-03")] == ["f-new"]
    assert [p.probe_id for p in freshness_probes(tmp_path, "2026-11-05", None)] == ["f-new", "f-old", "qa:g1"]
    assert freshness_probes(tmp_path, "2026-11-05", "2026-11-02") == probes  # deterministic


def test_ingest_reads_the_freshness_drop(tmp_path: Path) -> None:
    from evertune.kb.ingest import ingest_partition

    golden = tmp_path / "ds=2026-12-01" / "golden"
    golden.mkdir(parents=True)
    lines = [_probe_line("f-2", "2026-12-01"), _probe_line("f-1", "2026-12-01"), {"probe_id": "f-0", "retire": True}]
    (golden / "freshness.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    result = ingest_partition(str(tmp_path), "2026-12-01", load_params())
    assert [r["probe_id"] for r in result.golden_freshness] == ["f-0", "f-1", "f-2"]
    assert result.quarantine.empty

"""The step helpers of the demo scenario and generator, one by one."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from evertune.demo.articles import Article, DayPlan
from evertune.demo.content import CORE_SUBJECTS, FACTS_BY_KEY
from evertune.demo.generator import _write_docs_jsonl
from evertune.demo.malformed import WRITERS, DropBuilder, add_bad_records, bad_entry, oversized_bytes
from evertune.demo.qa import grounding_doc, stating
from evertune.demo.scenario import (
    BAD_ROTATION,
    BAD_SCHEDULE,
    MAX_BAD_KINDS,
    add_late_tombstone,
    additions,
    apply_facts,
    choose_bad_kinds,
    delete_articles,
    deletion_count,
    edit_wording,
    wanted_bad_kinds,
    wording_edit_count,
)
from evertune.errors import ConfigError

DATE = dt.date(2026, 11, 5)
BILLING = next(s for s in CORE_SUBJECTS if s.slug == "billing-plans")


def _article(doc_id: str, qualifier: str | None = None, subject=BILLING) -> Article:
    return Article(doc_id, subject, qualifier, 0, "md", 0, "2026-11-01T06:00:00+00:00", 1)


def _plan(day: int = 5) -> DayPlan:
    return DayPlan(day=day, date=DATE, facts={}, live={})


def test_additions_follow_the_storyline():
    assert additions(1, 40) == [("core", 40)]
    assert additions(2, 40) == [("core", 4)]
    assert additions(4, 40) == [("drift", 13)]
    assert additions(3, 40) == additions(6, 40) == [("core", 1)]
    assert additions(5, 40) == []
    assert additions(7, 40) == [("core", 1)] and additions(8, 40) == [("drift", 1)]


def test_edit_and_deletion_counts():
    assert [wording_edit_count(day, 40) for day in range(1, 9)] == [0, 13, 4, 2, 5, 7, 5, 6]
    assert [deletion_count(day) for day in range(1, 10)] == [0, 2, 0, 0, 3, 0, 1, 0, 1]


def test_choose_bad_kinds_keeps_the_budget_and_defers_the_rest():
    kinds, deferred = choose_bad_kinds(["malformed_json", "empty_file", "oversized"], n_written=8)
    assert kinds == ("malformed_json", "empty_file") and deferred == ["oversized"]
    # A tiny drop still gets one kind, even a two-row one.
    assert choose_bad_kinds(["duplicate_doc_id", "empty_file"], n_written=1) == (("duplicate_doc_id",), ["empty_file"])
    many = list(BAD_ROTATION)
    assert len(choose_bad_kinds(many, n_written=1000)[0]) == MAX_BAD_KINDS


def test_wanted_bad_kinds_puts_deferred_first_and_rotates_on_quiet_days():
    assert wanted_bad_kinds(3, ["empty_file"]) == ["empty_file", *BAD_SCHEDULE[3]]
    assert wanted_bad_kinds(9, []) == [BAD_ROTATION[9 % len(BAD_ROTATION)]]


def test_apply_facts_edits_every_article_stating_a_changed_fact():
    live = {"billing-plans": _article("billing-plans"), "other": _article("other", subject=CORE_SUBJECTS[1])}
    facts = {"pro_price": "$8 per user per month"}
    plan, touched = _plan(day=3), set()
    apply_facts(plan, live, facts, lambda doc_id: f"stamp-{doc_id}", touched)
    assert facts["pro_price"] == "$10 per user per month"
    assert touched == {"billing-plans"} and live["billing-plans"].updated_at == "stamp-billing-plans"
    assert plan.edited == [(live["billing-plans"], "fact:pro_price")]
    assert plan.fact_changes == [{"fact_key": "pro_price", "old": "$8 per user per month",
                                  "new": "$10 per user per month", "doc_ids": ["billing-plans"]}]


def test_edit_wording_skips_touched_articles_and_bumps_the_revision():
    live = {doc_id: _article(doc_id) for doc_id in ("a", "b", "c")}
    plan, touched = _plan(), {"a"}
    edit_wording(plan, live, touched, random.Random(1), lambda doc_id: "now", count=5)
    assert sorted(a.doc_id for a, _ in plan.edited) == ["b", "c"]
    assert all(live[d].revision == 1 and live[d].updated_at == "now" for d in ("b", "c"))
    assert live["a"].revision == 0 and touched == {"a", "b", "c"}


def test_delete_articles_deletes_variants_only_with_tombstones():
    live = {"billing-plans": _article("billing-plans"), "billing-plans-teams": _article("billing-plans-teams", "teams")}
    plan = _plan()
    delete_articles(plan, live, set(), random.Random(1), 2, lambda doc_id: f"del-{doc_id}")
    assert list(live) == ["billing-plans"] and plan.deleted == ["billing-plans-teams"]
    assert plan.tombstones == [{"doc_id": "billing-plans-teams", "deleted_at": "del-billing-plans-teams",
                                "reason": "merged into the main article"}]


def test_late_tombstone_is_older_than_the_edit_and_ignored():
    plan = _plan()
    add_late_tombstone(plan)
    assert plan.tombstones == []
    plan.edited = [(_article("x"), "fact:pro_price"), (_article("y"), "wording")]
    add_late_tombstone(plan)
    assert plan.tombstones[0]["doc_id"] == "y" and plan.tombstones[0]["deleted_at"] == "2026-11-04T20:00:00+00:00"
    assert plan.ignored_tombstones == ["y"]


def test_grounding_prefers_articles_that_are_never_deleted():
    live = {"billing-plans": _article("billing-plans"), "billing-plans-teams": _article("billing-plans-teams", "teams")}
    assert [a.doc_id for a in stating(live, "pro_price")] == ["billing-plans", "billing-plans-teams"]
    assert {grounding_doc(live, "pro_price", random.Random(seed)) for seed in range(20)} == {"billing-plans"}
    assert grounding_doc(live, "no_such_fact", random.Random(0)) is None


def test_oversized_bytes_is_one_over_the_limit():
    assert len(oversized_bytes("head\n", 20_000)) == 20_001
    with pytest.raises(ConfigError):
        oversized_bytes("x" * 100, 50)


def test_every_scheduled_kind_has_a_writer_and_unknown_kinds_fail():
    assert set(BAD_ROTATION) | {k for kinds in BAD_SCHEDULE.values() for k in kinds} == set(WRITERS)
    plan = _plan()
    plan.facts = {key: fact.value for key, fact in FACTS_BY_KEY.items()}
    plan.bad_kinds = ("empty_file", "malformed_json")
    drop = DropBuilder()
    add_bad_records(drop, plan, seed=7, max_file_bytes=64_000)
    assert [entry["reason"] for entry in drop.bad] == ["empty_file"]
    assert [entry["reason"] for _, entry in drop.jsonl_lines] == ["malformed_json"]
    plan.bad_kinds = ("no_such_kind",)
    with pytest.raises(RuntimeError, match="no_such_kind"):
        add_bad_records(DropBuilder(), plan, seed=7, max_file_bytes=64_000)


def test_docs_jsonl_numbers_bad_lines_and_respects_the_size_limit():
    drop = DropBuilder()
    drop.jsonl_lines.append(("{bad\n", bad_entry("", "malformed_json", "malformed_json", "", "truncated")))
    _write_docs_jsonl(drop, ['{"a": 1}\n', '{"b": 2}\n'], seed=7, day=1, max_file_bytes=1000)
    lines = drop.files["docs.jsonl"].decode().splitlines(keepends=True)
    assert len(lines) == 3 and lines[int(drop.bad[0]["record_ref"].split(":")[1]) - 1] == "{bad\n"
    with pytest.raises(ConfigError, match="docs.jsonl"):
        _write_docs_jsonl(DropBuilder(), ['{"a": 1}\n'], seed=7, day=1, max_file_bytes=3)

"""Three days of a technical corpus through the real refresh steps: golden queries only on day 1, a retire line on
day 3, edits and tombstones in between. Every day publishes, the published KB follows every edit and deletion, and
the golden versions move as ``docs/golden-sets.md`` says. A backfill in the order 3, 1, 2 in a fresh home gives
byte-identical golden sets and versions per interval.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from evertune.data import snapshot
from evertune.kb import refresh
from evertune.kb.golden import RETRIEVAL, NoGoldenSetError
from evertune.kb.golden_carry import carried_golden
from evertune.settings import get_settings

# Ingest, GX validation and DVC of 3 days, one full embedding of 35 long pages on 2 cores.
pytestmark = pytest.mark.slow

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
DAYS = ("2026-12-01", "2026-12-02", "2026-12-03")
OVERRIDES = {
    "validate.allowed_sources": ["product-docs", "runbooks", "changelog", "community"],
    "validate.allowed_url_prefixes": ["https://docs.fjordbase.example/"],
    # The pages hold example addresses at the product's domain and long numbers (LSNs, sizes) that the card
    # pattern takes for card numbers: flag them instead of quarantining pages of a clean corpus.
    "validate.pii_allowed_email_domains": ["fjordbase.example"],
    "validate.pii_action": "flag",
    "chunk.chunk_tokens": 240,  # fewer chunks to embed (the test is about golden sets, not chunking)
}
NEW_PAGE = "docs/runbooks/disk-full.md"  # held back from day 1, new on day 2
EDITS = {  # day -> {file: marker sentence appended to the page}
    DAYS[1]: {"docs/quickstart.md": "Quokka-two: the demo cluster now starts with five nodes.",
              "docs/kms-encryption.md": "Quokka-kms: master keys now rotate every 45 days.",
              "docs/partitioning.md": "Quokka-part: at most 4096 partitions per table."},
    DAYS[2]: {"docs/quickstart.md": "Quokka-three: the demo cluster starts with seven nodes.",
              "docs/networking-ports.md": "Quokka-ports: the admin port moved to 9443."},
}
TOMBSTONED = {"changelog-4-2-x": "release notes merged", "glossary": "folded into the reference pages"}
DRAFTED = ("quickstart", "kms-encryption", "security-tls", "partitioning", "connection-pooling",
           "point-in-time-recovery", "networking-ports", "install-linux", "runbook-failover", "runbook-high-cpu",
           "client-drivers", "roles-and-privileges", "upgrade-guide", "changelog-4-2-x", "monitoring-metrics")
PAIR = {"query_id": "glossary-partitions", "query": "What is a partition key and how do I choose one?",
        "relevant_doc_ids": ["glossary", "partitioning"]}  # glossary is tombstoned on day 2: pruned, kept


def _edited(source: Path, marker: str, day: str) -> str:
    text = source.read_text(encoding="utf-8")
    text = re.sub(r"^updated_at: .*$", f"updated_at: {day}T08:00:00+00:00", text, count=1, flags=re.MULTILINE)
    return f"{text.rstrip()}\n\n## What changed on {day}\n\n{marker}\n"


def _golden_day1(landing: Path) -> list[dict]:
    """Drafts from the day-1 pages (one per chosen page), reviewed: the ``draft`` flag removed."""
    from evertune.config import apply_overrides, load_params
    from evertune.kb.golden_drafts import draft_golden_queries, landing_documents

    documents = landing_documents(str(landing), DAYS[0], apply_overrides(load_params(), OVERRIDES))
    drafts = draft_golden_queries([d for d in documents if d["doc_id"] in DRAFTED], per_doc=1, seed=0)
    assert len(drafts) == len(DRAFTED)
    return [{k: v for k, v in draft.items() if k != "draft"} for draft in drafts] + [PAIR]


def build_landing(landing: Path) -> dict[str, Any]:
    """Day 1 = the corpus less one page + golden/retrieval.jsonl; day 2 = 3 edits, 2 tombstones, 1 new page and no
    golden file; day 3 = 2 edits and one golden retire line."""
    day1 = landing / f"ds={DAYS[0]}"
    shutil.copytree(CORPUS, day1)
    (day1 / NEW_PAGE).unlink()
    golden = _golden_day1(landing)
    (day1 / "golden").mkdir()
    (day1 / "golden" / "retrieval.jsonl").write_text("".join(json.dumps(g) + "\n" for g in golden), "utf-8")
    for day, edits in EDITS.items():
        for name, marker in edits.items():
            target = landing / f"ds={day}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_edited(CORPUS / name, marker, day), encoding="utf-8")
    day2 = landing / f"ds={DAYS[1]}"
    (day2 / "docs" / "runbooks").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CORPUS / NEW_PAGE, day2 / NEW_PAGE)
    (day2 / "tombstones.jsonl").write_text("".join(
        json.dumps({"doc_id": doc_id, "deleted_at": f"{DAYS[1]}T09:00:00+00:00", "reason": reason}) + "\n"
        for doc_id, reason in TOMBSTONED.items()), encoding="utf-8")  # fmt: skip
    retired = next(g["query_id"] for g in golden if g["relevant_doc_ids"] == ["kms-encryption"])
    (landing / f"ds={DAYS[2]}" / "golden").mkdir(parents=True)
    (landing / f"ds={DAYS[2]}" / "golden" / "retrieval.jsonl").write_text(
        json.dumps({"query_id": retired, "retire": True, "reason": "kms page rewritten"}) + "\n", encoding="utf-8")
    auto = next(g["query_id"] for g in golden if g["relevant_doc_ids"] == ["changelog-4-2-x"])
    return {"golden": golden, "retired": retired, "auto_retired": auto}


def validate_day(day: str, *, version: bool = True) -> dict[str, Any]:
    ingested = refresh.ingest_documents(day, OVERRIDES)
    validated = refresh.validate_documents(day, OVERRIDES, ingested)
    assert validated["counts"].get("quarantined", 0) == 0, validated
    return refresh.version_snapshot(day) if version else {}


def refresh_day(day: str) -> dict[str, Any]:
    version = validate_day(day)
    synced = refresh.sync_index(day, OVERRIDES)
    evaluation = refresh.evaluate_retrieval(day, OVERRIDES, synced)
    published = refresh.publish_index(day, OVERRIDES, synced, evaluation, version)
    return {"synced": synced, "evaluation": evaluation, "published": published}


def published_rows() -> dict[str, list[str]]:
    from evertune.config import apply_overrides, load_params
    from evertune.kb.table import connect, open_table, published_version, read_table_rows, table_name_for

    params = apply_overrides(load_params(), OVERRIDES)
    table = open_table(connect(get_settings()), table_name_for(params))
    table.checkout(published_version(table, params.index.publish_tag))
    rows: dict[str, list[str]] = {}
    for row in read_table_rows(table, ["doc_id", "body"]):
        rows.setdefault(row["doc_id"], []).append(row["body"])
    return rows


def _golden_record(run: dict[str, Any]) -> tuple:
    evaluation = run["evaluation"]
    return evaluation["golden_version"], evaluation["golden_sha256"], evaluation["golden"]


@pytest.fixture(scope="module", autouse=True)
def embedder():
    """Load the embedding model once, outside the test's own timings."""
    from evertune.config import load_params
    from evertune.models.embedder import load_embedder

    return load_embedder(load_params().embed)


def test_golden_sets_carry_over_three_days_and_a_backfill(
    evertune_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    landing = Path(get_settings().landing_uri)
    plan = build_landing(landing)
    runs = {}
    with caplog.at_level("INFO", logger="evertune.kb.refresh"):
        for day in DAYS:
            runs[day] = refresh_day(day)

    # Every day publishes; the golden set is logged with every evaluation.
    assert [runs[d]["published"]["changed"] for d in DAYS] == [True, True, True]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("golden retrieval set as of")]
    assert len(logged) == 3 and all("golden version" in line for line in logged)
    first, second, third = (runs[d]["evaluation"]["golden"] for d in DAYS)
    assert first["size"] == len(plan["golden"]) and first["unreviewed_drafts"] is False
    # Day 2 has no golden file: the folded set (golden_version) is unchanged; the deletions auto-retire one item
    # and prune another, so the scored set's version moves, and both are reported.
    assert second["golden_version"] == first["golden_version"]
    assert second["version"] != first["version"] and second["size"] == first["size"] - 1
    assert second["auto_retired_ids"] == [plan["auto_retired"]]
    assert second["pruned_items"] == [{"id": PAIR["query_id"], "dropped_doc_ids": ["glossary"]}]
    assert any(f"{plan['auto_retired']} retired automatically" in r.getMessage() for r in caplog.records)
    # Day 3's retire line moves the folded version.
    assert third["golden_version"] != second["golden_version"] and third["size"] == second["size"] - 1
    assert third["retired"] == 2 and third["auto_retired"] == 1
    for day in DAYS:
        published, evaluation = runs[day]["published"], runs[day]["evaluation"]
        assert published["golden_version"] == evaluation["golden_version"] == evaluation["golden"]["golden_version"]
        assert evaluation["golden_sha256"] == evaluation["golden"]["version"]
        assert published["golden_unreviewed_drafts"] is False and published["golden"]["size"] == evaluation["golden"]["size"]
        assert evaluation["candidate"]["n_queries"] == evaluation["golden"]["size"]

    # The published KB follows every edit and deletion.
    rows = published_rows()
    assert not set(TOMBSTONED) & set(rows)
    assert len(rows) == 36 - len(TOMBSTONED) and "runbook-disk-full" in rows
    text = {doc_id: "\n".join(bodies) for doc_id, bodies in rows.items()}
    assert "Quokka-three" in text["quickstart"] and "Quokka-two" not in text["quickstart"]
    for doc_id, marker in (("kms-encryption", "Quokka-kms"), ("partitioning", "Quokka-part"),
                           ("networking-ports", "Quokka-ports")):
        assert marker in text[doc_id], doc_id
    from evertune.config import apply_overrides, load_params
    from evertune.kb.retrieval import search

    hits = search("Quokka-three seven nodes", apply_overrides(load_params(), OVERRIDES), get_settings(), mode="fts")
    assert hits and hits[0]["doc_id"] == "quickstart"

    on_time = get_settings().data_repo / "validated"
    on_time_sets = {day: carried_golden(on_time, day, RETRIEVAL).fitted.canonical for day in DAYS}

    # Backfill in a fresh home, days in the order 3, 1, 2.
    monkeypatch.setenv("EVERTUNE_HOME", str(tmp_path / "backfill"))
    monkeypatch.setenv("EVERTUNE_LANDING_URI", str(landing))
    # Day 3 alone: its only golden line retires an id no validated day has added yet, so there is nothing to score.
    day3_version = validate_day(DAYS[2])
    # DVC versions are content-keyed: the same validated bytes give the same data version in any home or order.
    assert day3_version["data_version"] == runs[DAYS[2]]["published"]["data_version"]
    synced = refresh.sync_index(DAYS[2], OVERRIDES)
    with pytest.raises(NoGoldenSetError, match=r"retired or quarantined .*To add one, drop golden/retrieval\.jsonl"):
        refresh.evaluate_retrieval(DAYS[2], OVERRIDES, synced)
    for day in DAYS[:2]:
        validate_day(day, version=False)  # (versioning them is what the day-3 check above shows; it costs ~8 s each)
    # With the history validated, each day's set is byte-identical to the on-time run's, whatever the order.
    root = get_settings().data_repo / "validated"
    for day in (DAYS[2], DAYS[0], DAYS[1]):
        drop = snapshot.path_of(root / f"ds={day}", snapshot.GOLDEN_RETRIEVAL)
        assert drop.read_bytes() == snapshot.path_of(on_time / f"ds={day}", snapshot.GOLDEN_RETRIEVAL).read_bytes()
        carried = carried_golden(root, day, RETRIEVAL)
        assert carried.fitted.canonical == on_time_sets[day]
        assert (carried.golden.version, carried.fitted.version, carried.summary()) == _golden_record(runs[day])
    again = refresh.evaluate_retrieval(DAYS[2], OVERRIDES, synced)  # the day-3 candidate, re-evaluated
    assert _golden_record({"evaluation": again}) == _golden_record(runs[DAYS[2]])

"""Validation with a real Great Expectations file context: row-level quarantine, critical failures, output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune.config import Params, apply_overrides, load_params
from evertune.data.snapshot import FILES
from evertune.errors import CriticalValidationError
from evertune.kb.ingest import DOC_COLUMNS, ingest_partition
from evertune.kb.validation import read_validated, validate_documents, write_validated
from evertune.settings import Settings, get_settings

INTERVAL = "2026-11-04"
URL = "https://help.nimbusnotes.example/articles/"
TOPICS = ["billing", "sync", "security", "export", "sharing", "offline", "search", "tags"]


def body(topic: str, n: int = 0) -> str:
    return (
        f"To manage {topic} for your workspace, open the Settings page and choose {topic.title()}. "
        f"The change is saved at once and it applies to all of your devices (note {n})."
    )


def doc(doc_id: str, text: str | None = None, **overrides: str) -> dict[str, str]:
    record = {"doc_id": doc_id, "title": f"About {doc_id}", "text": body(doc_id) if text is None else text,
              "source": "help-center", "url": URL + doc_id, "updated_at": "2026-11-04T06:00:00+00:00", "topic": "x"}  # fmt: skip
    record.update(overrides)
    return record


def write_partition(root: Path, docs: list[dict[str, str]], qa: list[dict[str, str]] = (), tombstones: int = 1) -> Path:
    part = root / f"ds={INTERVAL}"
    part.mkdir(parents=True, exist_ok=True)
    (part / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (part / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa))
    (part / "tombstones.jsonl").write_text(
        "".join(
            json.dumps({"doc_id": f"gone-{i}", "deleted_at": "2026-11-04T00:00:00Z"}) + "\n" for i in range(tombstones)
        )
    )
    (part / "golden").mkdir(exist_ok=True)
    (part / "golden" / "retrieval.jsonl").write_text(
        json.dumps({"query_id": "q-1", "query": "manage billing", "relevant_doc_ids": ["good-0"]}) + "\n"
    )
    return root


def good_docs(n: int) -> list[dict[str, str]]:
    return [doc(f"good-{i}", body(TOPICS[i % len(TOPICS)], i)) for i in range(n)]


def qa(qa_id: str, question: str = "How do I change my plan?", answer: str = "Open Settings and choose Billing.",
       doc_id: str = "good-0") -> dict[str, str]:  # fmt: skip
    return {"qa_id": qa_id, "question": question, "answer": answer, "doc_id": doc_id, "fact_key": "plan"}


BAD_DOCS = {
    "empty-text": (doc("empty-text", text="   "), "empty_text"),
    "too-short": (doc("too-short", text="Open Settings and choose the plan."), "text_too_short"),
    "word-salad": (doc("word-salad", text="zorbl vintak plemor quastif dranel " * 6), "garbage_text"),
    "symbol-junk": (
        doc("symbol-junk", text="#$%^ 0x3f 0x9a 1234 5678 &&** ]]]] {{{ 0101 1100 @@@ ~~~ " * 3),
        "garbage_text",
    ),
    "bad-source": (doc("bad-source", source="scraped-forum"), "disallowed_source"),
    "bad-url": (doc("bad-url", url="http://evil.example/phish"), "disallowed_url"),
    "has-email": (doc("has-email", text=body("mail") + " Write to jane.doe@gmail.com for help."), "pii_detected"),
    # a real-format number (area code 415); find_pii parses numbers, so "+1 (555) 123-4567" is no longer one
    "has-phone": (doc("has-phone", text=body("phone") + " Call me at +1 (415) 555-0132 today."), "pii_detected"),
    "has-card": (doc("has-card", text=body("card") + " My card is 4111 1111 1111 1111 thanks."), "pii_detected"),
}


@pytest.fixture
def settings(evertune_home: Path) -> Settings:
    return get_settings()


@pytest.fixture
def params() -> Params:
    return load_params()


@pytest.fixture
def mixed_drop(tmp_path: Path) -> Path:
    """40 good documents, one of each row-level problem, duplicates and QA pairs (good and bad)."""
    docs = good_docs(40) + [d for d, _ in BAD_DOCS.values()]
    docs += [doc("conflict", body("a", 1)), doc("conflict", body("b", 2))]  # same id, different content
    docs += [doc("twin", body("twin", 3)), doc("twin", body("twin", 3), updated_at="2026-11-04T07:00:00+00:00")]
    # an allowed company address is not PII
    docs += [doc("support-mail", body("support") + " Contact support@help.nimbusnotes.example if it fails.")]
    qa_rows = [qa("qa-good"), qa("qa-empty", answer=" "), qa("qa-pii", answer="Mail bob@example.org"),
               qa("qa-bad-ref", doc_id="Not A Doc")]  # fmt: skip
    return write_partition(tmp_path / "landing", docs, qa_rows)


def test_row_level_failures_are_quarantined_with_reasons(mixed_drop: Path, params: Params, settings: Settings) -> None:
    ingested = ingest_partition(str(mixed_drop), INTERVAL, params)
    result = validate_documents(ingested, INTERVAL, params, settings)

    q = result.quarantine
    assert set(q["stage"]) == {"validate"}
    got = sorted(zip(q["doc_id"], q["reason"], strict=True))
    expected = sorted([(doc_id, reason) for doc_id, (_, reason) in BAD_DOCS.items()]
                      + [("conflict", "duplicate_doc_id")] * 2
                      + [("good-0", "empty_text"), ("good-0", "pii_detected"), ("Not A Doc", "invalid_doc_id")])  # fmt: skip
    assert got == expected
    assert not any("gmail" in d or "4111" in d or "555" in d for d in q["detail"])  # the report never echoes PII

    kept = result.documents["doc_id"].tolist()
    assert kept == sorted([f"good-{i}" for i in range(40)] + ["support-mail", "twin"])
    # of the identical twins the newest copy (line 53 of docs.jsonl) is kept
    assert result.documents.set_index("doc_id").loc["twin", "record_ref"] == "docs.jsonl:53"
    assert tuple(result.documents.columns) == DOC_COLUMNS
    assert result.qa["qa_id"].tolist() == ["qa-good"]
    assert result.tombstones["doc_id"].tolist() == ["gone-0"]
    assert [g["query_id"] for g in result.golden_retrieval] == ["q-1"]

    counts = result.report["counts"]
    assert counts["documents_read"] == 54 and counts["documents_valid"] == 42
    assert counts["documents_exact_duplicates_dropped"] == 1
    assert counts["quarantined"] == 14 == counts["quarantined_validate"]
    assert result.report["quarantine_by_reason"]["pii_detected"] == 4
    assert result.report["quarantine_fraction"] == pytest.approx(14 / counts["records_read"], abs=1e-6)
    failed = {(e["suite"], e["check"]) for e in result.report["expectations"] if not e["success"]}
    assert ("kb_documents", "doc_id_unique") in failed and ("kb_qa", "pii_email") in failed
    assert ("kb_documents", "source_allowed") in failed and ("kb_documents", "schema") not in failed

    # a real GX file context with Data Docs
    gx_dir = settings.work_dir / "gx"
    assert (gx_dir / "great_expectations.yml").is_file()
    assert result.data_docs and result.data_docs.startswith("file://")
    assert Path(result.data_docs.removeprefix("file://")).is_file()


def test_rerun_reuses_the_gx_context(mixed_drop: Path, params: Params, settings: Settings, tmp_path: Path) -> None:
    ingested = ingest_partition(str(mixed_drop), INTERVAL, params)
    first = validate_documents(ingested, INTERVAL, params, settings)
    gx_dir = settings.work_dir / "gx"
    suite_file = gx_dir / "expectations" / "kb_documents.json"
    stored_before = json.loads(suite_file.read_text())
    snapshot = sorted(str(p.relative_to(gx_dir)) for p in gx_dir.rglob("*") if "data_docs" not in p.parts)

    configs = {p: p.read_bytes() for sub in ("expectations", "checkpoints", "validation_definitions")
               for p in (gx_dir / sub).glob("*.json")}  # fmt: skip
    assert len(configs) == 6

    second = validate_documents(ingested, INTERVAL, params, settings)
    stored_after = json.loads(suite_file.read_text())
    assert [e["id"] for e in stored_after["expectations"]] == [e["id"] for e in stored_before["expectations"]]
    assert {p: p.read_bytes() for p in configs} == configs  # created once, then re-used as stored
    # keyed on the interval: no new validation results, suites, checkpoints on a re-run
    assert sorted(str(p.relative_to(gx_dir)) for p in gx_dir.rglob("*") if "data_docs" not in p.parts) == snapshot
    assert first.report == second.report

    out_a, out_b = tmp_path / "a", tmp_path / "b"
    write_validated(first, out_a)
    paths = write_validated(second, out_b)
    write_validated(second, out_a)  # overwriting in place gives the same bytes as well
    assert set(paths) == set(FILES)
    for name in FILES.values():
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    report = json.loads((out_a / "report.json").read_text())
    assert "data_docs" not in report and str(settings.home) not in (out_a / "report.json").read_text()

    back = read_validated(out_a)
    assert back.documents.equals(first.documents)
    assert back.qa.equals(first.qa) and back.quarantine.equals(first.quarantine)
    assert back.golden_retrieval == first.golden_retrieval and back.counts == first.counts


def test_changed_params_update_the_suite(mixed_drop: Path, params: Params, settings: Settings) -> None:
    ingested = ingest_partition(str(mixed_drop), INTERVAL, params)
    validate_documents(ingested, INTERVAL, params, settings)
    stricter = apply_overrides(params, {"validate.allowed_sources": ["release-notes"],
                                        "validate.max_quarantine_fraction": 1.0})  # fmt: skip
    suite_file = settings.work_dir / "gx" / "expectations" / "kb_documents.json"
    ids_before = {e["meta"]["check"]: e["id"] for e in json.loads(suite_file.read_text())["expectations"]}
    result = validate_documents(ingested, INTERVAL, stricter, settings)
    assert result.documents.empty
    suite = json.loads(suite_file.read_text())
    in_set = [e for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_in_set"]
    assert [e["kwargs"]["value_set"] for e in in_set] == [["release-notes"]]
    ids_after = {e["meta"]["check"]: e["id"] for e in suite["expectations"]}
    # only the changed expectation gets a new id
    assert {k for k in ids_after if ids_after[k] != ids_before.get(k)} == {"source_allowed"}


def test_pii_flag_keeps_documents(mixed_drop: Path, params: Params, settings: Settings) -> None:
    flag = apply_overrides(params, {"validate.pii_action": "flag"})
    result = validate_documents(ingest_partition(str(mixed_drop), INTERVAL, flag), INTERVAL, flag, settings)
    docs = result.documents.set_index("doc_id")
    assert {"has-email", "has-phone", "has-card"} <= set(docs.index)
    assert json.loads(docs.loc["has-phone", "metadata"])["pii_kinds"] == ["phone"]
    assert json.loads(docs.loc["has-card", "metadata"])["pii"] is True
    assert "pii" not in json.loads(docs.loc["good-1", "metadata"])
    assert result.report["counts"]["documents_pii_flagged"] == 3
    # QA pairs with PII are never kept for training
    assert result.quarantine.set_index("record_ref").loc["qa.jsonl:3", "reason"] == "pii_detected"


def test_missing_partition_is_critical(tmp_path: Path, params: Params, settings: Settings) -> None:
    ingested = ingest_partition(str(tmp_path / "empty-landing"), INTERVAL, params)
    with pytest.raises(CriticalValidationError, match="empty drop") as info:
        validate_documents(ingested, INTERVAL, params, settings)
    assert info.value.report["status"] == "critical"
    assert "does not exist" in info.value.report["critical"][0]


def test_drop_without_documents_or_tombstones_is_critical(tmp_path: Path, params: Params, settings: Settings) -> None:
    root = write_partition(tmp_path / "landing", [], [qa("qa-only")], tombstones=0)
    ingested = ingest_partition(str(root), INTERVAL, params)
    assert ingested.partition_found
    with pytest.raises(CriticalValidationError, match="empty drop"):
        validate_documents(ingested, INTERVAL, params, settings)
    # allowed when the operator says so
    relaxed = apply_overrides(params, {"validate.require_nonempty_drop": False})
    result = validate_documents(ingested, INTERVAL, relaxed, settings)
    assert result.documents.empty and result.qa["qa_id"].tolist() == ["qa-only"]


def test_tombstones_only_drop_is_fine(tmp_path: Path, params: Params, settings: Settings) -> None:
    root = write_partition(tmp_path / "landing", [], tombstones=2)
    result = validate_documents(ingest_partition(str(root), INTERVAL, params), INTERVAL, params, settings)
    assert result.tombstones["doc_id"].tolist() == ["gone-0", "gone-1"] and result.quarantine.empty


def test_too_much_quarantine_is_critical(tmp_path: Path, params: Params, settings: Settings) -> None:
    docs = good_docs(6) + [BAD_DOCS["word-salad"][0], BAD_DOCS["bad-url"][0]]
    root = write_partition(tmp_path / "landing", docs, tombstones=0)
    part = root / f"ds={INTERVAL}" / "docs"
    part.mkdir()
    (part / "broken.md").write_bytes(b"\xff\xfe\x00\x01")
    ingested = ingest_partition(str(root), INTERVAL, params)
    # 3 of 10 records (8 docs + broken.md + golden line) quarantined: 30 % > 25 %
    with pytest.raises(CriticalValidationError, match="too much quarantined") as info:
        validate_documents(ingested, INTERVAL, params, settings)
    report = info.value.report
    assert report["quarantine_fraction"] == pytest.approx(0.3)
    assert report["quarantine_by_reason"] == {"binary_content": 1, "disallowed_url": 1, "garbage_text": 1}
    # just under the threshold passes
    lenient = apply_overrides(params, {"validate.max_quarantine_fraction": 0.3})
    assert len(validate_documents(ingested, INTERVAL, lenient, settings).documents) == 6


def test_wrong_schema_is_critical(mixed_drop: Path, params: Params, settings: Settings) -> None:
    ingested = ingest_partition(str(mixed_drop), INTERVAL, params)
    ingested.documents = ingested.documents.drop(columns=["url"])
    with pytest.raises(CriticalValidationError, match="wrong schema") as info:
        validate_documents(ingested, INTERVAL, params, settings)
    assert any("missing columns ['url']" in p for p in info.value.report["critical"])

    ingested = ingest_partition(str(mixed_drop), INTERVAL, params)
    ingested.qa["answer"] = 42
    with pytest.raises(CriticalValidationError, match="wrong schema") as info:
        validate_documents(ingested, INTERVAL, params, settings)
    assert any(p.startswith("qa.answer:") for p in info.value.report["critical"])


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Write to jane.doe@gmail.com today", {"email"}),
        ("Ask support@nimbusnotes.example or help@eu.nimbusnotes.example.", set()),
        ("Spoofed: x@nimbusnotes.example.evil.com", {"email"}),
        ("Call 555-123-4567 or +44 20 7946 0958", {"phone"}),
        # the regex checks also took the card for a phone number; find_pii parses numbers
        ("Card 4111-1111-1111-1111 expires", {"card"}),
        ("Updated 2026-11-03T08:00:00+00:00, version 3.14.159, port 8080, 1,250 notes, IP 192.168.100.200", set()),
    ],
)
def test_pii_codes(text: str, kinds: set[str]) -> None:
    """The ``pii`` helper column (find_pii codes) and the GX regex of each PII check agree on every kind."""
    import re

    import pandas as pd

    from evertune.kb.expectations import pii_checks, safety_codes

    injection, pii = safety_codes(text, load_params().validation)
    assert injection == "" and set(filter(None, pii.split(","))) == kinds
    # GX's pandas engine evaluates the checks' regexes through str.contains: it must agree with Python's re
    column = pd.Series([pii]).astype(str)
    regexes = {c.check.removeprefix("pii_"): c.kwargs["regex"] for c in pii_checks()}
    assert {kind for kind, regex in regexes.items() if bool(column.str.contains(regex).iloc[0])} == kinds
    assert {kind for kind, regex in regexes.items() if re.search(regex, pii)} == kinds


def test_text_ratios_separate_prose_from_garbage() -> None:
    from evertune.kb.expectations import text_ratios

    alpha, stop = text_ratios(body("billing"))
    assert alpha > 0.9 and stop > 0.25
    assert text_ratios("zorbl vintak plemor quastif dranel")[1] == 0.0
    assert text_ratios("#$%^ 0x3f 1234 &&**")[0] < 0.2
    assert text_ratios("") == (0.0, 0.0)


def test_refresh_steps_hand_over_a_typed_reference(
    mixed_drop: Path, params: Params, evertune_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest_documents stages through the snapshot contract; validate_documents reads what its reference names."""
    from evertune.errors import NothingToDo
    from evertune.kb import refresh

    monkeypatch.setenv("EVERTUNE_LANDING_URI", str(mixed_drop))
    ref = refresh.ingest_documents(INTERVAL)
    assert json.loads(json.dumps(ref)) == ref and Path(ref["path"]).is_dir()
    assert not list(Path(ref["path"]).rglob("*.pkl"))
    validated = refresh.validate_documents(INTERVAL, None, ref)
    direct = validate_documents(ingest_partition(str(mixed_drop), INTERVAL, params), INTERVAL, params, get_settings())
    assert validated["counts"] == direct.counts
    out_ref = Path(validated["path"])
    write_validated(direct, evertune_home / "direct")
    for name in FILES.values():
        assert (out_ref / name).read_bytes() == (evertune_home / "direct" / name).read_bytes(), name
    assert refresh.validate_documents(INTERVAL)["counts"] == direct.counts  # without a reference: the staging folder
    with pytest.raises(NothingToDo):
        refresh.validate_documents("2026-11-05", None, ref)  # a reference to another interval's staging

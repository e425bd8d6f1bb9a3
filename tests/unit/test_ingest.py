"""Ingestion of one landing partition: formats, normalisation, and bad input turned into quarantine rows."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import fsspec
import pytest

from evertune.config import Params, apply_overrides, load_params
from evertune.errors import ConfigError, NothingToDo
from evertune.kb.ingest import (
    DOC_COLUMNS,
    QA_COLUMNS,
    TOMBSTONE_COLUMNS,
    html_to_text,
    ingest_partition,
    markdown_to_text,
    parse_front_matter,
)
from evertune.kb.quarantine import QUARANTINE_COLUMNS

INTERVAL = "2026-11-03"
URL = "https://help.nimbusnotes.example/articles/"
BODY = (
    "To change the plan for your account, open the Settings page and choose Billing. "
    "The new plan applies to all of your devices at once."
)


def front_matter(doc_id: str, **overrides: str) -> str:
    fields = {"doc_id": doc_id, "title": f"Title of {doc_id}", "source": "help-center", "url": URL + doc_id,
              "updated_at": "2026-11-03T09:30:00+01:00", "topic": "billing"}  # fmt: skip
    fields.update(overrides)
    lines = [f"{k}: {v}" for k, v in fields.items() if v is not None]
    return "---\n" + "\n".join(lines) + "\n---\n"


def doc_json(doc_id: str, **overrides: object) -> str:
    record = {"doc_id": doc_id, "title": f"Title of {doc_id}", "text": BODY, "source": "help-center",
              "url": URL + doc_id, "updated_at": "2026-11-02T10:00:00Z", "topic": "sync"}  # fmt: skip
    record.update(overrides)
    return json.dumps({k: v for k, v in record.items() if v is not ...})


@pytest.fixture
def params() -> Params:
    return apply_overrides(load_params(), {"ingest.max_file_bytes": 4000})


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """A partition with good documents of every format plus one of each unreadable case."""
    root = tmp_path / "landing"
    part = root / f"ds={INTERVAL}"
    docs = part / "docs"
    (docs / "nested").mkdir(parents=True)
    (part / "golden").mkdir()
    outside = tmp_path / "outside.md"
    outside.write_text(front_matter("outside-doc") + BODY)

    # good ones
    (docs / "billing-plans.md").write_text(front_matter("billing-plans") + "# Plans\n\n" + BODY + "\n")
    (docs / "nested" / "offline-mode.txt").write_text(front_matter("offline-mode", topic="sync") + BODY)
    (docs / "sync-devices.html").write_text(
        '<html><head><title>Sync devices</title><meta name="evertune:doc_id" content="sync-devices">'
        '<meta name="evertune:source" content="help-center">'
        f'<meta name="evertune:url" content="{URL}sync-devices">'
        '<meta name="evertune:updated_at" content="2026-11-01T08:00:00-05:00"><meta name="evertune:topic" content="sync">'
        f"<style>p {{ color: red }}</style></head><body><p>{BODY}</p><script>alert('x')</script></body></html>"
    )
    (part / "docs.jsonl").write_text(
        "\n".join([
            doc_json("jsonl-good"),
            "{not json",
            doc_json("jsonl-no-title", title=...),
            doc_json("jsonl-title-number", title=42),
            doc_json("../../etc/passwd"),
            doc_json("jsonl-naive-time", updated_at="2026-11-02T10:00:00"),
            "[1, 2]",
            "",
            doc_json("jsonl-nan") .replace('"sync"', "NaN"),
        ]) + "\n"
    )  # fmt: skip
    # bad files, one of each reason
    (docs / "bad-encoding.md").write_bytes(front_matter("bad-encoding").encode() + b"caf\xe9 \xff\xfe")
    (docs / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "big.md").write_text(front_matter("big") + "word " * 1000)
    (docs / "no-front-matter.md").write_text("# Just a heading\n\n" + BODY)
    (docs / "Bad_ID.md").write_text(front_matter("Bad_ID") + BODY)
    (docs / "leak.md").symlink_to(outside)
    (docs / "loop").symlink_to(docs, target_is_directory=True)
    (docs / "manual.pdf").write_bytes(b"%PDF-1.4")
    (part / "notes.csv").write_text("a,b\n")
    (part / "_manifest.json").write_text("{}")
    (part / "tombstones.jsonl").write_text(
        '{"doc_id": "old-article", "deleted_at": "2026-11-03T00:00:00+02:00", "reason": "retired"}\n'
        '{"doc_id": "old-article-2", "deleted_at": "yesterday"}\n'
    )
    (part / "qa.jsonl").write_text(
        '{"qa_id": "qa-1", "question": "How do I change my plan?", "answer": "Open Settings.", "doc_id": "billing-plans", "fact_key": "plan"}\n'
        '{"qa_id": "qa-2", "question": "No answer"}\n'
    )
    (part / "golden" / "retrieval.jsonl").write_text(
        '{"query_id": "g-1", "query": "change plan", "relevant_doc_ids": ["billing-plans"]}\n'
        '{"query_id": "g-2", "query": "bad", "relevant_doc_ids": []}\n'
    )
    (part / "golden" / "qa.jsonl").write_text(
        '{"qa_id": "gqa-1", "question": "Where is billing?", "answer": "In Settings.", "doc_id": "billing-plans", "fact_key": "k"}\n'
    )
    return root


EXPECTED_QUARANTINE = {
    "docs.jsonl:2": "malformed_json",
    "docs.jsonl:3": "missing_field",
    "docs.jsonl:4": "invalid_field",
    "docs.jsonl:5": "invalid_doc_id",
    "docs.jsonl:6": "invalid_timestamp",
    "docs.jsonl:7": "malformed_json",
    "docs.jsonl:9": "malformed_json",
    "docs/bad-encoding.md": "bad_encoding",
    "docs/binary.md": "binary_content",
    "docs/empty.txt": "empty_file",
    "docs/big.md": "oversized",
    "docs/no-front-matter.md": "missing_field",
    "docs/Bad_ID.md": "invalid_doc_id",
    "docs/leak.md": "unsafe_path",
    "docs/loop": "unsafe_path",
    "docs/manual.pdf": "unexpected_file",
    "notes.csv": "unexpected_file",
    "tombstones.jsonl:2": "invalid_timestamp",
    "qa.jsonl:2": "missing_field",
    "golden/retrieval.jsonl:2": "invalid_field",
}


def test_every_bad_input_is_quarantined_with_its_reason(landing: Path, params: Params) -> None:
    result = ingest_partition(str(landing), INTERVAL, params)

    assert result.partition_found
    got = dict(zip(result.quarantine["record_ref"], result.quarantine["reason"], strict=True))
    assert got == EXPECTED_QUARANTINE
    assert tuple(result.quarantine.columns) == QUARANTINE_COLUMNS
    assert set(result.quarantine["stage"]) == {"ingest"}
    assert set(result.quarantine["interval"]) == {INTERVAL}
    assert all(result.quarantine["detail"].str.len() > 0)
    # the readable doc_id is kept for tracing, including an unsafe one
    by_ref = result.quarantine.set_index("record_ref")
    assert by_ref.loc["docs.jsonl:5", "doc_id"] == "../../etc/passwd"
    assert by_ref.loc["docs.jsonl:6", "doc_id"] == "jsonl-naive-time"
    assert by_ref.loc["docs/leak.md", "doc_id"] == ""

    assert result.documents["doc_id"].tolist() == ["billing-plans", "jsonl-good", "offline-mode", "sync-devices"]
    assert tuple(result.documents.columns) == DOC_COLUMNS
    assert result.tombstones["doc_id"].tolist() == ["old-article"]
    assert tuple(result.tombstones.columns) == TOMBSTONE_COLUMNS
    assert result.qa["qa_id"].tolist() == ["qa-1"] and tuple(result.qa.columns) == QA_COLUMNS
    assert [g["query_id"] for g in result.golden_retrieval] == ["g-1"]
    assert [g["qa_id"] for g in result.golden_qa] == ["gqa-1"]
    # one record per file, one per non-blank JSONL line; the manifest does not count
    assert result.records_read == 13 + 8 + 2 + 2 + 2 + 1
    assert result.files_read == 18


def test_records_are_normalised(landing: Path, params: Params) -> None:
    docs = ingest_partition(str(landing), INTERVAL, params).documents.set_index("doc_id")

    md = docs.loc["billing-plans"]
    assert md["text"] == "Plans\n\n" + BODY
    assert md["updated_at"] == "2026-11-03T08:30:00+00:00"  # +01:00 normalised to UTC
    assert md["record_ref"] == "docs/billing-plans.md"
    assert json.loads(md["metadata"]) == {"file": "docs/billing-plans.md", "format": "md", "topic": "billing"}
    canonical = json.dumps({"source": md["source"], "text": md["text"], "title": md["title"], "url": md["url"]},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    assert md["content_hash"] == hashlib.sha256(canonical.encode()).hexdigest()

    assert docs.loc["offline-mode", "record_ref"] == "docs/nested/offline-mode.txt"
    assert docs.loc["jsonl-good", "record_ref"] == "docs.jsonl:1"
    assert json.loads(docs.loc["jsonl-good", "metadata"])["line"] == 1
    html = docs.loc["sync-devices"]
    assert (html["title"], html["text"], html["updated_at"]) == ("Sync devices", BODY, "2026-11-01T13:00:00+00:00")
    assert "alert" not in html["text"] and "color" not in html["text"]


def test_ingest_is_deterministic(landing: Path, params: Params) -> None:
    first = ingest_partition(str(landing), INTERVAL, params)
    second = ingest_partition(str(landing), INTERVAL, params)
    assert first.documents.equals(second.documents)
    assert first.quarantine.equals(second.quarantine)
    keys = list(zip(first.documents["doc_id"], first.documents["record_ref"], strict=True))
    assert keys == sorted(keys)


def test_staged_ingest_reads_back_exactly(landing: Path, params: Params, tmp_path: Path) -> None:
    """Ingest output crosses from the ingest task to the validate task as typed files, not a pickle."""
    from evertune.kb.staging import IngestRef, load_ingest, stage_ingest

    result = ingest_partition(str(landing), INTERVAL, params)
    ref = stage_ingest(result, tmp_path / "staged")
    assert json.loads(json.dumps(ref.to_dict())) == ref.to_dict()  # JSON-able (XCom, step summaries)
    assert IngestRef.from_dict({**ref.to_dict(), "extra": 1}) == ref
    assert (ref.documents, ref.tombstones, ref.qa, ref.quarantined) == (
        len(result.documents), len(result.tombstones), len(result.qa), len(result.quarantine))
    assert (ref.records_read, ref.files_read, ref.partition_found) == (result.records_read, result.files_read, True)
    back = load_ingest(Path(ref.path), INTERVAL)
    for name in ("documents", "tombstones", "qa", "quarantine"):
        assert getattr(back, name).equals(getattr(result, name)), name
    assert (back.golden_retrieval, back.golden_qa) == (result.golden_retrieval, result.golden_qa)
    assert (back.records_read, back.files_read, back.partition_found) == (result.records_read, result.files_read, True)
    with pytest.raises(NothingToDo, match="2026-11-04"):
        load_ingest(Path(ref.path), "2026-11-04")
    with pytest.raises(NothingToDo, match="run ingest_documents first"):
        load_ingest(tmp_path / "never-staged", INTERVAL)


def test_missing_partition_is_an_empty_result(tmp_path: Path, params: Params) -> None:
    result = ingest_partition(str(tmp_path / "nowhere"), INTERVAL, params)
    assert not result.partition_found
    assert len(result.documents) == len(result.tombstones) == len(result.qa) == len(result.quarantine) == 0
    assert tuple(result.documents.columns) == DOC_COLUMNS
    assert result.records_read == 0


def test_bad_interval_is_a_config_error(tmp_path: Path, params: Params) -> None:
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        ingest_partition(str(tmp_path), "2026-13-01", params)
    with pytest.raises(ConfigError):
        ingest_partition(str(tmp_path), "../2026-11-01", params)


def test_memory_landing_and_path_tricks() -> None:
    fs = fsspec.filesystem("memory")
    base = "memory://evertune-test-landing"
    part = f"{base}/ds={INTERVAL}"
    try:
        fs.pipe(f"{part}/docs/good.md", (front_matter("good") + BODY).encode())
        fs.pipe(f"{part}/docs/../../../escape.md", (front_matter("escape") + BODY).encode())
        fs.pipe(f"{part}/docs//double.md", (front_matter("double") + BODY).encode())
        fs.pipe(f"{part}/docs.jsonl", (doc_json("from-jsonl") + "\n").encode())
        result = ingest_partition(base, INTERVAL, load_params())
    finally:
        fs.rm(base, recursive=True)
    assert result.documents["doc_id"].tolist() == ["from-jsonl", "good"]
    assert sorted(zip(result.quarantine["record_ref"], result.quarantine["reason"], strict=True)) == [
        ("docs/../../../escape.md", "unsafe_path"),
        ("docs//double.md", "unsafe_path"),
    ]


def test_special_files_are_not_read(tmp_path: Path) -> None:
    part = tmp_path / f"ds={INTERVAL}" / "docs"
    part.mkdir(parents=True)
    os.mkfifo(part / "pipe.md")  # reading it would block forever
    (part / "inside-link.md").symlink_to(part / "real.md")
    (part / "real.md").write_text(front_matter("real") + BODY)
    result = ingest_partition(str(tmp_path), INTERVAL, load_params())
    assert dict(zip(result.quarantine["record_ref"], result.quarantine["reason"], strict=True)) == {
        "docs/pipe.md": "unsafe_path"
    }
    # a link that stays inside the partition is read like the file it points to
    assert sorted(result.documents["record_ref"]) == ["docs/inside-link.md", "docs/real.md"]


def test_jsonl_line_limit_is_per_line(tmp_path: Path) -> None:
    part = tmp_path / f"ds={INTERVAL}"
    part.mkdir()
    long_line = doc_json("long-one", text="word " * 2000)
    (part / "docs.jsonl").write_text("\n".join([doc_json("short-one"), long_line, doc_json("short-two")]))
    params = apply_overrides(load_params(), {"ingest.max_file_bytes": 3000})
    result = ingest_partition(str(tmp_path), INTERVAL, params)
    assert result.documents["doc_id"].tolist() == ["short-one", "short-two"]
    assert result.quarantine[["record_ref", "reason"]].values.tolist() == [["docs.jsonl:2", "oversized"]]


def test_disabled_format_is_reported(tmp_path: Path) -> None:
    docs = tmp_path / f"ds={INTERVAL}" / "docs"
    docs.mkdir(parents=True)
    (docs / "page.html").write_text("<title>x</title><p>y</p>")
    params = apply_overrides(load_params(), {"ingest.formats": ["md", "txt", "jsonl"]})
    result = ingest_partition(str(tmp_path), INTERVAL, params)
    assert result.quarantine["reason"].tolist() == ["unexpected_file"]
    assert "ingest.formats" in result.quarantine["detail"].iloc[0]


def test_html_to_text_strips_scripts_and_keeps_paragraphs() -> None:
    html = (
        "<!DOCTYPE html><html><head><title>Export &amp; backup</title>"
        '<meta name="evertune:doc_id" content="export-backup"><style>.x { display: none }</style>'
        "<script>var s = '<p>not text</p>';</script></head><body>"
        "<h1>Export</h1><p>Open   the\n menu &gt; <b>Export</b>.</p><ul><li>PDF</li><li>Markdown</li></ul>"
        "<p>Line one<br>line two</p><noscript>enable js</noscript><script src='a.js'></script><div>Done.</div>"
        "</body></html>"
    )
    text, title, meta = html_to_text(html)
    assert title == "Export & backup"
    assert meta == {"doc_id": "export-backup"}
    assert text == "Export\n\nOpen the menu > Export.\n\nPDF\n\nMarkdown\n\nLine one\nline two\n\nDone."


def test_markdown_to_text_drops_markup_only() -> None:
    markdown = (
        "# Sync\n\nUse **bold** and *italic* and `code` and a [link](https://x.example).\n\n\n\n"
        "* first\n+ second\n\n> quoted line\n\n```python\nprint('hi')\n```\n\nsnake_case_name stays.\n"
    )
    assert markdown_to_text(markdown) == (
        "Sync\n\nUse bold and italic and code and a link.\n\n- first\n- second\n\nquoted line\n\n"
        "print('hi')\n\nsnake_case_name stays."
    )


def test_front_matter_values_stay_strings() -> None:
    fields, body = parse_front_matter("---\ndoc_id: a-b\nupdated_at: 2026-11-03\ntitle: 'No: quotes'\n---\nbody")
    assert fields == {"doc_id": "a-b", "updated_at": "2026-11-03", "title": "No: quotes"}
    assert body == "body"
    with pytest.raises(ValueError, match="not closed"):
        parse_front_matter("---\ndoc_id: a\nbody")

"""The run-page content: pure rendering of synthetic run records (no Airflow, no database)."""

from __future__ import annotations

import html
import re
from pathlib import Path

from evertune_airflow.run_data import RunRecord
from evertune_airflow.run_html import esc, fmt, link, table
from evertune_airflow.run_pages import data_docs_href, data_docs_site, validation_page
from evertune_airflow.run_sections import NOT_EVALUATED, evaluated, run_body

GATE = {"passed": False, "action": "reject",
        "reasons": ["token_f1 0.41 < champion 0.45 (CI [-0.08, -0.01] below 0)", "drift moderate: <b>held</b>"],
        "checks": [{"check": "beats_champion", "passed": False, "reason": "token_f1 below champion"},
                   {"check": "floors", "passed": True, "reason": "token_f1 0.41 >= 0.0"}]}
EVALUATE = {"challenger": {"token_f1": 0.41, "rougeL": 0.3}, "champion": {"token_f1": 0.45, "rougeL": 0.31},
            "champion_version": 3, "ci": {"token_f1": [-0.08, -0.01]}, "n": 40}
DRIFT = {"run_id": "abc123", "reference": {"version": 3, "data_version": "dv-2"},
         "report": {"severity": "moderate", "reasons": ["category mix changed (chi2 p=0.01)"]}}
REGISTER = {"candidate": {"model_name": "evertune-llm", "version": 4, "created": True},
            "promotion": {"promoted": False, "previous_champion": 3}, "decision": "reject", "reasons": []}


def tune_record(**results) -> RunRecord:
    return RunRecord("tune_model", "manual__2026-11-02T00:00:00+00:00", "success",
                     task_states={"gate": "success", "evaluate": "success"}, results=results)


def text_of(page: str) -> str:
    """The page's text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_tune_page_shows_the_decision_every_reason_metrics_and_cis() -> None:
    body = run_body(tune_record(gate=GATE, evaluate=EVALUATE, check_drift=DRIFT, register=REGISTER,
                                train={"run_id": "abc123"}),
                    tracking_uri="http://127.0.0.1:5000", data_docs_href=None)
    text = text_of(body)
    assert "reject" in text
    for reason in GATE["reasons"]:
        assert reason in text
    assert "beats_champion" in text and "token_f1 below champion" in text
    assert "champion v3" in text and "[-0.08, -0.01]" in text and "-0.04" in text  # delta 0.41 - 0.45
    assert "moderate" in text and "category mix changed" in text
    assert 'href="http://127.0.0.1:5000/#/runs/abc123"' in body
    assert 'href="http://127.0.0.1:5000/#/models/evertune-llm/versions/4"' in body
    assert NOT_EVALUATED not in text


def test_values_are_escaped() -> None:
    body = run_body(tune_record(gate=GATE), tracking_uri=None, data_docs_href=None)
    assert "<b>held</b>" not in body
    assert "&lt;b&gt;held&lt;/b&gt;" in body
    assert esc('"><script>') == "&quot;&gt;&lt;script&gt;"
    assert link("javascript:alert(1)", "x") == "x"
    assert fmt(float("nan")) == "n/a" and fmt(0.123456) == "0.1235"
    assert table(("a",), []) == '<p class="muted">none</p>'


def test_a_run_before_the_gate_is_not_evaluated_yet() -> None:
    record = RunRecord("tune_model", "r1", "running", task_states={"gate": None, "train": "running"},
                       results={"build_dataset": {"path": "/x"}})
    assert not evaluated(record)
    text = text_of(run_body(record, tracking_uri=None, data_docs_href=None))
    assert NOT_EVALUATED in text and "not started" in text
    assert "build_dataset" in text  # partial results are still listed


def test_refresh_page_counts_retrieval_production_and_misses() -> None:
    results = {
        "ingest_documents": {"documents": 12, "tombstones": 1, "qa": 30, "quarantined": 2, "records_read": 45},
        "validate_documents": {"interval": "2026-11-02", "quarantine_by_reason": {"pii_detected": 2},
                               "counts": {"documents_ok": 12}},
        "sync_index": {"chunks_embedded": 40, "chunks_updated": 5, "chunks_deleted": 3, "rows_total": 400},
        "evaluate_retrieval": {"table": "kb_chunks", "k": 5, "mode": "hybrid",
                               "candidate": {"version": 9, "recall_at_k": 0.9, "mrr": 0.75, "n_queries": 10,
                                             "misses": [{"query_id": "q-7", "recall": 0.5,
                                                         "retrieved": ["doc-a", "doc-b"]}]},
                               "published": {"version": 8, "recall_at_k": 0.85, "mrr": 0.7, "n_queries": 10}},
        "publish_index": {"table": "kb_chunks", "table_version": 9, "previous_version": 8, "changed": True},
    }
    record = RunRecord("refresh_knowledge_base", "scheduled__2026-11-02", "success", results=results)
    body = run_body(record, tracking_uri=None, data_docs_href="/evertune/data-docs/x/y/index.html")
    text = text_of(body)
    for expected in ("pii_detected", "recall@5", "candidate v9", "published v8", "0.75", "q-7", "doc-a, doc-b",
                     "moved to version 9", "validation result of this interval"):
        assert expected in text, expected
    assert 'href="/evertune/data-docs/x/y/index.html"' in body
    assert NOT_EVALUATED not in text


def test_refused_publish_says_production_did_not_move() -> None:
    record = RunRecord("refresh_knowledge_base", "r", "failed", task_states={"publish_index": "failed"},
                       results={"evaluate_retrieval": {"candidate": {"version": 2}, "published": None, "k": 5}})
    text = text_of(run_body(record, tracking_uri=None, data_docs_href=None))
    assert "not moved by this run: publish_index failed" in text
    assert "published (none yet)" in text


def test_data_docs_link_points_at_the_intervals_validation_page(tmp_path: Path) -> None:
    site = tmp_path / "local_site"
    page = site / "validations" / "suite" / "2026-11-02-run" / "20261102T0000" / "batch.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    (site / "index.html").write_text("<html></html>")
    results = {"validate_documents": {"interval": "2026-11-02", "data_docs": (site / "index.html").as_uri()}}
    record = RunRecord("refresh_knowledge_base", "r+1", "success", results=results)
    assert data_docs_site(record) == site
    assert validation_page(site, "2026-11-02") == page
    assert validation_page(site, "2026-11-03") is None
    assert data_docs_href(record) == ("/evertune/data-docs/refresh_knowledge_base/r%2B1/"
                                      "validations/suite/2026-11-02-run/20261102T0000/batch.html")
    remote = RunRecord("refresh_knowledge_base", "r", "success",
                       results={"validate_documents": {"data_docs": "https://example.com/docs/index.html"}})
    assert data_docs_site(remote) is None and data_docs_href(remote) is None


def test_tune_page_shows_the_base_model_and_freshness() -> None:
    evaluation = {**EVALUATE, "base": {"token_f1": 0.19, "rougeL": 0.2}, "ci_base": {"token_f1": [0.15, 0.29]},
                  "freshness": {"challenger": {"n": 40, "fresh_share": 0.9}, "champion": {"n": 40, "fresh_share": 0.5},
                                "n": 40, "since": "2026-11-01"}}
    text = text_of(run_body(tune_record(gate=GATE, evaluate=evaluation), tracking_uri=None, data_docs_href=None))
    assert "base model (untuned)" in text and "0.19" in text and "[0.15, 0.29]" in text
    assert "Freshness on 40 changed-fact probes since 2026-11-01: challenger 0.9, champion 0.5" in text
    plain = text_of(run_body(tune_record(gate=GATE, evaluate=EVALUATE), tracking_uri=None, data_docs_href=None))
    assert "base model" not in plain and "Freshness" not in plain


def test_tune_page_shows_the_release_manifest_and_its_sha256() -> None:
    manifest = {"model": {"name": "evertune-llm", "version": 4}, "data_version": "sft/2026-11-02@abc",
                "prompt": {"name": "evertune-llm-answer", "version": 2, "uri": "prompts:/evertune-llm-answer/2"},
                "base_model": {"weights_sha256": "f" * 64}}
    register = {**REGISTER, "manifest": manifest, "manifest_sha256": "ab" * 32}
    body = run_body(tune_record(gate=GATE, evaluate=EVALUATE, register=register), tracking_uri=None,
                    data_docs_href=None)
    text = text_of(body)
    assert 'id="manifest"' in body and "Manifest (register)" in text
    assert "ab" * 32 in text and "sft/2026-11-02@abc" in text and "prompts:/evertune-llm-answer/2" in text

"""The approval request a person reads (pure) and the answer read back from the approval task's XCom."""

from __future__ import annotations

from evertune.tuning.approval import approval_request, metric_table, review_of

DECISION = {"action": "require_approval", "passed": False,
            "reasons": ["PASS floor: token_f1 = 0.31 >= 0.05",
                        "HOLD drift: severe training-data drift; drift.policy 'require_approval' asks for a human"]}
EVALUATION = {"challenger": {"token_f1": 0.31, "rougeL": 0.25}, "champion": {"token_f1": 0.29, "rougeL": 0.27},
              "champion_version": 4, "ci": {"token_f1": [-0.01, 0.05], "rougeL": [-0.06, 0.02]}, "n": 24}
DRIFT = {"run_id": "r1", "reference": {"version": 4, "data_version": "sft/2026-11-02@ab12"},
         "report": {"severity": "severe", "reasons": ["domain classifier AUC 0.91 > 0.75 (p=0.005)"],
                    "embedding": {"auc": 0.91, "p_value": 0.005, "skipped": False},
                    "tests": {"token_count_ks": {"statistic": 0.42, "p_value": 0.001}}}}
CANDIDATE = {"model_name": "evertune-assistant", "version": 5, "run_id": "abc123"}


def test_the_body_holds_every_reason_the_metric_table_drift_and_links() -> None:
    request = approval_request(DECISION, EVALUATION, DRIFT, CANDIDATE, "http://127.0.0.1:5000/", 24, "Reject")
    body = request["body"]
    assert request["subject"].startswith("Promote evertune-assistant v5 to champion (replacing v4)?")
    for reason in DECISION["reasons"]:
        assert f"- {reason}" in body
    assert "| token_f1 | 0.31 | 0.29 | 0.02 | [-0.01, 0.05] |" in body
    assert "| rougeL | 0.25 | 0.27 | -0.02 | [-0.06, 0.02] |" in body
    assert "champion v4" in body and "(24 golden questions)" in body
    assert "Severity **severe** against champion v4 (sft/2026-11-02@ab12)." in body
    assert "domain classifier AUC 0.91" in body and "auc = 0.91" in body and "token_count_ks: statistic = 0.42" in body
    assert "[MLflow run abc123](http://127.0.0.1:5000/#/runs/abc123)" in body
    assert "[model evertune-assistant v5](http://127.0.0.1:5000/#/models/evertune-assistant/versions/5)" in body
    assert "Waits 24 h" in body and "answered **Reject**" in body


def test_without_a_champion_or_an_http_tracking_uri() -> None:
    evaluation = {"challenger": {"token_f1": 0.3}, "champion": None, "champion_version": None, "ci": {}, "n": 3}
    request = approval_request(DECISION, evaluation, {"report": {"severity": "none"}}, CANDIDATE,
                               "sqlite:///x.db", None)
    assert "replacing" not in request["subject"]
    assert "leaves it unset" in request["body"] and "no time limit" in request["body"]
    assert "MLflow run `abc123` (tracking URI `sqlite:///x.db`)" in request["body"]
    assert "| token_f1 | 0.3 | - | - | - |" in request["body"]


def test_table_cells_cannot_break_the_table() -> None:
    rows = metric_table({"challenger": {"a|b": 1.0}, "champion": {"a|b": 0.5}, "ci": {}})
    assert rows[-1] == "| a\\|b | 1 | 0.5 | 0.5 | - |"


def test_review_of_the_approval_tasks_answer() -> None:
    assert review_of(None) is None
    approved = review_of({"chosen_options": ["Approve"], "responded_by_user": {"id": "3", "name": "alice"},
                          "responded_at": "2026-11-05T10:00:00+00:00"})
    assert approved.approved and approved.by == "alice" and approved.at.startswith("2026-11-05")
    rejected = review_of({"chosen_options": ["Reject"], "responded_by_user": None})
    assert not rejected.approved and rejected.by is None

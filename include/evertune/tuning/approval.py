"""What a person reads before approving a held candidate: the subject and Markdown body of the approval request.

:func:`approval_request` is pure: it turns the summaries ``tune_model`` already has (the gate decision, the
evaluation, the drift check and the registered candidate) into the text of the Airflow approval task
(``approval`` in ``dags/tune_model.py``, an ``ApprovalOperator``). :func:`review_of` reads the task's answer
(its XCom) back into who decided what. Neither touches MLflow or Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

#: The option of the approval task that moves ``champion`` (``ApprovalOperator.APPROVE``).
APPROVE = "Approve"
#: The option that leaves it (``ApprovalOperator.REJECT``).
REJECT = "Reject"


def _num(value: Any) -> str:
    """A number with 4 significant digits; anything else as text; ``-`` for ``None``."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


def _cell(value: Any) -> str:
    """A Markdown table cell: no pipes or line breaks from the value."""
    return _num(value).replace("|", "\\|").replace("\n", " ")


def metric_table(evaluation: Mapping[str, Any]) -> list[str]:
    """Markdown rows: per metric the challenger, the champion, the difference and its paired-bootstrap CI."""
    challenger = evaluation.get("challenger") or {}
    champion = evaluation.get("champion") or {}
    cis = evaluation.get("ci") or {}
    version = evaluation.get("champion_version")
    head = f"champion v{version}" if version is not None else "champion (none)"
    rows = [f"| metric | challenger | {head} | difference | CI of the difference |", "|---|---|---|---|---|"]
    for metric in sorted(set(challenger) | set(champion)):
        new, old = challenger.get(metric), champion.get(metric)
        diff = new - old if isinstance(new, int | float) and isinstance(old, int | float) else None
        bounds = cis.get(metric)
        ci = f"[{_num(bounds[0])}, {_num(bounds[1])}]" if isinstance(bounds, Sequence) and len(bounds) == 2 else "-"
        rows.append(f"| {_cell(metric)} | {_cell(new)} | {_cell(old)} | {_cell(diff)} | {ci} |")
    return rows


def drift_lines(drift: Mapping[str, Any] | None) -> list[str]:
    """The drift severity, its reasons, the embedding test's statistics and each distribution test."""
    drift = drift or {}
    report = drift.get("report") or {}
    reference = drift.get("reference") or {}
    against = (f"champion v{reference.get('version')} ({reference.get('data_version')})" if reference
               else "no champion with recorded training data")
    lines = [f"Severity **{report.get('severity', 'unknown')}** against {against}."]
    lines += [f"- {reason}" for reason in report.get("reasons") or []]
    embedding = {k: v for k, v in (report.get("embedding") or {}).items() if not isinstance(v, dict | list)}
    if embedding:
        lines.append("")
        lines.append("Embedding test: " + ", ".join(f"{k} = {_num(v)}" for k, v in sorted(embedding.items())))
    for name, test in sorted((report.get("tests") or {}).items()):
        if isinstance(test, Mapping):
            shown = ", ".join(f"{k} = {_num(test[k])}" for k in ("statistic", "p_value", "skipped") if k in test)
            lines.append(f"- {name}: {shown or 'no statistic'}")
    return lines


def mlflow_links(candidate: Mapping[str, Any], run_id: str | None, tracking_uri: str | None) -> list[str]:
    """Markdown links to the MLflow run and the model version (plain text when MLflow is not served over http)."""
    base = (tracking_uri or "").rstrip("/")
    web = base if base.startswith(("http://", "https://")) else None
    name, version = candidate.get("model_name"), candidate.get("version")
    lines = []
    if run_id:
        lines.append(f"- [MLflow run {run_id}]({web}/#/runs/{quote(str(run_id))})" if web
                     else f"- MLflow run `{run_id}` (tracking URI `{base or 'not configured'}`)")
    if name and version is not None:
        url = f"{web}/#/models/{quote(str(name), safe='')}/versions/{quote(str(version))}" if web else None
        lines.append(f"- [model {name} v{version}]({url})" if url else f"- model `{name}` v{version}")
    return lines


def approval_request(
    decision: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    drift: Mapping[str, Any] | None,
    candidate: Mapping[str, Any],
    tracking_uri: str | None = None,
    response_timeout_hours: float | None = None,
    timeout_answer: str = REJECT,
) -> dict[str, str]:
    """The ``subject`` and Markdown ``body`` of the approval request for a held candidate.

    Args:
        decision: The gate decision (``GateDecision.to_dict()``): ``action``, ``reasons``.
        evaluation: The evaluation summary: ``challenger``, ``champion``, ``champion_version``, ``ci``, ``n``.
        drift: The drift step's summary: ``run_id``, ``reference``, ``report``.
        candidate: The registered candidate (``CandidateVersion.to_dict()``): ``model_name``, ``version``,
            ``run_id``.
        tracking_uri: The MLflow tracking URI; links are made when it is http(s).
        response_timeout_hours: How long the request waits (stated in the body).
        timeout_answer: The answer taken on timeout.

    Returns:
        ``{"subject": ..., "body": ...}``; every gate reason appears in the body, in the gate's order.
    """
    version = candidate.get("version")
    current = evaluation.get("champion_version")
    subject = (f"Promote {candidate.get('model_name')} v{version} to champion"
               f"{f' (replacing v{current})' if current is not None else ''}? The gate asks for a human decision")
    lines = [f"The gate's decision is **{decision.get('action')}**: it asks a person to decide whether "
             f"v{version} becomes `champion`. **Approve** moves `champion` to v{version}; **Reject** leaves it "
             f"{f'at v{current}' if current is not None else 'unset'}.", "", "## Gate reasons", ""]
    lines += [f"- {reason}" for reason in decision.get("reasons") or []] or ["- (none recorded)"]
    lines += ["", f"## Challenger vs champion ({evaluation.get('n', '?')} golden questions)", ""]
    lines += metric_table(evaluation)
    lines += ["", "## Drift of the training data", ""] + drift_lines(drift)
    lines += ["", "## Links", ""]
    lines += mlflow_links(candidate, candidate.get("run_id") or (drift or {}).get("run_id"), tracking_uri) or ["- none"]
    wait = f"{response_timeout_hours:g} h" if response_timeout_hours else "no time limit"
    lines += ["", f"Waits {wait}; without an answer the request is answered **{timeout_answer}**. Approving refuses "
              "to promote (and says why) when `champion` or `challenger` moved while this request waited."]
    return {"subject": subject, "body": "\n".join(lines) + "\n"}


@dataclass(frozen=True)
class Review:
    """A person's answer to an approval request.

    Attributes:
        approved: Whether the chosen option is ``Approve``.
        by: The responding user's name (or id); ``None`` when the timeout answered.
        at: When the answer was given (ISO text), if known.
    """

    approved: bool
    by: str | None
    at: str | None


def review_of(answer: Mapping[str, Any] | None) -> Review | None:
    """Read the approval task's XCom (``chosen_options``, ``responded_by_user``, ``responded_at``).

    Returns:
        ``None`` when there is no answer (the task was skipped: the gate did not hold the candidate).
    """
    if not answer:
        return None
    chosen = list(answer.get("chosen_options") or [])
    user = answer.get("responded_by_user")
    by = (user.get("name") or user.get("id")) if isinstance(user, Mapping) else user
    at = answer.get("responded_at")
    return Review(approved=chosen == [APPROVE], by=str(by) if by else None, at=str(at) if at else None)

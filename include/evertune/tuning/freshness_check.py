"""The post-publish freshness check: how fresh is the *served* system after a KB refresh, without retraining?

After ``publish_index`` the refresh pipeline runs :func:`check_freshness` (step ``check_freshness``). When a
champion is registered and freshness probes exist for changes after the champion's training data
(:func:`evertune.tuning.freshness.freshness_probes` as of the interval, ``since`` = the champion's ``as_of``
tag), the champion answers them through the served answer path with contexts retrieved from the KB version
just published, and :func:`evertune.tuning.freshness.score_freshness` scores the answers.

Each measurement is one MLflow run in ``freshness.experiment_name``, tagged ``interval``, ``kb_version`` and
``champion_version``. It is idempotent per (interval, KB version, champion version): a finished run with those
tags is reused (its summary tag is returned, nothing is re-measured), and an unfinished one is logged into
again, so re-running a date never adds a second run. The result (also the ``freshness`` key of the ``kb_index``
asset extra) is compact: counts, share, Wilson interval, token-F1 and a few example answers.

No champion, no probes or ``freshness.enabled: false`` give a summary that says so (``status`` ``no_champion``,
``no_probes``, ``disabled``), never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from evertune.config import apply_overrides, load_params
from evertune.settings import get_settings

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.settings import Settings
    from evertune.tuning.freshness import FreshnessProbe

log = logging.getLogger(__name__)

#: Example answers kept in the summary (the first probes by id); answers cut to this many characters.
EXAMPLES = 3
_ANSWER_CHARS = 300
_SUMMARY_TAG = "freshness_summary"
_SHARE_KEYS = ("n", "fresh", "fresh_share", "ci", "ci_alpha", "both_values", "old_only", "token_f1")


def probes_version(probes: list[FreshnessProbe]) -> str:
    """sha256 of the probes' canonical JSON (ids, questions, values): which probe set was scored."""
    data = json.dumps([p.to_dict() for p in probes], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _find_run(client: Any, experiment_id: str, keys: dict[str, str]) -> Any | None:
    """The run of this (interval, KB version, champion version), finished ones first; ``None`` if none."""
    query = " and ".join(f"tags.{name} = '{value}'" for name, value in sorted(keys.items()))
    runs = client.search_runs([experiment_id], filter_string=query, max_results=20)
    runs = sorted(runs, key=lambda r: (r.info.status != "FINISHED", r.info.start_time or 0))
    return runs[0] if runs else None


def _summary(result: dict[str, Any], probes: list[FreshnessProbe], answers: list[str]) -> dict[str, Any]:
    examples = [
        {"probe_id": p.probe_id, "question": p.question, "answer": a[:_ANSWER_CHARS], "old_value": p.old_value,
         "new_value": p.new_value, "fresh": item["fresh"]}
        for p, a, item in zip(probes, answers, result["per_item"], strict=True)
    ][:EXAMPLES]  # fmt: skip
    return {**{key: result[key] for key in _SHARE_KEYS}, "examples": examples}


def _log_run(client: Any, run_id: str, summary: dict[str, Any], result: dict[str, Any],
             probes: list[FreshnessProbe], answers: list[str]) -> None:
    from evertune.tuning.tracking import end_run, log_metrics, log_table, set_tags

    lo, hi = summary["ci"]
    log_metrics(client, run_id, {"fresh_share": summary["fresh_share"], "fresh_ci_low": lo, "fresh_ci_high": hi,
                                 "n": summary["n"], "fresh": summary["fresh"], "both_values": summary["both_values"],
                                 "old_only": summary["old_only"], "token_f1": summary["token_f1"]})  # fmt: skip
    items = result["per_item"]
    log_table(client, run_id, {
        "probe_id": [p.probe_id for p in probes], "question": [p.question for p in probes],
        "old_value": [p.old_value for p in probes], "new_value": [p.new_value for p in probes],
        "answer": answers, "fresh": [i["fresh"] for i in items], "both": [i["both"] for i in items],
        "old": [i["old"] for i in items], "token_f1": [i["token_f1"] for i in items],
    }, "freshness/per_item.json")  # fmt: skip
    set_tags(client, run_id, {_SUMMARY_TAG: json.dumps(summary, sort_keys=True)[:7900]})
    end_run(client, run_id, "FINISHED")


def _measure(params: Params, settings: Settings, probes: list[FreshnessProbe], table_version: int,
             champion: int) -> tuple[dict[str, Any], list[str]]:
    from evertune.tuning.answer import kb_retriever, retrieve_contexts
    from evertune.tuning.freshness import measure_freshness
    from evertune.tuning.registry import cached_model_checkpoint

    retrieve = kb_retriever(params, settings, version_or_tag=table_version)
    contexts = retrieve_contexts([p.question for p in probes], retrieve, params)
    result = measure_freshness(str(cached_model_checkpoint(params.registry.model_name, champion, settings=settings)),
                               probes, contexts, params)
    return result, result["answers"]


def check_freshness(
    interval: str, published: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Measure how fresh the champion answers from the KB version just published; log it to MLflow.

    Args:
        interval: The refresh interval (``YYYY-MM-DD``): probes are taken as of it.
        published: The ``publish_index`` summary (``table``, ``table_version``).
        overrides: Per-run params overrides.

    Returns:
        ``{"status", "interval", "kb_version", "champion_version", "champion_as_of", "message"}`` plus, when
        measured (``status`` ``measured``), ``n``, ``fresh``, ``fresh_share``, ``ci``, ``ci_alpha``,
        ``both_values``, ``old_only``, ``token_f1``, ``examples``, ``probes_version``, ``run_id`` and
        ``reused`` (the run of an earlier attempt was returned as it is).
    """
    from evertune.tuning.freshness import freshness_probes
    from evertune.tuning.registry import champion_with_tags
    from evertune.tuning.tracking import end_run, ensure_experiment, mlflow_client, open_run

    params = apply_overrides(load_params(), overrides)
    settings = get_settings()
    kb_version = f"{published['table']}@v{published['table_version']}"
    base = {"interval": interval, "kb_version": kb_version, "champion_version": None, "champion_as_of": None}
    if not params.freshness.enabled:
        return {**base, "status": "disabled", "message": "freshness.enabled is false: not measured"}
    registered = champion_with_tags(params.registry.model_name, settings=settings)
    if registered is None:
        return {**base, "status": "no_champion", "message": "no champion registered: freshness not measured"}
    champion, champion_tags = registered
    since = champion_tags.get("as_of") or None
    base.update(champion_version=champion, champion_as_of=since)
    probes = freshness_probes(settings.data_repo / "validated", interval, since)[: params.freshness.max_probes]
    if not probes:
        return {**base, "status": "no_probes",
                "message": f"no freshness probes for changes after {since or 'the start'} as of {interval}"}
    client = mlflow_client(settings)
    experiment_id = ensure_experiment(client, params.freshness.experiment_name, settings.mlflow_artifact_root)
    keys = {"interval": interval, "kb_version": kb_version, "champion_version": str(champion)}
    version = probes_version(probes)
    found = _find_run(client, experiment_id, keys)
    if found is not None and found.info.status == "FINISHED" and _SUMMARY_TAG in found.data.tags:
        log.info("freshness of champion v%s on %s as of %s already measured (run %s)", champion, kb_version,
                 interval, found.info.run_id)
        return {**base, **json.loads(found.data.tags[_SUMMARY_TAG]), "status": "measured", "reused": True,
                "probes_version": found.data.tags.get("probes_version", version), "run_id": found.info.run_id,
                "message": "measured earlier (same interval, KB version and champion)"}  # fmt: skip
    tags = {**keys, "champion_as_of": since or "", "probes_version": version, "n_probes": str(len(probes))}
    run_id = open_run(client, experiment_id, found.info.run_id if found else None,
                      run_name=f"freshness-{interval}-v{champion}", tags=tags, remembered=True)
    try:
        result, answers = _measure(params, settings, probes, int(published["table_version"]), champion)
    except BaseException:
        end_run(client, run_id, "FAILED")  # a retry logs into this run again
        raise
    summary = _summary(result, probes, answers)
    _log_run(client, run_id, summary, result, probes, answers)
    lo, hi = summary["ci"]
    message = (f"champion v{champion}: {summary['fresh']}/{summary['n']} changed-fact answers fresh "
               f"({summary['fresh_share']:.0%}, {1 - summary['ci_alpha']:.0%} CI {lo:.0%}-{hi:.0%})")
    log.info("%s on %s as of %s", message, kb_version, interval)
    return {**base, **summary, "status": "measured", "reused": False, "probes_version": version, "run_id": run_id,
            "message": message}


def recorded_freshness(interval: str, params: Params | None = None, settings: Settings | None = None) -> dict | None:
    """The newest finished freshness check of ``interval`` (its summary plus the run's tags), or ``None``.

    For reports (the demo summary): reads the MLflow runs :func:`check_freshness` logged, measures nothing.
    """
    from evertune.tuning.tracking import mlflow_client

    params = load_params() if params is None else params
    client = mlflow_client(get_settings() if settings is None else settings)
    experiment = client.get_experiment_by_name(params.freshness.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.interval = '{interval}'",
                              order_by=["attribute.start_time DESC"], max_results=20)
    for run in runs:
        if run.info.status == "FINISHED" and _SUMMARY_TAG in run.data.tags:
            tags = run.data.tags
            return {**json.loads(tags[_SUMMARY_TAG]), "interval": interval, "kb_version": tags.get("kb_version"),
                    "champion_version": tags.get("champion_version"), "champion_as_of": tags.get("champion_as_of"),
                    "run_id": run.info.run_id}  # fmt: skip
    return None

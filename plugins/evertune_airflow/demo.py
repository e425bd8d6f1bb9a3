"""``make demo``: the main job on the embedded stack, under the real scheduler.

1. Bootstrap the models (once) and write the demo landing drops (deterministic per seed and date).
2. Start the embedded stack (scheduler, DAG processor, API server, triggerer, MLflow server).
3. Unpause ``refresh_knowledge_base`` and backfill it over the good demo days.
4. Unpause ``tune_model`` and tune twice. First on the days before the drift day: the gate promotes a first
   champion (v1 on a fresh state). Then on every good day, the drift day (new feature subjects) included: the
   gate holds that candidate for a human (``drift.policy: require_approval``; also the borderline band when its
   gain's CI straddles zero, and ``gate.uncertain_regression: hold`` when it scores below the champion by less
   than the CI can establish), the run parks at its ``approval`` task, the demo prints the HOLD reasons and the
   run's verdict page, and answers **Approve** through the REST API (``PATCH .../hitlDetails``); ``champion``
   moves to the approved candidate. A hold needs every other check to pass: when the candidate is worse than
   the champion by an established margin (the whole CI beyond a tolerance), the gate rejects it outright, and
   the demo prints those reasons instead (docs/runbook.md).
5. Backfill the poisoned day: its ``validated_data`` event triggers ``tune_model``, whose ``build_dataset`` must
   reject the window before training (``PoisonedDataError``: the answers contradict their articles). That run
   fails on purpose; nothing is trained or registered from it.
6. Backfill day 7, after the tuning run: eleven facts change, and the drop carries no golden retrieval or QA
   file (the carried sets evaluate it) but the changed-fact probes. The refresh publishes it, then
   ``check_freshness`` has the champion answer the probes from the published KB. Day 7's ``validated_data``
   event triggers ``tune_model`` again; its 30-day window still holds the poisoned day 6, so it is rejected
   before training the same way, and the champion does not move: the fresh answers come from the KB alone.
7. Ask the served champion the changed-fact question over HTTP (``POST /ask`` on the stack's answer service),
   print the answer with its citations and versions, rate it through ``POST /feedback``, and ask again: the
   repeat is an answer-cache hit.
8. Print a summary (runs, expected outcomes, registry, KB versions, the served answer to a changed fact and
   the freshness figure, the HTTP exchange, UIs) and exit non-zero if a run failed other than by those rejections, a poisoned
   run was not rejected for its data, the champion moved, or day 7's freshness was not measured.

The stack keeps running afterwards (``make down`` stops it).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

from evertune.config import load_params
from evertune.runtime import apply_offline_env
from evertune.settings import get_settings
from evertune_airflow.demo_serving import ask_and_rate
from evertune_airflow.stack_client import FINISHED_RUN_STATES, AirflowClient
from evertune_airflow.stack_control import UpResult, up
from evertune_airflow.stack_env import StackError, airflow_url, dags_folder, mlflow_url, serve_enabled
from evertune_airflow.stack_processes import log_dir

REFRESH_DAG = "refresh_knowledge_base"
TUNE_DAG = "tune_model"
RUN_TIMEOUT_S = 3600


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _days(start: str, count: int) -> list[str]:
    first = dt.date.fromisoformat(start)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def prepare_data() -> dict[str, Any]:
    """Bootstrap models and write the demo drops; returns the scenario's dates by role."""
    import argparse

    from evertune.demo.generator import generate_range
    from evertune.models.cli import run_bootstrap

    params = load_params()
    settings = get_settings()
    settings.ensure_local_dirs()
    _say("bootstrapping models (first run converts SmolLM2 from its GGUF; later runs reuse it)")
    run_bootstrap(argparse.Namespace(params=None, force=False, no_tiny=False))
    manifests = generate_range(
        settings.landing_uri,
        start_date=params.demo.start_date,
        days=params.demo.days,
        seed=params.demo.seed,
        n_articles=params.demo.n_articles,
        max_file_bytes=params.ingest.max_file_bytes,
    )
    days = _days(params.demo.start_date, params.demo.days)
    poisoned = [m["date"] for m in manifests if m.get("poisoned")]
    fresh = [m["date"] for m in manifests if m.get("post_tuning")]
    drift = [m["date"] for m in manifests if m.get("drift")]
    good = [d for d in days if d not in poisoned and d not in fresh]
    _say(f"wrote {len(manifests)} demo drops to {settings.landing_uri}; drift: {drift or 'none'}; poisoned: "
         f"{poisoned or 'none'}; after the tuning run: {fresh or 'none'}")
    return {"days": days, "good": good, "poisoned": poisoned, "fresh": fresh, "drift": drift}


def _wait(client: AirflowClient, dag_id: str, run_ids: list[str]) -> list[dict]:
    runs = client.wait_for_runs(dag_id, run_ids, timeout=RUN_TIMEOUT_S, poll=5)
    for run in runs:
        _say(f"{dag_id} {run['dag_run_id']}: {run['state']}")
    return runs


def _wait_new_runs(client: AirflowClient, dag_id: str, known: set[str], timeout: float = 300) -> list[str]:
    """Wait until at least one run not in ``known`` exists (an asset- or time-triggered run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r["dag_run_id"] for r in client.dag_runs(dag_id) if r["dag_run_id"] not in known]
        if new:
            return new
        time.sleep(3)
    raise StackError(f"no new {dag_id} run appeared within {timeout:.0f} s")


def run_demo() -> int:
    """Run the whole demo; returns the process exit code."""
    apply_offline_env()
    started = time.monotonic()
    dates = prepare_data()
    settings = get_settings()
    params = load_params()
    started_stack = up(settings)
    _say(started_stack.describe())
    problems: list[str] = []
    outcomes: list[str] = []
    champion_before: str | None = None
    with AirflowClient.connect(settings) as client:
        client.wait_for_dag(REFRESH_DAG, timeout=300)
        has_tuning = (dags_folder() / f"{TUNE_DAG}.py").is_file()
        if has_tuning:
            client.wait_for_dag(TUNE_DAG, timeout=300)

        if has_tuning:
            _settle_scheduled_tuning(client)
        # Unpausing makes the scheduler create the latest nightly run (catchup is off); with no drop for
        # that day it is skipped, which is what a real night without data does.
        client.unpause(REFRESH_DAG)
        good = dates["good"]
        _say(f"backfilling {REFRESH_DAG} over {good[0]} .. {good[-1]}")
        backfill = client.backfill(REFRESH_DAG, good[0], good[-1], max_active_runs=1)
        _wait(client, REFRESH_DAG, backfill["run_ids"])

        if has_tuning:
            client.unpause(TUNE_DAG)
            champion_before = _tune_then_approve(client, dates, params, settings, outcomes, problems)

        poisoned_runs = _backfill_days(client, dates["poisoned"], has_tuning, "the poisoned drop")
        fresh_runs = _backfill_days(client, dates.get("fresh", []), has_tuning,
                                    "facts changed after the tuning run; no golden retrieval or QA file in the drop")
        _wait_all_idle(client)
        runs = [r for dag in (REFRESH_DAG, TUNE_DAG) for r in _runs_or_empty(client, dag)]
        rejected = _rejected_before_training(client, settings, runs, dates)
    for run_id in poisoned_runs:
        if run_id in rejected:
            outcomes.append(f"{run_id}: expected data rejected before training -> {rejected[run_id]}")
        else:
            problems.append(f"{TUNE_DAG} {run_id}: the poisoned data was not rejected before training")
    # A scheduled run may also meet the poisoned window; rejected the same way, it is expected too.
    outcomes += [f"{run_id}: data rejected before training -> {why}" for run_id, why in sorted(rejected.items())
                 if run_id not in poisoned_runs and run_id not in fresh_runs]
    problems += [f"{r['dag_id']} {r['dag_run_id']} ended {r['state']}" for r in runs
                 if r["state"] != "success" and not (r["dag_id"] == TUNE_DAG and r["dag_run_id"] in rejected)]
    problems += _check_gate_expectations(params, settings, dates, champion_before, poisoned_runs)
    if has_tuning and dates["poisoned"]:
        outcomes.append(f"champion: v{champion_before or '-'} before the poisoned drop, "
                        f"v{_champion(params, settings) or '-'} after (must not move)")
    outcomes += _fresh_tune_outcomes(fresh_runs, rejected, runs, champion_before, params, settings)
    freshness = _freshness_report(dates, params, settings)
    if has_tuning and champion_before and dates.get("fresh") and freshness is None:
        problems.append(f"no freshness check was recorded for {dates['fresh'][-1]} (step check_freshness)")
    served: list[str] = []
    if has_tuning and serve_enabled():
        served, served_problems = ask_and_rate(_demo_question(freshness))
        problems += served_problems
    print(_summary(runs, params, settings, started_stack))
    if outcomes:
        print("== Expected outcomes ==\n  " + "\n  ".join(outcomes))
    if freshness is not None:
        print(format_freshness(freshness))
    if served:
        print("\n".join(served))
    _say(f"demo wall time {time.monotonic() - started:.0f} s")
    if problems:
        print("DEMO FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("DEMO OK")
    return 0


def _settle_scheduled_tuning(client: AirflowClient) -> None:
    """Let ``tune_model``'s own scheduled run happen now, while there is no data, then pause the DAG again.

    Unpausing creates the run of the latest weekly interval (catchup is off). Made later, it would tune on all
    the good days before the demo's own runs and take their place. Made now, ``build_dataset`` finds nothing
    validated and the run skips, as a real week without data does. Paused during the backfill, the DAG queues no
    ``validated_data`` runs (Airflow queues asset events only for unpaused DAGs); unpaused again later, it has
    no new interval to schedule.
    """
    known = {r["dag_run_id"] for r in client.dag_runs(TUNE_DAG)}
    client.unpause(TUNE_DAG)
    try:
        new = _wait_new_runs(client, TUNE_DAG, known, timeout=60)
    except StackError:
        new = []  # no interval due: nothing was scheduled
    if new:
        _say(f"{TUNE_DAG}'s scheduled run {new} has no data to tune on yet (skips)")
        _wait(client, TUNE_DAG, new)
    client.unpause(TUNE_DAG, paused=True)


def verdict_page(run_id: str, dag_id: str = TUNE_DAG) -> str:
    """The run's Evertune tab in the Airflow UI (the page itself is served at ``/evertune/runs/<dag>/<run>``)."""
    return f"{airflow_url()}/dags/{dag_id}/runs/{run_id}/plugin/evertune"


def _tune_then_approve(client: AirflowClient, dates: dict[str, Any], params, settings, outcomes: list[str],
                       problems: list[str]) -> str | None:
    """Tune on the days before the drift day (the gate promotes a first champion), then on every good day.

    The second candidate trained on the drift day (new feature subjects), so the gate holds it for a human
    (``drift.policy: require_approval``, the borderline band, or an unestablished shortfall under
    ``gate.uncertain_regression: hold``): a real gate outcome. The demo answers **Approve** through the REST API, as a person would in Required Actions, and
    ``champion`` moves. Returns the champion after both runs.
    """
    from evertune_airflow.stack_approvals import respond, wait_for_approval

    good, drift = dates["good"], dates.get("drift") or []
    before_drift = [d for d in good if not drift or d < drift[0]]
    first, first_champion = None, None
    if before_drift and before_drift[-1] != good[-1]:
        first = client.trigger(TUNE_DAG, conf={"as_of": before_drift[-1]}, run_id=f"demo__first_{before_drift[-1]}")
        _say(f"tuning on {good[0]} .. {before_drift[-1]}, before the drift day (run {first})")
        _wait(client, TUNE_DAG, [first])
        first_champion = _champion(params, settings)
        outcomes.append(f"{first}: expected promote -> champion v{first_champion or '-'}")
    held = client.trigger(TUNE_DAG, conf={}, run_id=f"demo__drift_{good[-1]}")
    _say(f"tuning on {good[0]} .. {good[-1]}, drift day {drift or 'none'} included (run {held})")
    if first is None:
        _wait(client, TUNE_DAG, [held])
        return _champion(params, settings)
    try:
        [request] = wait_for_approval(client, TUNE_DAG, held, timeout=RUN_TIMEOUT_S, poll=5)
    except StackError:
        # Not held: the gate decided on its own (a reject for a worse candidate is correct, not a demo failure;
        # a failed run is reported with the other runs).
        _wait(client, TUNE_DAG, [held])
        outcomes.append(f"{held}: the gate did not hold it for approval: {_gate_outcome(params, settings)}; "
                        f"champion v{_champion(params, settings) or '-'}; verdict page {verdict_page(held)}")
        return _champion(params, settings)
    reasons = [line[2:] for line in request["body"].splitlines() if line.startswith("- HOLD")]
    _say(f"{held} waits for approval: {request['subject']}")
    for reason in reasons:
        _say(f"  {reason}")
    _say(f"  verdict page: {verdict_page(held)}")
    answer = respond(client, TUNE_DAG, held, "Approve")
    _say(f"approved through the REST API by {answer['responded_by']['name']}")
    _wait(client, TUNE_DAG, [held])
    champion = _champion(params, settings)
    if champion is None or champion == first_champion:
        problems.append(f"the approved candidate of {held} did not take champion (still v{champion or '-'})")
    outcomes.append(f"{held}: expected held for approval ({'; '.join(reasons) or 'no HOLD reason'}), approved by "
                    f"{answer['responded_by']['name']} through the API -> champion v{champion or '-'}; "
                    f"verdict page {verdict_page(held)}")
    return champion


def _demo_question(freshness: dict[str, Any] | None) -> str:
    """The question asked over HTTP: the freshness check's changed-fact question, else a help-center one."""
    examples = (freshness or {}).get("examples") or []
    return examples[0]["question"] if examples else "How much does the Pro plan cost?"


def _gate_outcome(params, settings) -> str:
    """The gate action and its FAIL/HOLD reasons recorded on the ``challenger`` version (``gate.*`` tags)."""
    from evertune.reporting import model_summary

    models = model_summary(params, settings)
    version = models.get("aliases", {}).get("challenger")
    tags = next((v.get("tags", {}) for v in models.get("versions", []) if str(v.get("version")) == str(version)), {})
    try:
        recorded = json.loads(tags.get("gate.reasons") or "[]")
    except ValueError:
        recorded = [tags.get("gate.reasons")]
    reasons = [str(r) for r in recorded if str(r).startswith(("FAIL", "HOLD"))]
    return f"v{version or '-'} {tags.get('gate.action', 'no decision recorded')} ({'; '.join(reasons) or 'no reasons'})"


def _backfill_days(client: AirflowClient, days: list[str], has_tuning: bool, what: str) -> list[str]:
    """Backfill ``days`` one at a time; return the tune runs their ``validated_data`` events triggered."""
    triggered: list[str] = []
    for day in days:
        known = {r["dag_run_id"] for r in client.dag_runs(TUNE_DAG)} if has_tuning else set()
        _say(f"backfilling {day}: {what}")
        fill = client.backfill(REFRESH_DAG, day, day, max_active_runs=1)
        _wait(client, REFRESH_DAG, fill["run_ids"])
        if has_tuning:
            new = _wait_new_runs(client, TUNE_DAG, known)
            _say(f"asset-triggered tuning after {day}: {new}")
            _wait(client, TUNE_DAG, new)
            triggered += new
    return triggered


def _fresh_tune_outcomes(fresh_runs: list[str], rejected: dict[str, str], runs: list[dict],
                         champion_before: str | None, params, settings) -> list[str]:
    """What the tune runs of the post-tuning days did, and that the champion stayed."""
    states = {r["dag_run_id"]: r["state"] for r in runs if r["dag_id"] == TUNE_DAG}
    now = _champion(params, settings) if fresh_runs else None
    outcomes = []
    for run_id in fresh_runs:
        what = (f"data rejected before training (its window still holds the poisoned day) -> {rejected[run_id]}"
                if run_id in rejected else f"ended {states.get(run_id, 'unknown')}")
        outcomes.append(f"{run_id}: {what}; champion v{now or '-'} (v{champion_before or '-'} before; must not "
                        "move: the fresh answers come from the KB refresh alone)")
    return outcomes


def _freshness_report(dates: dict[str, Any], params, settings) -> dict[str, Any] | None:
    """The freshness check recorded for the last post-tuning day (``None``: no such day or no check)."""
    from evertune.tuning.freshness_check import recorded_freshness

    return recorded_freshness(dates["fresh"][-1], params, settings) if dates.get("fresh") else None


def format_freshness(report: dict[str, Any]) -> str:
    """The summary section of the post-publish freshness check: one served answer and the fresh share."""
    lines = [f"== Freshness after the {report['interval']} refresh (facts changed after the tuning run; "
             "no retraining) ==",
             f"  champion v{report['champion_version']} (trained on data as of {report.get('champion_as_of')}), "
             f"KB {report['kb_version']}"]  # fmt: skip
    for example in report.get("examples", [])[:1]:
        verdict = "fresh" if example["fresh"] else "NOT fresh"
        lines += [f"  question: {example['question']}",
                  f"  served answer: {example['answer']}",
                  f"  new value {example['new_value']!r} (was {example['old_value']!r}): {verdict}"]  # fmt: skip
    if report.get("n"):
        lo, hi = report["ci"]
        lines.append(
            f"  fresh share: {report['fresh']}/{report['n']} = {report['fresh_share']:.0%} "
            f"({1 - report['ci_alpha']:.0%} Wilson CI {lo:.0%}-{hi:.0%}); both values {report['both_values']}, "
            f"old value only {report['old_only']}; token-F1 {report['token_f1']:.3f}")
    return "\n".join(lines)


def _runs_or_empty(client: AirflowClient, dag_id: str) -> list[dict]:
    return client.dag_runs(dag_id) if client.dag(dag_id) else []


def _wait_all_idle(client: AirflowClient, timeout: float = RUN_TIMEOUT_S) -> None:
    """Wait for every run of the demo's DAGs (the scheduled ones included) to finish."""
    for dag_id in (REFRESH_DAG, TUNE_DAG):
        if not client.dag(dag_id):
            continue
        pending = [r["dag_run_id"] for r in client.dag_runs(dag_id) if r["state"] not in FINISHED_RUN_STATES]
        if pending:
            _wait(client, dag_id, pending)


def _champion(params, settings) -> str | None:
    """The version holding the ``champion`` alias, or ``None``."""
    from evertune.reporting import model_summary

    return model_summary(params, settings).get("aliases", {}).get("champion")


def _rejected_before_training(client: AirflowClient, settings, runs: list[dict],
                              dates: dict[str, Any]) -> dict[str, str]:
    """Failed tune runs that the poisoned data stopped at ``build_dataset``, before training: run id -> reason.

    A run counts only when ``build_dataset`` failed, ``train`` never ran, and the tuning step recorded a
    ``PoisonedDataError`` for that very run on a poisoned day, or on a later demo day (``dates["fresh"]``) whose
    window still holds one (``<work_dir>/tune/rejections.jsonl``).
    """
    from evertune.tuning.rejections import read_rejections

    # A day after the poisoned one is rejected too while its window still holds the poisoned day.
    rejectable = set(dates["poisoned"]) | {day for day in dates.get("fresh", [])
                                           if any(bad <= day for bad in dates["poisoned"])}
    recorded = {entry["dag_run_id"]: entry for entry in read_rejections(settings)
                if entry.get("as_of") in rejectable and entry.get("error") == "PoisonedDataError"}
    rejected = {}
    for run in runs:
        entry = recorded.get(run["dag_run_id"])
        if run["dag_id"] != TUNE_DAG or run["state"] != "failed" or entry is None:
            continue
        states = {ti["task_id"]: ti["state"] for ti in client.task_instances(TUNE_DAG, run["dag_run_id"])}
        if states.get("build_dataset") == "failed" and states.get("train") in (None, "upstream_failed"):
            rejected[run["dag_run_id"]] = (
                f"{entry['ungrounded']} of {entry['checked']} QA rows ({entry['ungrounded_fraction']:.1%}) not "
                f"grounded in their article, limit {entry['max_ungrounded_fraction']:.0%} (as of {entry['as_of']})")
    return rejected


def _check_gate_expectations(params, settings, dates: dict[str, Any], champion_before: str | None,
                             poisoned_runs: list[str]) -> list[str]:
    """The good data must have produced a champion; the poisoned data must not have moved or reached it."""
    from evertune.reporting import model_summary

    models = model_summary(params, settings)
    if not models.get("available"):
        return []  # tuning not wired yet: nothing to check
    problems = []
    aliases = models.get("aliases", {})
    if "champion" not in aliases:
        problems.append("no champion after tuning on the good data")
    elif champion_before is not None and str(aliases["champion"]) != str(champion_before):
        problems.append(f"champion moved from v{champion_before} to v{aliases['champion']} after the poisoned drop")
    for version in models.get("versions", []):
        tags = version.get("tags", {})
        if tags.get("as_of") in dates["poisoned"] and str(version.get("version")) == str(aliases.get("champion")):
            problems.append(f"version {version.get('version')} trained on poisoned data holds champion")
        if tags.get("airflow.run_id") in poisoned_runs:
            problems.append(f"version {version.get('version')} was registered from the poisoned data "
                            f"(run {tags['airflow.run_id']}); it should have been rejected before training")
    return problems


def _summary(runs: list[dict], params, settings, started: UpResult) -> str:
    from evertune.reporting import format_summary, kb_summary, model_summary

    urls = {
        "Airflow UI": f"{airflow_url()}  (user admin, password {started.password})",
        "MLflow UI": mlflow_url(),
        "state folder": str(settings.home),
        "stop the stack": "make down",
    }
    return format_summary(runs, kb_summary(params, settings), model_summary(params, settings), urls,
                          primary_metric=params.gate.primary_metric)


def main() -> int:
    """Entry point of ``python -m evertune_airflow.demo``."""
    try:
        return run_demo()
    except StackError as exc:
        print(f"DEMO FAILED: {exc}", file=sys.stderr)
        print(f"component logs: {log_dir(get_settings())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


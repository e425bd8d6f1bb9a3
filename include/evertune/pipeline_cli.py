"""``evertune refresh|tune <step>``: the DAG steps without Airflow (used by ``dvc.yaml`` and by people).

Each step stores its summary as ``<staging>/<step>.json`` so that later steps (evaluate, publish) can read
what earlier ones returned, exactly as XCom does inside Airflow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STEPS = ("ingest", "validate", "version", "sync", "evaluate", "publish")
TUNE_STEPS = ("dataset", "drift", "train", "evaluate", "gate", "register")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``refresh`` sub-command."""
    parser = subparsers.add_parser("refresh", help="run knowledge-base refresh steps for one data interval")
    parser.add_argument("step", choices=(*STEPS, "all"), help="one step, or all of them in order")
    parser.add_argument("--interval", required=True, help="data interval date, YYYY-MM-DD")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help="per-run override of params.yaml, e.g. retrieval.k=10 (repeatable)")
    parser.set_defaults(func=_run)

    tune = subparsers.add_parser("tune", help="run the continuous-tuning steps (dataset .. register) once")
    tune.add_argument("--as-of", default=None, help="last interval of the training window (default: newest)")
    tune.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                      help="per-run override of params.yaml, e.g. train.max_steps=10 (repeatable)")
    tune.set_defaults(func=_run_tune)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


def run_step(step: str, interval: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one refresh step and store its summary next to the staging data.

    Args:
        step: One of :data:`STEPS`.
        interval: The data interval date.
        overrides: Per-run overrides of ``params.yaml``.

    Returns:
        The step's summary.
    """
    from evertune.kb import refresh
    from evertune.settings import get_settings

    folder = refresh.staging_dir(get_settings(), interval)

    def previous(name: str) -> dict[str, Any]:
        return json.loads((folder / f"{name}.json").read_text())

    if step == "ingest":
        summary = refresh.ingest_documents(interval, overrides)
    elif step == "validate":
        summary = refresh.validate_documents(interval, overrides)
    elif step == "version":
        summary = refresh.version_snapshot(interval)
    elif step == "sync":
        summary = refresh.sync_index(interval, overrides)
    elif step == "evaluate":
        summary = refresh.evaluate_retrieval(interval, overrides, previous("sync"))
    else:
        summary = refresh.publish_index(interval, overrides, previous("sync"), previous("evaluate"), previous("version"))
    folder.mkdir(parents=True, exist_ok=True)
    Path(folder / f"{step}.json").write_text(json.dumps(summary, sort_keys=True, indent=2, default=str) + "\n")
    return summary


def _run(args: argparse.Namespace) -> int:
    steps = STEPS if args.step == "all" else (args.step,)
    for step in steps:
        summary = run_step(step, args.interval, _overrides(args.override))
        print(f"{step}: {json.dumps(summary, sort_keys=True, default=str)[:400]}")
    return 0


def run_tuning(as_of: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every tuning step in order, as the ``tune_model`` DAG does; returns the last summary.

    A ``NothingToDo`` from a step (nothing new to train) ends the run early, like a skipped task.
    """
    from evertune.tuning import steps

    dataset = steps.build_dataset(as_of, overrides)
    print(f"dataset: {dataset['data_version']} ({dataset['n_train']} train, {dataset['n_validation']} validation)")
    drift = steps.check_drift(dataset, overrides, None)
    print(f"drift: {drift['report']['severity']}")
    trained = steps.train_candidate(dataset, drift, overrides)
    print(f"train: {trained['global_step']} steps, {trained['tokens_per_second']:.0f} tokens/s")
    evaluation = steps.evaluate_candidate(dataset, trained, overrides)
    print(f"evaluate: challenger {evaluation['challenger']} champion {evaluation['champion']}")
    decision = steps.gate_candidate(evaluation, drift, trained, overrides)
    print(f"gate: {decision['action']}")
    for reason in decision["reasons"]:
        print(f"  {reason}")
    result = steps.register_candidate(dataset, trained, evaluation, decision, overrides)
    print(f"register: v{result['candidate']['version']} promoted={result['promotion']['promoted']}")
    return result


def _run_tune(args: argparse.Namespace) -> int:
    from evertune.errors import NothingToDo

    try:
        run_tuning(args.as_of, _overrides(args.override))
    except NothingToDo as exc:
        print(f"nothing to do: {exc}")
    return 0

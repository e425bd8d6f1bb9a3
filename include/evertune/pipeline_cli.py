"""``evertune refresh|tune <step>|all`` and ``evertune dvc-yaml``: the registry's steps without Airflow.

Choices and order come from :mod:`evertune.pipeline`. Each step stores its summary as a receipt,
``<work_dir>/receipts/<pipeline>/<key>/<step>.json`` (:meth:`evertune.pipeline.Step.receipt`), so that a later
step run on its own (a ``dvc.yaml`` stage, a person) reads what earlier ones returned, as XCom does inside
Airflow. Steps run in one invocation hand their summaries on directly.

A step that has nothing to do (``NothingToDo``) leaves a receipt ``{"skipped": reason}``, and so does every
later step of the same invocation; a step whose upstream receipt is a skip is skipped too. ``refresh`` then
fails with exit code 2 (as a missing partition always did); ``tune`` prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evertune.pipeline import LATEST, REFRESH, TUNE, Step, call_step, step_named, steps_of, upstream_steps

SKIPPED = "skipped"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``refresh``, ``tune`` and ``dvc-yaml`` sub-commands."""
    parser = subparsers.add_parser("refresh", help="run knowledge-base refresh steps for data intervals, in order")
    parser.add_argument("step", choices=(*_names(REFRESH), "all"), help="one step, or all of them in order")
    parser.add_argument("--interval", required=True, nargs="+", metavar="YYYY-MM-DD",
                        help="data interval date; several run one after the other in this process, as the "
                             "nights would (the libraries and the embedder load once)")
    _add_override(parser, "retrieval.k=10")
    parser.set_defaults(func=_run_refresh)

    tune = subparsers.add_parser("tune", help="run the continuous-tuning steps (dataset .. promote)")
    tune.add_argument("step", nargs="?", default="all", choices=(*_names(TUNE), "all"),
                      help="one step, or all of them in order (default)")
    tune.add_argument("--as-of", default=None, help="last interval of the training window (default: newest)")
    _add_override(tune, "train.max_steps=10")
    tune.set_defaults(func=_run_tune)

    dvc = subparsers.add_parser("dvc-yaml", help="print dvc.yaml as generated from the step registry")
    dvc.add_argument("--intervals", nargs="+", default=None, help="refresh intervals (default: the demo days)")
    dvc.add_argument("--tune-as-of", default=None, help="as_of of the tune stages (default: the last interval)")
    dvc.add_argument("--out", default=None, help="write to this file instead of printing")
    dvc.set_defaults(func=_dvc_yaml)


def _names(pipeline: str) -> tuple[str, ...]:
    return tuple(step.name for step in steps_of(pipeline))


def _add_override(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help=f"per-run override of params.yaml, e.g. {example} (repeatable)")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


def write_receipt(path: Path, summary: dict[str, Any]) -> None:
    """Write one step summary as sorted, indented JSON (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, sort_keys=True, indent=2, default=str) + "\n")
    tmp.replace(path)


def _upstream_summary(source: Step, done: dict[str, dict[str, Any]], work_dir: Path, key: str) -> dict[str, Any]:
    """The summary of ``source``: from this invocation if it ran, else from its receipt."""
    from evertune.errors import NothingToDo

    if source.name in done:
        return done[source.name]
    path = source.receipt(work_dir, key)
    if not path.is_file():
        raise NothingToDo(f"no receipt of step {source.name!r} for {key} ({path}): run it first")
    return json.loads(path.read_text())


def run_steps(
    pipeline: str,
    names: Sequence[str],
    key: str,
    context: dict[str, Any],
    report: Callable[[Step, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run steps of one pipeline in registry order, storing each summary as a receipt.

    Args:
        pipeline: ``refresh`` or ``tune``.
        names: The steps to run (in registry order).
        key: The receipts key: the interval, or the tuning ``as_of`` (:data:`LATEST` when not given).
        context: The pipeline's context values (see :data:`evertune.pipeline.CONTEXT`).
        report: Called with each finished step and its summary.

    Returns:
        The summaries of the steps that ran, by step name.

    Raises:
        NothingToDo: A step (or an upstream one) had nothing to do; skip receipts are written first.
    """
    from evertune.errors import NothingToDo
    from evertune.settings import get_settings

    work_dir = get_settings().work_dir
    selected = [step_named(pipeline, name) for name in names]
    done: dict[str, dict[str, Any]] = {}
    for index, step in enumerate(selected):
        try:
            upstream = [_upstream_summary(source, done, work_dir, key) for source in upstream_steps(step)]
            skipped = [name for name, summary in zip(step.upstream, upstream, strict=True)
                       if SKIPPED in summary]
            if skipped:
                raise NothingToDo(f"upstream step {skipped[0]} was skipped")
            summary = call_step(step, context, upstream)
        except NothingToDo as exc:
            for later in selected[index:]:
                write_receipt(later.receipt(work_dir, key), {SKIPPED: str(exc) if later is step
                                                             else f"upstream step {step.name} was skipped"})
            raise
        write_receipt(step.receipt(work_dir, key), summary)
        done[step.name] = summary
        if report is not None:
            report(step, summary)
    return done


def _selection(pipeline: str, choice: str) -> tuple[str, ...]:
    return _names(pipeline) if choice == "all" else (choice,)


def _print_refresh(step: Step, summary: dict[str, Any]) -> None:
    print(f"{step.name}: {json.dumps(summary, sort_keys=True, default=str)[:400]}")


def _run_refresh(args: argparse.Namespace) -> int:
    """Each interval in the order given; the first that fails (or has nothing to refresh) stops the rest."""
    for interval in args.interval:
        context = {"interval": interval, "overrides": _overrides(args.override)}
        run_steps(REFRESH, _selection(REFRESH, args.step), interval, context, _print_refresh)
    return 0


#: One line (or a few) per tuning step for the terminal.
_TUNE_LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "dataset": lambda s: [f"dataset: {s['data_version']} ({s['n_train']} train, {s['n_validation']} validation)"],
    "drift": lambda s: [f"drift: {s['report']['severity']}"],
    "train": lambda s: [f"train: {s['global_step']} steps, {s['tokens_per_second']:.0f} tokens/s"],
    "evaluate": lambda s: [f"evaluate: challenger {s['challenger']} champion {s['champion']}"],
    "gate": lambda s: [f"gate: {s['action']}", *(f"  {reason}" for reason in s["reasons"])],
    "register": lambda s: [f"register: v{s['candidate']['version']} promoted={s['promotion']['promoted']}"],
}


def _print_tune(step: Step, summary: dict[str, Any]) -> None:
    for line in _TUNE_LINES[step.name](summary):
        print(line)


def run_tuning(
    as_of: str | None, overrides: dict[str, Any] | None = None, names: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Run tuning steps (all by default) in order, as the ``tune_model`` DAG does; returns their summaries.

    Raises:
        NothingToDo: A step had nothing to do (nothing new to train, ...): the later steps are skipped.
    """
    context = {"as_of": as_of, "overrides": overrides, "dag_id": None, "dag_run_id": None}
    return run_steps(TUNE, names or _names(TUNE), as_of or LATEST, context, _print_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from evertune.errors import NothingToDo

    try:
        run_tuning(args.as_of, _overrides(args.override), _selection(TUNE, args.step))
    except NothingToDo as exc:
        print(f"nothing to do: {exc}")
    return 0


def _dvc_yaml(args: argparse.Namespace) -> int:
    from evertune.dvc_stages import DEFAULT_INTERVALS, render_dvc_yaml

    intervals = tuple(args.intervals or DEFAULT_INTERVALS)
    text = render_dvc_yaml(intervals, args.tune_as_of or intervals[-1])
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0

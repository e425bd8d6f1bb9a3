"""The step registry: every pipeline step of evertune, declared once.

Two pipelines share this table: ``refresh`` (one data interval of the knowledge base, the
``refresh_knowledge_base`` DAG) and ``tune`` (one tuning attempt, the ``tune_model`` DAG). Each :class:`Step`
names its callable as an import path, so importing this module stays light (DAG parsing does); the callable is
imported only when the step runs.

The Airflow tasks (``evertune_airflow.tasks``), the ``evertune refresh|tune`` commands and ``dvc.yaml``
(``evertune dvc-yaml``) are all derived from :data:`STEPS`:

* the order of a pipeline is the order of its steps here;
* a step's ``upstream`` are the steps whose summaries it receives (the XCom arguments of its task, the
  receipts it reads on the command line), in call order;
* :func:`call_step` passes arguments **by name**: a parameter of the callable named like a context value of
  the pipeline (:data:`CONTEXT`) or like the ``result`` of one of its upstream steps gets that value;
  parameters with a default that match nothing keep their default. A step function that grows an optional
  ``ingested`` parameter therefore receives the ingest summary with no change here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFRESH = "refresh"
TUNE = "tune"

#: Per pipeline: the context values a step callable may take by name, besides upstream results. ``review`` is
#: the answer of ``tune_model``'s approval task (Airflow only; ``None`` when the task was skipped).
CONTEXT: dict[str, tuple[str, ...]] = {
    REFRESH: ("interval", "overrides"),
    TUNE: ("as_of", "overrides", "dag_id", "dag_run_id", "review"),
}

#: Per pipeline: the receipts folder of one run key (interval or as_of), relative to the work dir.
RECEIPT_DIRS: dict[str, str] = {
    REFRESH: "receipts/refresh/ds={key}",
    TUNE: "receipts/tune/as_of={key}",
}

#: Receipt key of a tuning run whose ``as_of`` is left to the newest validated interval.
LATEST = "latest"


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    Attributes:
        pipeline: ``refresh`` or ``tune``.
        name: Short name: the CLI choice and the receipt's file stem (``ingest``).
        task_id: Airflow task id and DVC stage name, unique across pipelines (``ingest_documents``).
        target: The callable as ``module:function``.
        result: The parameter name under which downstream callables take this step's summary.
        upstream: Names of the steps (same pipeline) whose summaries this step receives, in call order.
        params: ``params.yaml`` sections the step reads (DVC ``params``).
        resources: Non-Python files the step reads, relative to the repository (DVC ``deps``).
        summary: What the step does, in one sentence (the task's documentation).
        window: For a ``tune`` step: the ``refresh`` steps whose results of every interval up to ``as_of`` it
            reads (through the data repository and the index, so only DVC sees them: ``deps``).
        serial: Its runs over intervals form a chain: each waits for the previous interval's ``publish`` step
            (the end of the fold; ``check_freshness`` after it only reads). The knowledge base is a fold over
            days (the DAG runs one interval at a time, in order).
        mapped: Its one upstream summary is a list and Airflow runs one task per element (dynamic task mapping),
            the callable getting a one-element list; its downstream gets the list of all results. The command
            line calls it once with the whole list.
    """

    pipeline: str
    name: str
    task_id: str
    target: str
    result: str
    upstream: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    summary: str = ""
    window: tuple[str, ...] = ()
    serial: bool = False
    mapped: bool = False

    def load(self) -> Callable[..., dict[str, Any]]:
        """Import and return the step's callable."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def receipt(self, work_dir: Path, key: str) -> Path:
        """Where the command line stores this step's summary for run ``key`` (interval or ``as_of``)."""
        return work_dir / RECEIPT_DIRS[self.pipeline].format(key=key) / f"{self.name}.json"


_KB = "evertune.kb.refresh"
_TUNING = "evertune.tuning.steps"
_FRESHNESS = "evertune.tuning.freshness_check"
_EVALUATION = "evertune.tuning.evaluation"
_RELEASE = "evertune.tuning.release"
_DELETIONS = "evertune.tuning.deletions"

STEPS: tuple[Step, ...] = (
    Step(REFRESH, "ingest", "ingest_documents", f"{_KB}:ingest_documents", "ingested",
         params=("ingest",),
         summary="Read the interval's landing partition; unreadable input becomes quarantine records."),
    Step(REFRESH, "validate", "validate_documents", f"{_KB}:validate_documents", "validated", ("ingest",),
         params=("validate",),
         summary="Run the Great Expectations suite, quarantine bad rows, write the validated snapshot."),
    Step(REFRESH, "version", "version_snapshot", f"{_KB}:version_snapshot", "version", ("validate",),
         summary="Version the validated snapshot with DVC and push it to the remote."),
    Step(REFRESH, "plan", "plan_shards", f"{_KB}:plan_shards", "plan", ("version",),
         params=("chunk", "embed", "index"),
         summary="Find the chunks that need a vector and split them into index.embed_shards content-hash shards.",
         serial=True),
    Step(REFRESH, "embed", "embed_shard", f"{_KB}:embed_shards", "embedded", ("plan",),
         params=("embed",), mapped=True,
         summary="Embed one shard's texts into the staging area (one mapped task per shard)."),
    Step(REFRESH, "sync", "sync_index", f"{_KB}:sync_index", "synced", ("embed",),
         params=("chunk", "embed", "index"),
         summary="Merge the shards' vectors with the new or changed chunks into the LanceDB table, in one commit."),
    Step(REFRESH, "evaluate", "evaluate_retrieval", f"{_KB}:evaluate_retrieval", "evaluation", ("sync",),
         params=("embed", "index", "retrieval"),
         summary="Score the candidate table version on the golden queries, next to the published one."),
    Step(REFRESH, "publish", "publish_index", f"{_KB}:publish_index", "published", ("sync", "evaluate", "version"),
         params=("index", "retrieval"),
         summary="Move the ``production`` tag to the candidate if retrieval quality holds."),
    Step(REFRESH, "freshness", "check_freshness", f"{_FRESHNESS}:check_freshness", "freshness", ("publish",),
         params=("freshness", "dataset", "embed", "index", "retrieval", "train", "evaluate", "register"),
         summary="The champion answers the changed-fact probes from the published KB; log freshness to MLflow."),
    Step(REFRESH, "deletions", "apply_deletions", f"{_DELETIONS}:apply_deletions", "deletions", ("publish",),
         params=("deletion", "register"),
         summary="Tag the model versions trained on documents deleted up to the interval (``deleted_docs``; "
                 "``deletion.model_policy`` flags or blocks them); invalidate cached answers citing them."),
    Step(TUNE, "dataset", "build_dataset", f"{_TUNING}:build_dataset", "dataset",
         params=("dataset", "embed", "chunk", "index", "retrieval", "evaluate", "base_model", "train", "register"),
         window=("version", "publish"),
         summary="Assemble, dedupe and ground-check the SFT dataset of the window, each prompt with chunks of the "
                 "published KB; version it; freeze the golden set."),
    Step(TUNE, "drift", "check_drift", f"{_TUNING}:check_drift", "drift", ("dataset",),
         params=("project", "drift", "embed", "register"),
         summary="Compare the new training data with the champion's; log statistics to MLflow."),
    Step(TUNE, "train", "train", f"{_TUNING}:train_candidate", "trained", ("dataset", "drift"),
         params=("project", "dataset", "index", "base_model", "train", "lora", "register", "evaluate"),
         window=("publish",),
         summary="LoRA SFT with TRL; skipped when this exact candidate is already registered."),
    Step(TUNE, "evaluate", "evaluate", f"{_EVALUATION}:evaluate_candidate", "evaluation", ("dataset", "train"),
         params=("project", "base_model", "dataset", "embed", "index", "retrieval", "train", "evaluate", "register",
                 "freshness"),
         resources=("include/evertune/tuning/eval_modules",),
         summary="Challenger vs champion and the untuned base model on the golden set, through the served answer "
                 "path; freshness on the changed-fact probes."),
    Step(TUNE, "gate", "gate", f"{_EVALUATION}:gate_candidate", "decision", ("evaluate", "drift", "train"),
         params=("drift", "gate", "register"),
         summary="The promotion decision with every reason (a pure function of the metrics, base and freshness)."),
    Step(TUNE, "register", "register", f"{_RELEASE}:register_candidate", "outcome",
         ("dataset", "train", "evaluate", "gate", "drift"),
         params=("base_model", "evaluate", "register", "approval"),
         summary="Register the candidate as ``challenger`` with its gate decision; write the approval request "
                 "of a held one."),
    Step(TUNE, "promote", "promote", f"{_RELEASE}:promote_candidate", "promotion", ("register",),
         params=("register",),
         summary="Move ``champion`` (compare-and-set) for a passing or approved candidate; skipped otherwise."),
)


def steps_of(pipeline: str) -> tuple[Step, ...]:
    """The steps of one pipeline, in run order.

    Raises:
        KeyError: Unknown pipeline.
    """
    if pipeline not in CONTEXT:
        raise KeyError(f"unknown pipeline {pipeline!r}; known: {sorted(CONTEXT)}")
    return tuple(step for step in STEPS if step.pipeline == pipeline)


def step_named(pipeline: str, name: str) -> Step:
    """The step ``name`` of ``pipeline``.

    Raises:
        KeyError: No such step.
    """
    for step in steps_of(pipeline):
        if step.name == name:
            return step
    raise KeyError(f"{pipeline} has no step {name!r}")


def step_for_task(task_id: str) -> Step:
    """The step whose Airflow task id is ``task_id``.

    Raises:
        KeyError: No such step.
    """
    for step in STEPS:
        if step.task_id == task_id:
            return step
    raise KeyError(f"no pipeline step has task id {task_id!r}")


def upstream_steps(step: Step) -> tuple[Step, ...]:
    """The steps ``step`` receives summaries from, in call order."""
    return tuple(step_named(step.pipeline, name) for name in step.upstream)


def step_inputs(step: Step, context: Mapping[str, Any], upstream: Sequence[Any]) -> dict[str, Any]:
    """Every value a step may take by name: the pipeline's context and its upstream results.

    Args:
        step: The step.
        context: Values of the pipeline's :data:`CONTEXT` names (missing ones count as absent).
        upstream: The summaries of ``step.upstream``, in the same order.

    Raises:
        ValueError: ``upstream`` does not hold one summary per upstream step.
    """
    sources = upstream_steps(step)
    if len(upstream) != len(sources):
        raise ValueError(f"{step.task_id} takes {len(sources)} upstream summaries "
                         f"({', '.join(s.name for s in sources) or 'none'}), got {len(upstream)}")
    inputs = {name: context[name] for name in CONTEXT[step.pipeline] if name in context}
    inputs.update({source.result: value for source, value in zip(sources, upstream, strict=True)})
    return inputs


def bind_arguments(function: Callable[..., Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``function``: each parameter named in ``inputs`` gets that value.

    Raises:
        TypeError: A parameter without default matches nothing in ``inputs``.
    """
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in inputs:
            kwargs[name] = inputs[name]
        elif parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
        ):
            raise TypeError(f"{function.__module__}.{function.__qualname__} needs {name!r}; "
                            f"the step provides {sorted(inputs)}")
    return kwargs


def call_step(step: Step, context: Mapping[str, Any], upstream: Sequence[Any] = ()) -> dict[str, Any]:
    """Run one step: import its callable and call it with the context and upstream summaries it names.

    Args:
        step: The step to run.
        context: The pipeline's context values (``interval``/``as_of``, ``overrides``, run ids).
        upstream: The summaries of ``step.upstream``, in order.

    Returns:
        The step's JSON-able summary.
    """
    function = step.load()
    return function(**bind_arguments(function, step_inputs(step, context, upstream)))

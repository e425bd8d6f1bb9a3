"""Airflow tasks built from the step registry (:mod:`evertune.pipeline`): one factory for every step.

A DAG file says only how a step is wired::

    validated = evertune_task("validate_documents", retries=0)(ingested)

The factory gives every task the same body: map domain errors to task states (:func:`task_states`), build the
pipeline's context from the Airflow context (the data interval for ``refresh``; ``as_of``, the DAG and run ids
for ``tune``; the ``overrides`` Param for both), import the step's callable and call it with the upstream
summaries (:func:`evertune.pipeline.call_step`). Outlet assets can carry an extra built from the step's result.

Parsing a DAG imports only the registry: the step's module is imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, task

from evertune.pipeline import REFRESH, TUNE, Step, call_step, step_for_task, step_inputs, upstream_steps
from evertune_airflow.errors import interval_of, task_states

#: Builds an asset event's extra from the step's result and its inputs (context and upstream summaries by name).
ExtraBuilder = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]


def refresh_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The ``refresh`` pipeline's context: the data interval's date and the ``overrides`` Param."""
    return {"interval": interval_of(context.get("data_interval_start")), "overrides": context["params"]["overrides"]}


def tune_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tune`` pipeline's context: the ``as_of`` and ``overrides`` Params, the DAG and run ids."""
    dag_run = context["dag_run"]
    return {"as_of": context["params"]["as_of"], "overrides": context["params"]["overrides"],
            "dag_id": dag_run.dag_id, "dag_run_id": context["run_id"]}


CONTEXT_BUILDERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    REFRESH: refresh_context,
    TUNE: tune_context,
}


def validated_data_extra(result: dict[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``validated_data``: the interval, the data version fields and the validation counts."""
    return {"interval": inputs["interval"], **result, "counts": inputs["validated"].get("counts", {})}


def kb_index_extra(result: dict[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``kb_index`` (emitted by ``check_freshness``): the publish summary as it is, plus ``freshness``: the
    check's status and message, the champion and, when measured, the fresh share, its interval and counts."""
    keys = ("status", "message", "champion_version", "champion_as_of", "n", "fresh", "fresh_share", "ci",
            "ci_alpha", "both_values", "old_only", "token_f1", "probes_version", "run_id")
    return {**inputs["published"], "freshness": {key: result[key] for key in keys if key in result}}


def champion_model_extra(result: dict[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``champion_model`` (emitted by ``promote``, which succeeds only when ``champion`` moved): the model name and
    the new champion version, the previous champion, the gate action, who approved (``gate`` when automatic),
    the sha256 of the version's release manifest (``evertune model show VERSION`` verifies it) and the prompt
    version ``production`` now points at."""
    promotion = result["promotion"]
    return {"model_name": promotion["model_name"], "version": promotion["version"],
            "promoted": promotion["promoted"], "previous_version": promotion["previous_champion"],
            "action": promotion["action"], "approved_by": result.get("approved_by"),
            "manifest_sha256": result.get("manifest_sha256"),
            "prompt": promotion.get("prompt") or result.get("prompt")}


def check_wiring(step: Step, upstream: tuple[Any, ...]) -> None:
    """Fail DAG parsing when a task is wired to other tasks than its registry upstream, in another order.

    Raises:
        ValueError: The upstream task ids differ from the registry's.
    """
    expected = [source.task_id for source in upstream_steps(step)]
    given = [getattr(getattr(arg, "operator", None), "task_id", repr(arg)) for arg in upstream]
    if given != expected:
        raise ValueError(f"{step.task_id} must be called with the results of {expected} (evertune.pipeline), "
                         f"got {given}")


def materialized(value: Any) -> Any:
    """A mapped task's results as a plain list (Airflow hands them over as a lazy sequence); others unchanged."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | list | tuple):
        return list(value)
    return value


def evertune_task(
    task_id: str, *, outlets: Mapping[Asset, ExtraBuilder | None] | None = None,
    xcom_context: Mapping[str, str] | None = None, **task_kwargs: Any
) -> Callable[..., Any]:
    """The Airflow task of one registry step; call the result with the upstream tasks' results.

    Args:
        task_id: The step's task id (:attr:`evertune.pipeline.Step.task_id`).
        outlets: Assets the task updates, each with the builder of its event extra (``None``: no extra).
        xcom_context: Context names of the step filled from other tasks' return values (``{"review":
            "approval"}``): a task that is no registry step (an operator), pulled when the task runs (``None``
            when that task was skipped). Wire the dependency with ``>>``.
        **task_kwargs: Anything else ``@task`` takes: pool, queue, retries, callbacks, timeouts.

    Returns:
        ``wire(*upstream)``: checks the upstream against the registry and adds the task to the DAG.
    """
    step = step_for_task(task_id)
    extras = dict(outlets or {})
    build_context = CONTEXT_BUILDERS[step.pipeline]

    def body(*upstream: Any, **context: Any) -> Any:
        upstream = tuple(materialized(value) for value in upstream)
        with task_states():
            step_context = build_context(context)
            for name, source in (xcom_context or {}).items():
                step_context[name] = context["ti"].xcom_pull(task_ids=source)
            result = call_step(step, step_context, upstream)
        inputs = step_inputs(step, step_context, upstream)
        for asset, builder in extras.items():
            if builder is not None:
                context["outlet_events"][asset].extra = builder(result, inputs)
        return result

    body.__name__ = body.__qualname__ = step.task_id
    body.__doc__ = step.summary
    if extras:
        task_kwargs["outlets"] = list(extras)
    # One XCom per task, its summary (a dict, or the list ``plan_shards`` returns for ``.expand()``); never split
    # into per-key XComs (``@task`` would infer that from a ``dict`` return annotation).
    task_kwargs.setdefault("multiple_outputs", False)
    decorated = task(task_id=step.task_id, **task_kwargs)(body)

    def wire(*upstream: Any) -> Any:
        check_wiring(step, upstream)
        return decorated(*upstream)

    return wire


class MappedTask:
    """The Airflow task of a ``mapped`` registry step: ``.expand(shard=plan)`` runs one task per element.

    Each mapped task calls the step with a one-element list and returns that element's result; the downstream
    task receives the list of every result (:func:`materialized`).
    """

    def __init__(self, task_id: str, **task_kwargs: Any) -> None:
        step = step_for_task(task_id)
        if not step.mapped:
            raise ValueError(f"{task_id} is not a mapped step (evertune.pipeline)")
        build_context = CONTEXT_BUILDERS[step.pipeline]

        def body(shard: Any, **context: Any) -> Any:
            with task_states():
                (result,) = call_step(step, build_context(context), [[shard]])
            return result

        body.__name__ = body.__qualname__ = step.task_id
        body.__doc__ = step.summary
        self.step = step
        self._decorated = task(task_id=step.task_id, multiple_outputs=False, **task_kwargs)(body)

    def expand(self, *, shard: Any) -> Any:
        """Map the task over ``shard``, the result of the step's one upstream task (checked like any wiring)."""
        check_wiring(self.step, (shard,))
        return self._decorated.expand(shard=shard)


def evertune_mapped_task(task_id: str, **task_kwargs: Any) -> MappedTask:
    """The mapped Airflow task of one registry step; call ``.expand(shard=<upstream result>)`` on it.

    Args:
        task_id: The step's task id; the step must be ``mapped``.
        **task_kwargs: Anything else ``@task`` takes: pool, queue, retries, timeouts.
    """
    return MappedTask(task_id, **task_kwargs)


def notify_outcome(outcome: dict[str, Any] | None, promotion: dict[str, Any] | None, review: dict[str, Any] | None,
                   context: Mapping[str, Any]) -> str:
    """Send a candidate that did not take champion through the notifier (with the reviewer, if one answered);
    a promotion is only logged.

    Args:
        outcome: The ``register`` summary; ``None`` when ``register`` was skipped (training found this exact
            candidate already registered): nothing to report.
        promotion: The ``promote`` summary; ``None`` when ``promote`` was skipped (champion did not move).
        review: The approval task's answer; ``None`` when it was skipped.
        context: The Airflow context.
    """
    from evertune.tuning.approval import review_of
    from evertune.tuning.release import record_review
    from evertune_airflow.notifiers import EvertuneNotifier

    if outcome is None:
        return "nothing registered: an identical candidate already exists (training skipped)"
    version = outcome["candidate"]["version"]
    record_review(outcome, review, (context.get("params") or {}).get("overrides"))
    if promotion is not None:
        return f"promoted v{version} (approved by {promotion.get('approved_by')})"
    answer = review_of(review)
    why = outcome["decision"] if answer is None else f"rejected by {answer.by or 'timeout'}"
    EvertuneNotifier(
        title=f"gate {outcome['decision']}: challenger v{version} did not take champion ({why})",
        details=outcome["reasons"],
    ).notify(context)
    return f"{why} notified for v{version}"

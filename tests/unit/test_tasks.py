"""evertune_task: one factory for every registry step's Airflow task (context, task states, extras, wiring)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pendulum
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from evertune.errors import NothingToDo, QualityGateFailed
from evertune_airflow import tasks
from evertune_airflow.assets import CHAMPION_MODEL, KB_INDEX, VALIDATED_DATA


class Events(dict):
    def __missing__(self, key):
        self[key] = SimpleNamespace(extra=None)
        return self[key]


def context(**extra) -> dict:
    return {"data_interval_start": pendulum.datetime(2026, 11, 3, tz="UTC"), "params": {"overrides": {"k": 1}},
            "outlet_events": Events(), **extra}


def placeholder() -> dict:
    return {}


def build(task_id: str, n_upstream: int | None = None, **kwargs):
    """The task's operator inside a throwaway DAG, wired to placeholder tasks with the upstream task ids."""
    from airflow.sdk import task

    from evertune.pipeline import step_for_task, upstream_steps

    with DAG("probe", schedule=None, start_date=dt.datetime(2026, 11, 1)):
        sources = upstream_steps(step_for_task(task_id))
        upstream = [task(task_id=source.task_id)(placeholder)() for source in sources][:n_upstream]
        return tasks.evertune_task(task_id, **kwargs)(*upstream).operator


def test_refresh_task_calls_its_step_with_the_interval_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake(step, step_context, upstream):
        seen.update(step=step.task_id, context=step_context, upstream=upstream)
        return {"data_version": "validated/2026-11-03@abc", "md5": "abc"}

    monkeypatch.setattr(tasks, "call_step", fake)
    operator = build("version_snapshot", 1, outlets={VALIDATED_DATA: tasks.validated_data_extra})
    ctx = context()
    result = operator.python_callable({"counts": {"documents": 3}}, **ctx)
    assert seen == {"step": "version_snapshot", "context": {"interval": "2026-11-03", "overrides": {"k": 1}},
                    "upstream": ({"counts": {"documents": 3}},)}
    assert result["md5"] == "abc"
    assert ctx["outlet_events"][VALIDATED_DATA].extra == {
        "interval": "2026-11-03", "data_version": "validated/2026-11-03@abc", "md5": "abc",
        "counts": {"documents": 3}}
    assert operator.task_id == "version_snapshot" and operator.doc_md.startswith("Version the validated")
    assert [o.name for o in operator.outlets] == ["validated_data"]


def test_tune_context_has_as_of_and_run_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "call_step", lambda step, c, u: {"context": c})
    operator = build("build_dataset", 0)
    ctx = context(params={"as_of": "2026-11-02", "overrides": {}}, run_id="manual__1",
                  dag_run=SimpleNamespace(dag_id="tune_model", run_id="manual__1"))
    assert operator.python_callable(**ctx)["context"] == {
        "as_of": "2026-11-02", "overrides": {}, "dag_id": "tune_model", "dag_run_id": "manual__1"}


@pytest.mark.parametrize(("error", "state"), [(NothingToDo("no partition"), AirflowSkipException),
                                               (QualityGateFailed("worse"), AirflowFailException)])
def test_domain_errors_become_task_states(monkeypatch: pytest.MonkeyPatch, error, state) -> None:
    def fail(step, step_context, upstream):
        raise error

    monkeypatch.setattr(tasks, "call_step", fail)
    operator = build("ingest_documents", 0)
    with pytest.raises(state):
        operator.python_callable(**context())


def test_a_run_without_data_interval_fails() -> None:
    operator = build("ingest_documents", 0)
    with pytest.raises(AirflowFailException, match="needs a data interval"):
        operator.python_callable(**context(data_interval_start=None))


def test_wiring_must_follow_the_registry() -> None:
    with pytest.raises(ValueError, match=r"publish_index must be called with the results of \['sync_index'"):
        with DAG("probe", schedule=None, start_date=dt.datetime(2026, 11, 1)):
            ingested = tasks.evertune_task("ingest_documents")()
            tasks.evertune_task("publish_index")(ingested, ingested, ingested)
    with pytest.raises(ValueError, match="got \\[\\]"):
        build("check_drift", 0)


def test_asset_extras() -> None:
    published = {"table": "kb", "table_version": 7, "changed": True}
    freshness = {"status": "measured", "message": "m", "champion_version": 1, "n": 44, "fresh": 40,
                 "fresh_share": 40 / 44, "ci": [0.79, 0.96], "examples": [{"question": "q"}], "interval": "x"}
    extra = tasks.kb_index_extra(freshness, {"published": published, "interval": "x"})
    assert extra == {**published, "freshness": {k: v for k, v in freshness.items() if k not in ("examples",
                                                                                             "interval")}}
    none = tasks.kb_index_extra({"status": "no_champion", "message": "no champion"}, {"published": published})
    assert none["freshness"] == {"status": "no_champion", "message": "no champion"} and none["table_version"] == 7
    outcome = {"promotion": {"model_name": "m", "version": 2, "promoted": True, "previous_champion": 1,
                             "action": "require_approval", "prompt": {"name": "p", "version": 3, "uri": "prompts:/p/3"}},
               "approved_by": "alice", "manifest_sha256": "ab" * 32}
    assert tasks.champion_model_extra(outcome, {}) == {"model_name": "m", "version": 2, "promoted": True,
                                                       "previous_version": 1, "action": "require_approval",
                                                       "approved_by": "alice", "manifest_sha256": "ab" * 32,
                                                       "prompt": {"name": "p", "version": 3, "uri": "prompts:/p/3"}}
    assert {KB_INDEX.name, CHAMPION_MODEL.name} == {"kb_index", "champion_model"}


def test_notify_outcome_notifies_only_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    from evertune.tuning import release
    from evertune_airflow import notifiers

    sent, reviews = [], []
    monkeypatch.setattr(notifiers.EvertuneNotifier, "notify", lambda self, ctx: sent.append(self.title))
    # The reviewer is recorded on the version (release.record_review, tested on a real registry in test_release).
    monkeypatch.setattr(release, "record_review", lambda outcome, review, overrides=None: reviews.append(review))
    outcome = {"candidate": {"version": 3}, "decision": "reject", "reasons": ["worse"]}
    assert tasks.notify_outcome(outcome, None, None, {}) == "reject notified for v3"
    assert sent == ["gate reject: challenger v3 did not take champion (reject)"]
    held = {**outcome, "decision": "require_approval"}
    review = {"chosen_options": ["Reject"], "responded_by_user": {"id": "1", "name": "bob"}}
    assert tasks.notify_outcome(held, None, review, {}) == "rejected by bob notified for v3"
    assert sent[-1] == "gate require_approval: challenger v3 did not take champion (rejected by bob)"
    assert reviews[-1] == review
    promoted = {"promotion": {"changed": True}, "approved_by": "gate"}
    assert tasks.notify_outcome({**outcome, "decision": "promote"}, promoted, None, {}) == \
        "promoted v3 (approved by gate)"
    assert len(sent) == 2
    # A run whose training found the candidate already registered skips register: nothing to notify, no error.
    assert tasks.notify_outcome(None, None, None, {}).startswith("nothing registered")
    assert len(sent) == 2

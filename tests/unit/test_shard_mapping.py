"""The sharded refresh's pure parts: shard assignment, shard references, and the mapped Airflow task."""

from __future__ import annotations

import datetime as dt
import hashlib

import pendulum
import pytest
from airflow.sdk import DAG, task

from evertune.kb.shards import ShardRef, shard_of
from evertune.pipeline import step_for_task
from evertune_airflow import tasks


def test_shards_split_content_hashes_evenly_and_stably() -> None:
    hashes = [hashlib.sha256(f"text {i}".encode()).hexdigest() for i in range(4000)]
    counts = [0] * 4
    for content_hash in hashes:
        counts[shard_of(content_hash, 4)] += 1
    assert all(900 < count < 1100 for count in counts), counts
    assert {shard_of(content_hash, 1) for content_hash in hashes} == {0}
    assert shard_of(hashes[0], 4) == shard_of(hashes[0], 4) == int(hashes[0][:16], 16) % 4


def test_a_shard_ref_survives_xcom_and_an_embed_result() -> None:
    ref = ShardRef("2026-11-01", "kb", 1, 2, 10, "/stage/shard-001", "abc")
    assert ShardRef.from_dict({**ref.to_dict(), "embedded": 10, "seconds": 1.5}) == ref


def test_the_embed_step_is_the_only_mapped_one() -> None:
    assert step_for_task("embed_shard").mapped and step_for_task("embed_shard").upstream == ("plan",)
    assert step_for_task("sync_index").upstream == ("embed",)
    with pytest.raises(ValueError, match="not a mapped step"):
        tasks.evertune_mapped_task("sync_index")


def placeholder() -> list:
    return []


def test_mapped_task_runs_one_shard_and_its_downstream_gets_every_result(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake(step, step_context, upstream):
        seen.append((step.task_id, step_context["interval"], upstream))
        return [{"index": upstream[0][0]["index"], "seconds": 1.0}]

    monkeypatch.setattr(tasks, "call_step", fake)
    with DAG("probe", schedule=None, start_date=dt.datetime(2026, 11, 1)):
        plan = task(task_id="plan_shards")(placeholder)()
        embedded = tasks.evertune_mapped_task("embed_shard").expand(shard=plan)
        with pytest.raises(ValueError, match="embed_shard must be called with the results of"):
            tasks.evertune_mapped_task("embed_shard").expand(shard=embedded)
    operator = embedded.operator
    ctx = {"data_interval_start": pendulum.datetime(2026, 11, 3, tz="UTC"), "params": {"overrides": {}}}
    assert operator.python_callable({"index": 1}, **ctx) == {"index": 1, "seconds": 1.0}
    assert seen == [("embed_shard", "2026-11-03", [[{"index": 1}]])]


class Lazy:
    """Stands in for Airflow's lazy sequence of a mapped task's results."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def test_mapped_results_reach_the_merge_as_a_plain_list() -> None:
    from collections.abc import Sequence

    Sequence.register(Lazy)
    assert tasks.materialized(Lazy([{"index": 0}, {"index": 1}])) == [{"index": 0}, {"index": 1}]
    assert tasks.materialized({"a": 1}) == {"a": 1} and tasks.materialized("text") == "text"


def test_the_plan_pushes_its_list_as_one_xcom() -> None:
    # @task infers multiple_outputs from a dict return annotation: a list return value then fails the task.
    with DAG("probe", schedule=None, start_date=dt.datetime(2026, 11, 1)):
        version = task(task_id="version_snapshot")(placeholder)()
        plan = tasks.evertune_task("plan_shards")(version)
        embedded = tasks.evertune_mapped_task("embed_shard").expand(shard=plan)
    assert plan.operator.multiple_outputs is False and embedded.operator.multiple_outputs is False

"""The sharded refresh on the production topology: 2 embedding shards on 2 Celery workers (issue #12, part 4).

The stack of ``test_distributed`` (CeleryExecutor on the machine's PostgreSQL, a Redis broker), here with two
one-slot workers on the ``default`` queue, runs ``refresh_knowledge_base`` for one day with
``index.embed_shards = 2``. Each worker must execute one ``embed_shard`` task; the published table must equal
the unsharded sync of the same validated day (:func:`evertune.kb.index.sync_interval` in this process, into a
table of its own: same chunk ids and hashes, vectors up to float rounding), and the day's merge writes its data
in one commit. The PostgreSQL role and databases and the Redis database come from ``test_distributed``'s
``services`` fixture (imported, not copied).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_distributed import _run, _table_state, services  # noqa: F401  (services is a fixture)

from evertune_airflow import stack_client, stack_control, stack_env, stack_processes

DAY = "2026-11-01"
WORKERS = "worker=default@1;worker-b=default@1"
OVERRIDES = {"index.embed_shards": 2}
pytestmark = pytest.mark.slow


WORKLOAD_LINE = re.compile(r"^(\S+) .*?(?:Task execute_workload\[(?P<task>[0-9a-f-]+)\] (?P<event>received|succeeded|failed)"
                           r"|\[(?P<run>[0-9a-f-]+)\] Executing workload in Celery: .*?task_id='(?P<task_id>\w+)')")


def worker_workloads(log: Path) -> list[dict]:
    """The Celery workloads in a worker's log: ``task_id``, ``received`` and ``finished`` (epoch seconds)."""
    found: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = WORKLOAD_LINE.match(line)
        if not match:
            continue
        when = dt.datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
        if match.group("run"):
            found.setdefault(match.group("run"), {})["task_id"] = match.group("task_id")
        else:
            key = "received" if match.group("event") == "received" else "finished"
            found.setdefault(match.group("task"), {})[key] = when
    return [{"task_id": w.get("task_id"), "received": w.get("received", 0.0), "finished": w.get("finished", float("inf"))}
            for w in found.values()]


def covered(workloads: list[dict], start: float, end: float) -> bool:
    """Whether the worker ran workloads without a gap from ``start`` to ``end``."""
    reached = start
    for workload in sorted(workloads, key=lambda w: w["received"]):
        if workload["received"] <= reached:
            reached = max(reached, workload["finished"])
    return reached >= end


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, services: dict, tiny_dag_env,  # noqa: F811
                port_picker) -> Iterator[dict]:
    """The production stack with two one-slot workers on ``default``; stopped (and verified stopped) afterwards."""
    from evertune.settings import get_settings

    home = tmp_path_factory.mktemp("shards-cluster")
    base = tiny_dag_env(home)
    _run(base, "demo-data", "--days", "1")
    ports = dict(zip(stack_env.PORT_VARS, port_picker(len(stack_env.PORT_VARS)), strict=True))
    while not stack_processes.port_free(ports["EVERTUNE_WORKER_LOG_PORT"] + 1):  # the second worker's log port
        ports["EVERTUNE_WORKER_LOG_PORT"] = port_picker(1)[0]
    production = {**{name: str(port) for name, port in ports.items()}, "EVERTUNE_EXECUTOR": "CeleryExecutor",
                  "EVERTUNE_CELERY_WORKERS": WORKERS, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": services["urls"]["airflow"],
                  "AIRFLOW__CELERY__BROKER_URL": services["broker"], "MLFLOW_TRACKING_URI": services["urls"]["mlflow"]}
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(("AIRFLOW__", "EVERTUNE_", "MLFLOW_"))]:
            patch.delenv(key)
        for key, value in {**base, **production}.items():
            patch.setenv(key, value)
        settings = get_settings()
        try:
            started = stack_control.up(settings, timeout=600)
            print(f"\n[shards] {len(started.started)} components healthy after {started.seconds_to_healthy:.1f} s")
            with stack_client.AirflowClient.connect(settings) as client:
                yield {"home": home, "settings": settings, "client": client}
        finally:
            stack_processes.stop(settings)
            leftovers = stack_processes.stack_processes(settings)
            assert not any(leftovers.values()), f"processes left running: {leftovers}"


def _unsharded(home: Path, settings, params) -> dict:
    """The same validated day synced unsharded, in this process, into a table of its own: (id, hash) -> vector."""
    import dataclasses

    from evertune.data.versioning import validated_folder
    from evertune.kb.index import connect, read_table_rows, sync_interval, table_name_for

    reference = dataclasses.replace(settings, lancedb_uri=str(home / "reference-lancedb"))
    sync_interval(settings.data_repo / validated_folder(DAY), DAY, params, reference)
    rows = read_table_rows(connect(reference).open_table(table_name_for(params)),
                           ["chunk_id", "content_hash", "vector"])
    return {(row["chunk_id"], row["content_hash"]): row["vector"] for row in rows}


def test_two_shards_on_two_workers_equal_the_unsharded_sync(two_workers: dict) -> None:
    import lancedb
    import numpy as np

    from evertune.config import load_params
    from evertune.kb.index import read_table_rows, table_name_for

    client, home, settings = two_workers["client"], two_workers["home"], two_workers["settings"]
    client.wait_for_dag("refresh_knowledge_base", timeout=300)
    client.unpause("refresh_knowledge_base")
    after = (dt.date.fromisoformat(DAY) + dt.timedelta(days=1)).isoformat()
    run_id = client.trigger("refresh_knowledge_base", conf={"overrides": OVERRIDES}, logical_date=after)
    (run,) = client.wait_for_runs("refresh_knowledge_base", [run_id], timeout=900, poll=5)
    tis = client.task_instances("refresh_knowledge_base", run_id)
    assert run["state"] == "success", {(ti["task_id"], ti.get("map_index")): ti["state"] for ti in tis}
    shards = [ti for ti in tis if ti["task_id"] == "embed_shard"]
    assert sorted(ti["map_index"] for ti in shards) == [0, 1]

    # Which worker embedded what: each worker logs the workloads it received, ran and finished.
    runs = {name: worker_workloads(stack_processes.log_dir(settings) / f"{name}.log") for name in ("worker", "worker-b")}
    embedded = {name: [w for w in workloads if w["task_id"] == "embed_shard"] for name, workloads in runs.items()}
    assert sum(len(shards) for shards in embedded.values()) == 2, embedded
    if not all(embedded.values()):
        # Celery gives a queued task to whichever one-slot worker asks first, so one worker takes both shards only
        # when the other is busy (here: the DVC snapshot, which runs beside the shards) the whole time the second
        # shard waits. A shard never waits while a worker is idle.
        busy_name, idle_name = ("worker", "worker-b") if embedded["worker"] else ("worker-b", "worker")
        first, second = sorted(embedded[busy_name], key=lambda w: w["received"])
        assert covered(runs[idle_name], first["received"], second["received"]), (first, second, runs[idle_name])

    params = load_params()  # the cluster's params.yaml (EVERTUNE_PARAMS of the fixture)
    unsharded = _unsharded(Path(home), settings, params)
    state = _table_state(home)
    assert state["published_rows"] == state["rows"] == sorted(unsharded)
    table = lancedb.connect(str(Path(home) / "lancedb")).open_table(table_name_for(params))
    vectors = {(r["chunk_id"], r["content_hash"]): r["vector"] for r in read_table_rows(
        table, ["chunk_id", "content_hash", "vector"])}
    assert max(float(np.max(np.abs(np.asarray(vectors[key]) - np.asarray(unsharded[key])))) for key in vectors) < 2e-6
    # The merge wrote its data in one commit: the first version after the empty table holds every row.
    table.checkout(2)
    assert sorted((r["chunk_id"], r["content_hash"]) for r in table.to_arrow().select(
        ["chunk_id", "content_hash"]).to_pylist()) == sorted(unsharded)

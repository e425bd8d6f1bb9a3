"""What a DAG run recorded: its state, note, task states and the ``return_value`` XCom of every task.

Read from Airflow's metadata database through Airflow's own session and models (``DagRun``,
``TaskInstance``, ``XComModel``), exactly as the api-server's own XCom routes do. Only the api-server
process calls this (the evertune run pages); task code never reads the metadata database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """One DAG run as the run page needs it.

    Attributes:
        dag_id: The DAG.
        run_id: The run.
        state: The run's state (``running``, ``success``, ``failed``, ...).
        note: The run note, if any.
        task_states: ``task_id -> state`` of the run's (unmapped) task instances; ``None`` when not set yet.
        results: ``task_id -> value`` of each task's ``return_value`` XCom (deserialized).
    """

    dag_id: str
    run_id: str
    state: str | None
    note: str | None = None
    task_states: dict[str, str | None] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


def load_run(dag_id: str, run_id: str) -> RunRecord | None:
    """Read one run, its task states and its tasks' return values from the metadata database.

    Returns:
        The run, or ``None`` when no run ``run_id`` of ``dag_id`` exists.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        states = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.map_index == -1
            )
        ).all()
        rows = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value", map_indexes=-1)
        ).all()
        results = {row.task_id: XComModel.deserialize_value(row) for row in rows}
        return RunRecord(
            dag_id=dag_id,
            run_id=run_id,
            state=str(run.state) if run.state is not None else None,
            note=run.note,
            task_states={task_id: (str(state) if state is not None else None) for task_id, state in states},
            results=results,
        )

"""Parse one DAG file in a fresh interpreter and report what parsing did (run as a script by the tests).

Prints one JSON object: dag ids, import errors, parse seconds (Airflow's own import excluded),
heavy modules that parsing pulled into ``sys.modules``, and per-DAG policy facts.
"""

from __future__ import annotations

import json
import sys
import time

HEAVY = ("torch", "transformers", "lancedb", "great_expectations", "mlflow", "sentence_transformers",
         "trl", "peft", "datasets", "dvc", "sklearn", "evaluate")


def main(path: str) -> None:
    import airflow  # noqa: F401  (imported first: its own import time is not the DAG's parse time)
    from airflow.dag_processing.dagbag import DagBag

    before = set(sys.modules)
    start = time.perf_counter()
    bag = DagBag(dag_folder=path, safe_mode=False)
    seconds = time.perf_counter() - start
    heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before if m.split(".")[0] in HEAVY})
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "fileloc": dag.fileloc,
            "tags": sorted(dag.tags or []),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "tasks": {
                t.task_id: {"retries": t.retries, "pool": t.pool, "queue": t.queue, "owner": t.owner,
                            "upstream": sorted(t.upstream_task_ids)}
                for t in dag.tasks
            },
        }
    print(json.dumps({"seconds": seconds, "heavy": heavy, "errors": {k: str(v) for k, v in bag.import_errors.items()},
                      "dags": dags}))


if __name__ == "__main__":
    main(sys.argv[1])

"""The drift-day evaluation of a finished demo, with the answer memo off and on (docs/benchmarks.md section 9c).

Runs against a finished ``make demo`` state (``EVERTUNE_HOME``, stack down) and **changes it**, so point it at a
disposable clean-clone demo and set ``EVERTUNE_BENCH_DISPOSABLE=1``:

1. the ``champion`` alias goes back to v1 (``evertune model rollback``), the champion the drift-day run compared with;
2. the memo and base-score runs written after that run's training started are deleted, so MLflow holds what it
   held when the drift-day evaluation began (tune A's items of its challenger, now the champion, and of the base
   model);
3. the drift-day run's ``evaluate`` step runs outside Airflow on its own XCom inputs (read from the stack's
   database), once with ``evaluate.answer_memo: false`` and once with it on. Each run gets its own
   ``evaluate.bootstrap_samples`` (1001, 1002) so that the base model's whole-set cache cannot answer either.

Prints both wall times, their ratio and the metrics of both runs (which must agree). ``python -m bench eval_memo``
(``--quick`` is accepted and changes nothing: the step is what it is).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import banner, load_average, machine_info, save_result

RUN_ID = "demo__drift_2026-11-05"


def _xcom(home: Path, task: str) -> dict[str, Any]:
    """The return value of ``task`` in the drift-day run, from the embedded stack's metadata database."""
    db = sqlite3.connect(f"file:{home / 'airflow' / 'airflow.db'}?mode=ro", uri=True)
    row = db.execute("select x.value from xcom x join dag_run r on r.id = x.dag_run_id where r.run_id = ? and "
                     "x.task_id = ? and x.key = 'return_value'", (RUN_ID, task)).fetchone()
    if row is None:
        raise SystemExit(f"no {task} result of run {RUN_ID} in {home}: is it a finished demo?")
    value = json.loads(row[0])
    return json.loads(value) if isinstance(value, str) else value


def _reset(params: Any, trained: dict[str, Any]) -> int:
    """Champion back to v1; forget the memo and base-score runs written since the drift-day run's training began."""
    from evertune.tuning.answer_memo import MODEL_TAG
    from evertune.tuning.base_score import KEY_TAG
    from evertune.tuning.promotion import rollback
    from evertune.tuning.registry import champion_version
    from evertune.tuning.tracking import configure_mlflow

    if champion_version(params.registry.model_name) != 1:
        rollback(params.registry.model_name)
    client, experiment_id = configure_mlflow(params)
    started = client.get_run(trained["run_id"]).info.start_time
    later = [run for tag in (MODEL_TAG, KEY_TAG)
             for run in client.search_runs([experiment_id], filter_string=f"tags.{tag} != ''")
             if run.info.start_time > started]
    for run in later:
        client.delete_run(run.info.run_id)
    return len(later)


def _evaluate(dataset: dict[str, Any], trained: dict[str, Any], memo: bool) -> dict[str, Any]:
    from evertune.tuning.evaluation import evaluate_candidate

    overrides = {"evaluate": {"answer_memo": memo, "bootstrap_samples": 1002 if memo else 1001}}
    load = load_average()
    started = time.perf_counter()
    result = evaluate_candidate(dataset, trained, overrides)
    fresh = result["freshness"]
    return {"memo": memo, "wall_s": round(time.perf_counter() - started, 1), "load_before": load,
            "load_after": load_average(), "challenger": result["challenger"], "champion": result["champion"],
            "base": result["base"], "fresh_challenger": (fresh["challenger"] or {}).get("fresh_share"),
            "fresh_champion": (fresh["champion"] or {}).get("fresh_share")}


def run(quick: bool = False) -> dict[str, Any]:
    """Reset the demo state, evaluate with the memo off then on, print and save both."""
    from evertune.config import load_params
    from evertune.runtime import apply_offline_env

    if os.environ.get("EVERTUNE_BENCH_DISPOSABLE") != "1" or "EVERTUNE_HOME" not in os.environ:
        raise SystemExit("eval_memo changes the demo state it reads: set EVERTUNE_HOME to a disposable demo's "
                         ".evertune and EVERTUNE_BENCH_DISPOSABLE=1")
    apply_offline_env()
    home = Path(os.environ["EVERTUNE_HOME"])
    params = load_params()
    dataset, trained = _xcom(home, "build_dataset"), _xcom(home, "train")
    banner(f"eval_memo: {RUN_ID}'s evaluate step, memo off vs on")
    deleted = _reset(params, trained)
    print(f"champion back to v1; {deleted} memo and base-score runs since the drift-day training deleted", flush=True)
    off = _evaluate(dataset, trained, memo=False)
    on = _evaluate(dataset, trained, memo=True)
    for result in (off, on):
        print(f"memo {'on ' if result['memo'] else 'off'}: {result['wall_s']:7.1f} s (load {result['load_before']:.1f}"
              f" -> {result['load_after']:.1f}); challenger token_f1 {result['challenger']['token_f1']:.4f}, "
              f"champion {result['champion']['token_f1']:.4f} (perplexity {result['champion']['perplexity']:.4f}), "
              f"base {result['base']['token_f1']:.4f}; fresh {result['fresh_challenger']} / "
              f"{result['fresh_champion']}", flush=True)
    same = all(off[k] == on[k] for k in ("challenger", "champion", "base", "fresh_challenger", "fresh_champion"))
    ratio = off["wall_s"] / on["wall_s"]
    print(f"ratio off / on: {ratio:.2f}x; metrics identical: {same}", flush=True)
    record = {"machine": machine_info(), "run_id": RUN_ID, "off": off, "on": on, "ratio": ratio,
              "metrics_identical": same}
    save_result("eval_memo", quick, record)
    return record

"""gate_candidate passes the evaluation's base model and freshness scores into decide() (real SQLite MLflow)."""

from __future__ import annotations

import json

import pytest

CHALLENGER = {"token_f1": 0.30, "exact_match": 0.1, "rougeL": 0.3, "perplexity": 20.0}
NO_DRIFT = {"report": {"severity": "none", "reasons": []}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One state folder and MLflow store for the module (creating the SQLite store is the slow part)."""
    from evertune.config import load_params
    from evertune.settings import LOCATION_ENV_VARS, get_settings
    from evertune.tuning.tracking import configure_mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EVERTUNE_HOME", str(tmp_path_factory.mktemp("gate-step")))
        for var in LOCATION_ENV_VARS:
            patch.delenv(var, raising=False)
        yield configure_mlflow(load_params(), get_settings())


@pytest.fixture
def run_id(store) -> str:
    client, experiment_id = store
    return client.create_run(experiment_id, run_name="tune as_of=test").info.run_id


def evaluation(**extra) -> dict:
    return {"challenger": CHALLENGER, "champion": None, "champion_version": None, "ci": {}, "n": 40, **extra}


@pytest.mark.parametrize(("extra", "action", "failing"), [
    ({"base": {**CHALLENGER, "token_f1": 0.28}, "ci_base": {"token_f1": [-0.01, 0.05]}}, "reject", ["base"]),
    ({"base": {**CHALLENGER, "token_f1": 0.20}}, "promote", []),
    ({}, "promote", []),  # an evaluation from before the base model was scored
    ({"champion": {**CHALLENGER, "token_f1": 0.25}, "base": {**CHALLENGER, "token_f1": 0.1},
      "freshness": {"challenger": {"n": 40, "fresh_share": 0.5}, "champion": {"n": 40, "fresh_share": 0.8}, "n": 40}},
     "reject", ["freshness"]),
], ids=["first-challenger-below-base", "first-challenger-beats-base", "no-base-key", "freshness-regresses"])
def test_gate_step_reads_base_and_freshness(run_id: str, extra: dict, action: str, failing: list) -> None:
    from evertune.settings import get_settings
    from evertune.tuning.evaluation import gate_candidate
    from evertune.tuning.tracking import mlflow_client

    result = gate_candidate(evaluation(**extra), NO_DRIFT, {"run_id": run_id})
    assert result["action"] == action, result["reasons"]
    assert [c["rule"] for c in result["checks"] if not c["passed"]] == failing
    tags = mlflow_client(get_settings()).get_run(run_id).data.tags
    assert tags["gate_decision"] == action
    assert any(r.startswith(("PASS base", "FAIL base")) for r in json.loads(tags["gate_reasons"]))


def test_freshness_is_measured_since_the_champions_as_of(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Probes since the champion's ``as_of``, answered by both models with the same retrieved contexts.

    ``evertune.tuning.freshness`` (owned by another part of the package) is stood in for by plain functions."""
    import sys
    from dataclasses import replace
    from types import SimpleNamespace

    from evertune.config import load_params
    from evertune.settings import get_settings
    from evertune.tuning.evaluation import _freshness

    asked, measured = [], []
    probes = [SimpleNamespace(probe_id=f"p{i}", question=f"What is fact {i} now?") for i in range(3)]

    def freshness_probes(root, as_of, since):
        asked.append((root, as_of, since))
        return probes if since != "2026-11-09" else []

    def measure_freshness(model_dir, given, contexts, params):
        measured.append((model_dir, [p.probe_id for p in given], contexts))
        flags = [True] * len(given) if model_dir == "challenger" else [True, False, False][: len(given)]
        return {"n": len(given), "fresh_share": sum(flags) / len(given), "per_item": [{"fresh": f} for f in flags]}

    monkeypatch.setitem(sys.modules, "evertune.tuning.freshness",
                        SimpleNamespace(freshness_probes=freshness_probes, measure_freshness=measure_freshness))
    settings = replace(get_settings(), data_repo=tmp_path)
    retrieve = lambda question: [{"chunk_id": question, "text": question}]  # noqa: E731 - a one-line retriever
    params = load_params()
    result = _freshness(params, settings, "2026-11-10", retrieve, "challenger", (3, "champion", "2026-11-05"))
    assert asked == [(tmp_path / "validated", "2026-11-10", "2026-11-05")]
    assert [m[0] for m in measured] == ["challenger", "champion"] and measured[0][2] == measured[1][2]
    assert measured[0][2][0] == [{"chunk_id": "What is fact 0 now?", "text": "What is fact 0 now?"}]
    assert (result["n"], result["challenger"]["fresh_share"], result["champion"]["fresh_share"]) == (3, 1.0, 1 / 3)
    # The paired per-probe CI of challenger - champion: differences (0, 1, 1), so within [0, 1] around 2/3.
    low, high = result["ci_diff"]
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0
    # No champion: nothing asked, nothing measured; no probe since: not measured.
    assert _freshness(params, settings, "2026-11-10", retrieve, "challenger", (None, None, None)) == {
        "challenger": None, "champion": None, "n": 0, "since": None, "ci_diff": None}
    assert _freshness(params, settings, "2026-11-10", retrieve, "c", (3, "champion", "2026-11-09"))["n"] == 0
    assert len(measured) == 2 and len(asked) == 2

"""dvc.yaml is generated from the step registry: the committed file equals the generator's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evertune import dvc_stages
from evertune.dvc_stages import DEFAULT_INTERVALS, build_dvc_yaml, code_deps, render_dvc_yaml
from evertune.pipeline import REFRESH, STEPS, TUNE, steps_of
from evertune.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_committed_dvc_yaml_equals_the_generated_one() -> None:
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == render_dvc_yaml(), "dvc.yaml is stale: run `evertune dvc-yaml --out dvc.yaml`"


def test_one_stage_per_step_with_code_params_and_a_receipt() -> None:
    stages = build_dvc_yaml(DEFAULT_INTERVALS, DEFAULT_INTERVALS[-1])["stages"]
    assert list(stages) == ["demo_data", *(step.task_id for step in STEPS)]
    for step in STEPS:
        stage = stages[step.task_id]
        body = stage["do"] if step.pipeline == REFRESH else stage
        assert f"python -m evertune {step.pipeline} {step.name} " in body["cmd"]
        assert f"include/{step.target.partition(':')[0].replace('.', '/')}.py" in body["deps"]
        assert "include/evertune/pipeline.py" in body["deps"]
        assert body.get("params", []) == list(step.params)
        (receipt,) = body["outs"]
        assert list(receipt.values()) == [{"cache": False}]
        assert list(receipt)[0].endswith(f"/{step.name}.json")
        for source in step.upstream:
            assert any(dep.endswith(f"/{source}.json") for dep in body["deps"]), (step.task_id, source)


def test_refresh_stages_run_per_interval_and_sync_folds_days_in_order() -> None:
    document = build_dvc_yaml(("2026-11-01", "2026-11-02", "2026-11-03"), "2026-11-02")
    stages = document["stages"]
    assert stages["ingest_documents"]["foreach"] == "${intervals}"
    assert ".evertune/landing/ds=${item}" in stages["ingest_documents"]["do"]["deps"]
    chain = next(v["plan_shards_after"] for v in document["vars"] if "plan_shards_after" in v)
    assert chain == {
        "2026-11-01": ".evertune/work/receipts/refresh/ds=2026-11-01/version.json",
        "2026-11-02": ".evertune/work/receipts/refresh/ds=2026-11-01/publish.json",
        "2026-11-03": ".evertune/work/receipts/refresh/ds=2026-11-02/publish.json",
    }
    # The tuning window ends at tune_as_of: later intervals are no dependency.
    dataset = stages["build_dataset"]["deps"]
    assert ".evertune/work/receipts/refresh/ds=2026-11-02/version.json" in dataset
    assert not any("ds=2026-11-03" in dep for dep in dataset)
    assert ".evertune/work/receipts/refresh/ds=2026-11-02/publish.json" in stages["train"]["deps"]


def test_receipt_paths_are_the_default_work_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EVERTUNE_HOME", "EVERTUNE_WORK_DIR"):
        monkeypatch.delenv(var, raising=False)
    work_dir = Settings.from_env().work_dir
    assert work_dir == (dvc_stages.REPO_ROOT / dvc_stages.WORK_DIR).resolve()
    step = steps_of(TUNE)[0]
    relative = step.receipt(work_dir, "2026-11-05").relative_to(dvc_stages.REPO_ROOT)
    stage = build_dvc_yaml(DEFAULT_INTERVALS, "2026-11-05")["stages"][step.task_id]
    assert list(stage["outs"][0]) == [str(relative).replace("2026-11-05", "${tune_as_of}")]


def test_committed_dvc_yaml_parses_as_dvc_stages() -> None:
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert set(document) == {"vars", "stages"}


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "include" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_code_deps_follow_the_entry_function_and_what_it_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _package(tmp_path, {
        "evertune/__init__.py": "",
        "evertune/steps.py": (
            "from evertune import base\n\n"
            "def _helper():\n    from evertune.heavy import x\n\n"
            "def step():\n    _helper()\n\n"
            "def other():\n    from evertune.unrelated import y\n"
        ),
        "evertune/base.py": "import json\n",
        "evertune/heavy.py": "def x():\n    from .deeper import z\n",
        "evertune/deeper.py": "",
        "evertune/unrelated.py": "",
        "evertune/prompts/__init__.py": "",
        "evertune/prompts/v1.jinja": "{{ question }}",
        "evertune/prompts/__pycache__/x.pyc": "",
        "evertune/uses_prompts.py": "from evertune.prompts import load\n",
    })
    monkeypatch.setattr(dvc_stages, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(dvc_stages, "INCLUDE", tmp_path / "include")
    assert code_deps("evertune.steps:step") == [
        "include/evertune/__init__.py", "include/evertune/base.py", "include/evertune/deeper.py",
        "include/evertune/heavy.py", "include/evertune/steps.py",
    ]
    # A package's data files count; a whole module is followed when no function is named.
    assert "include/evertune/prompts/v1.jinja" in code_deps("evertune.uses_prompts")
    assert "include/evertune/unrelated.py" in code_deps("evertune.steps")


def _substitute(value, names: dict[str, str]):
    if isinstance(value, dict):
        return {_substitute(k, names): _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if not isinstance(value, str):
        return value
    for name, text in names.items():
        value = value.replace(f"${{{name}}}", text)
    return value


def _expanded_stages() -> dict[str, dict]:
    """Stage name -> stage as DVC resolves the committed dvc.yaml (foreach items substituted)."""
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    variables = {k: v for entry in document["vars"] for k, v in entry.items()}
    resolved = {}
    for name, stage in document["stages"].items():
        if "foreach" not in stage:
            resolved[name] = _substitute(stage, {"tune_as_of": variables["tune_as_of"]})
            continue
        items = variables[stage["foreach"][2:-1]]
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        for key, item in pairs:
            resolved[f"{name}@{key}"] = _substitute(stage["do"], {"item": item, "key": key})
    return resolved


def test_committed_dvc_lock_matches_the_stages() -> None:
    """Every locked stage is a stage of dvc.yaml with the same command and receipt.

    Its deps may differ: code moves on after the lock was made, and the next ``dvc repro`` re-runs what changed.
    """
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    stages = _expanded_stages()
    assert lock, "dvc.lock has no stage"
    for name, locked in lock.items():
        assert name in stages, f"dvc.lock has {name}, which dvc.yaml no longer defines"
        assert locked["cmd"] == stages[name]["cmd"], name
        assert [out["path"] for out in locked["outs"]] == [next(iter(out)) for out in stages[name]["outs"]], name

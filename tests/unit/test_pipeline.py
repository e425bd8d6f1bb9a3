"""The step registry: well-formed, and every step's callable gets all it needs by name."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from evertune import pipeline
from evertune.pipeline import CONTEXT, REFRESH, STEPS, TUNE, Step, bind_arguments, call_step, step_inputs

REPO = Path(__file__).resolve().parents[2]


def test_names_are_unique_and_upstream_comes_first() -> None:
    assert len({s.task_id for s in STEPS}) == len(STEPS)
    for name in (REFRESH, TUNE):
        steps = pipeline.steps_of(name)
        assert len({s.name for s in steps}) == len(steps)
        assert len({s.result for s in steps}) == len(steps)
        for index, step in enumerate(steps):
            earlier = {s.name for s in steps[:index]}
            assert set(step.upstream) <= earlier, f"{step.task_id}: upstream must be earlier steps"


def test_declared_params_and_resources_exist() -> None:
    sections = yaml.safe_load((REPO / "params.yaml").read_text())
    for step in STEPS:
        assert set(step.params) <= set(sections), step.task_id
        for resource in step.resources:
            assert (REPO / resource).exists(), resource
        assert step.summary, step.task_id
        for name in step.window:
            assert step.pipeline == TUNE and pipeline.step_named(REFRESH, name), (step.task_id, name)


def _all_inputs(step: Step) -> dict[str, object]:
    upstream = [{"from": source.name} for source in pipeline.upstream_steps(step)]
    return step_inputs(step, dict.fromkeys(CONTEXT[step.pipeline], "ctx"), upstream)


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.task_id)
def test_every_required_parameter_is_provided(step: Step) -> None:
    function = step.load()
    kwargs = bind_arguments(function, _all_inputs(step))
    inspect.signature(function).bind(**kwargs)  # raises when a required parameter is left out


def test_arguments_are_bound_by_name_in_the_callables_order() -> None:
    publish = pipeline.step_for_task("publish_index")
    kwargs = bind_arguments(publish.load(), _all_inputs(publish))
    assert list(kwargs) == ["interval", "overrides", "synced", "evaluation", "version"]
    assert kwargs["synced"] == {"from": "sync"} and kwargs["version"] == {"from": "version"}
    register = pipeline.step_for_task("register")
    kwargs = bind_arguments(register.load(), _all_inputs(register))
    assert list(kwargs) == ["dataset", "trained", "evaluation", "decision", "drift", "overrides", "dag_id",
                            "dag_run_id"]
    promote = pipeline.step_for_task("promote")
    assert list(bind_arguments(promote.load(), _all_inputs(promote))) == ["outcome", "review", "overrides"]
    # version_snapshot takes no overrides; the validate summary feeds only the asset extra.
    version = pipeline.step_for_task("version_snapshot")
    assert list(bind_arguments(version.load(), _all_inputs(version))) == ["interval"]


def recorder(interval, overrides=None, synced=None, extra="default"):
    return {"interval": interval, "overrides": overrides, "synced": synced, "extra": extra}


def needs_more(interval, missing):
    return {}


FAKE_UP = Step(REFRESH, "sync", "fake_sync", f"{__name__}:recorder", "synced")
FAKE = Step(REFRESH, "evaluate", "fake_evaluate", f"{__name__}:recorder", "evaluation", ("sync",))


def test_call_step_passes_context_and_upstream_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "STEPS", (FAKE_UP, FAKE))
    result = call_step(FAKE, {"interval": "2026-11-03", "overrides": {"k": 1}}, [{"version": 4}])
    assert result == {"interval": "2026-11-03", "overrides": {"k": 1}, "synced": {"version": 4}, "extra": "default"}
    # An optional parameter that matches nothing keeps its default; context left out counts as absent.
    assert call_step(FAKE_UP, {"interval": "d"})["overrides"] is None


def test_call_step_rejects_wrong_upstream_and_unmet_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "STEPS", (FAKE_UP, FAKE))
    with pytest.raises(ValueError, match="takes 1 upstream"):
        call_step(FAKE, {"interval": "d"}, [])
    broken = Step(REFRESH, "sync", "fake_sync", f"{__name__}:needs_more", "synced")
    with pytest.raises(TypeError, match="needs 'missing'"):
        call_step(broken, {"interval": "d"})


def test_lookups_fail_loudly() -> None:
    with pytest.raises(KeyError):
        pipeline.step_for_task("no_such_task")
    with pytest.raises(KeyError):
        pipeline.step_named(TUNE, "ingest")
    with pytest.raises(KeyError):
        pipeline.steps_of("nightly")


def test_receipts_are_keyed_by_pipeline_and_run(tmp_path: Path) -> None:
    ingest = pipeline.step_named(REFRESH, "ingest")
    dataset = pipeline.step_named(TUNE, "dataset")
    assert ingest.receipt(tmp_path, "2026-11-03") == tmp_path / "receipts/refresh/ds=2026-11-03/ingest.json"
    assert dataset.receipt(tmp_path, "latest") == tmp_path / "receipts/tune/as_of=latest/dataset.json"

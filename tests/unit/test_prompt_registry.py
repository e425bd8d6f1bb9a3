"""The answer template in the MLflow prompt registry (a real local SQLite store): registration is idempotent on
content, a changed template is a new version and a new candidate, and serving follows the ``production`` alias."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from evertune.config import load_params
from module_home import module_home


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One MLflow SQLite store for the module (creating one costs seconds)."""
    with module_home(tmp_path_factory, "prompt-home") as (settings, _):
        yield settings


def edited(monkeypatch: pytest.MonkeyPatch, suffix: str) -> str:
    """Make the shipped template file read as its text plus ``suffix`` (an edit of rag-v1.jinja)."""
    from evertune.tuning import prompts

    original = prompts.load_template("rag-v1")
    monkeypatch.setattr(prompts, "load_template", lambda name: original + suffix)
    return original + suffix


def test_registration_is_idempotent_on_content_and_an_edit_is_a_new_version(store, monkeypatch) -> None:
    from evertune.tuning.prompt_registry import ensure_registered, prompt_name, prompt_template
    from evertune.tuning.prompts import load_template

    params = load_params()
    first = ensure_registered(params, store)
    assert ensure_registered(params, store) == first
    assert first.name == prompt_name(params) == f"{params.registry.model_name}-answer"
    assert first.uri == f"prompts:/{first.name}/{first.version}"
    assert prompt_template(first, store) == load_template("rag-v1")

    with monkeypatch.context() as patch:
        text = edited(patch, "\n{# an edit #}")
        second = ensure_registered(params, store)
        assert second.version == first.version + 1 and prompt_template(second, store) == text
        assert ensure_registered(params, store) == second
    assert ensure_registered(params, store) == first  # the original content again: its version is reused


def test_a_new_prompt_version_is_a_new_candidate(store, monkeypatch) -> None:
    from evertune.tuning.registry import candidate_key
    from evertune.tuning.steps import candidate_identity

    params = load_params()
    dataset = {"data_version": "sft/2026-11-05@abc", "kb_version": "kb_chunks__t@v3"}
    before = candidate_identity(params, dataset, None)
    assert candidate_identity(params, dataset, None) == before
    with monkeypatch.context() as patch:
        edited(patch, "\n{# v-next #}")
        after = candidate_identity(params, dataset, None)
    assert after != before
    assert candidate_key("d", "k", "p", "b", "prompts:/x/1") != candidate_key("d", "k", "p", "b", "prompts:/x/2")
    assert candidate_key("d", "k", "p", "b") != candidate_key("d", "k", "p", "b", "prompts:/x/1")


def test_the_pipeline_renders_the_registered_version(store) -> None:
    from evertune.tuning.answer import answer_spec
    from evertune.tuning.prompt_registry import ensure_registered, prompt_template, registered_spec

    params = load_params()
    ref = ensure_registered(params, store)
    spec = registered_spec(params, store)
    assert (spec.prompt_name, spec.prompt_version) == (ref.name, ref.version)
    assert spec.template_text == prompt_template(ref, store)
    assert answer_spec(params).prompt_version is None  # the bare file spec names no registered version


@dataclass
class Spec:
    """What the follower reads of an evertune answer spec."""

    prompt_name: str
    prompt_version: int | None
    template_text: str
    template_name: str = "rag-v1"


class FakeModel:
    """A loaded pyfunc model's surface: metadata, model_config and the unwrapped python model with its spec."""

    def __init__(self) -> None:
        self.metadata = SimpleNamespace(metadata={"prompt_template": "rag-v1", "prompt_uri": "prompts:/old/1"})
        self.model_config = {"retrieval": "kb"}
        self.python_model = SimpleNamespace(spec=Spec("old", 1, "old text"))

    def unwrap_python_model(self):
        return self.python_model


def test_serving_follows_the_production_alias_within_one_poll(store, monkeypatch) -> None:
    from evertune.serving.follower import RegistryFollower
    from evertune.tuning.prompt_registry import (
        ensure_registered,
        production_prompt,
        prompt_template,
        set_production,
    )

    params = load_params()
    first = ensure_registered(params, store)
    with monkeypatch.context() as patch:
        edited(patch, "\n{# served next #}")
        second = ensure_registered(params, store)
    loads: list[int] = []

    def loader(name, version, settings):
        loads.append(version)
        return FakeModel()

    follower = RegistryFollower(params, store, loader=loader, kb_resolver=lambda p, s: ("kb_chunks__t", 3))
    follower._champion = lambda: 4  # the model alias is not under test here; the prompt alias is the real registry
    assert production_prompt(store, params) is None
    set_production(first, store)
    assert follower.refresh()
    served = follower.current()
    assert served.prompt_version == first.uri and loads == [4]
    assert served.model.python_model.spec.template_text == prompt_template(first, store)

    set_production(second, store)
    assert production_prompt(store, params) == second
    assert follower.refresh() and loads == [4]  # a moved prompt alias alone loads no model
    assert follower.current().prompt_version == second.uri
    assert served.model.python_model.spec.prompt_version == second.version
    assert served.model.python_model.spec.template_text == prompt_template(second, store)
    assert not follower.refresh()  # nothing moved

"""The params.yaml loader: good files load, bad ones fail with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evertune.config import apply_overrides, load_params, parse_params
from evertune.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repository_params_load_and_match_file() -> None:
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params.train.learning_rate == raw["train"]["learning_rate"]
    assert params.validation.max_quarantine_fraction == raw["validate"]["max_quarantine_fraction"]
    assert params.registry.model_name == raw["register"]["model_name"]
    # Every key of the file survives the round trip: nothing is silently dropped.
    dumped = params.to_dict()
    for section, values in raw.items():
        for key in values:
            assert key in dumped[section], f"{section}.{key}"


def test_trl_and_peft_field_names_are_used() -> None:
    params = load_params(REPO / "params.yaml")
    assert {"max_length", "learning_rate"} <= set(params.train.model_dump())
    assert {"r", "lora_alpha", "lora_dropout", "target_modules"} <= set(params.lora.model_dump())


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"learning_rat": 0.1}}, "train.learning_rat: unknown key"),
        ({"trian": {}}, "trian: unknown key"),
        ({"train": {"max_steps": "many"}}, "train.max_steps"),
        ({"validate": {"max_quarantine_fraction": 1.5}}, "validate.max_quarantine_fraction"),
        ({"retrieval": {"min_recall_at_k": -0.1}}, "retrieval.min_recall_at_k"),
        ({"dataset": {"min_answer_support": 1.2}}, "dataset.min_answer_support"),
        ({"dataset": {"max_ungrounded_fraction": -0.01}}, "dataset.max_ungrounded_fraction"),
        ({"chunk": {"chunk_tokens": 64, "chunk_overlap": 64}}, "chunk_overlap must be smaller"),
        ({"drift": {"policy": "ignore"}}, "drift.policy"),
        ({"gate": {"tolerances": {"rougeL": -1}}}, "gate.tolerances"),
        ({"register": {"model_name": "bad name!"}}, "register.model_name"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, data))
    assert needle in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_params([1, 2])  # type: ignore[arg-type]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path).chunk.chunk_tokens > 0


def test_overrides_are_validated_and_none_is_ignored() -> None:
    params = load_params(REPO / "params.yaml")
    changed = apply_overrides(params, {"train.max_steps": 3, "lora.r": None})
    assert changed.train.max_steps == 3
    assert changed.lora.r == params.lora.r
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(params, {"train.nope": 1})
    with pytest.raises(ConfigError, match="train.max_steps"):
        apply_overrides(params, {"train.max_steps": "x"})


def test_section_hash_is_content_keyed() -> None:
    params = load_params(REPO / "params.yaml")
    same = apply_overrides(params, {})
    other = apply_overrides(params, {"train.max_steps": params.train.max_steps + 1})
    assert params.section_hash("train") == same.section_hash("train")
    assert params.section_hash("train") != other.section_hash("train")
    assert params.section_hash("chunk") == other.section_hash("chunk")

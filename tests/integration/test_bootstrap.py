"""The offline bootstrap end to end: GGUF -> HF checkpoint that chats, the tiny model, and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.models.bootstrap import (
    DEFAULT_BOOTSTRAP,
    REQUIRED_FILES,
    checkpoint_is_current,
    gguf_sha256,
    load_causal_lm,
    locate_gguf,
    resolve_base_model,
)
from evertune.models.folders import MARKER_NAME, read_marker
from evertune.models.hashing import sha256_file
from evertune.models.tiny import TINY_NAME, build_tiny_model, ensure_tiny_model, tiny_is_current

SENTENCE = "The weather was cold, so she put on a warm coat and gloves before walking to the train station."
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def base_lm(base_model_dir: Path):
    return load_causal_lm(base_model_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir: Path):
    return load_causal_lm(tiny_model_dir, device="cpu")


def _mean_token_loss(model, tokenizer, text: str) -> float:
    import torch

    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return float(model(**encoded, labels=encoded["input_ids"]).loss)


def _chat(model, tokenizer, question: str, **generate_kwargs) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, do_sample=False, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


# --------------------------------------------------------------------------- converted base model


@pytest.mark.slow
def test_converted_checkpoint_is_a_plain_marked_hf_checkpoint(base_model_dir: Path) -> None:
    gguf = locate_gguf(DEFAULT_BOOTSTRAP)
    marker = read_marker(base_model_dir)
    assert marker is not None and marker["source"]["sha256"] == gguf_sha256(gguf)
    assert checkpoint_is_current(base_model_dir, gguf_sha256(gguf))
    assert set(REQUIRED_FILES) <= {path.name for path in base_model_dir.iterdir()}
    assert (base_model_dir / "chat_template.jinja").is_file()
    config = json.loads((base_model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert marker["weights_sha256"] == sha256_file(base_model_dir / "model.safetensors")
    assert 100e6 < marker["parameters"] < 200e6
    # Nothing half-written next to it.
    assert not list(base_model_dir.parent.glob(f".{DEFAULT_BOOTSTRAP}.tmp-*"))


@pytest.mark.slow
def test_second_resolution_reuses_the_checkpoint(base_model_dir: Path, evertune_home: Path, monkeypatch) -> None:
    monkeypatch.setenv("EVERTUNE_MODELS_DIR", str(base_model_dir.parent))
    weights = base_model_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert resolve_base_model(load_params().base_model) == str(base_model_dir)
    assert time.perf_counter() - started < 5.0
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_converted_model_answers_a_chat_prompt(base_lm) -> None:
    model, tokenizer = base_lm
    answer = _chat(model, tokenizer, QUESTION, max_new_tokens=24)
    assert answer, "empty answer"
    letters = sum(ch.isascii() and ch.isalpha() for ch in answer)
    assert letters / len(answer) > 0.6, answer  # English text, not token soup
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_converted_model_predicts_english_far_better_than_random(base_lm, tiny_lm) -> None:
    base_loss = _mean_token_loss(*base_lm, SENTENCE)
    tiny_loss = _mean_token_loss(*tiny_lm, SENTENCE)
    # A random model sits near ln(49152) ~ 10.8 nats per token; a working LM is several nats lower.
    assert tiny_loss > 9.0, tiny_loss
    assert base_loss < 4.5, base_loss
    assert base_loss < tiny_loss - 5.0


@pytest.mark.slow
def test_cli_bootstrap_reports_and_second_run_is_fast(
    base_model_dir: Path, tiny_model_dir: Path, evertune_home: Path, monkeypatch, capsys
) -> None:
    from evertune.cli import main

    monkeypatch.setenv("EVERTUNE_MODELS_DIR", str(base_model_dir.parent))
    started = time.perf_counter()
    assert main(["bootstrap"]) == 0
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert str(base_model_dir) in out and str(tiny_model_dir) in out
    assert out.count("already current") == 2, out
    assert load_params().embed.sha256 in out and "verified" in out
    assert elapsed < 10.0


def test_cli_rejects_a_bad_base_model_with_exit_code_2(
    evertune_home: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from evertune.cli import main

    params = load_params().to_dict()
    params["base_model"].update(name_or_path=str(tmp_path / "nowhere"), sha256=None)
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))  # JSON is valid YAML
    assert main(["bootstrap", "--params", str(path), "--no-tiny"]) == 2
    assert "ConfigError" in capsys.readouterr().err


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_shares_the_base_tokenizer_and_generates(tiny_model_dir: Path, tiny_lm) -> None:
    model, tokenizer = tiny_lm
    assert 1e6 < model.num_parameters() < 10e6
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(
        **inputs, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=tokenizer.pad_token_id
    )
    new_tokens = output[0][inputs["input_ids"].shape[1] :]
    assert len(new_tokens) == 6
    assert isinstance(tokenizer.decode(new_tokens), str)


@pytest.mark.slow
def test_tiny_tokenizer_from_gguf_equals_converted_tokenizer_and_build_is_deterministic(
    base_model_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    started = time.perf_counter()
    same_seed = build_tiny_model(tmp_path / "a", tokenizer_source=locate_gguf(DEFAULT_BOOTSTRAP), seed=0)
    gguf_build_s = time.perf_counter() - started
    started = time.perf_counter()
    other_seed = build_tiny_model(tmp_path / "b", tokenizer_source=base_model_dir, seed=1)
    checkpoint_build_s = time.perf_counter() - started
    assert checkpoint_build_s < 20.0 and gguf_build_s < 40.0

    base_tok = AutoTokenizer.from_pretrained(str(base_model_dir))
    for folder in (same_seed, other_seed, tiny_model_dir):
        tok = AutoTokenizer.from_pretrained(str(folder))
        assert tok.get_vocab() == base_tok.get_vocab()
        assert tok.chat_template == base_tok.chat_template
        assert tok.all_special_tokens == base_tok.all_special_tokens
        text = base_tok.apply_chat_template([{"role": "user", "content": SENTENCE}], tokenize=False)
        assert tok(text)["input_ids"] == base_tok(text)["input_ids"]

    cached = load_file(str(tiny_model_dir / "model.safetensors"))
    again = load_file(str(same_seed / "model.safetensors"))
    different = load_file(str(other_seed / "model.safetensors"))
    assert cached.keys() == again.keys() == different.keys()
    assert all(torch.equal(cached[key], again[key]) for key in cached)
    assert not all(torch.equal(cached[key], different[key]) for key in cached)


@pytest.mark.slow  # builds twice from the GGUF tokenizer: 10-20 s on 2 busy cores
def test_ensure_tiny_model_reuses_rebuilds_and_cleans_up(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    first = ensure_tiny_model(models_dir)
    assert first == models_dir / TINY_NAME
    marker = read_marker(first)
    assert marker is not None and marker["provenance"]["tokenizer_from"] == "gguf"
    source_sha = gguf_sha256(locate_gguf(DEFAULT_BOOTSTRAP))
    assert tiny_is_current(first, seed=0, source_sha256=source_sha)
    assert not tiny_is_current(first, seed=1, source_sha256=source_sha)

    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_model(models_dir) == first
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt

    leftover = models_dir / f".{TINY_NAME}.tmp-crashed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_text("half")
    (first / MARKER_NAME).unlink()  # as if a crash had hit before the marker was written
    assert ensure_tiny_model(models_dir) == first
    assert tiny_is_current(first, seed=0, source_sha256=source_sha)
    assert not leftover.exists()

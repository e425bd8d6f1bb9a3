"""A tiny, randomly initialised Llama that shares the base model's tokenizer: fast stand-in for tests and CI.

It has the base model's vocabulary, special tokens and chat template, so every data path (chat formatting,
tokenisation, SFT, LoRA on the Llama projections, generation) runs exactly as with the real model, only with
about 3.3 M parameters instead of 135 M. Its answers are noise; it proves plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evertune.models.bootstrap import (
    DEFAULT_BOOTSTRAP,
    checkpoint_is_current,
    gguf_sha256,
    load_gguf_tokenizer,
    locate_gguf,
)
from evertune.models.folders import (
    MARKER_NAME,
    exclusive_lock,
    files_intact,
    read_marker,
    remove_leftovers,
    staged_folder,
    write_marker,
)
from evertune.models.hashing import sha256_file

TINY_NAME = "tiny-random-llama"
#: Bump when the architecture or the build recipe changes so cached tiny models are rebuilt.
TINY_RECIPE_VERSION = 1
#: Architecture of the tiny model; vocabulary and special-token ids come from the tokenizer.
TINY_ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def build_tiny_model(
    out_dir: Path, *, tokenizer_source: Path | str, seed: int = 0, provenance: dict[str, Any] | None = None
) -> Path:
    """Build a randomly initialised ``LlamaForCausalLM`` with the given tokenizer, as a normal HF checkpoint.

    The same ``seed`` and tokenizer always give the same weights. ``out_dir`` is written atomically (built in a
    hidden sibling, then renamed) and replaced if it exists.

    Args:
        out_dir: Destination folder.
        tokenizer_source: A checkpoint folder holding the tokenizer, or a ``.gguf`` file carrying one.
        seed: Seed of the weight initialisation.
        provenance: Extra facts to record in the marker (e.g. the sha256 of the GGUF the tokenizer came from).

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = Path(tokenizer_source)
    if source.suffix == ".gguf":
        tokenizer = load_gguf_tokenizer(source)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        # Load-time flags that transformers would otherwise persist into tokenizer_config.json.
        for key in ("is_local", "local_files_only"):
            tokenizer.init_kwargs.pop(key, None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    context = tokenizer.model_max_length if tokenizer.model_max_length <= 1_000_000 else 2048
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=context,  # RoPE: a long context costs no parameters
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        **TINY_ARCHITECTURE,
    )
    # fork_rng keeps the caller's global RNG state untouched while seeding the initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    with staged_folder(Path(out_dir)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_marker(
            staging,
            {
                "kind": "tiny-random",
                "recipe_version": TINY_RECIPE_VERSION,
                "seed": seed,
                "architecture": TINY_ARCHITECTURE,
                "parameters": sum(p.numel() for p in model.parameters()),
                "tokenizer_sha256": sha256_file(staging / "tokenizer.json"),
                "provenance": provenance or {"tokenizer_source": str(source)},
            },
        )
    return Path(out_dir)


def tiny_is_current(folder: Path, *, seed: int, source_sha256: str) -> bool:
    """Whether ``folder`` is a finished tiny model of this recipe and seed, built from this GGUF's tokenizer."""
    marker = read_marker(Path(folder))
    if marker is None:
        return False
    provenance = marker.get("provenance")
    return (
        marker.get("kind") == "tiny-random"
        and marker.get("recipe_version") == TINY_RECIPE_VERSION
        and marker.get("seed") == seed
        and isinstance(provenance, dict)
        and provenance.get("source_sha256") == source_sha256
        and files_intact(Path(folder), marker)
    )


def ensure_tiny_model(models_dir: Path | None = None, *, seed: int = 0, force: bool = False) -> Path:
    """Return the cached tiny model under ``models_dir``, building it once.

    The tokenizer comes from the converted base checkpoint when it is already there, otherwise straight from
    the GGUF (a few seconds, instead of a full conversion). Both are the same tokenizer.

    Args:
        models_dir: Where models live; defaults to ``settings.models_dir``.
        seed: Seed of the weight initialisation.
        force: Build again even if a current one exists.

    Returns:
        ``models_dir / TINY_NAME``.
    """
    return _ensure_tiny_model(models_dir, seed=seed, force=force)[0]


def _ensure_tiny_model(models_dir: Path | None, *, seed: int, force: bool) -> tuple[Path, bool]:
    if models_dir is None:
        from evertune.settings import get_settings

        models_dir = get_settings().models_dir
    models_dir = Path(models_dir)
    gguf = locate_gguf(DEFAULT_BOOTSTRAP)
    source_sha = gguf_sha256(gguf)
    target = models_dir / TINY_NAME
    if not force and tiny_is_current(target, seed=seed, source_sha256=source_sha):
        return target, False
    with exclusive_lock(target):
        if not force and tiny_is_current(target, seed=seed, source_sha256=source_sha):
            return target, False
        remove_leftovers(target)
        base = models_dir / DEFAULT_BOOTSTRAP
        tokenizer_source = base if checkpoint_is_current(base, source_sha) else gguf
        build_tiny_model(
            target,
            tokenizer_source=tokenizer_source,
            seed=seed,
            provenance={
                "source_sha256": source_sha,
                "tokenizer_from": "checkpoint" if tokenizer_source == base else "gguf",
            },
        )
    return target, True


__all__ = ["MARKER_NAME", "TINY_NAME", "build_tiny_model", "ensure_tiny_model", "tiny_is_current"]

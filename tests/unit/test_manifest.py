"""The release manifest on a real MLflow store (SQLite + local artifacts): its keys, written once (a re-run of
register keeps it), a tampered artifact fails verification, and rollback restores the model and prompt aliases to
the restored champion's manifest.

Versions are registered without model files (``create_model_version``): the manifest, tags and aliases are what is
under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.errors import ManifestMismatch
from module_home import module_home

NAME = "evertune-assistant"
KEYS = {"data_version", "data_git_rev", "kb", "golden", "base_model", "adapter_uri", "merged_model_uri", "prompt",
        "params_hash", "git_sha", "gate", "approved_by", "cost", "airflow", "model"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One MLflow SQLite store for the module (creating one costs seconds)."""
    from evertune.tuning.tracking import configure_mlflow, mlflow_client

    with module_home(tmp_path_factory, "manifest-home") as (settings, _):
        _, experiment_id = configure_mlflow(load_params(), settings)
        yield mlflow_client(settings), experiment_id


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"second")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"first")
    (folder / "config.json").write_text("{}")
    return folder


def candidate(store, checkpoint: Path, prompt, *, data_version: str = "sft/2026-11-05@abc",
              action: str = "promote") -> tuple[int, str, dict]:
    """A registered version of a new run, and its (not yet stored) manifest."""
    from evertune.tuning.manifest import build_manifest

    client, experiment_id = store
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    run = client.create_run(experiment_id)
    client.set_tag(run.info.run_id, "git_sha", "0123abcd")
    version = int(client.create_model_version(NAME, source=str(checkpoint), run_id=run.info.run_id).version)
    for key, value in {"prompt.name": prompt.name, "prompt.version": str(prompt.version)}.items():
        client.set_model_version_tag(NAME, str(version), key, value)
    trained = {"run_id": run.info.run_id, "kb_version": "kb_chunks__t@v7", "base_model_path": str(checkpoint),
               "params_hash": "p" * 64, "cost": {"device_seconds": 12.5, "tokens": 4096, "estimated_cost": 0.01}}
    manifest = build_manifest(
        params=load_params(), model={"name": NAME, "version": version},
        dataset={"data_version": data_version, "data_git_rev": "abc", "golden_qa": {"version": "golden@1"}},
        trained=trained, evaluation={"freshness": {"probes_version": "probes@2"}},
        gate={"passed": action == "promote", "action": action, "reasons": [f"{action}: test"]},
        prompt=prompt, merged_model_uri=f"models:/m-{version}", git_sha="0123abcd",
        dag_id="tune_model", dag_run_id=f"manual__{version}",
    )
    return version, run.info.run_id, manifest


def test_weights_sha256_covers_the_sorted_safetensors_and_is_cached(checkpoint: Path) -> None:
    import hashlib

    from evertune.tuning.manifest import WEIGHTS_CACHE, weights_sha256

    expected = hashlib.sha256(b"first" + b"second").hexdigest()
    assert weights_sha256(checkpoint) == expected
    cache = checkpoint / WEIGHTS_CACHE
    cached = json.loads(cache.read_text())
    cache.write_text(json.dumps({**cached, "sha256": "from-cache"}))
    assert weights_sha256(checkpoint) == "from-cache"  # same sizes and mtimes: not recomputed
    shard = checkpoint / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"FIRST")
    os.utime(shard, ns=(1, 1))
    assert weights_sha256(checkpoint) == hashlib.sha256(b"FIRST" + b"second").hexdigest()
    assert weights_sha256(checkpoint.parent / "no-such") is None


def test_the_manifest_is_written_once_with_every_key(store, checkpoint: Path) -> None:
    from evertune.tuning.manifest import SHA_TAG, read_manifest, sha256_of, write_manifest
    from evertune.tuning.prompt_registry import ensure_registered

    client, _ = store
    prompt = ensure_registered(load_params())
    version, run_id, manifest = candidate(store, checkpoint, prompt)
    assert set(manifest) == KEYS
    assert manifest["kb"] == {"table": "kb_chunks__t", "version": 7}
    assert manifest["golden"] == {"qa": "golden@1", "freshness_probes": "probes@2"}
    assert manifest["base_model"]["weights_sha256"] is not None and manifest["prompt"] == prompt.to_dict()
    assert manifest["approved_by"] is None and manifest["cost"]["tokens"] == 4096

    stored = write_manifest(client, manifest, run_id)
    assert stored.manifest == manifest and stored.verified
    assert client.get_model_version(NAME, str(version)).tags[SHA_TAG] == stored.sha256
    again = write_manifest(client, {**manifest, "gate": {"action": "reject"}}, run_id)  # a re-run of register
    assert again.sha256 == stored.sha256 and again.manifest == manifest
    read = read_manifest(client, NAME, version)
    assert read.manifest == manifest and sha256_of(Path(
        client.download_artifacts(run_id, "release/manifest.json")).read_bytes()) == stored.sha256


def test_a_tampered_manifest_fails_verification(store, checkpoint: Path, capsys) -> None:
    from evertune.cli import main
    from evertune.tuning.manifest import ARTIFACT_PATH, read_manifest, release_record, write_manifest
    from evertune.tuning.prompt_registry import ensure_registered

    client, _ = store
    version, run_id, manifest = candidate(store, checkpoint, ensure_registered(load_params()),
                                          data_version="sft/tampered")
    write_manifest(client, manifest, run_id)
    assert main(["model", "show", str(version)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verified"] and shown["manifest"]["data_version"] == "sft/tampered"

    artifact = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / ARTIFACT_PATH
    artifact.write_text(artifact.read_text().replace("sft/tampered", "sft/other"))
    with pytest.raises(ManifestMismatch, match="the artifact was changed"):
        read_manifest(client, NAME, version)
    record = release_record(client, NAME, version)
    assert not record["verified"] and "differs from the tag" in record["manifest_error"]
    assert main(["model", "show", str(version)]) == 1


def test_rollback_restores_the_model_and_prompt_aliases_to_the_manifest(store, checkpoint: Path, monkeypatch) -> None:
    from evertune.tuning import prompts
    from evertune.tuning.manifest import read_manifest, write_manifest
    from evertune.tuning.promotion import promote, rollback
    from evertune.tuning.prompt_registry import ensure_registered, production_prompt, ref_from_dict

    client, _ = store
    params = load_params()
    old_prompt = ensure_registered(params)
    original = prompts.load_template("rag-v1")
    with monkeypatch.context() as patch:
        patch.setattr(prompts, "load_template", lambda name: original + "\n{# rollback test #}")
        new_prompt = ensure_registered(params)
    assert new_prompt != old_prompt
    versions = []
    for prompt, data in ((old_prompt, "sft/day1"), (new_prompt, "sft/day2")):
        version, run_id, manifest = candidate(store, checkpoint, prompt, data_version=data)
        write_manifest(client, manifest, run_id)
        result = promote(NAME, version, manifest["gate"])
        assert result.changed and result.prompt == prompt.to_dict()
        assert production_prompt(params=params) == prompt
        versions.append(version)

    rolled = rollback(NAME)
    restored = read_manifest(client, NAME, rolled.to_version).manifest
    assert (rolled.from_version, rolled.to_version) == (versions[1], versions[0])
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == restored["model"]["version"]
    assert production_prompt(params=params) == ref_from_dict(restored["prompt"]) == old_prompt
    assert rolled.prompt == old_prompt.to_dict()
    tags = client.get_model_version(NAME, str(versions[0])).tags
    assert tags["approved_by"] == "gate"

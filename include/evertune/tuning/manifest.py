"""The release manifest: one immutable JSON document per registered candidate, naming everything it was built from.

Keys (:func:`build_manifest`): ``data_version``, ``data_git_rev``, ``kb {table, version}``, ``golden {kind:
version}``, ``base_model {name_or_path, revision, source_sha256, weights_sha256}``, ``adapter_uri``,
``merged_model_uri``, ``prompt {name, version, uri}``, ``params_hash``, ``git_sha``, ``gate {passed, action,
reasons}``, ``approved_by``, ``cost {...}``, ``airflow {dag_id, run_id}``, ``model {name, version}``.

* ``base_model.weights_sha256`` is the sha256 of the LOADED checkpoint's weights (:func:`weights_sha256`), not
  of the GGUF source the bootstrap converts from (that pin is ``source_sha256``, ``base_model.sha256``).
* Written once, at register time (:func:`write_manifest`): the JSON bytes (:func:`manifest_bytes`) are logged
  to the training run as ``release/manifest.json``, and their sha256 becomes the model-version tag
  ``manifest_sha256`` (with ``manifest_uri``). A version that already has a manifest keeps it: a re-run of
  ``register`` returns the stored document and writes nothing.
* ``approved_by`` is ``null`` in the document: who approved is known only at promote time, and the document is
  immutable, so the approver is the model-version tag ``approved_by`` (:func:`release_record` shows both).
* :func:`read_manifest` downloads the artifact and checks its sha256 against the tag
  (:class:`~evertune.errors.ManifestMismatch` on a tampered or replaced artifact).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ManifestMismatch

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.tuning.prompt_registry import PromptRef

log = logging.getLogger(__name__)

ARTIFACT_PATH = "release/manifest.json"
SHA_TAG = "manifest_sha256"
URI_TAG = "manifest_uri"
#: The per-checkpoint cache of :func:`weights_sha256`, next to the weights.
WEIGHTS_CACHE = ".evertune-weights-sha256.json"
#: Model-version tags that record the decision and the approval (shown by ``evertune model show``).
DECISION_TAGS = ("gate.passed", "gate.action", "gate.reasons", "approved_by", "review.answer", "review.by",
                 "review.at", "promoted_from", "promotion.refused", "rolled_back", "rolled_back_to", "deleted_docs")
_CHUNK = 1 << 20


def weights_sha256(checkpoint_dir: str | Path) -> str | None:
    """The sha256 over a checkpoint's weight files: the bytes of every ``*.safetensors``, in sorted name order.

    The digest is cached in ``<checkpoint>/.evertune-weights-sha256.json`` keyed on each file's name, size and
    mtime, so it is computed once per checkpoint, not on every run (a changed file invalidates it; a read-only
    folder just is not cached).

    Returns:
        The hex digest, or ``None`` when the folder holds no ``*.safetensors`` (e.g. a hub id, not a folder).
    """
    folder = Path(checkpoint_dir)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = folder / WEIGHTS_CACHE
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("files") == stamp:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    value = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"files": stamp, "sha256": value}), encoding="utf-8")
    except OSError:
        log.warning("could not cache the weights sha256 in %s", cache)
    return value


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a manifest (sorted keys, 2-space indent, trailing newline); its sha256 is the tag."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def sha256_of(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _kb(kb_version: str | None) -> dict[str, Any]:
    from evertune.tuning.contexts import parse_kb_version

    if not kb_version or "@v" not in str(kb_version):
        return {"table": None, "version": None}
    table, version = parse_kb_version(str(kb_version))
    return {"table": table, "version": version}


def _golden(dataset: Mapping[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    golden = {"qa": (dataset.get("golden_qa") or {}).get("version")}
    probes = (evaluation.get("freshness") or {}).get("probes_version")
    if probes:
        golden["freshness_probes"] = probes
    return golden


def build_manifest(
    *,
    params: Params,
    model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    trained: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    gate: Mapping[str, Any],
    prompt: PromptRef,
    merged_model_uri: str | None,
    git_sha: str | None,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """The manifest of one registered candidate (see the module docstring for the keys).

    Args:
        params: Pipeline params (base model spec, params hash).
        model: ``{"name", "version"}`` of the registered version.
        dataset: The ``build_dataset`` summary (``data_version``, ``data_git_rev``, ``golden_qa``).
        trained: The ``train`` result (``kb_version``, ``base_model_path``, ``params_hash``, ``run_id``, ``cost``).
        evaluation: The ``evaluate`` result (``freshness.probes_version``).
        gate: The gate decision as ``{"passed", "action", "reasons"}``
            (:func:`evertune.tuning.promotion.decision_fields`).
        prompt: The prompt version it was evaluated with.
        merged_model_uri: The logged merged model (the version's ``source``).
        git_sha: The code's commit (the training run's ``git_sha`` tag).
        dag_id: The Airflow DAG.
        dag_run_id: The Airflow run.
    """
    from evertune.config import training_params_hash

    run_id = trained.get("run_id")
    base = params.base_model
    return {
        "model": {"name": str(model["name"]), "version": int(model["version"])},
        "data_version": dataset.get("data_version"),
        "data_git_rev": dataset.get("data_git_rev"),
        "kb": _kb(trained.get("kb_version") or dataset.get("kb_version")),
        "golden": _golden(dataset, evaluation),
        "base_model": {
            "name_or_path": base.name_or_path,
            "revision": base.revision,
            "source_sha256": base.sha256,
            "weights_sha256": weights_sha256(trained["base_model_path"]) if trained.get("base_model_path") else None,
        },
        "adapter_uri": f"runs:/{run_id}/adapter" if run_id else None,
        "merged_model_uri": merged_model_uri,
        "prompt": prompt.to_dict(),
        "params_hash": trained.get("params_hash") or training_params_hash(params),
        "git_sha": git_sha,
        "gate": {"passed": bool(gate.get("passed")), "action": gate.get("action"),
                 "reasons": [str(r) for r in gate.get("reasons") or []]},
        "approved_by": None,
        "cost": dict(trained.get("cost") or {}),
        "airflow": {"dag_id": dag_id, "run_id": dag_run_id},
    }


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as stored: the document, the sha256 tag, the artifact's own sha256 and where it lies."""

    manifest: dict[str, Any]
    sha256: str
    artifact_sha256: str
    uri: str

    @property
    def verified(self) -> bool:
        """Whether the artifact's bytes hash to the tag."""
        return self.sha256 == self.artifact_sha256

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with ``verified``."""
        return {**asdict(self), "verified": self.verified}


def write_manifest(
    client: MlflowClient, manifest: Mapping[str, Any], run_id: str | None, experiment_id: str | None = None
) -> StoredManifest:
    """Store the manifest of ``manifest["model"]`` once; a version that has one keeps it (idempotent).

    The bytes go to the run ``run_id`` as ``release/manifest.json`` (a run of ``experiment_id`` is created when
    there is none); the version gets the tags ``manifest_sha256`` and ``manifest_uri``. When the run already holds
    the artifact (a ``register`` that died before tagging), that artifact is adopted, not rewritten.

    Returns:
        The :class:`StoredManifest` now recorded (the earlier one when it existed).
    """
    name, version = manifest["model"]["name"], str(manifest["model"]["version"])
    tags = client.get_model_version(name, version).tags
    if tags.get(SHA_TAG) and tags.get(URI_TAG):
        log.info("%s v%s already has its manifest %s: kept", name, version, tags[SHA_TAG][:12])
        return read_manifest(client, name, version, verify=False)
    if run_id is None:
        run_id = client.create_run(experiment_id or "0", run_name=f"release-{name}-v{version}").info.run_id
    uri = f"runs:/{run_id}/{ARTIFACT_PATH}"
    existing = _download(client, uri)
    data = existing if existing is not None else manifest_bytes(manifest)
    if existing is None:
        client.log_text(run_id, data.decode("utf-8"), ARTIFACT_PATH)
    digest = sha256_of(data)
    client.set_model_version_tag(name, version, URI_TAG, uri)
    client.set_model_version_tag(name, version, SHA_TAG, digest)
    return StoredManifest(json.loads(data), digest, digest, uri)


def _download(client: MlflowClient, uri: str) -> bytes | None:
    """The bytes of an artifact URI, ``None`` when there is no such artifact."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="evertune-manifest-") as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch,
                                                       tracking_uri=client.tracking_uri)
        except (MlflowException, OSError):
            return None
        file = Path(path)
        return file.read_bytes() if file.is_file() else None


def read_manifest(client: MlflowClient, name: str, version: int | str, *, verify: bool = True) -> StoredManifest:
    """The stored manifest of a model version, its sha256 checked against the tag.

    Raises:
        ManifestMismatch: The version has no manifest, its artifact is gone, or (with ``verify``) the artifact's
            sha256 differs from the ``manifest_sha256`` tag.
    """
    tags = client.get_model_version(name, str(version)).tags
    expected, uri = tags.get(SHA_TAG), tags.get(URI_TAG)
    if not expected or not uri:
        raise ManifestMismatch(f"{name} v{version} has no release manifest (registered before manifests existed)")
    data = _download(client, uri)
    if data is None:
        raise ManifestMismatch(f"{name} v{version}: the manifest artifact {uri} is missing")
    stored = StoredManifest(json.loads(data), expected, sha256_of(data), uri)
    if verify and not stored.verified:
        raise ManifestMismatch(f"{name} v{version}: manifest {uri} has sha256 {stored.artifact_sha256[:12]}..., "
                               f"the version's tag says {expected[:12]}...: the artifact was changed")
    return stored


def release_record(client: MlflowClient, name: str, version: int | str) -> dict[str, Any]:
    """What ``evertune model show`` prints: the manifest with its verification, decision/approval tags, aliases.

    A missing or tampered manifest is reported (``manifest_error``, ``verified: false``), never hidden.
    """
    version = int(version)
    model_version = client.get_model_version(name, str(version))
    aliases = sorted(a for a, v in client.get_registered_model(name).aliases.items() if int(v) == version)
    record: dict[str, Any] = {
        "model": {"name": name, "version": version, "aliases": aliases},
        "decision": {key: model_version.tags[key] for key in DECISION_TAGS if key in model_version.tags},
        "prompt": {key: model_version.tags.get(f"prompt.{key}") for key in ("name", "version", "uri")},
    }
    try:
        stored = read_manifest(client, name, version, verify=False)
    except ManifestMismatch as exc:
        return {**record, "verified": False, "manifest_error": str(exc)}
    if not stored.verified:
        record["manifest_error"] = (f"artifact sha256 {stored.artifact_sha256} differs from the tag {stored.sha256}: "
                                    "the artifact was changed")
    return {**record, **stored.to_dict()}


__all__ = [
    "ARTIFACT_PATH",
    "DECISION_TAGS",
    "SHA_TAG",
    "URI_TAG",
    "WEIGHTS_CACHE",
    "StoredManifest",
    "build_manifest",
    "manifest_bytes",
    "read_manifest",
    "release_record",
    "sha256_of",
    "weights_sha256",
    "write_manifest",
]

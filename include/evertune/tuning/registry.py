"""The MLflow model registry: candidates, aliases, and reading what is registered.

Aliases on ``register.model_name``:

* ``challenger``: the newest evaluated candidate (:func:`register_candidate`).
* ``champion``: what users are served (``models:/<name>@champion``); moved only by
  :func:`~evertune.tuning.promotion.promote` for a passing gate decision or a recorded manual approval, and by
  :func:`~evertune.tuning.promotion.rollback` (the champion history is described there).
* ``previous-champion``: the version ``rollback`` would restore (kept in step with the history).

A version is an ``mlflow.pyfunc`` RAG answerer (:mod:`evertune.tuning.pyfunc_model`) with lineage tags: the
candidate key, data and KB versions, params hash, base model, prompt version (``prompt.name``,
``prompt.version``; the model is linked to it in the prompt registry) and the Airflow run, plus the release
manifest (:mod:`evertune.tuning.manifest`, tag ``manifest_sha256``).

Registry writes (register, promote, rollback) must be serialized by the caller (one Airflow task with
``max_active_runs=1``): MLflow's SQLite store does not make read-modify-write sequences atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.config import training_params_hash
from evertune.errors import ConfigError, NothingToDo
from evertune.tuning.pyfunc_model import log_answer_model

# Versions registered before the pyfunc code moved to ``pyfunc_model`` hold a cloudpickled model class that calls
# ``evertune.tuning.registry._parse_model_input`` by reference: this name keeps them loadable.
from evertune.tuning.pyfunc_model import parse_model_input as _parse_model_input  # noqa: F401 -- kept for old pickles
from evertune.tuning.tracking import configure_mlflow, mlflow_client, use_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.settings import Settings
    from evertune.tuning.prompt_registry import PromptRef

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
HISTORY_TAG = "champion_history"
#: Longest tag value MLflow accepts for model versions.
TAG_LIMIT = 5000


@dataclass(frozen=True)
class CandidateVersion:
    """A registered candidate.

    Attributes:
        model_name: Registered model name.
        version: Its version number.
        candidate_key: sha256 of data version, KB version, params hash, base model and prompt version.
        created: False when an existing version with the same key was returned.
        model_uri: ``models:/<name>/<version>``.
        run_id: The MLflow run that produced it.
    """

    model_name: str
    version: int
    candidate_key: str
    created: bool
    model_uri: str
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom."""
        return asdict(self)


def candidate_key(
    data_version: str, kb_table_version: str | int, params_hash: str, base_model: str, prompt: str | None = None
) -> str:
    """The identity of a candidate: the same data, KB, params, base model and prompt version give the same key.

    Args:
        data_version: The training data version.
        kb_table_version: The KB version the model was trained and evaluated against.
        params_hash: :func:`evertune.config.training_params_hash`.
        base_model: The base model id/folder.
        prompt: The prompt version URI (``prompts:/<name>/<version>``); a new template is a new candidate.
            ``None`` gives the key of versions registered before prompts were registered.
    """
    parts = [str(data_version), str(kb_table_version), str(params_hash), str(base_model)]
    if prompt is not None:
        parts.append(str(prompt))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def find_candidate(model_name: str, key: str, *, settings: Settings | None = None) -> ModelVersion | None:
    """The registered version carrying ``candidate_key`` ``key`` (the lowest, if several), else ``None``."""
    client = mlflow_client(settings)
    found = client.search_model_versions(f"name = '{model_name}' and tags.candidate_key = '{key}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register_candidate(
    merged_dir: str | Path,
    params: Params,
    *,
    run_id: str | None,
    data_version: str,
    kb_table_version: str | int,
    base_model: str,
    params_hash: str | None = None,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
    extra_tags: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    prompt: PromptRef | None = None, key: str | None = None,
) -> CandidateVersion:
    """Register an evaluated candidate as a version of ``register.model_name`` and alias it ``challenger``.

    Idempotent: when a version with the same candidate key exists it is returned (``created=False``) and no
    model is logged or registered again; it still gets the ``challenger`` alias unless it is the champion.

    Args:
        merged_dir: The merged checkpoint to log.
        params: Pipeline params.
        run_id: The training run (the model is logged into it).
        data_version: Lineage: the training data version (DVC/git rev).
        kb_table_version: Lineage: the LanceDB table version the model was evaluated against.
        base_model: Lineage: the base model id/folder.
        params_hash: Lineage; default :func:`evertune.config.training_params_hash`.
        dag_id, dag_run_id: Lineage: the Airflow DAG and run.
        extra_tags: More version tags (e.g. headline metrics).
        settings: Deployment settings.
        prompt: The prompt version it was evaluated with (default ``ensure_registered``): part of the key,
            tagged ``prompt.name``/``prompt.version``/``prompt.uri``, linked to the model, frozen into its spec.
        key: ``train``'s ``candidate_key`` (it covers warm start and DPO pairs); default: computed from the lineage.

    Returns:
        The :class:`CandidateVersion`.
    """
    import mlflow

    from evertune.tuning.prompt_registry import ensure_registered

    configure_mlflow(params, settings)
    client = mlflow_client(settings)
    name = params.registry.model_name
    phash = params_hash or training_params_hash(params)
    prompt = prompt or ensure_registered(params, settings)
    key = key or candidate_key(data_version, kb_table_version, phash, base_model, prompt.uri)
    existing = find_candidate(name, key, settings=settings)
    if existing is not None:
        log.info("candidate %s is already version %s of %s", key[:12], existing.version, name)
        _set_challenger(client, name, int(existing.version))
        return CandidateVersion(
            name, int(existing.version), key, False, f"models:/{name}/{existing.version}", existing.run_id
        )

    info = log_answer_model(merged_dir, params, run_id=run_id, settings=settings, spec=prompt_spec(params, prompt, settings))
    tags = {
        "candidate_key": key,
        "data_version": str(data_version),
        "kb_table_version": str(kb_table_version),
        "params_hash": phash,
        "base_model": str(base_model),
        "base_model_revision": str(params.base_model.revision or ""),
        "prompt_template": params.evaluate.prompt_template,
        "prompt.name": prompt.name,
        "prompt.version": str(prompt.version),
        "prompt.uri": prompt.uri,
        "airflow.dag_id": dag_id or "",
        "airflow.run_id": dag_run_id or "",
        "training_run_id": run_id or "",
        **{str(k): str(v)[:TAG_LIMIT] for k, v in (extra_tags or {}).items()},
    }
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="evertune RAG assistant (merged LoRA fine-tunes)")
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    _set_challenger(client, name, int(version.version))
    return CandidateVersion(name, int(version.version), key, True, f"models:/{name}/{version.version}", run_id)


def prompt_spec(params: Params, prompt: PromptRef, settings: Settings | None = None) -> Any:
    """The answer spec of ``params`` rendering prompt version ``prompt``'s registered template."""
    from evertune.tuning.answer import answer_spec
    from evertune.tuning.prompt_registry import prompt_template, spec_with_prompt

    return spec_with_prompt(answer_spec(params), prompt, prompt_template(prompt, settings))


def _set_challenger(client: MlflowClient, name: str, version: int) -> None:
    champion = alias_version(client, name, CHAMPION)
    if champion != version:
        client.set_registered_model_alias(name, CHALLENGER, str(version))


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version ``alias`` points at, ``None`` when it is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_version(model_name: str, *, settings: Settings | None = None) -> int | None:
    """The champion's version number, ``None`` if there is none (or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(mlflow_client(settings), model_name, CHAMPION)
    except MlflowException:
        return None


def champion_with_tags(model_name: str, *, settings: Settings | None = None) -> tuple[int, dict[str, str]] | None:
    """The champion's version and its tags (``as_of``, ``data_version``, ``data_git_rev``...), ``None`` without one.

    The lineage a later step needs of the champion (the data it was trained on) lives in these tags.
    """
    version = champion_version(model_name, settings=settings)
    if version is None:
        return None
    return version, dict(mlflow_client(settings).get_model_version(model_name, str(version)).tags)


def model_status(model_name: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """Aliases, champion history and every version with its lineage and gate tags.

    Raises:
        NothingToDo: No model of that name is registered.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        raise NothingToDo(f"no registered model named {model_name!r}") from exc
    aliases = {alias: int(v) for alias, v in (registered.aliases or {}).items()}
    by_version: dict[int, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(v, []).append(alias)
    versions = []
    for mv in sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version)):
        versions.append(
            {
                "version": int(mv.version),
                "aliases": sorted(by_version.get(int(mv.version), [])),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "tags": dict(mv.tags),
            }
        )
    return {
        "model_name": model_name,
        "aliases": aliases,
        "champion_history": json.loads(registered.tags.get(HISTORY_TAG, "[]")),
        "versions": versions,
    }


def download_model_checkpoint(
    model_name: str, version_or_alias: int | str, dst: str | Path, *, settings: Settings | None = None
) -> Path:
    """Download a registered version's merged HF checkpoint (for evaluation against the champion).

    Args:
        model_name: Registered model.
        version_or_alias: ``3`` or ``"champion"``.
        dst: Destination folder.
        settings: Deployment settings.

    Returns:
        The checkpoint folder (loads with ``AutoModelForCausalLM.from_pretrained``).
    """
    import mlflow

    use_tracking_uri(settings)  # models:/ URIs resolve through the process-wide registry URI.
    ref = (
        f"@{version_or_alias}"
        if isinstance(version_or_alias, str) and not version_or_alias.isdigit()
        else f"/{version_or_alias}"
    )
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}{ref}", dst_path=str(dst)))
    candidates = [p.parent for p in local.rglob("config.json") if (p.parent / "tokenizer_config.json").is_file()]
    if not candidates:
        raise ConfigError(f"models:/{model_name}{ref} holds no merged checkpoint")
    return candidates[0]


def cached_model_checkpoint(
    model_name: str, version: int, *, settings: Settings | None = None
) -> Path:
    """A registered version's merged checkpoint, downloaded once into ``<work_dir>/tune/champions/v<N>``.

    Versions are immutable, so a folder that already holds a checkpoint is reused as it is (evaluation, the
    post-publish freshness check and benchmarks all load the champion from here).
    """
    from evertune.settings import get_settings

    folder = (settings or get_settings()).work_dir / "tune" / "champions" / f"v{version}"
    downloaded = sorted(folder.rglob("config.json")) if folder.is_dir() else []
    if downloaded:
        return downloaded[0].parent
    return download_model_checkpoint(model_name, version, folder, settings=settings)


def download_champion_adapter(model_name: str, dst: str | Path, *, settings: Settings | None = None) -> Path | None:
    """Download the champion's LoRA adapter (the ``adapter`` artifact of its training run) for a warm start.

    Returns:
        The adapter folder, or ``None`` when there is no champion or its run logged no adapter.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    version = alias_version(client, model_name, CHAMPION) if _model_exists(client, model_name) else None
    if version is None:
        return None
    mv = client.get_model_version(model_name, str(version))
    run_id = mv.tags.get("training_run_id") or mv.run_id
    if not run_id:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="adapter", dst_path=str(dst), tracking_uri=client.tracking_uri
        )
    except (MlflowException, OSError):
        return None
    return Path(path) if (Path(path) / "adapter_config.json").is_file() else None


def _model_exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "HISTORY_TAG",
    "PREVIOUS_CHAMPION",
    "TAG_LIMIT",
    "CandidateVersion",
    "alias_version",
    "candidate_key",
    "champion_version",
    "download_champion_adapter",
    "download_model_checkpoint",
    "find_candidate",
    "model_status",
    "register_candidate",
]

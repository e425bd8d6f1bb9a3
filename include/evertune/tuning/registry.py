"""MLflow tracking and model registry: candidates, the ``champion`` alias, promotion and rollback.

Aliases on ``register.model_name``:

* ``challenger``: the newest evaluated candidate (:func:`register_candidate`).
* ``champion``: what users are served (``models:/<name>@champion``); moved only by :func:`promote` for a
  passing gate decision or a recorded manual approval, and by :func:`rollback`.
* ``previous-champion``: the version :func:`rollback` would restore (kept in step with the history).

The champion history is a registered-model tag ``champion_history`` (JSON list of versions, oldest first).
``promote`` appends to it; ``rollback`` pops the current champion and restores the one before it, so two
rollbacks in a row walk two promotions back (v3 -> v2 -> v1); a rolled-back version is tagged
``rolled_back=true`` and comes back only through an explicit ``promote``. With nothing earlier to restore,
``rollback`` raises :class:`~evertune.errors.NothingToDo` and changes nothing.

Registered models are ``mlflow.pyfunc`` models whose artifacts are the MERGED checkpoint (base + LoRA;
logging a PEFT adapter against a local base loads random base weights) plus the frozen
:class:`~evertune.tuning.answer.AnswerSpec` (prompt template text, system prompt, budgets). ``predict``:

* input: a list of questions, a string, or a DataFrame with a ``question`` column and optionally a
  ``contexts`` column (per row a list of chunk dicts ``{title, text, doc_id}`` or strings);
* context: the row's ``contexts`` when given; otherwise, when retrieval is ``kb`` (the model's
  ``register.pyfunc_retrieval`` default, or the ``retrieval`` predict param), the published LanceDB index of
  the loading process's settings (``EVERTUNE_*``) is searched; with ``none`` the prompt has no context;
* output: one greedy answer string per question (``max_new_tokens`` predict param overrides the default).

Loading needs the ``evertune`` package importable (the model class and prompt code live there); the weights
and template travel with the model, so loading works offline.

Registry writes (register, promote, rollback) must be serialized by the caller (one Airflow task with
``max_active_runs=1``): MLflow's SQLite store does not make read-modify-write sequences atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError, NothingToDo, QualityGateFailed

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
HISTORY_TAG = "champion_history"
MODEL_ARTIFACT_NAME = "model"
#: Longest tag value MLflow accepts for model versions.
_TAG_LIMIT = 5000
_HISTORY_LIMIT = 200


# --------------------------------------------------------------------------- tracking setup


def configure_mlflow(params: Params | None = None, settings: Settings | None = None) -> tuple[MlflowClient, str]:
    """Point MLflow at the configured store and make sure the experiment exists.

    Tracking and registry URI come from ``settings.mlflow_tracking_uri``; a missing experiment
    (``register.experiment_name``) is created with its artifacts under ``settings.mlflow_artifact_root``.
    The process-wide MLflow tracking URI and active experiment are set too.

    Returns:
        ``(client, experiment_id)``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if params is None:
        from evertune.config import load_params

        params = load_params()
    if settings is None:
        from evertune.settings import get_settings

        settings = get_settings()
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = params.registry.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = settings.mlflow_artifact_root
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            location = Path(root).resolve().joinpath(name).as_uri()
        else:
            location = f"{root.rstrip('/')}/{name}"
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return client, experiment_id


def _client(settings: Settings | None) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    if settings is None:
        from evertune.settings import get_settings

        settings = get_settings()
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


# --------------------------------------------------------------------------- the pyfunc model


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model, passed explicitly (MLflow's inferred transformers defaults
    add torchvision, which this stack does not have)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in (
        "evertune",
        "mlflow",
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "jinja2",
        "pandas",
        "numpy",
        "pydantic",
        "pyyaml",
    ):
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


@lru_cache(maxsize=1)
def rag_model_class() -> type:
    """The ``mlflow.pyfunc.PythonModel`` subclass behind every registered version (built lazily: mlflow is a
    heavy import)."""
    import mlflow.pyfunc

    class RagAnswerModel(mlflow.pyfunc.PythonModel):
        """Answers questions with the merged checkpoint, the frozen prompt spec and (optionally) the KB."""

        def load_context(self, context):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from evertune.tuning.answer import AnswerSpec

            model_dir = context.artifacts["model"]
            spec = json.loads(Path(context.artifacts["answer_spec"]).read_text(encoding="utf-8"))
            self.spec = AnswerSpec.from_dict(spec)
            self.retrieval = (context.model_config or {}).get("retrieval", "none")
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.float32 if device == "cpu" else "auto"
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()

        def predict(self, context, model_input, params=None):
            from dataclasses import replace

            from evertune.tuning.answer import answer_questions, kb_retriever, no_retrieval

            questions, contexts = _parse_model_input(model_input)
            params = params or {}
            spec = self.spec
            if params.get("max_new_tokens"):
                spec = replace(spec, max_new_tokens=int(params["max_new_tokens"]))
            mode = params.get("retrieval") or self.retrieval
            if mode not in {"kb", "none"}:
                raise ValueError(f"retrieval must be 'kb' or 'none', got {mode!r}")
            if contexts is None:
                if mode == "kb":
                    from evertune.config import load_params

                    retrieve = kb_retriever(load_params())
                else:
                    retrieve = no_retrieval
                contexts = [list(retrieve(q)) for q in questions]
            return answer_questions(self.model, self.tokenizer, questions, None, spec, contexts=contexts)

    return RagAnswerModel


def _parse_model_input(model_input: Any) -> tuple[list[str], list[list[dict[str, Any]]] | None]:
    """Normalise pyfunc input into questions and optional per-question chunks."""
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, Mapping):
        model_input = pd.DataFrame(dict(model_input))
    if isinstance(model_input, pd.DataFrame):
        if "question" in model_input.columns:
            questions = [str(q) for q in model_input["question"].tolist()]
        elif model_input.shape[1] == 1:
            questions = [str(q) for q in model_input.iloc[:, 0].tolist()]
        else:
            raise ValueError("model input needs a 'question' column")
        contexts = None
        if "contexts" in model_input.columns:
            contexts = [_as_chunks(value) for value in model_input["contexts"].tolist()]
        return questions, contexts
    if isinstance(model_input, Sequence):
        return [str(q) for q in model_input], None
    raise ValueError(f"unsupported model input type {type(model_input).__name__}")


def _as_chunks(value: Any) -> list[dict[str, Any]]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [value]
    return [item if isinstance(item, Mapping) else {"title": "", "text": str(item)} for item in list(value)]


def log_answer_model(
    merged_dir: str | Path,
    params: Params,
    *,
    run_id: str | None = None,
    settings: Settings | None = None,
    retrieval: str | None = None,
) -> Any:
    """Log the merged checkpoint as an ``mlflow.pyfunc`` model (into ``run_id`` when given).

    Args:
        merged_dir: The merged HF checkpoint (``TrainResult.merged_dir``).
        params: Pipeline params (the answer spec and ``register.pyfunc_retrieval``).
        run_id: The training run to attach the model to.
        settings: Deployment settings.
        retrieval: ``kb`` or ``none``; default ``register.pyfunc_retrieval``.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is ``models:/m-...``).
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from evertune.tuning.answer import answer_spec

    configure_mlflow(params, settings)
    merged_dir = Path(merged_dir)
    if not (merged_dir / "config.json").is_file():
        raise ConfigError(f"{merged_dir} is not a model checkpoint (no config.json)")
    spec = answer_spec(params)
    mode = retrieval or params.registry.pyfunc_retrieval
    # No input schema on purpose: predict accepts a list, a string or a DataFrame (question [+ contexts]) and
    # validates that itself; the params schema is what lets callers pass generation settings at predict time.
    signature = ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [ParamSpec("max_new_tokens", "long", spec.max_new_tokens), ParamSpec("retrieval", "string", mode)]
        ),
    )
    with tempfile.TemporaryDirectory(prefix="evertune-spec-") as scratch:
        spec_path = Path(scratch) / "answer_spec.json"
        spec_path.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
        kwargs = {
            "name": MODEL_ARTIFACT_NAME,
            "python_model": rag_model_class()(),
            "artifacts": {"model": str(merged_dir), "answer_spec": str(spec_path)},
            "pip_requirements": pip_requirements(),
            "signature": signature,
            "model_config": {"retrieval": mode},
            "metadata": {"prompt_template": spec.template_name},
        }
        active = mlflow.active_run()
        if run_id is None or (active is not None and active.info.run_id == run_id):
            return mlflow.pyfunc.log_model(**kwargs)
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            return mlflow.pyfunc.log_model(**kwargs)


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class CandidateVersion:
    """A registered candidate.

    Attributes:
        model_name: Registered model name.
        version: Its version number.
        candidate_key: sha256 of data version, KB version, params hash and base model.
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


def candidate_key(data_version: str, kb_table_version: str | int, params_hash: str, base_model: str) -> str:
    """The identity of a candidate: the same data, KB, params and base model give the same key."""
    payload = json.dumps([str(data_version), str(kb_table_version), str(params_hash), str(base_model)])
    return hashlib.sha256(payload.encode()).hexdigest()


def find_candidate(model_name: str, key: str, *, settings: Settings | None = None) -> ModelVersion | None:
    """The registered version carrying ``candidate_key`` ``key`` (the lowest, if several), else ``None``."""
    client = _client(settings)
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
        params_hash: Lineage; default :func:`evertune.tuning.train.training_params_hash`.
        dag_id: Lineage: the Airflow DAG.
        dag_run_id: Lineage: the Airflow run.
        extra_tags: More version tags (e.g. headline metrics).
        settings: Deployment settings.

    Returns:
        The :class:`CandidateVersion`.
    """
    import mlflow

    from evertune.tuning.train import training_params_hash

    configure_mlflow(params, settings)
    client = _client(settings)
    name = params.registry.model_name
    phash = params_hash or training_params_hash(params)
    key = candidate_key(data_version, kb_table_version, phash, base_model)
    existing = find_candidate(name, key, settings=settings)
    if existing is not None:
        log.info("candidate %s is already version %s of %s", key[:12], existing.version, name)
        _set_challenger(client, name, int(existing.version))
        return CandidateVersion(
            name, int(existing.version), key, False, f"models:/{name}/{existing.version}", existing.run_id
        )

    info = log_answer_model(merged_dir, params, run_id=run_id, settings=settings)
    tags = {
        "candidate_key": key,
        "data_version": str(data_version),
        "kb_table_version": str(kb_table_version),
        "params_hash": phash,
        "base_model": str(base_model),
        "base_model_revision": str(params.base_model.revision or ""),
        "prompt_template": params.evaluate.prompt_template,
        "airflow.dag_id": dag_id or "",
        "airflow.run_id": dag_run_id or "",
        "training_run_id": run_id or "",
        **{str(k): str(v)[:_TAG_LIMIT] for k, v in (extra_tags or {}).items()},
    }
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="evertune RAG assistant (merged LoRA fine-tunes)")
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    _set_challenger(client, name, int(version.version))
    return CandidateVersion(name, int(version.version), key, True, f"models:/{name}/{version.version}", run_id)


def _set_challenger(client: MlflowClient, name: str, version: int) -> None:
    champion = _alias_version(client, name, CHAMPION)
    if champion != version:
        client.set_registered_model_alias(name, CHALLENGER, str(version))


def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


# --------------------------------------------------------------------------- promotion and rollback


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of :func:`promote`.

    Attributes:
        model_name: Registered model.
        version: The version considered.
        promoted: Whether it is the champion now.
        changed: Whether the champion alias moved in this call.
        previous_champion: The champion before the call (``None`` if there was none).
        action: The gate action recorded (``promote``, ``reject``, ``require_approval``, ``manual``).
        reasons: The gate reasons recorded.
    """

    model_name: str
    version: int
    promoted: bool
    changed: bool
    previous_champion: int | None
    action: str
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom."""
        return asdict(self)


@dataclass(frozen=True)
class RollbackResult:
    """Outcome of :func:`rollback`: the champion moved from ``from_version`` to ``to_version``."""

    model_name: str
    from_version: int
    to_version: int
    previous_champion: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom."""
        return asdict(self)


def _decision_fields(decision: Any) -> tuple[bool, str, list[str]]:
    if decision is None:
        return False, "manual", []
    if isinstance(decision, Mapping):
        passed, action, reasons = decision.get("passed"), decision.get("action"), decision.get("reasons", [])
    else:
        passed, action, reasons = decision.passed, decision.action, decision.reasons
    action = action or ("promote" if passed else "reject")
    return bool(passed), str(action), [str(r) for r in reasons or []]


def _history(client: MlflowClient, name: str) -> list[int]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _save_history(client: MlflowClient, name: str, history: list[int]) -> None:
    history = history[-_HISTORY_LIMIT:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if len(history) >= 2:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(history[-2]))
    elif _alias_version(client, name, PREVIOUS_CHAMPION) is not None:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)


def promote(
    model_name: str,
    version: int | str,
    decision: Any = None,
    *,
    approved_by: str | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> PromotionResult:
    """Record a gate decision on a version and move ``champion`` to it when allowed.

    The champion moves when the decision passed (``action == "promote"``), or when a human approves
    (``approved_by``) a version whose decision is ``require_approval``. Called with ``decision=None`` (the CLI's
    manual path) the version's recorded decision is used: ``reject`` or no decision at all needs ``force``.
    A failing decision is recorded and leaves the champion where it is.

    Args:
        model_name: Registered model.
        version: The candidate version.
        decision: A :class:`~evertune.tuning.gate.GateDecision` or a mapping with ``passed``, ``action`` and
            ``reasons``; ``None`` for a manual promotion.
        approved_by: Who approved a manual promotion (recorded as a tag).
        force: Promote even against a recorded ``reject`` (manual path only).
        settings: Deployment settings.

    Returns:
        The :class:`PromotionResult`.

    Raises:
        QualityGateFailed: A manual promotion of a rejected (or never evaluated) version without ``force``.
        ConfigError: The version does not exist.
    """
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    version = int(version)
    try:
        model_version = client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise ConfigError(f"{model_name} has no version {version}") from exc
    passed, action, reasons = _decision_fields(decision)
    if decision is not None:
        for key, value in {
            "gate.passed": str(passed).lower(),
            "gate.action": action,
            "gate.reasons": json.dumps(reasons)[:_TAG_LIMIT],
        }.items():
            client.set_model_version_tag(model_name, str(version), key, value)
        allowed = passed or (action == "require_approval" and approved_by is not None)
    else:
        if approved_by is None:
            raise ConfigError("a manual promotion needs approved_by")
        recorded = model_version.tags.get("gate.action")
        reasons = json.loads(model_version.tags.get("gate.reasons", "[]"))
        action = "manual"
        if recorded in {"promote", "require_approval"} or force:
            allowed = True
        else:
            why = "was rejected by the gate" if recorded == "reject" else "has no recorded gate decision"
            raise QualityGateFailed(f"{model_name} v{version} {why}; use force to promote anyway", reasons)
    current = _alias_version(client, model_name, CHAMPION)
    if not allowed:
        return PromotionResult(model_name, version, current == version, False, current, action, reasons)
    if current == version:
        return PromotionResult(model_name, version, True, False, current, action, reasons)

    history = _history(client, model_name)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # the alias was set outside this module: treat it as a promotion
    history.append(version)
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    _save_history(client, model_name, history)
    if _alias_version(client, model_name, CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    client.set_model_version_tag(model_name, str(version), "promoted_from", str(current or ""))
    client.set_model_version_tag(model_name, str(version), "approved_by", approved_by or "gate")
    if "rolled_back" in model_version.tags:  # re-promoted after a rollback
        client.delete_model_version_tag(model_name, str(version), "rolled_back")
    log.info("%s: champion v%s -> v%s (%s)", model_name, current, version, action)
    return PromotionResult(model_name, version, True, True, current, action, reasons)


def rollback(model_name: str, *, settings: Settings | None = None) -> RollbackResult:
    """Move ``champion`` back to the previous champion in one call.

    Semantics: the current champion is popped from ``champion_history`` and tagged ``rolled_back=true``; the
    version before it becomes champion and ``previous-champion`` moves one further back. Calling it again walks
    back another promotion. Versions that no longer exist are skipped.

    Returns:
        The :class:`RollbackResult`.

    Raises:
        NothingToDo: There is no champion, or no earlier champion to restore (nothing is changed).
    """
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    current = _alias_version(client, model_name, CHAMPION)
    if current is None:
        raise NothingToDo(f"{model_name} has no champion to roll back")
    history = _history(client, model_name)
    if not history or history[-1] != current:
        history.append(current)
    earlier = history[:-1]
    while earlier:
        try:
            client.get_model_version(model_name, str(earlier[-1]))
            break
        except MlflowException:
            earlier.pop()  # deleted version: skip it
    if not earlier:
        raise NothingToDo(f"{model_name}: champion v{current} has no earlier champion to roll back to")
    target = earlier[-1]
    client.set_registered_model_alias(model_name, CHAMPION, str(target))
    _save_history(client, model_name, earlier)
    client.set_model_version_tag(model_name, str(current), "rolled_back", "true")
    client.set_model_version_tag(model_name, str(current), "rolled_back_to", str(target))
    log.warning("%s: rolled back champion v%s -> v%s", model_name, current, target)
    return RollbackResult(model_name, current, target, earlier[-2] if len(earlier) >= 2 else None)


# --------------------------------------------------------------------------- reading the registry


def champion_version(model_name: str, *, settings: Settings | None = None) -> int | None:
    """The champion's version number, ``None`` if there is none (or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return _alias_version(_client(settings), model_name, CHAMPION)
    except MlflowException:
        return None


def model_status(model_name: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """Aliases, champion history and every version with its lineage and gate tags.

    Raises:
        NothingToDo: No model of that name is registered.
    """
    from mlflow.exceptions import MlflowException

    client = _client(settings)
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

    if settings is None:
        from evertune.settings import get_settings

        settings = get_settings()
    # models:/ URIs resolve through the process-wide registry URI.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
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


def download_champion_adapter(model_name: str, dst: str | Path, *, settings: Settings | None = None) -> Path | None:
    """Download the champion's LoRA adapter (the ``adapter`` artifact of its training run) for a warm start.

    Returns:
        The adapter folder, or ``None`` when there is no champion or its run logged no adapter.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    version = _alias_version(client, model_name, CHAMPION) if _model_exists(client, model_name) else None
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
    "PREVIOUS_CHAMPION",
    "CandidateVersion",
    "PromotionResult",
    "RollbackResult",
    "candidate_key",
    "champion_version",
    "configure_mlflow",
    "download_champion_adapter",
    "download_model_checkpoint",
    "find_candidate",
    "log_answer_model",
    "model_status",
    "pip_requirements",
    "promote",
    "rag_model_class",
    "register_candidate",
    "rollback",
]

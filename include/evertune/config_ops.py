"""The operations sections of ``params.yaml``: freshness check, answer service, approvals, deletion, cost and budget.

Validated like every section (:class:`evertune.config_section.Section`) and loaded only through
:func:`evertune.config.load_params`; :class:`evertune.config.Params` holds one attribute per section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from evertune.config_section import Section


class FreshnessParams(Section):
    """The freshness check after every KB publish (``check_freshness``; see docs/freshness.md)."""

    enabled: bool = True
    experiment_name: str = Field("evertune-freshness", min_length=1)
    ci_alpha: float = Field(0.05, gt=0.0, lt=0.5)
    # Probes scored per check at most (the first by probe_id); null: all of them.
    max_probes: int | None = Field(200, ge=1)


class ServeCacheParams(Section):
    """The answer cache (:mod:`evertune.serving.cache`, docs/serving.md "Answer cache")."""

    enabled: bool = True
    table: str = Field("answer_cache", min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # in the LanceDB folder
    # Cosine similarity at or above which a cached answer to another question (same versions) is served;
    # null: exact hits only.
    semantic_threshold: float | None = Field(None, gt=0.0, le=1.0)
    max_rows: int = Field(10_000, ge=1)  # the oldest rows beyond this are deleted at the next compaction
    compact_every: int = Field(100, ge=1)  # stores between compactions (single-row writes add fragments)


class ServeParams(Section):
    """The answer service (docs/serving.md): registry polling period, request limits and the answer cache."""

    refresh_seconds: float = Field(10.0, gt=0.0, le=3600.0)  # champion / production polled this often
    max_question_chars: int = Field(2000, ge=1)
    max_questions: int = Field(16, ge=1, le=1024)  # per /invocations request
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_correction_chars: int = Field(4000, ge=1)  # POST /feedback corrections
    cache: ServeCacheParams = Field(default_factory=ServeCacheParams)


class DpoParams(Section):
    """The optional DPO stage after SFT (docs/configuration.md, "DPO"): TRL ``DPOConfig`` names where they exist.

    Off by default. When on and the window's feedback gives at least ``min_pairs`` preference pairs, the SFT
    adapter is trained further with ``DPOTrainer`` against the adapter-disabled base model as the reference.
    """

    enabled: bool = False
    beta: float = Field(0.1, gt=0.0)
    max_length: int = Field(512, ge=16)  # prompt + completion tokens (DPOConfig has no max_prompt_length)
    loss_type: str | list[str] = "sigmoid"
    learning_rate: float = Field(5e-6, gt=0.0, le=1.0)
    max_steps: int = Field(20, ge=1)
    per_device_train_batch_size: int = Field(4, ge=1)
    min_pairs: int = Field(1, ge=1)  # fewer pairs: the stage is skipped (the SFT candidate is evaluated as is)


class ApprovalParams(Section):
    """A candidate the gate holds for a human (``require_approval``): how long ``tune_model`` waits, and the answer
    taken when nobody responds in time (docs/configuration.md, "Approval").

    The wait is bounded so a held run cannot stall ``tune_model`` (``max_active_runs=1``) for more than a week,
    the schedule's period. Read when the DAG is parsed: a run's ``overrides`` do not change them.
    """

    response_timeout_hours: float = Field(24.0, gt=0, le=168)
    timeout_answer: Literal["Reject", "Approve"] = "Reject"


class DeletionParams(Section):
    """What a registered model version trained on a now-deleted document does (docs/runbook.md, "Deletion").

    ``flag``: it is tagged and reported (``evertune model status``) and may still be promoted. ``block``: it may
    not become champion until a retrained version replaces it (promotion and rollback refuse it; a champion that
    becomes blocked keeps serving, reported as ``blocked``, until the next promotion or rollback moves it).
    """

    model_policy: Literal["flag", "block"] = "flag"


class CostParams(Section):
    """Cost accounting and the training budget (see docs/configuration.md, "Cost and budget").

    ``rates`` price a device-hour by kind (``cpu_hour``, ``gpu_hour``; placeholders, set your own);
    ``expected_tokens_per_second`` is the training throughput per device by kind (``cpu``, ``cuda``) used to
    project a run's time before it starts; ``max_train_tokens`` / ``max_train_seconds`` refuse a training run
    whose projection exceeds them (``null``: no limit).
    """

    currency: str = "USD"
    rates: dict[str, float] = Field(default_factory=lambda: {"cpu_hour": 0.05, "gpu_hour": 2.5})
    expected_tokens_per_second: dict[str, float] = Field(default_factory=lambda: {"cpu": 400.0, "cuda": 20000.0})
    max_train_tokens: int | None = Field(None, ge=1)
    max_train_seconds: float | None = Field(None, gt=0)

    @field_validator("rates")
    @classmethod
    def _rate_keys(cls, value: dict[str, float]) -> dict[str, float]:
        return _known_positive(value, {"cpu_hour", "gpu_hour"}, allow_zero=True)

    @field_validator("expected_tokens_per_second")
    @classmethod
    def _throughput_keys(cls, value: dict[str, float]) -> dict[str, float]:
        return _known_positive(value, {"cpu", "cuda"}, allow_zero=False)


def _known_positive(value: dict[str, float], known: set[str], *, allow_zero: bool) -> dict[str, float]:
    for key, number in value.items():
        if key not in known:
            raise ValueError(f"unknown key {key!r} (expected one of {sorted(known)})")
        if number < 0 or (number == 0 and not allow_zero):
            raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {number}")
    return value

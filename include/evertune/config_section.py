"""The base of every ``params.yaml`` section model (see :mod:`evertune.config`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A section of ``params.yaml``: frozen, and unknown keys are errors."""

    # Unknown keys are errors: a typo in params.yaml must never be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)

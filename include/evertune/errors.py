"""Domain exceptions. Airflow tasks map them to task states; the package never imports Airflow.

| exception              | meaning                                          | task state |
|------------------------|--------------------------------------------------|------------|
| ``ConfigError``        | bad ``params.yaml`` / override / environment     | fail       |
| ``BudgetExceeded``     | a training run's projection exceeds ``cost.*``   | fail       |
| ``NothingToDo``        | the work for this key is already done or empty   | skip       |
| ``CriticalValidationError`` | the drop as a whole is unusable             | fail, no retry |
| ``PoisonedDataError``  | too many training answers contradict their sources | fail, no retry |
| ``QualityGateFailed``  | a candidate did not pass its gate                | fail, no retry |
| ``PromotionConflict``  | the registry moved since the candidate was judged | fail, no retry |
| ``TransientError``     | a dependency was busy (lock, server)             | retry      |

The answer service maps ``BadRequest`` to HTTP 400 and ``NotReady`` to HTTP 409 (docs/serving.md).
"""

from __future__ import annotations


class EvertuneError(Exception):
    """Base class of every evertune error."""


class ConfigError(EvertuneError):
    """Parameters or deployment settings are invalid. The message names the key."""


class BudgetExceeded(ConfigError):
    """A training run was refused before it started: its projected tokens or time exceed the ``cost`` budget.

    ``projection`` holds the projected figures and the limits (what the message explains). A retry would be
    refused the same way: raise the budget or shrink the run (``train.max_steps``, the dataset window).
    """

    def __init__(self, message: str, projection: dict | None = None) -> None:
        super().__init__(message)
        self.projection = projection or {}


class BootstrapError(EvertuneError):
    """A model could not be prepared or failed its integrity check."""


class NothingToDo(EvertuneError):
    """The requested work is already done for this content key, or there is no input."""


class CriticalValidationError(EvertuneError):
    """The input as a whole is unusable (wrong schema, empty drop, too much quarantined)."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class PoisonedDataError(CriticalValidationError):
    """Too many training answers are not supported by the article they cite: the candidate is not trained.

    ``report`` holds the grounding summary of the dataset builder (counts, share, threshold, excluded rows).
    """


class QualityGateFailed(EvertuneError):
    """A candidate (index version or model) did not meet its quality gate."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class PromotionConflict(QualityGateFailed):
    """A promotion was refused because the registry changed since the candidate was evaluated.

    Promotion is compare-and-set: ``champion`` must still be the version the challenger was compared with, and
    ``challenger`` must still be this candidate (a newer registered candidate supersedes a waiting one). A retry
    would be refused the same way: tune again to judge the candidate against the current champion.
    """


class ManifestMismatch(EvertuneError):
    """A model version's release manifest is missing, or its artifact's sha256 differs from the version's
    ``manifest_sha256`` tag (the artifact was changed after registration)."""


class TransientError(EvertuneError):
    """A dependency was temporarily unavailable; retrying may succeed."""


class BadRequest(EvertuneError):
    """A client's request to the answer service is malformed or out of bounds; the message is the one-line reason."""


class NotReady(EvertuneError):
    """The answer service has nothing to answer with yet (no champion registered, no knowledge base published)."""

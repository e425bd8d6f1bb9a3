"""Defaults shared by every evertune DAG: owner, retries, pools, queues and tags."""

from __future__ import annotations

from datetime import timedelta

OWNER = "evertune"

#: One slot: DVC takes a repository-wide lock, so parallel backfill runs must take turns.
DVC_POOL = "dvc_repo"
#: One slot per LanceDB table family: writers to one table are serialized.
LANCEDB_WRITER_POOL = "lancedb_writer"
#: One slot per GPU. Training tasks run here (and on CPU when there is no GPU).
GPU_POOL = "gpu"
#: Celery queue consumed only by GPU workers. LocalExecutor ignores queues.
GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"

#: Pools the stack creates: name -> (slots, description).
POOLS: dict[str, tuple[int, str]] = {
    DVC_POOL: (1, "Serializes DVC access: one repository lock"),
    LANCEDB_WRITER_POOL: (1, "Serializes writers to the knowledge-base tables"),
    GPU_POOL: (1, "One slot per GPU on the gpu queue"),
}

DEFAULT_ARGS: dict = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}

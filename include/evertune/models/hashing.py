"""File digests of model artifacts: one sha256 reader, and a per-process cache keyed on (path, size, mtime)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path) -> str:
    """The sha256 of a file, computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so an edited or replaced file is hashed again.
    return sha256_file(Path(path))

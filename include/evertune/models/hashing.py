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


#: Files whose bytes identify a checkpoint folder (weights, config, generation config, tokenizer).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")


def checkpoint_digest(folder: Path) -> str:
    """The sha256 over a checkpoint folder's weight, config and tokenizer files (names relative to the folder).

    The same files in another folder give the same digest, so a checkpoint copied or downloaded elsewhere (a
    registered champion fetched from MLflow) is the same model; any changed byte in those files is another.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES):
        digest.update(f"{file.relative_to(folder).as_posix()}:{cached_sha256(file)}\n".encode())
    return digest.hexdigest()

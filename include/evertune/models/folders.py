"""Folders this package builds (converted and tiny checkpoints): markers, atomic replacement and build locks.

Every folder is built in a hidden temporary sibling and renamed into place (:func:`staged_folder`), with a
marker file (:data:`MARKER_NAME`) written last (:func:`write_marker`) that records where the weights came
from and the size of every file. A folder whose marker is missing, or whose files disagree with it
(:func:`files_intact`), is never used.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evertune.errors import TransientError

#: Written last into every folder this package builds; its absence means "not finished".
MARKER_NAME = "evertune-model.json"
#: Libraries whose versions are recorded in the marker (informational: a new version does not force a rebuild).
RECORDED_DISTRIBUTIONS = ("transformers", "tokenizers", "torch", "gguf", "safetensors")
#: How long a process waits for another one building the same folder.
LOCK_TIMEOUT_S = 30 * 60.0


def read_marker(folder: Path) -> dict[str, Any] | None:
    """Return the marker of a folder built by this package, or ``None`` if absent or unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_sizes(folder: Path) -> dict[str, int]:
    """Sizes of the regular files in ``folder`` (recursively, marker excluded), keyed by relative path."""
    folder = Path(folder)
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MARKER_NAME
    }


def files_intact(folder: Path, marker: dict[str, Any]) -> bool:
    """Whether every file the marker lists is present with its recorded size (cheap truncation check)."""
    recorded = marker.get("files")
    if not isinstance(recorded, dict) or not recorded:
        return False
    for relative, size in recorded.items():
        path = Path(folder) / relative
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def write_marker(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Record ``data`` plus the folder's file sizes and library versions as the folder's marker (call last)."""
    marker = {**data, "files": file_sizes(folder), "versions": library_versions()}
    (Path(folder) / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return marker


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a conversion, for the marker."""
    versions = {}
    for distribution in RECORDED_DISTRIBUTIONS:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "absent"
    return versions


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``final``; on success it replaces ``final``, on error it is removed.

    Readers only ever see a complete folder or none, never a half-written one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
        # mkdtemp makes 0700 and safetensors writes 0600; the checkpoint is shared with other users (workers).
        staging.chmod(0o755)
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        retired = None
        if final.exists():
            retired = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(retired)
        staging.rename(final)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_leftovers(final: Path) -> None:
    """Delete staging/retired siblings of ``final`` left by a crashed run (call while holding its lock)."""
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for leftover in final.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(final: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an advisory lock for building ``final``, so concurrent tasks convert once, not twice.

    Raises:
        TransientError: Another process held the lock for longer than ``timeout_s``.
    """
    import fcntl

    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.with_name(f".{final.name}.lock")
    with lock_path.open("a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TransientError(f"timed out after {timeout_s:.0f} s waiting for {lock_path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def folder_size(folder: Path) -> int:
    """Total bytes of the regular files under ``folder``."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())

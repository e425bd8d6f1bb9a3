"""Version validated data with DVC in a dedicated git+DVC data repository.

Scheduled runs must not commit into the product repository, so validated snapshots live in their own
repository (``EVERTUNE_DATA_REPO``, default ``$EVERTUNE_HOME/data-repo``) whose DVC remote is
``EVERTUNE_DVC_REMOTE``. Each versioned folder gets a ``.dvc`` file, a git commit, and a git tag
``<kind>/<key>`` (for example ``validated/2026-11-03``) that always points at the latest commit for that key.

The data version is the DVC md5 of the folder: a content key. Re-versioning identical content is a no-op
(same md5, no new commit). Restoring the data of any past date::

    dvc get <data-repo> validated/ds=2026-11-03 --rev validated/2026-11-03 -o restored/
    # or inside a clone of the data repo:
    git checkout validated/2026-11-03 && dvc pull validated/ds=2026-11-03

DVC takes a repository-wide lock; concurrent backfill runs take turns through a file lock here (and a
one-slot Airflow pool in the DAGs), and DVC itself is called with ``--wait-for-lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from evertune.errors import ConfigError, TransientError
from evertune.settings import Settings

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "evertune",
    "GIT_AUTHOR_EMAIL": "evertune@localhost",
    "GIT_COMMITTER_NAME": "evertune",
    "GIT_COMMITTER_EMAIL": "evertune@localhost",
}


@dataclass(frozen=True)
class DataVersion:
    """Where one versioned folder's content is recorded."""

    key: str  # e.g. "validated/2026-11-03"
    path: str  # folder relative to the data repo, e.g. "validated/ds=2026-11-03"
    md5: str  # DVC's content hash of the folder: the data version
    git_rev: str  # commit in the data repo
    tag: str  # git tag that points at git_rev
    nfiles: int
    size: int
    created: bool  # False when identical content was already versioned

    @property
    def data_version(self) -> str:
        """Short human-readable data version, e.g. ``validated/2026-11-03@3f2a9c1d0b7e``."""
        return f"{self.key}@{self.md5.removesuffix('.dir')[:12]}"

    def to_dict(self) -> dict:
        """Return a JSON-able dict (XCom, asset extras, MLflow tags)."""
        return {**asdict(self), "data_version": self.data_version}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **_GIT_IDENTITY, "DVC_NO_ANALYTICS": "1", **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = f"{' '.join(args[:4])} failed in {cwd} (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        if "lock" in proc.stderr.lower():
            raise TransientError(message)
        raise RuntimeError(message)
    return proc.stdout


def _dvc(*args: str, repo: Path, site_cache: Path) -> str:
    # The site cache (DVC's hash/link state DBs) defaults to /var/tmp; keep it with the repo's state instead.
    return _run(
        [sys.executable, "-m", "dvc", "--wait-for-lock", *args],
        cwd=repo,
        env={"DVC_SITE_CACHE_DIR": str(site_cache)},
    )


def _git(*args: str, repo: Path) -> str:
    return _run(["git", *args], cwd=repo)


@contextlib.contextmanager
def repo_lock(repo: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data repository for a read-modify-commit sequence."""
    repo.mkdir(parents=True, exist_ok=True)
    with (repo.parent / f".{repo.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DataRepo:
    """The git+DVC repository holding versioned validated data and datasets."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.data_repo
        self.remote = settings.dvc_remote
        self.site_cache = settings.home / "dvc-site-cache"

    def ensure(self) -> None:
        """Create the repository and configure its remote, once. Safe to call concurrently."""
        with repo_lock(self.root):
            self._ensure_unlocked()

    def _ensure_unlocked(self) -> None:
        if not (self.root / ".git").is_dir():
            _git("init", "-q", "-b", "main", repo=self.root)
        if not (self.root / ".dvc").is_dir():
            _dvc("init", "-q", repo=self.root, site_cache=self.site_cache)
            _dvc("config", "core.autostage", "false", repo=self.root, site_cache=self.site_cache)
        # Ask for the one value: `dvc remote list` wraps long paths onto a second line when not on a tty.
        current = subprocess.run(
            [sys.executable, "-m", "dvc", "config", "remote.storage.url"],
            cwd=self.root, capture_output=True, text=True, check=False,
            env={**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(self.site_cache)},
        ).stdout.strip()
        if current != self.remote:
            if "://" not in self.remote:
                Path(self.remote).mkdir(parents=True, exist_ok=True)
            _dvc("remote", "add", "-f", "-d", "storage", self.remote, repo=self.root, site_cache=self.site_cache)
        # Only DVC's own files: data folders are never committed to git directly.
        _git("add", ".dvc/config", ".dvcignore", repo=self.root)
        if _git("status", "--porcelain", "--", ".dvc", ".dvcignore", repo=self.root).strip():
            _git("commit", "-q", "-m", "Initialise data repository", "--", ".dvc", ".dvcignore", repo=self.root)

    def version_folder(self, folder: str, key: str, message: str) -> DataVersion:
        """Track a folder inside the repo with DVC, push it, commit and tag it.

        Args:
            folder: Path relative to the repo root, already written (e.g. ``validated/ds=2026-11-03``).
            key: The tag name without prefix semantics, e.g. ``validated/2026-11-03``.
            message: Commit message.

        Returns:
            The :class:`DataVersion`; ``created`` is False when the content was already versioned.

        Raises:
            ConfigError: The folder does not exist in the repo.
        """
        with repo_lock(self.root):
            self._ensure_unlocked()
            target = self.root / folder
            if not target.is_dir():
                raise ConfigError(f"cannot version {target}: not a folder inside the data repo")
            _dvc("add", folder, repo=self.root, site_cache=self.site_cache)
            _dvc("push", f"{folder}.dvc", repo=self.root, site_cache=self.site_cache)
            dvc_file = self.root / f"{folder}.dvc"
            gitignore = (self.root / folder).parent / ".gitignore"
            _git("add", str(dvc_file.relative_to(self.root)), str(gitignore.relative_to(self.root)), repo=self.root)
            created = bool(_git("diff", "--cached", "--name-only", repo=self.root).strip())
            if created:
                _git("commit", "-q", "-m", message, repo=self.root)
            rev = _git("rev-parse", "HEAD", repo=self.root).strip()
            tag_rev = self._tag_rev(key)
            if tag_rev is None or (created and tag_rev != rev) or not self._tag_matches(key, folder):
                _git("tag", "-f", key, rev, repo=self.root)
                tag_rev = rev
            out = yaml.safe_load(dvc_file.read_text())["outs"][0]
            return DataVersion(
                key=key,
                path=folder,
                md5=out["md5"],
                git_rev=tag_rev,
                tag=key,
                nfiles=int(out.get("nfiles", 0)),
                size=int(out.get("size", 0)),
                created=created,
            )

    def _tag_rev(self, key: str) -> str | None:
        proc = subprocess.run(
            ["git", "rev-parse", "-q", "--verify", f"refs/tags/{key}^{{commit}}"],
            cwd=self.root, capture_output=True, text=True, check=False,
        )
        return proc.stdout.strip() or None

    def _tag_matches(self, key: str, folder: str) -> bool:
        # The tag must point at a commit whose .dvc file equals the working one (content-keyed, not time-keyed).
        proc = subprocess.run(
            ["git", "show", f"{key}:{folder}.dvc"], cwd=self.root, capture_output=True, text=True, check=False
        )
        return proc.returncode == 0 and proc.stdout == (self.root / f"{folder}.dvc").read_text()

    def lookup(self, key: str, folder: str) -> DataVersion | None:
        """Return the recorded version for a key, or ``None`` if it was never versioned."""
        rev = self._tag_rev(key)
        if rev is None:
            return None
        text = _git("show", f"{rev}:{folder}.dvc", repo=self.root)
        out = yaml.safe_load(text)["outs"][0]
        return DataVersion(key, folder, out["md5"], rev, key, int(out.get("nfiles", 0)), int(out.get("size", 0)), False)

    def restore(self, key: str, folder: str, dest: Path) -> Path:
        """Materialise the exact content of a versioned folder into ``dest`` (from the DVC remote).

        Args:
            key: The tag, e.g. ``validated/2026-11-03``.
            folder: The folder path inside the repo at that tag.
            dest: Where to write the files (must not exist).

        Returns:
            ``dest``.
        """
        _dvc("get", str(self.root), folder, "--rev", key, "-o", str(dest), repo=self.root.parent, site_cache=self.site_cache)
        return dest

    def history(self, prefix: str = "") -> list[dict]:
        """List every tag (optionally under a prefix) with its commit, oldest key first."""
        out = _git("tag", "--list", f"{prefix}*", "--format=%(refname:short) %(objectname)", repo=self.root)
        rows = [dict(zip(("key", "git_rev"), line.split(), strict=True)) for line in out.splitlines() if line.strip()]
        return sorted(rows, key=lambda row: row["key"])


def validated_folder(interval: str) -> str:
    """Folder (relative to the data repo) of the validated snapshot of one data interval."""
    return f"validated/ds={interval}"


def validated_key(interval: str) -> str:
    """Tag of the validated snapshot of one data interval."""
    return f"validated/{interval}"


def write_json(path: Path, data: dict) -> None:
    """Write JSON deterministically (sorted keys, trailing newline)."""
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")

"""Which supernet the service uses: the original, or an adapted version of it.

Layout under ``STATE/supernet/``::

    supernet.pt               the original (trained offline); never overwritten here
    adapted/TIME-SHA12.pt     adapted versions, each a full checkpoint whose meta names its parent
    current.json              the version in use, once an adapted one was deployed

An adaptation writes a new version and leaves ``current.json`` alone; only when a model of
that version is deployed does the service move the pointer (:func:`set_current`), by an
atomic rename. A missing, unreadable or dangling pointer means the original: the service
can always fall back to what it was given. No torch here: the daemon reads and moves the
pointer.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifelong.errors import CheckpointError
from lifelong.persist.digest import file_sha256
from lifelong.persist.versioned import read_versioned_json, write_json_atomic

__all__ = [
    "POINTER_FORMAT",
    "SupernetVersion",
    "adapted_in_use",
    "adapted_path",
    "current_supernet",
    "find_version",
    "list_versions",
    "set_current",
    "sha_in_use",
]

POINTER_FORMAT = 1
_KIND = "lifelong-supernet-pointer"
ORIGINAL, ADAPTED, POINTER = "supernet.pt", "adapted", "current.json"


@dataclass(frozen=True)
class SupernetVersion:
    """One supernet version: its file, its content hash, what it was adapted from and why."""

    path: str
    sha256: str
    parent_sha256: str | None = None
    reason: str = ""
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def adapted_path(folder: str | os.PathLike[str], sha256: str, at: float | None = None) -> Path:
    """Where an adapted version with content hash ``sha256`` is written."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if at is None else at))
    return Path(folder) / ADAPTED / f"{stamp}-{sha256[:12]}.pt"


def _read_pointer(folder: Path) -> dict[str, Any] | None:
    return read_versioned_json(
        folder / POINTER,
        kind=_KIND,
        version=POINTER_FORMAT,
        what="supernet pointer",
        missing_ok=True,
        unreadable_hint=f"delete it to use {ORIGINAL}",
        redo_hint="Delete it.",
        error=CheckpointError,
    )


def current_supernet(folder: str | os.PathLike[str]) -> Path:
    """The checkpoint in use: the pointer's version if it names an existing file, else the original.

    Raises:
        CheckpointError: the pointer is corrupt (the message says to delete it).
    """
    folder = Path(folder)
    d = _read_pointer(folder)
    if d is not None:
        path = folder / str(d.get("path", ""))
        if path.is_file() and path.resolve().is_relative_to(folder.resolve()):
            return path
    return folder / ORIGINAL


def adapted_in_use(folder: str | os.PathLike[str]) -> SupernetVersion | None:
    """The adapted version the pointer names, or None when the original is in use."""
    folder = Path(folder)
    d = _read_pointer(folder)
    if d is None or current_supernet(folder) == folder / ORIGINAL:
        return None
    fields = {k: d.get(k) for k in ("path", "sha256", "parent_sha256", "reason", "at")}
    return SupernetVersion(**fields)


def set_current(
    folder: str | os.PathLike[str], checkpoint: str | os.PathLike[str], *, reason: str = ""
) -> SupernetVersion:
    """Make ``checkpoint`` (a file under ``folder``) the version in use; atomic.

    Raises:
        CheckpointError: the file is missing or lies outside ``folder``.
    """
    folder = Path(folder)
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"no supernet checkpoint at {path}")
    try:
        rel = path.resolve().relative_to(folder.resolve())
    except ValueError as exc:
        raise CheckpointError(f"{path} is not under {folder}; versions live in {folder / ADAPTED}") from exc
    version = SupernetVersion(str(rel), file_sha256(path), reason=reason, at=time.time())
    doc = {"kind": _KIND, "format_version": POINTER_FORMAT, **version.to_dict()}
    write_json_atomic(folder / POINTER, doc, indent=1, sort_keys=True)
    return version


def list_versions(folder: str | os.PathLike[str]) -> list[Path]:
    """The original (if present) and every adapted version, oldest first."""
    folder = Path(folder)
    found = [folder / ORIGINAL] if (folder / ORIGINAL).is_file() else []
    return found + sorted((folder / ADAPTED).glob("*.pt"))


def find_version(folder: str | os.PathLike[str], sha256: str) -> Path | None:
    """The version (original or adapted) whose content hash is ``sha256``, or None.

    Adapted versions carry the hash's first 12 digits in their name, so only a candidate or two
    is hashed; the original is hashed when no adapted version matches.
    """
    folder = Path(folder)
    adapted = [p for p in sorted((folder / ADAPTED).glob("*.pt")) if p.stem.endswith(sha256[:12])]
    original = [folder / ORIGINAL] if (folder / ORIGINAL).is_file() else []
    for path in adapted + original:
        if file_sha256(path) == sha256:
            return path
    return None


def sha_in_use(folder: str | os.PathLike[str]) -> str | None:
    """The content hash of the version in use (hashing the original when it is), or None without one."""
    version = adapted_in_use(folder)
    if version is not None:
        return version.sha256
    original = Path(folder) / ORIGINAL
    return file_sha256(original) if original.is_file() else None

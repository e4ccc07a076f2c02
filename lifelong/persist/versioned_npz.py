"""Versioned ``.npz`` files: arrays written atomically with a kind and a format version.

The replay buffer and the calibration images of an adapted supernet are numpy archives that
the service keeps for months. Both carry ``kind`` and ``format_version`` entries and fail the
same way when read back (:func:`read_versioned_npz`), naming the file, what was expected and
what to do. Nothing is unpickled: arrays only (``allow_pickle=False``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lifelong.errors import DataError, FormatVersionError

__all__ = ["read_versioned_npz", "write_npz_atomic"]


def write_npz_atomic(
    path: str | os.PathLike[str], *, kind: str, version: int, arrays: Mapping[str, np.ndarray]
) -> Path:
    """Write ``arrays`` with ``kind`` and ``format_version`` to ``path``: all of it or nothing.

    A temporary file beside ``path`` is synced and renamed over it; the folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, kind=np.array(kind), format_version=np.array(version), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_versioned_npz(
    path: str | os.PathLike[str],
    *,
    kind: str,
    version: int,
    what: str,
    redo_hint: str = "",
    needs: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """The arrays of ``path`` once its kind and format version are what this code reads.

    Raises:
        DataError: the file is missing, unreadable, of another kind, or lacks one of ``needs``.
        FormatVersionError: it has another format version.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise DataError(f"no {what} at {path}") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if str(arrays.get("kind", "")) != kind:
        raise DataError(f"{path} is not a lifelong {what} (expected kind {kind!r})")
    found = int(arrays["format_version"]) if "format_version" in arrays else None
    if found != version:
        raise FormatVersionError(f"{what} {path}", found, version, redo_hint)
    missing = [k for k in needs if k not in arrays]
    if missing:
        raise DataError(f"{what} {path} lacks {missing}")
    return arrays

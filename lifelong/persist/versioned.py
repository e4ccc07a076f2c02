"""Versioned JSON files: one way to write them atomically and to read them back with checks.

Fronts, predictor data, device profiles, adaptation requests and the supernet pointer are
JSON objects that carry a ``kind`` and a ``format_version``. Each used to hold its own copy
of the same code; here it is once, so every such file fails the same way, naming the file,
what was expected and what to do:

- missing: ``no front at PATH: run a search first``
- unreadable (I/O error, not UTF-8, not JSON): ``PATH is not a readable front (...)``
- another kind of file, or JSON that is no object: ``PATH is not a lifelong front (expected
  kind 'lifelong-front', found ...)``
- another format version: :class:`~lifelong.errors.FormatVersionError` with the redo hint.

The error class is the caller's (``DataError``, ``CheckpointError``, a service error ...),
so callers keep raising what they raised. A write goes to a temporary file in the same
folder, renamed over the old one: a reader, or a kill mid-write, sees the old file or the
new one, never half of one. No torch and no numpy here: the serving process uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal, overload

from lifelong.errors import DataError, FormatVersionError, LifelongError

__all__ = ["read_versioned_json", "write_json_atomic"]


@overload
def read_versioned_json(
    path: str | os.PathLike[str],
    *,
    kind: str,
    version: int,
    what: str,
    article: str = ...,
    missing_hint: str | None = ...,
    missing_ok: Literal[False] = ...,
    unreadable_hint: str = ...,
    redo_hint: str = ...,
    error: type[LifelongError] = ...,
) -> dict[str, Any]: ...


@overload
def read_versioned_json(
    path: str | os.PathLike[str],
    *,
    kind: str,
    version: int,
    what: str,
    article: str = ...,
    missing_hint: str | None = ...,
    missing_ok: Literal[True],
    unreadable_hint: str = ...,
    redo_hint: str = ...,
    error: type[LifelongError] = ...,
) -> dict[str, Any] | None: ...


def read_versioned_json(
    path: str | os.PathLike[str],
    *,
    kind: str,
    version: int,
    what: str,
    article: str = "a",
    missing_hint: str | None = None,
    missing_ok: bool = False,
    unreadable_hint: str = "",
    redo_hint: str = "",
    error: type[LifelongError] = DataError,
) -> dict[str, Any] | None:
    """The JSON object at ``path``, once its ``kind`` and ``format_version`` are what this code reads.

    Only the envelope is checked; the caller validates the fields it needs.

    Args:
        path: The file.
        kind: The ``kind`` the object must carry.
        version: The ``format_version`` this code reads.
        what: The file's name in messages (``"front"``, ``"device profile"``).
        article: Put before ``what`` in "is not a readable ..." ("" for a mass noun such as
            "predictor data").
        missing_hint: What to do when the file does not exist (``"run a search first"``);
            None reports a missing file as an unreadable one.
        missing_ok: Return None when the file does not exist (for an optional file).
        unreadable_hint: Appended after "; " when the file cannot be read or parsed.
        redo_hint: What to do about another format version (a sentence).
        error: Raised for a missing, unreadable or foreign file.

    Raises:
        LifelongError: of class ``error``: the file is missing, unreadable, or no object of ``kind``.
        FormatVersionError: it has another format version (``what PATH has format version ...``).
    """
    path = Path(path)
    a = f"{article} " if article else ""
    try:
        d = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        if missing_hint is not None:
            raise error(f"no {what} at {path}: {missing_hint}") from exc
        raise error(_unreadable(path, f"{a}readable {what}", exc, unreadable_hint)) from exc
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise error(_unreadable(path, f"{a}readable {what}", exc, unreadable_hint)) from exc
    if not isinstance(d, dict) or d.get("kind") != kind:
        raise error(f"{path} is not {a}lifelong {what} (expected kind {kind!r}, found {_kind_of(d)})")
    if d.get("format_version") != version:
        raise FormatVersionError(f"{what} {path}", d.get("format_version"), version, redo_hint)
    return d


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _kind_of(d: Any) -> str:
    if not isinstance(d, dict):
        return f"a JSON {_JSON_TYPES.get(type(d), type(d).__name__)}"
    return f"kind {d['kind']!r}" if "kind" in d else "no kind"


def _unreadable(path: Path, what: str, exc: BaseException, hint: str) -> str:
    return f"{path} is not {what} ({type(exc).__name__}: {exc})" + (f"; {hint}" if hint else "")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, durable: bool = True, **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` so that it is either all there or
    not (:func:`write_bytes_atomic`); ``obj`` is serialised before anything is written, so an
    object that JSON cannot hold fails with ``path`` untouched. ``dumps_kwargs`` go to
    :func:`json.dumps` (``indent``, ``sort_keys``, ``default``). Returns ``path``."""
    return write_bytes_atomic(path, json.dumps(obj, **dumps_kwargs).encode("utf-8"), durable=durable)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` so that it is either all there or not.

    The bytes go to a temporary file beside ``path`` (``.NAME.tmp-PID-RANDOM``, unique per
    call so that two threads do not share one), which is renamed over ``path``; on any error
    the temporary file is removed and the old ``path`` is left as it was. The folder is
    created if needed.

    Args:
        path: The file to write.
        data: Its new content.
        durable: Also ``fsync`` the file before the rename and the folder after it, so the
            new content survives a power cut, not only a killed process.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        # The rename survives a power cut once the folder is synced. Some file systems refuse
        # to fsync a folder; the file's own fsync is then the best there is.
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return path

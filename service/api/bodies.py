"""Request bodies as the API reads them: the format from the Content-Type or the magic bytes,
and ``.npy``, ``.npz`` and JSON decoded with every failure a :class:`~service.errors.RequestError`
(a 400 that says what was wrong and what is expected). ``.npy`` bodies of the plain header
``numpy.save`` writes are read without ``np.load``'s header parser: it was most of the API's
own work per request.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.errors import RequestError

__all__ = ["JSON", "NPY", "NPZ", "array_field", "body_kind", "read_json", "read_npy", "read_npz"]

NPY, NPZ, JSON = "application/x-npy", "application/x-npz", "application/json"


def body_kind(environ: Mapping[str, Any], body: bytes) -> str:
    """The body's format: its Content-Type, or its magic bytes when the type says nothing (curl's default)."""
    ctype = str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if ctype in ("", "application/octet-stream", "application/x-www-form-urlencoded"):
        if body[:6] == b"\x93NUMPY":
            return NPY
        if body[:4] == b"PK\x03\x04":
            return NPZ
        if body[:64].lstrip()[:1] == b"{":
            return JSON
    return ctype or "none"


def read_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc}); expected a JSON object") from None
    except RecursionError:  # the parser's own guard against deep nesting: fails fast
        raise RequestError("JSON nested too deeply; expected an object of arrays a few levels deep") from None
    except ValueError as exc:  # an integer of over 4,300 digits, say
        raise RequestError(f"body is JSON this service does not read ({exc}); expected a JSON object") from None


def array_field(value: Any, what: str) -> np.ndarray:
    if value is None:
        raise RequestError(f"{what!r} is missing")
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise RequestError(f"{what!r} is not a rectangular array of numbers: {exc}") from None


_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=][uif][1248])', 'fortran_order': False, 'shape': \(((?:\d+, ?)*\d*)\), \} *\n"
)
"""The header ``numpy.save`` writes for a C-ordered array of plain numbers (format 1.0)."""


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[np.dtype | None, tuple[int, ...]]:
    """The dtype and shape of a plain ``.npy`` header, or ``(None, ())`` for any other. Cached:
    an application sends the same few headers (one per batch size) request after request."""
    m = _NPY_HEADER.fullmatch(header)
    if m is None:
        return None, ()
    try:
        dtype = np.dtype(m.group(1).decode())
    except TypeError:  # '|f1' and the like: np.load says what is wrong
        return None, ()
    return dtype, tuple(int(v) for v in m.group(2).split(b",") if v.strip())


def _npy_fast(body: bytes) -> np.ndarray | None:
    """The array of a ``.npy`` body whose header is the plain one ``numpy.save`` writes, read
    without ``np.load``'s header parser (about 0.1 ms a request); None for anything else."""
    if body[6:8] != b"\x01\x00" or len(body) < 10:
        return None
    end = 10 + int.from_bytes(body[8:10], "little")
    dtype, shape = _npy_header(body[10:end])
    if dtype is None:
        return None
    count = math.prod(shape)
    if len(body) - end != count * dtype.itemsize:
        return None  # np.load says what is wrong
    # a copy, as np.load makes: a view would keep the request body alive as long as the array
    return np.frombuffer(body, dtype, count, offset=end).reshape(shape).copy()


def read_npy(body: bytes) -> np.ndarray:
    if body[:6] != b"\x93NUMPY":
        raise RequestError("body is not a .npy file (no \\x93NUMPY magic); write it with numpy.save")
    fast = _npy_fast(body)
    if fast is not None:
        return fast
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt header raises ValueError, SyntaxError, TokenError, TypeError...
        raise RequestError(f"body is not a readable .npy array: {exc}") from None


def read_npz(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    if body[:4] != b"PK\x03\x04":
        raise RequestError("body is not a .npz archive (no zip header); write it with numpy.savez(x=..., y=...)")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            if not {"x", "y"} <= set(npz.files):
                raise RequestError(f"the .npz holds {npz.files}; expected arrays 'x' (images) and 'y' (labels)")
            return npz["x"], npz["y"]
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - as for .npy: whatever a corrupt member raises
        raise RequestError(f"body is not a readable .npz archive: {exc}") from None

"""Calibration images of an adapted supernet version, kept beside it.

An adapted supernet is only as good as the batch-norm statistics its subnets are given: the
adaptation re-calibrates them on a mix of local and replay images
(:func:`lifelong.adapt.calibration_mix`). A subnet exported from that version later (a
preference change that the cached front answers with a point never exported) must see the
same mix, or it would describe the original data instead of the local one. The adaptation
therefore writes the mix as ``adapted/NAME.calib.npz`` next to ``adapted/NAME.pt``, with a
kind and a format version; :func:`load_calibration` refuses anything else by name.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from lifelong.errors import DataError, FormatVersionError

__all__ = ["CALIBRATION_FORMAT", "calibration_path", "load_calibration", "save_calibration"]

CALIBRATION_FORMAT = 1
_KIND = "lifelong-calibration"


def calibration_path(version: str | os.PathLike[str]) -> Path:
    """Where the calibration images of the supernet version file ``version`` are kept."""
    version = Path(version)
    return version.with_name(f"{version.stem}.calib.npz")


def save_calibration(path: str | os.PathLike[str], images: np.ndarray, source: str = "") -> Path:
    """Write ``images`` (float32, ``(N, 1, H, W)``) atomically with their kind and format version."""
    path = Path(path)
    if images.ndim != 4 or images.dtype != np.float32 or len(images) == 0:
        raise DataError(
            f"calibration images must be a non-empty float32 (N, C, H, W) array, got {images.dtype} {images.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, kind=np.array(_KIND), format_version=np.array(CALIBRATION_FORMAT), x=images,
                     source=np.array(source))  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_calibration(path: str | os.PathLike[str]) -> np.ndarray:
    """The images written by :func:`save_calibration`; a clear error for anything else."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise DataError(f"no calibration images at {path}") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not readable calibration images ({type(exc).__name__}: {exc})") from exc
    if str(arrays.get("kind", "")) != _KIND:
        raise DataError(f"{path} is not a lifelong calibration file (expected kind {_KIND!r})")
    version = int(arrays["format_version"]) if "format_version" in arrays else None
    if version != CALIBRATION_FORMAT:
        raise FormatVersionError(f"calibration images {path}", version, CALIBRATION_FORMAT)
    x = arrays.get("x")
    if x is None or x.ndim != 4 or x.dtype != np.float32 or len(x) == 0:
        raise DataError(f"{path} holds no float32 (N, C, H, W) calibration images")
    return x

"""Calibration images of an adapted supernet version, kept beside it.

An adapted supernet is only as good as the batch-norm statistics its subnets are given: the
adaptation re-calibrates them on a mix of local and replay images
(:func:`lifelong.train.adapt.calibration_mix`). A subnet exported from that version later (a
preference change that the cached front answers with a point never exported) must see the
same mix, or it would describe the original data instead of the local one. The adaptation
therefore writes the mix as ``adapted/NAME.calib.npz`` next to ``adapted/NAME.pt``, with a
kind and a format version; :func:`load_calibration` refuses anything else by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lifelong.errors import DataError
from lifelong.persist.versioned_npz import read_versioned_npz, write_npz_atomic

__all__ = ["CALIBRATION_FORMAT", "calibration_path", "load_calibration", "save_calibration"]

CALIBRATION_FORMAT = 1
_KIND = "lifelong-calibration"


DOMAIN_CALIBRATION = "domain.calib.npz"
"""In the supernet folder: the images of the data served now, kept by a label-free answer
(BN statistics re-estimated on them). Exports calibrate on them while they are there, so a
model exported later carries the statistics of the data it will serve, not of the training
data; a labelled adaptation (which brings its own) removes them."""


def domain_calibration(folder: str | os.PathLike[str]) -> Path:
    """Where the served data's calibration images are kept in the supernet folder ``folder``."""
    return Path(folder) / DOMAIN_CALIBRATION


def calibration_path(version: str | os.PathLike[str]) -> Path:
    """Where the calibration images of the supernet version file ``version`` are kept."""
    version = Path(version)
    return version.with_name(f"{version.stem}.calib.npz")


def save_calibration(path: str | os.PathLike[str], images: np.ndarray, source: str = "") -> Path:
    """Write ``images`` (float32, ``(N, 1, H, W)``) atomically with their kind and format version."""
    if images.ndim != 4 or images.dtype != np.float32 or len(images) == 0:
        raise DataError(
            f"calibration images must be a non-empty float32 (N, C, H, W) array, got {images.dtype} {images.shape}"
        )
    arrays = {"x": images, "source": np.array(source)}
    return write_npz_atomic(path, kind=_KIND, version=CALIBRATION_FORMAT, arrays=arrays)


def load_calibration(path: str | os.PathLike[str]) -> np.ndarray:
    """The images written by :func:`save_calibration`; a clear error for anything else."""
    x = read_versioned_npz(path, kind=_KIND, version=CALIBRATION_FORMAT, what="calibration file", needs=("x",))["x"]
    if x.ndim != 4 or x.dtype != np.float32 or len(x) == 0:
        raise DataError(f"{path} holds no float32 (N, C, H, W) calibration images")
    return x

"""The export request: what the daemon asks of one export worker, as a JSON file.

When the cached front answers a preference change (or a slower device) with a point that was
never exported, the daemon asks a worker process to export it. This file is the one
definition of that request, versioned, written by the serving process (no torch here) and
read by :mod:`lifelong.jobs.export` in the worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifelong.errors import DataError, FormatVersionError
from lifelong.persist.versioned import read_versioned_json, write_json_atomic

__all__ = ["EXPORT_REQUEST_FORMAT", "ExportRequest"]

EXPORT_REQUEST_FORMAT = 1
_KIND = "lifelong-export-request"


@dataclass(frozen=True)
class ExportRequest:
    """One subnet to export from one supernet checkpoint.

    Attributes:
        checkpoint: The supernet version to export from (the one in use).
        subnet: The subnet's canonical name (or ``largest[:wXaY]`` / ``smallest[:wXaY]``).
        out: Where the ONNX file goes; nothing is written there unless the parity gate passes.
        calibration: Calibration images of an adapted version
            (:func:`lifelong.data.calibration.save_calibration`), or None to take the first
            ``calib_images`` training images (the original supernet).
        data: The data spec (``lifelong.data.datasets.load_dataset``) with train and test splits, or
            None for Fashion-MNIST.
        calib_images: Training images for BN re-calibration when ``calibration`` is None.
        parity_images: Test images the parity gate compares torch and onnxruntime on.
        exact: Skip the requantized (integer-kernel) form.
        threads: torch threads.
        finetune_seconds: Train the subnet alone this long before the export (0: no), the
            policy's ``export.finetune_seconds``.
        profile: The device profile; when given, the exported file is timed on this device at
            the profile's batch sizes (:class:`lifelong.device.profile.PairedTimer`) and the report
            carries ``latency_ms``: the daemon trusts that, not the latency model.
    """

    checkpoint: str
    subnet: str
    out: str
    calibration: str | None = None
    data: str | None = None
    calib_images: int = 2000
    parity_images: int = 2000
    exact: bool = False
    threads: int = 1
    reason: str = ""
    finetune_seconds: float = 0.0
    profile: str | None = None
    format_version: int = EXPORT_REQUEST_FORMAT

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, {"kind": _KIND, **asdict(self)}, durable=False, indent=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> ExportRequest:
        path = Path(path)
        try:
            d = read_versioned_json(path, kind=_KIND, version=EXPORT_REQUEST_FORMAT, what="export request")
        except FormatVersionError as exc:
            raise DataError(f"{path}: export request format {exc.found!r}, expected {exc.supported}") from exc
        del d["kind"]
        try:
            return cls(**d)
        except TypeError as exc:
            raise DataError(f"{path}: malformed export request ({exc})") from exc

"""Export one subnet of a supernet checkpoint to ONNX: the work behind ``lifelong export`` and
the daemon's export worker.

Load the checkpoint, take the subnet, re-calibrate its batch norm (on the first training
images, or on the calibration images an adapted version keeps beside it), and export it
behind the parity gate (:func:`lifelong.export.export_subnet`). Needs torch: the serving
process never imports this module; it writes an :class:`~lifelong.export_request.ExportRequest`
and starts ``service.export_worker``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lifelong.calibration import load_calibration
from lifelong.checkpoint import file_sha256, load_checkpoint
from lifelong.data import ArrayDataset, load_dataset, load_fashion_mnist
from lifelong.export import ExportReport, export_subnet
from lifelong.export_request import ExportRequest
from lifelong.supernet import recalibrate_bn

__all__ = ["export_from_checkpoint", "run_export"]

Progress = Callable[[float, str, str], None]


def export_from_checkpoint(
    checkpoint: str | Path,
    subnet: str,
    out: str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    calibration: np.ndarray,
    test: ArrayDataset,
    parity_images: int = 10_000,
    exact: bool = False,
    progress: Progress | None = None,
) -> ExportReport:
    """Export ``subnet`` of ``checkpoint`` to ``out`` (or ``out_dir/CANONICAL-NAME.onnx``) behind the parity gate.

    ``calibration``: float32 images the subnet's BN statistics are re-estimated on (the first
    1000 also calibrate the requantized form unless ``exact``). ``test``: labelled images, the
    first ``parity_images`` of which the gate compares torch and onnxruntime on.

    Raises:
        CheckpointError, SpaceError: the checkpoint cannot be read, or ``subnet`` is not in its space.
        ParityError, ExportError: the export failed the gate or cannot be written (``out`` untouched).
    """
    say = progress or (lambda fraction, phase, message: None)
    say(0.0, "load", f"loading {checkpoint}")
    model = load_checkpoint(checkpoint).build()
    cfg = model.space.resolve(subnet)
    if out is None:
        if out_dir is None:
            raise ValueError("export_from_checkpoint needs out or out_dir")
        out = Path(out_dir) / f"{cfg}.onnx"
    say(0.2, "calibrate", f"BN re-calibration of {cfg} on {len(calibration)} images")
    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(np.ascontiguousarray(calibration)))
    sub.eval()
    n = min(parity_images, len(test))
    assert test.y is not None
    say(0.4, "export", f"exporting {cfg} behind the parity gate on {n} test images")
    report = export_subnet(
        sub,
        out,
        test.as_float()[:n],
        test.y[:n],
        checkpoint_sha256=file_sha256(checkpoint),
        calibration=None if exact else calibration[:1000],
    )
    say(1.0, "done", f"{report.path} ({report.bytes} bytes)")
    return report


def run_export(req: ExportRequest, progress: Progress | None = None) -> ExportReport:
    """Carry out ``req`` (in the export worker)."""
    torch.set_num_threads(max(1, req.threads))
    if req.calibration:
        calibration = load_calibration(req.calibration)
    else:
        train = load_dataset(req.data, split="train") if req.data else load_fashion_mnist("train")
        calibration = train.head(req.calib_images).as_float()
    test = load_dataset(req.data, split="test") if req.data else load_fashion_mnist("test")
    return export_from_checkpoint(
        req.checkpoint,
        req.subnet,
        req.out,
        calibration=calibration,
        test=test,
        parity_images=req.parity_images,
        exact=req.exact,
        progress=progress,
    )

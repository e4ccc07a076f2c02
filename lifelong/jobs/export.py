"""Export one subnet of a supernet checkpoint to ONNX: the work behind ``lifelong export`` and
the daemon's export worker.

Load the checkpoint, take the subnet, re-calibrate its batch norm (on the first training
images, or on the calibration images an adapted version keeps beside it), and export it
behind the parity gate (:func:`lifelong.deploy.export.export_subnet`). Needs torch: the serving
process never imports this module; it writes an :class:`~lifelong.jobs.export_request.ExportRequest`
and starts ``service.workers.export_worker``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lifelong.data.calibration import load_calibration
from lifelong.data.datasets import ArrayDataset, load_dataset, load_fashion_mnist
from lifelong.deploy.export import ExportReport, export_subnet
from lifelong.device.profile import DeviceProfile, PairedTimer
from lifelong.device.threads import choose_threads, time_threads, write_thread_choice
from lifelong.errors import DataError
from lifelong.jobs.export_request import ExportRequest
from lifelong.nn.checkpoint import file_sha256, load_checkpoint
from lifelong.nn.supernet import StaticSubnet, recalibrate_bn
from lifelong.train.evaluate import predict_logits, top1
from lifelong.train.finetune import FinetuneConfig, finetune_subnet
from lifelong.train.trainer import TrainConfig, supernet_recipe, training_tensors

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
    finetune: FinetuneConfig | None = None,
    train: ArrayDataset | None = None,
    show_progress: bool = False,
    timing: DeviceProfile | None = None,
) -> ExportReport:
    """Export ``subnet`` of ``checkpoint`` to ``out`` (or ``out_dir/CANONICAL-NAME.onnx``) behind the parity gate.

    ``calibration``: float32 images the subnet's BN statistics are re-estimated on (the first
    1000 also calibrate the requantized form unless ``exact``). ``test``: labelled images, the
    first ``parity_images`` of which the gate compares torch and onnxruntime on. With
    ``finetune``, the subnet is first trained alone on the training split of ``train`` (the
    part the supernet trained on; its validation split is measured before and after). With
    ``timing`` (the device profile), the written file is timed here at the profile's batch
    sizes and the report carries ``latency_ms``; it is also run with 1 and 2 onnxruntime
    threads, and the faster count per batch is written into its metadata
    (:mod:`lifelong.device.threads`) and the report's ``threads``.

    Raises:
        CheckpointError, SpaceError: the checkpoint cannot be read, or ``subnet`` is not in its space.
        ParityError, ExportError: the export failed the gate or cannot be written (``out`` untouched).
    """
    say = progress or (lambda fraction, phase, message: None)
    say(0.0, "load", f"loading {checkpoint}")
    ck = load_checkpoint(checkpoint)
    model = ck.build()
    cfg = model.space.resolve(subnet)
    if out is None:
        if out_dir is None:
            raise ValueError("export_from_checkpoint needs out or out_dir")
        out = Path(out_dir) / f"{cfg}.onnx"
    say(0.2, "calibrate", f"BN re-calibration of {cfg} on {len(calibration)} images")
    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(np.ascontiguousarray(calibration)))
    sub.eval()
    tuned = None
    if finetune is not None:
        if train is None:
            raise ValueError("fine-tuning needs the training data")
        say(0.3, "fine-tune", f"fine-tuning {cfg} alone for {finetune.seconds:.0f} s")
        tuned = _finetune(sub, supernet_recipe(ck, checkpoint), train, calibration, finetune, show_progress)
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
    latency, threads, size = None, None, report.bytes
    if timing is not None:
        say(0.9, "time", f"timing {report.path.name} at batch {', '.join(map(str, timing.batches))}")
        latency = {int(b): float(ms) for b, ms in PairedTimer(timing, model.space).measure(report.path.read_bytes()).items()}  # fmt: skip
        timed = time_threads(str(report.path), timing.batches)
        chosen = choose_threads(timed)
        size = write_thread_choice(report.path, chosen)
        threads = {b: {"threads": chosen[b], "ms": {str(t): ms for t, ms in timed[b].items()}} for b in timed}
    say(1.0, "done", f"{report.path} ({size} bytes)")
    return replace(report, finetune=tuned, latency_ms=latency, threads=threads, bytes=size)


def _finetune(
    sub: StaticSubnet,
    recipe: TrainConfig,
    train: ArrayDataset,
    calibration: np.ndarray,
    config: FinetuneConfig,
    show_progress: bool,
) -> dict[str, float]:
    """Fine-tune ``sub`` on the training split the supernet trained on; top-1 on its validation
    split (images neither ever trained on) before and after."""
    x_train, y_train = training_tensors(train, replace(recipe, max_train_samples=None))
    _, val = train.split(recipe.val_fraction, seed=recipe.seed) if recipe.val_fraction else (None, None)
    if val is None or val.y is None:
        raise DataError("the checkpoint records no validation split; fine-tuning needs one to report its gain")
    x_val, y_val = val.as_float(), val.y
    before = top1(predict_logits(sub, x_val), y_val)
    result = finetune_subnet(sub, x_train, y_train, calibration, config, progress=show_progress)
    after = top1(predict_logits(sub, x_val), y_val)
    return {**result.to_dict(), "val_images": len(y_val), "val_top1_before": before, "val_top1_after": after}


def run_export(req: ExportRequest, progress: Progress | None = None) -> ExportReport:
    """Carry out ``req`` (in the export worker)."""
    torch.set_num_threads(max(1, req.threads))
    if req.calibration:
        calibration = load_calibration(req.calibration)
    else:
        train = load_dataset(req.data, split="train") if req.data else load_fashion_mnist("train")
        calibration = train.head(req.calib_images).as_float()
    test = load_dataset(req.data, split="test") if req.data else load_fashion_mnist("test")
    finetune, train = None, None
    if req.finetune_seconds > 0:
        finetune = FinetuneConfig(seconds=req.finetune_seconds)
        train = load_dataset(req.data, split="train") if req.data else load_fashion_mnist("train")
    return export_from_checkpoint(
        req.checkpoint,
        req.subnet,
        req.out,
        calibration=calibration,
        test=test,
        parity_images=req.parity_images,
        exact=req.exact,
        progress=progress,
        finetune=finetune,
        train=train,
        timing=DeviceProfile.load(req.profile) if req.profile else None,
    )

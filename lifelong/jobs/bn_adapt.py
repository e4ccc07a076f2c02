"""The label-free first answer to data drift: the serving subnet with its batch-norm statistics
re-estimated on unlabelled local images (Schneider et al. 2020, "Improving robustness against
common corruptions by covariate shift adaptation").

A camera that gets noisier, darker or lower in contrast changes the statistics every BN layer
normalises with; the weights still know the task. Re-estimating those statistics on a few
hundred images of the new data takes seconds and needs no label. Measured on the v2 sandwich
supernet (``fb91f234``), its tutorial-shaped member (82.4% clean), 500 unlabelled shifted test
images, evaluated on 5,000 other shifted ones (``STATE/diag/bn_adapt.py``):

============  ==============  ===============  ======================
shift         BN of training  BN re-estimated  clean, BN re-estimated
============  ==============  ===============  ======================
noise 0.2     59.8%           75.1%            77.6%
contrast 0.5  12.4%           82.9%            32.7%
brightness    27.7%           81.8%            28.6%
rotation 15   72.0%           73.3%            82.1%
============  ==============  ===============  ======================

The adapted model is a model *of the new data* (last column): when the data goes back, the
same answer (statistics of the data then served) brings the original statistics back. Mixing
500 clean images into the statistics kept clean accuracy only by losing most of the gain
(contrast 23%, brightness 35%), so the statistics are the local images' alone.

Prediction entropy is no label-free judge here: the unadapted model is *confidently* wrong
under contrast (mean entropy 0.25 against 0.41 adapted). What the result carries instead,
for the daemon's decision (:func:`service.workers.adaptation.decide_label_free`), is each model's
predicted-class mix on the local images, to be compared with the mix the serving model
predicted on the data it was deployed on: a shifted input collapses a model onto a few
classes, and BN re-estimation that works spreads its answers back out.

torch is imported here: this runs in the adaptation worker, never in the serving process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.data.local import load_refs
from lifelong.deploy.export import export_subnet, onnx_session, run_onnx
from lifelong.drift.priors import softmax
from lifelong.errors import DataError, SpaceError
from lifelong.jobs.adapt_request import BN_RESULT_FORMAT, BN_RESULT_KIND, AdaptRequest, save_task_data
from lifelong.nn.checkpoint import file_sha256, load_checkpoint
from lifelong.nn.supernet import recalibrate_bn
from lifelong.persist.versioned import write_json_atomic
from lifelong.train.evaluate import predict_logits
from policies import Policy

__all__ = ["BN_RESULT_FORMAT", "MIN_LABELLED_CHECK", "MIN_UNLABELLED", "class_mix_figures", "run_bn_adaptation"]

logger = logging.getLogger(__name__)

MIN_UNLABELLED = 64
"""Fewer images than this give BN statistics too noisy to serve with."""
MIN_LABELLED_CHECK = 50
"""Labelled local samples (of the new data, already arrived) from which the label-free answer
is judged on their accuracy rather than on the class mix alone."""

Progress = Callable[[float, str, str], None]


def class_mix_figures(logits: np.ndarray) -> dict[str, Any]:
    """What a model's answers on unlabelled images say: predicted-class shares, the largest
    share, mean top-1 probability and mean entropy."""
    p = softmax(logits)
    mix = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1]) / len(logits)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    return {
        "mix": [round(float(v), 4) for v in mix],
        "largest_share": round(float(mix.max()), 4),
        "confidence": round(float(p.max(axis=1).mean()), 4),
        "entropy": round(float(entropy.mean()), 4),
    }


def _load_images(path: str | None) -> np.ndarray:
    if not path:
        raise DataError("a label-free adaptation needs its unlabelled images (request key 'unlabelled'), got none")
    try:
        with np.load(path, allow_pickle=False) as z:
            x = np.asarray(z["x"])
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read the unlabelled images (an .npz with x, uint8 (N, 28, 28)): {exc}"
        ) from exc
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{path}: x must be uint8 (N, 28, 28), got {x.dtype} {x.shape}")
    if len(x) < MIN_UNLABELLED:
        raise DataError(f"{path}: {len(x)} images; BN statistics need at least {MIN_UNLABELLED}")
    return x


def _labelled_check(req: AdaptRequest, models: list[str], notes: list[str]) -> dict[str, Any] | None:
    """Top-1 of each ONNX file of ``models`` on the request's labelled local samples (``n`` and
    ``accuracy``, in order), or None when fewer than :data:`MIN_LABELLED_CHECK` can be read.

    The labels came as feedback on predictions of the new data; their images may be among the
    unlabelled ones the statistics were estimated on (no label is used for that), which favours
    the candidate a little."""
    if len(req.samples) < MIN_LABELLED_CHECK:
        return None
    try:
        local, unreadable = load_refs(req.samples)
    except DataError as exc:
        notes.append(f"the labelled local samples could not be read: {exc}")
        return None
    if unreadable:
        notes.append(f"{len(unreadable)} labelled local samples could not be read (first: {unreadable[0]})")
    if len(local) < MIN_LABELLED_CHECK or local.y is None:
        return None
    x = local.as_float()
    accuracy = []
    for path in models:
        logits, _ = run_onnx(onnx_session(path, threads=req.threads), x, batch_size=256)
        accuracy.append(round(float((logits.argmax(axis=1) == local.y).mean()), 4))
    task = save_task_data(Path(req.out_dir) / "task.npz", local.x, local.y)  # the daemon's task check, on the new data
    return {"n": len(local), "accuracy": accuracy, "task_data": str(task)}


def run_bn_adaptation(request: AdaptRequest, policy: Policy, progress: Progress | None = None) -> dict[str, Any]:
    """Re-estimate the serving subnet's BN statistics on the request's unlabelled images, export
    it behind the parity gate, and measure both models' answers on those images.

    Writes and returns the result (``OUT/result.json``, kind ``lifelong-bn-adapt-result``).

    Raises:
        DataError: no readable images, no serving model, or a serving subnet this supernet lacks.
        CheckpointError: the supernet cannot be read.
        ParityError, ExportError: the export failed its gate.
    """
    from lifelong.device.timing import measure_pair

    req = request
    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str, fraction: float, message: str) -> None:
        phases[name] = round(time.monotonic() - t0, 3)
        if progress is not None:
            progress(fraction, name, message)

    torch.set_num_threads(max(1, req.threads))
    serving = dict(req.serving or {})
    if not serving.get("subnet") or not serving.get("path"):
        raise DataError("a label-free adaptation needs the serving model's subnet and ONNX file, got none")
    phase("data", 0.0, "reading the unlabelled local images")
    x = _load_images(req.unlabelled)
    images = (x[:, None].astype(np.float32) / np.float32(255.0)).astype(np.float32)  # (N, 1, 28, 28)

    phase("baseline", 0.1, f"the serving model on {len(x)} local images")
    serving_logits, _ = run_onnx(onnx_session(serving["path"], threads=req.threads), images, batch_size=256)
    serving_figures = {**serving, **class_mix_figures(serving_logits)}

    phase("bn", 0.2, f"re-estimating BN statistics of {serving['subnet']} on {len(x)} images")
    ckpt_path = Path(req.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    sha = file_sha256(ckpt_path)
    model = ckpt.build()
    try:
        cfg = model.space.parse(serving["subnet"])
    except SpaceError as exc:
        raise DataError(f"the serving subnet {serving['subnet']!r} is not of this supernet: {exc}") from exc
    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(images).contiguous(memory_format=torch.channels_last))
    sub.eval()

    phase("export", 0.5, "exporting behind the parity gate")
    out_dir = Path(req.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    own = predict_logits(sub, images).argmax(axis=1)  # no labels: the gate checks ONNX against torch
    report = export_subnet(
        sub, out_dir / "candidate.onnx", images, own, checkpoint_sha256=sha, calibration=images[:1000]
    )
    cand_logits, _ = run_onnx(onnx_session(str(report.path), threads=req.threads), images, batch_size=256)

    notes: list[str] = []
    labelled = _labelled_check(req, [serving["path"], str(report.path)], notes)
    if labelled is not None:
        serving_figures["local_accuracy"], cand_accuracy = labelled["accuracy"]

    phase("measure", 0.8, "latency of both models")
    batches = (policy.target.batch,)
    lat_serving, lat_cand = measure_pair(  # alternately: the device also serves meanwhile
        Path(serving["path"]).read_bytes(),
        report.path.read_bytes(),
        batches=batches,
        threads=policy.target.fixed_threads,
    )
    serving_figures["latency_ms"] = {str(k): float(v) for k, v in lat_serving.items()}
    candidate = {
        "path": str(report.path),
        "subnet": serving["subnet"],
        "checkpoint": None,  # the supernet is unchanged: only this model's statistics moved
        "checkpoint_sha256": sha,
        "bytes": report.bytes,
        "latency_ms": {str(k): float(v) for k, v in lat_cand.items()},
        "parity": report.parity.to_dict(),
        "requantized": report.requantized,
        **class_mix_figures(cand_logits),
    }
    if labelled is not None:
        candidate["local_accuracy"] = cand_accuracy
    phase("done", 1.0, "")
    result = {
        "kind": BN_RESULT_KIND,
        "format_version": BN_RESULT_FORMAT,
        "mode": "bn",
        "trigger": req.trigger,
        "samples": {"unlabelled": int(len(x)), "labelled": 0 if labelled is None else labelled["n"]},
        "task_data": None if labelled is None else labelled["task_data"],
        "unlabelled": req.unlabelled,
        "reference_mix": None if req.reference_mix is None else list(req.reference_mix),
        "serving": serving_figures,
        "candidate": candidate,
        "phases": phases,
        "seconds": round(time.monotonic() - t0, 2),
        "notes": notes,
    }
    write_json_atomic(out_dir / "result.json", result, durable=False, indent=1)
    logger.info(
        "label-free adaptation of %s: BN re-estimated on %d images in %.1f s; largest class share %.2f -> %.2f",
        serving["subnet"], len(x), result["seconds"], serving_figures["largest_share"], candidate["largest_share"],
    )  # fmt: skip
    return result

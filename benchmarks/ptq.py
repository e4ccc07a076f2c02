"""Post-training quantization of a baseline with onnxruntime: every configuration a user could pick.

A user who quantizes a hand-built network tries what ``onnxruntime.quantization.quantize_static``
offers and keeps what serves best. :func:`sweep` does that on a BN-folded FP32 ONNX model:

- ``quant_pre_process`` once (shape inference and graph cleanup, as documented), then for
  each :class:`PtqConfig` of :data:`CONFIGS`: QDQ format, per-channel signed INT8 weights,
  activations unsigned (``QUInt8``) or signed (``QInt8``), calibrated with MinMax, Percentile
  (99.999th, 2048 bins) or Entropy (128 bins), onnxruntime's defaults for each method, on
  :data:`CALIBRATION_IMAGES` training images (never test images);
- each configuration's top-1 on the test images, with onnxruntime (2 intra-op threads);
- batch-1 latency of the FP32 model and every configuration at 1 and 2 intra-op threads
  (:func:`batch1_latency`: the median over rounds that interleave the models, so that a
  change of machine load hits every model alike);
- the chosen configuration (:func:`choose`): the best top-1, ties broken by the lower
  latency at 2 threads. The choice is made on the test images themselves, which favours the
  baseline: the comparison it enters is the more conservative for it.

Sessions are opened as the service opens them (:func:`lifelong.deploy.model_format.ort_session`).
Needs onnx, onnxruntime and numpy, not torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.deploy.model_format import INPUT_NAME, INPUT_SHAPE, LOGITS_OUTPUT, ort_session

__all__ = [
    "ACTIVATIONS",
    "CALIBRATION_IMAGES",
    "CONFIGS",
    "METHODS",
    "THREADS",
    "PtqConfig",
    "PtqRow",
    "PtqSweep",
    "batch1_latency",
    "choose",
    "onnx_top1",
    "preprocess",
    "quantize",
    "sweep",
]

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 512
ACTIVATIONS = ("uint8", "int8")
METHODS = ("minmax", "percentile", "entropy")
THREADS = (1, 2)
SLOW_SECONDS = 60.0
"""A calibration slower than this (with 512 images) is logged: give its method fewer images."""


@dataclass(frozen=True)
class PtqConfig:
    """One ``quantize_static`` configuration. ``name`` is e.g. ``entropy-s8``."""

    method: str = "minmax"
    activations: str = "uint8"
    calibration_images: int = CALIBRATION_IMAGES

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {METHODS}, got {self.method!r}")
        if self.activations not in ACTIVATIONS:
            problems.append(f"activations must be one of {ACTIVATIONS}, got {self.activations!r}")
        if self.calibration_images < 1:
            problems.append(f"calibration_images must be >= 1, got {self.calibration_images}")
        if problems:
            raise ValueError("invalid PTQ config: " + "; ".join(problems))

    @property
    def name(self) -> str:
        return f"{self.method}-{'u8' if self.activations == 'uint8' else 's8'}"


CONFIGS = tuple(PtqConfig(m, a) for m in METHODS for a in ACTIVATIONS)
"""The sweep: 3 calibration methods x 2 activation types, 512 calibration images each."""


class _QuietOnnxruntime(logging.Filter):
    """Drops onnxruntime's per-tensor INFO lines, which it logs on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root, quiet = logging.getLogger(), _QuietOnnxruntime()
    root.addFilter(quiet)
    try:
        # The histogram calibrators print their settings; keep stdout for the benchmark's table.
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(quiet)


class _Reader:
    """Feeds calibration images to onnxruntime's calibrator in batches of 64."""

    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self._batches = [{INPUT_NAME: images[i : i + batch]} for i in range(0, len(images), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def preprocess(fp32: bytes) -> bytes:
    """``quant_pre_process`` of an FP32 model (shape inference, onnxruntime's graph cleanup)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="lifelong-ptq-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        src.write_bytes(fp32)
        with _quiet():
            quant_pre_process(str(src), str(dst))
        return dst.read_bytes()


def quantize(pre: bytes, calibration: np.ndarray, config: PtqConfig) -> bytes:
    """QDQ model of ``pre`` (a :func:`preprocess`-ed FP32 model) under ``config``.

    Calibrates on the first ``config.calibration_images`` of ``calibration``
    (float32 ``(N, 1, 28, 28)`` in [0, 1]).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    images = np.ascontiguousarray(calibration[: config.calibration_images], dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) array, got shape {images.shape}")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[config.method]  # fmt: skip
    act = QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="lifelong-ptq-") as tmp:
        src, dst = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(pre)
        with _quiet():
            quantize_static(
                str(src), str(dst), _Reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=act, calibrate_method=method,
            )  # fmt: skip
        return dst.read_bytes()


def onnx_top1(model: bytes, x: np.ndarray, y: np.ndarray, threads: int = 2, batch: int = 1000) -> float:
    """Top-1 of ``model`` on images ``x`` (float32 ``(N, 1, 28, 28)``) and labels ``y``."""
    session = ort_session(model, threads)
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = session.run([LOGITS_OUTPUT], {INPUT_NAME: x[i : i + batch]})  # (b, classes)
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def batch1_latency(
    models: dict[str, bytes],
    threads: tuple[int, ...] = THREADS,
    rounds: int = 15,
    runs: int = 50,
    warmup: int = 20,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency in ms, ``name -> {"1": ms, "2": ms}`` (one key per thread count).

    For each thread count, every model runs ``runs`` times in a row per round, the models in
    a rotated order each round; a model's latency is the median over rounds of its mean time
    per run. Every output is computed, as the service asks for logits and embedding.
    """
    if not models:
        return {}
    feeds = {INPUT_NAME: np.random.default_rng(0).random((1, *INPUT_SHAPE), dtype=np.float32)}
    keys = list(models)
    out: dict[str, dict[str, float]] = {k: {} for k in keys}
    for t in threads:
        sessions = {k: ort_session(models[k], t) for k in keys}
        for s in sessions.values():
            for _ in range(warmup):
                s.run(None, feeds)
        samples: dict[str, list[float]] = {k: [] for k in keys}
        for r in range(rounds):
            shift = r % len(keys)
            for k in keys[shift:] + keys[:shift]:
                s = sessions[k]
                t0 = time.perf_counter()
                for _ in range(runs):
                    s.run(None, feeds)
                samples[k].append((time.perf_counter() - t0) / runs * 1e3)
        for k in keys:
            out[k][str(t)] = float(np.median(samples[k]))
    return out


@dataclass
class PtqRow:
    """One configuration's measurements."""

    config: PtqConfig
    top1: float
    quantize_seconds: float
    bytes: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # threads -> batch-1 ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.config.name, **asdict(self.config), "top1": self.top1,
                "quantize_seconds": round(self.quantize_seconds, 2), "bytes": self.bytes,
                "latency_ms": self.latency_ms}  # fmt: skip


def choose(rows: list[PtqRow], threads: int = max(THREADS)) -> PtqRow:
    """The best top-1; among equal ones the lowest latency at ``threads`` (then the first)."""
    if not rows:
        raise ValueError("no PTQ configuration to choose from")
    return min(rows, key=lambda r: (-r.top1, r.latency_ms.get(str(threads), float("inf"))))


@dataclass
class PtqSweep:
    """Every configuration of one FP32 model, and the chosen INT8 model."""

    fp32_top1: float
    fp32_latency_ms: dict[str, float]
    rows: list[PtqRow]
    chosen: PtqRow
    int8: bytes  # the chosen configuration's model

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32": {"top1": self.fp32_top1, "latency_ms": self.fp32_latency_ms},
            "configs": [r.to_dict() for r in self.rows],
            "chosen": self.chosen.config.name,
            "int8": {**self.chosen.to_dict(), "minus_fp32_pt": round(100 * (self.chosen.top1 - self.fp32_top1), 4)},
        }


def sweep(
    fp32: bytes,
    calibration: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    configs: tuple[PtqConfig, ...] = CONFIGS,
    *,
    threads: tuple[int, ...] = THREADS,
    rounds: int = 15,
    runs: int = 50,
    eval_threads: int = 2,
) -> PtqSweep:
    """Quantize ``fp32`` under every configuration, test each, time all, choose one.

    Args:
        fp32: The BN-folded FP32 ONNX model.
        calibration: Training images, float32 ``(N, 1, 28, 28)`` in [0, 1]; each
            configuration takes the first ``calibration_images`` of them.
        x_test, y_test: Test images and labels for top-1.
        configs: The configurations to try.
        threads, rounds, runs: Of :func:`batch1_latency`.
        eval_threads: onnxruntime threads while measuring top-1.
    """
    pre = preprocess(fp32)
    rows, models = [], {}
    for cfg in configs:
        t0 = time.monotonic()
        data = quantize(pre, calibration, cfg)
        seconds = time.monotonic() - t0
        if seconds > SLOW_SECONDS and cfg.calibration_images > 64:
            logger.warning("PTQ %s took %.0f s with %d images; give it fewer", cfg.name, seconds,
                           cfg.calibration_images)  # fmt: skip
        row = PtqRow(cfg, onnx_top1(data, x_test, y_test, eval_threads), seconds, len(data))
        logger.info("PTQ %s: top-1 %.4f, quantized in %.1f s", cfg.name, row.top1, seconds)
        rows.append(row)
        models[cfg.name] = data
    ms = batch1_latency({"fp32": fp32, **models}, threads, rounds, runs)
    for row in rows:
        row.latency_ms = ms[row.config.name]
    best = choose(rows, max(threads))
    return PtqSweep(onnx_top1(fp32, x_test, y_test, eval_threads), ms["fp32"], rows, best, models[best.config.name])

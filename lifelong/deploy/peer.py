"""The peer a user would pick instead of our export: onnxruntime's own post-training quantization.

``ort_quantize`` takes a full-precision ONNX model (our FP32 export of a subnet, or any
classifier with one float input) and runs ``onnxruntime.quantization.quantize_static`` on it
the way its documentation recommends for CPUs: ``quant_pre_process`` first, then QDQ format, per-channel INT8 weights, UINT8
activations, calibrated with MinMax on training images. The benchmarks put it beside our
W8A8 export, whose scales were learned during training (LSQ) rather than calibrated after it.

Needs onnx and onnxruntime, not torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from lifelong.deploy.model_format import INPUT_NAME
from lifelong.errors import ExportError

__all__ = ["CALIBRATION_IMAGES", "ort_quantize"]

CALIBRATION_IMAGES = 512


class _Reader:
    """Feeds calibration images to onnxruntime's calibrator in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 64) -> None:
        self._batches = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # onnxruntime >= 1.17 may call it; one pass is all MinMax needs
        pass


def ort_quantize(
    fp32_model: bytes | str | Path,
    calibration: np.ndarray,
    out: str | Path | None = None,
    *,
    per_channel: bool = True,
) -> bytes:
    """Quantize ``fp32_model`` with ``quantize_static`` (QDQ, INT8 weights, UINT8 activations).

    Args:
        fp32_model: The full-precision model, as bytes or a path.
        calibration: Float images ``(N, 1, 28, 28)`` in [0, 1]; the issue's protocol uses
            :data:`CALIBRATION_IMAGES` training images.
        out: Where to write the quantized model (also returned as bytes).
        per_channel: Per-output-channel weight scales, as our export has.

    Raises:
        ExportError: The model or the calibration data is not usable.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ExportError(f"calibration images must be a non-empty (N, C, H, W) array, got shape {calibration.shape}")
    with tempfile.TemporaryDirectory(prefix="lifelong-ptq-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        if isinstance(fp32_model, bytes):
            src.write_bytes(fp32_model)
        else:
            src = Path(fp32_model)
        pre, dst = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre))  # shape inference + graph cleanup, as documented
            quantize_static(
                str(pre),
                str(dst),
                _Reader(INPUT_NAME, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # onnxruntime raises bare Exceptions from deep inside
            raise ExportError(f"onnxruntime quantize_static failed on {src.name}: {exc}") from exc
        data = dst.read_bytes()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp_out.write_bytes(data)
        os.replace(tmp_out, out)
    return data

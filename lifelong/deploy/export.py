"""Export a static subnet to a deployable ONNX model, behind a parity gate.

``export_subnet`` turns the learned quantizers into QDQ (see :mod:`lifelong.deploy.onnx_graph`),
runs the model in onnxruntime beside the torch subnet on labelled images, and writes the file
only if the two agree: top-1 agreement >= ``min_agreement`` and an accuracy difference
<= ``max_accuracy_gap``. The file is written to a temporary name, synced, and renamed, so a
failed gate or a crash leaves nothing where a deployable model would be.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lifelong.deploy.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LOGITS_OUTPUT,
    META_CHECKPOINT,
    META_SUBNET,
    ORT_DISABLED_OPTIMIZERS,
    ort_session,
)
from lifelong.deploy.net_spec import ConvSpec, LinearSpec, NetSpec
from lifelong.deploy.onnx_graph import build_model
from lifelong.errors import ExportError, ParityError
from lifelong.nn.layers import QConvBN, QLinear
from lifelong.nn.supernet import PIXEL_MEAN, PIXEL_STD, StaticSubnet
from lifelong.persist.versioned import write_bytes_atomic
from lifelong.space.config import FULL_BITS

__all__ = [
    "ExportReport",
    "ParityReport",
    "calibrate_gap_step",
    "check_parity",
    "export_subnet",
    "kernel_counts",
    "onnx_session",
    "run_onnx",
    "simulate_requant",
    "subnet_to_onnx",
]


def _bits(quantizer: torch.nn.Module) -> int:
    """The one precision a static layer's quantizer holds (32 when it holds none)."""
    choices = quantizer.bits_choices
    assert len(choices) <= 1, f"a static layer holds one precision, found {choices}"
    return choices[0] if choices else FULL_BITS


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _conv_spec(layer: QConvBN) -> ConvSpec:
    wb, ab = _bits(layer.wq), _bits(layer.aq)
    bn = layer.bn
    return ConvSpec(
        weight=_np(layer.weight),
        gamma=_np(bn.weight), beta=_np(bn.bias), mean=_np(bn.running_mean), var=_np(bn.running_var), eps=bn.eps,
        stride=layer.stride, groups=1, relu=layer.relu,
        w_bits=wb, w_step=_np(layer.wq.scale(wb)) if wb < FULL_BITS else None,
        a_bits=ab, a_step=float(layer.aq.scale(ab).detach()) if ab < FULL_BITS else None, a_signed=layer.aq.signed,
    )  # fmt: skip


def _linear_spec(fc: QLinear) -> LinearSpec:
    wb, ab = _bits(fc.wq), _bits(fc.aq)
    return LinearSpec(
        weight=_np(fc.weight), bias=_np(fc.bias), relu=fc.relu,
        w_bits=wb, w_step=_np(fc.wq.scale(wb)) if wb < FULL_BITS else None,
        a_bits=ab, a_step=float(fc.aq.scale(ab).detach()) if ab < FULL_BITS else None, a_signed=fc.aq.signed,
    )  # fmt: skip


def _fuses(layer: QConvBN | QLinear) -> bool:
    """The same test as :func:`lifelong.deploy.onnx_graph._fuses`, on a static torch layer."""
    return _bits(layer.aq) == 8 and _bits(layer.wq) == 8


def _requantizes(sub: StaticSubnet) -> bool:
    """Whether the fusing form differs from the exact one: a global pool read by an 8-bit layer."""
    return sub.cfg.head.pool == "gap" and _fuses(sub.fcs[0])


@torch.no_grad()
def calibrate_gap_step(sub: StaticSubnet, images: np.ndarray, batch_size: int = 500) -> float | None:
    """The uint8 step (min-max, as onnxruntime's PTQ would) of the global pool's input over
    ``images``; None where the subnet has nothing to requantize."""
    if not _requantizes(sub):
        return None
    peak = 0.0

    def record(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal peak
        peak = max(peak, float(out.detach().abs().max()))

    handle = sub.convs[-1].register_forward_hook(record)
    try:
        sub.eval()
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        for i in range(0, len(x), batch_size):
            sub(x[i : i + batch_size])
    finally:
        handle.remove()
    return max(peak, 1e-8) / 255


@contextlib.contextmanager
def simulate_requant(sub: StaticSubnet, gap_step: float | None) -> Iterator[StaticSubnet]:
    """Make ``sub`` compute what the requantized ONNX graph computes, for the parity gate:
    the last convolution's output quantized (uint8) on ``gap_step`` before the global pool.
    A max-pool between them changes nothing (it commutes with rounding). Undone on exit."""
    handle = None
    if gap_step is not None and _requantizes(sub):

        def hook(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            return torch.clamp(torch.round(out / gap_step), 0, 255) * gap_step

        handle = sub.convs[-1].register_forward_hook(hook)
    try:
        yield sub
    finally:
        if handle is not None:
            handle.remove()


def subnet_to_onnx(sub: StaticSubnet, checkpoint_sha256: str = "", gap_step: float | None = None) -> onnx.ModelProto:
    """The ONNX model of ``sub`` with its learned quantizers (BN statistics as they are now).

    With ``gap_step`` the global pool's input is requantized so that the last convolution and
    the pool run as integer kernels in onnxruntime (a small change to the function).
    """
    net = NetSpec(
        convs=tuple(_conv_spec(c) for c in sub.convs),
        pool_after=tuple(call.pool_after for call in sub.calls),
        pool=sub.cfg.head.pool,
        fcs=tuple(_linear_spec(fc) for fc in sub.fcs),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        metadata={META_SUBNET: str(sub.cfg), META_CHECKPOINT: checkpoint_sha256},
        gap_step=gap_step if _requantizes(sub) else None,
    )
    model = build_model(net)
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_session(model: onnx.ModelProto | bytes | str | Path, threads: int = 1) -> object:
    """An onnxruntime CPU session with capped threads and spinning off."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort_session(src if isinstance(src, bytes) else str(src), threads)


def kernel_counts(model: onnx.ModelProto | bytes) -> dict[str, int]:
    """What onnxruntime runs after its graph optimisations: integer vs float convolutions.

    A quantized convolution that onnxruntime could not fuse runs in float, with its weights
    dequantized at every run; this is how an export is checked to fuse.
    """
    import tempfile

    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    with tempfile.TemporaryDirectory(prefix="lifelong-opt-") as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(
            data, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS)
        )
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    return {
        "integer_convs": ops.count("QLinearConv"),
        "float_convs": ops.count("Conv") + ops.count("FusedConv"),
        "integer_gemms": ops.count("QGemm") + ops.count("QLinearMatMul") + ops.count("MatMulIntegerToFloat"),
        "float_gemms": ops.count("Gemm") + ops.count("MatMul") + ops.count("FusedGemm") + ops.count("FusedMatMul"),
        "dequantize_nodes": ops.count("DequantizeLinear"),
        "transposes": ops.count("Transpose"),
    }


@dataclass(frozen=True)
class ParityReport:
    """How the exported model compares with the torch subnet on labelled images."""

    images: int
    agreement: float
    torch_top1: float
    onnx_top1: float
    max_logit_diff: float

    @property
    def accuracy_gap(self) -> float:
        return abs(self.torch_top1 - self.onnx_top1)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "accuracy_gap": self.accuracy_gap}


def run_onnx(session: object, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of ``images`` (float32 (N, 1, 28, 28) in [0, 1])."""
    logits, embs = [], []
    for i in range(0, len(images), batch_size):
        lo, em = session.run([LOGITS_OUTPUT, EMBEDDING_OUTPUT], {INPUT_NAME: images[i : i + batch_size]})
        logits.append(lo)
        embs.append(em)
    return np.concatenate(logits), np.concatenate(embs)


@torch.no_grad()
def check_parity(
    sub: StaticSubnet,
    model: onnx.ModelProto | bytes,
    images: np.ndarray,
    labels: np.ndarray,
    gap_step: float | None = None,
) -> ParityReport:
    """Compare the ONNX model with the torch subnet on labelled images.

    With ``gap_step`` the ONNX model is the requantized form: top-1 agreement and logit
    difference are measured against the torch subnet simulating that form
    (:func:`simulate_requant`), so the graph is checked exactly, while ``torch_top1`` stays the
    accuracy of the subnet as trained, so the accuracy gap includes what requantizing cost.
    """
    from lifelong.train.evaluate import predict_logits

    images = np.ascontiguousarray(images, dtype=np.float32)
    trained = predict_logits(sub, images)
    if gap_step is None:
        ref = trained
    else:
        with simulate_requant(sub, gap_step):
            ref = predict_logits(sub, images)
    got, _ = run_onnx(onnx_session(model, threads=max(1, torch.get_num_threads())), images)
    return ParityReport(
        images=len(images),
        agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
        torch_top1=float((trained.argmax(1) == labels).mean()),
        onnx_top1=float((got.argmax(1) == labels).mean()),
        max_logit_diff=float(np.abs(ref - got).max()),
    )


@dataclass(frozen=True)
class ExportReport:
    path: Path
    subnet: str
    bytes: int
    parity: ParityReport
    seconds: float
    requantized: bool = False  # the fusing form passed the gate and was written
    requant_parity: ParityReport | None = None  # the fusing form's parity, kept or not
    finetune: dict | None = None  # what fine-tuning alone did before the export, if it ran
    latency_ms: dict[int, float] | None = None  # the file timed on this device by batch, if asked
    threads: dict[int, dict[str, Any]] | None = None  # by batch: the count chosen and both timings

    def to_dict(self) -> dict[str, object]:
        return {
            "threads": None if self.threads is None else {str(b): v for b, v in self.threads.items()},
            "latency_ms": None if self.latency_ms is None else {str(b): ms for b, ms in self.latency_ms.items()},
            "path": str(self.path),
            "subnet": self.subnet,
            "bytes": self.bytes,
            "parity": self.parity.to_dict(),
            "seconds": self.seconds,
            "requantized": self.requantized,
            "requant_parity": self.requant_parity.to_dict() if self.requant_parity else None,
            "finetune": self.finetune,
        }


def export_subnet(
    sub: StaticSubnet,
    out: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    checkpoint_sha256: str = "",
    min_agreement: float = 0.995,
    max_accuracy_gap: float = 0.003,
    calibration: np.ndarray | None = None,
) -> ExportReport:
    """Export ``sub`` (BN already re-calibrated) to ``out`` if it passes the parity gate.

    With ``calibration`` images, the fusing (requantized) form is tried first and kept if it
    passes the gate; otherwise the exact form is exported, behind the same gate.

    Raises:
        ParityError: the exported model disagrees with the torch subnet; ``out`` is untouched.
        ExportError: the subnet cannot be expressed in ONNX, or the file cannot be written.
    """
    t0 = time.monotonic()
    out = Path(out)

    def passes(p: ParityReport) -> bool:
        return p.agreement >= min_agreement and p.accuracy_gap <= max_accuracy_gap

    def build(gap_step: float | None) -> bytes:
        try:
            return subnet_to_onnx(sub, checkpoint_sha256, gap_step).SerializeToString()
        except (onnx.checker.ValidationError, AssertionError) as exc:
            raise ExportError(f"subnet {sub.cfg} does not export to a valid ONNX model: {exc}") from exc

    requant_parity = None
    gap_step = calibrate_gap_step(sub, calibration) if calibration is not None else None
    if gap_step is not None:
        data = build(gap_step)
        requant_parity = parity = check_parity(sub, data, images, labels, gap_step)
    if requant_parity is None or not passes(requant_parity):
        data = build(None)
        parity = check_parity(sub, data, images, labels)
    if not passes(parity):
        raise ParityError(
            f"export of {sub.cfg} failed the parity gate on {parity.images} images: top-1 agreement "
            f"{100 * parity.agreement:.2f}% (need >= {100 * min_agreement:.2f}%), accuracy torch "
            f"{100 * parity.torch_top1:.2f}% vs onnx {100 * parity.onnx_top1:.2f}% (gap allowed "
            f"{100 * max_accuracy_gap:.2f} pt); nothing was written to {out}",
            parity,
        )
    try:
        write_bytes_atomic(out, data)
    except OSError as exc:
        raise ExportError(f"cannot write the model to {out}: {exc}") from exc
    requantized = requant_parity is not None and parity is requant_parity
    return ExportReport(out, str(sub.cfg), len(data), parity, time.monotonic() - t0, requantized, requant_parity)

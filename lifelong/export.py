"""Export a static subnet to a deployable ONNX model, behind a parity gate.

``export_subnet`` turns the learned quantizers into QDQ (see :mod:`lifelong.onnx_graph`),
runs the model in onnxruntime beside the torch subnet on labelled images, and writes the file
only if the two agree: top-1 agreement >= ``min_agreement`` and an accuracy difference
<= ``max_accuracy_gap``. The file is written to a temporary name, synced, and renamed, so a
failed gate or a crash leaves nothing where a deployable model would be.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from lifelong.errors import ExportError, ParityError
from lifelong.layers import Classifier, ConvBlock, IRBlock, QConvBN
from lifelong.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LOGITS_OUTPUT,
    META_CHECKPOINT,
    META_SUBNET,
    ORT_DISABLED_OPTIMIZERS,
    ort_session,
)
from lifelong.onnx_graph import BlockSpec, ConvSpec, LinearSpec, NetSpec, build_model
from lifelong.supernet import PIXEL_MEAN, PIXEL_STD, StaticSubnet

__all__ = [
    "ExportReport",
    "ParityReport",
    "Requant",
    "calibrate_requant",
    "check_parity",
    "simulate_requant",
    "export_subnet",
    "kernel_counts",
    "onnx_session",
    "subnet_to_onnx",
]

FULL_BITS = 32


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
        stride=layer.stride, groups=layer.out_max if layer.depthwise else 1, relu=layer.relu,
        w_bits=wb, w_step=_np(layer.wq.step(wb)) if wb < FULL_BITS else None,
        a_bits=ab, a_step=float(layer.aq.step(ab).detach()) if ab < FULL_BITS else None, a_signed=layer.aq.signed,
    )  # fmt: skip


def _block_spec(block: torch.nn.Module) -> BlockSpec:
    if isinstance(block, IRBlock):
        convs = (block.expand, block.dw, block.project)
        residual = block.stride == 1 and block.expand.in_max == block.project.out_max
        return BlockSpec(tuple(_conv_spec(c) for c in convs), residual)
    assert isinstance(block, ConvBlock), f"unknown block type {type(block).__name__}"
    return BlockSpec((_conv_spec(block.conv),), False)


def _linear_spec(fc: Classifier) -> LinearSpec:
    wb, ab = _bits(fc.wq), _bits(fc.aq)
    return LinearSpec(
        weight=_np(fc.linear.weight), bias=_np(fc.linear.bias),
        w_bits=wb, w_step=_np(fc.wq.step(wb)) if wb < FULL_BITS else None,
        a_bits=ab, a_step=float(fc.aq.step(ab).detach()) if ab < FULL_BITS else None, a_signed=fc.aq.signed,
    )  # fmt: skip


@dataclass(frozen=True)
class Requant:
    """Calibrated steps of the tensors a fusing export requantizes (see :mod:`lifelong.onnx_graph`).

    ``blocks[i]`` is the int8 step of block ``i``'s projection output (None where the block
    has no skip connection), ``head`` the uint8 step of the head output.
    """

    blocks: tuple[float | None, ...]
    head: float


@torch.no_grad()
def calibrate_requant(sub: StaticSubnet, images: np.ndarray, batch_size: int = 500) -> Requant:
    """Min-max steps of the projection and head outputs over ``images``, as onnxruntime's PTQ would."""
    peaks: dict[str, float] = {}

    def hook(name: str):
        def record(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
            peaks[name] = max(peaks.get(name, 0.0), float(out.detach().abs().max()))

        return record

    handles = [sub.head.register_forward_hook(hook("head"))]
    for i, b in enumerate(sub.blocks):
        if isinstance(b, IRBlock):
            handles.append(b.project.register_forward_hook(hook(f"block{i}")))
    try:
        sub.eval()
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        for i in range(0, len(x), batch_size):
            sub(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    blocks = tuple(
        max(peaks[f"block{i}"], 1e-8) / 127 if _block_spec(b).residual else None for i, b in enumerate(sub.blocks)
    )
    return Requant(blocks, max(peaks["head"], 1e-8) / 255)


def _fuses(layer: QConvBN) -> bool:
    """The same test as :func:`lifelong.onnx_graph._fuses`, on a static torch layer."""
    return _bits(layer.aq) == 8 and _bits(layer.wq) == 8


def _fake_quant_hook(step: float, signed: bool):  # noqa: ANN202
    qmin, qmax = (-128, 127) if signed else (0, 255)

    def hook(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(out / step), qmin, qmax) * step

    return hook


@contextlib.contextmanager
def simulate_requant(sub: StaticSubnet, requant: Requant) -> Iterator[StaticSubnet]:
    """Make ``sub`` compute what the requantized ONNX graph computes, for the parity gate.

    Mirrors :func:`lifelong.onnx_graph.build_model` step by step: a signed input quantizer
    after a ReLU becomes unsigned (the folded ReLU), a fusing residual block quantizes its
    skip path with its first layer's quantizer and its projection output on the calibrated
    step, and the head output is quantized before pooling. Undone on exit.
    """
    hooks, flipped = [], []

    def fold(q: torch.nn.Module) -> None:
        if _bits(q) == 8 and q.signed:
            q.signed = False
            flipped.append(q)

    try:
        relu = sub.stem.relu
        for block, step in zip(sub.blocks, requant.blocks, strict=True):
            first = block.expand if isinstance(block, IRBlock) else block.conv
            if relu:
                fold(first.aq)
            if step is not None and isinstance(block, IRBlock) and _fuses(first) and _fuses(block.project):
                a_step = float(first.aq.step(8).detach())
                skip = _fake_quant_hook(a_step, first.aq.signed)
                hooks.append(block.register_forward_pre_hook(lambda m, args, f=skip: (f(m, None, args[0]), *args[1:])))
                hooks.append(block.project.register_forward_hook(_fake_quant_hook(step, True)))
            relu = isinstance(block, ConvBlock)
        if relu:
            fold(sub.head.aq)
        if _fuses(sub.head):
            hooks.append(sub.head.register_forward_hook(_fake_quant_hook(requant.head, False)))
        yield sub
    finally:
        for h in hooks:
            h.remove()
        for q in flipped:
            q.signed = True


def subnet_to_onnx(sub: StaticSubnet, checkpoint_sha256: str = "", requant: Requant | None = None) -> onnx.ModelProto:
    """The ONNX model of ``sub`` with its learned quantizers (BN statistics as they are now).

    With ``requant``, the residual additions and the pooling are requantized so that every
    8-bit layer runs as an integer kernel in onnxruntime (a small change to the function).
    """
    blocks = tuple(_block_spec(b) for b in sub.blocks)
    if requant is not None:
        assert len(requant.blocks) == len(blocks), "requant steps must match the subnet's blocks"
        blocks = tuple(replace(b, out_step=s) for b, s in zip(blocks, requant.blocks, strict=True))
    net = NetSpec(
        stem=_conv_spec(sub.stem),
        blocks=blocks,
        head=_conv_spec(sub.head),
        classifier=_linear_spec(sub.classifier),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        metadata={META_SUBNET: str(sub.cfg), META_CHECKPOINT: checkpoint_sha256},
        head_out_step=requant.head if requant is not None else None,
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
    requant: Requant | None = None,
) -> ParityReport:
    """Compare the ONNX model with the torch subnet on labelled images.

    With ``requant`` the ONNX model is the requantized form: top-1 agreement and logit
    difference are measured against the torch subnet simulating that form
    (:func:`simulate_requant`), so the graph is checked exactly, while ``torch_top1`` stays the
    accuracy of the subnet as trained, so the accuracy gap includes what requantizing cost.
    """
    from lifelong.evaluate import predict_logits

    images = np.ascontiguousarray(images, dtype=np.float32)
    trained = predict_logits(sub, images)
    if requant is None:
        ref = trained
    else:
        with simulate_requant(sub, requant):
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

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "subnet": self.subnet,
            "bytes": self.bytes,
            "parity": self.parity.to_dict(),
            "seconds": self.seconds,
            "requantized": self.requantized,
            "requant_parity": self.requant_parity.to_dict() if self.requant_parity else None,
        }


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def build(requant: Requant | None) -> bytes:
        try:
            return subnet_to_onnx(sub, checkpoint_sha256, requant).SerializeToString()
        except (onnx.checker.ValidationError, AssertionError) as exc:
            raise ExportError(f"subnet {sub.cfg} does not export to a valid ONNX model: {exc}") from exc

    requant_parity = None
    if calibration is not None:
        requant = calibrate_requant(sub, calibration)
        data = build(requant)
        requant_parity = parity = check_parity(sub, data, images, labels, requant)
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
        _write_atomic(out, data)
    except OSError as exc:
        raise ExportError(f"cannot write the model to {out}: {exc}") from exc
    requantized = requant_parity is not None and parity is requant_parity
    return ExportReport(out, str(sub.cfg), len(data), parity, time.monotonic() - t0, requantized, requant_parity)

"""Build the ONNX graph of a subnet from plain numpy arrays (no torch).

The exporter fills a :class:`NetSpec` from a trained static subnet; the device profiler fills
one with random weights to time block choices. Both go through :func:`build_model`, so what
is profiled is exactly what is deployed.

How the learned quantization becomes QDQ (the parity gate in :mod:`lifelong.export` checks it):

- An activation quantizer (per tensor, step ``s``) at a layer's input becomes
  ``QuantizeLinear(x, s, 0) -> DequantizeLinear``: int8 when signed, uint8 after a ReLU.
  ``round(x / s)`` clamped to the type's range is exactly the training-time fake-quant.
- A weight quantizer (per output channel, step ``s_c``, symmetric narrow grid) times the
  folded batch norm ``g_c = gamma_c / sqrt(var_c + eps)`` stays on the same integer grid:
  ``s_c q * g_c = (s_c |g_c|) (sign(g_c) q)``. So BN folds into the weight's per-channel
  scale and nothing is re-calibrated. 8-bit weights are stored as int8, 4-bit ones as INT4
  (``DequantizeLinear`` from opset 21), half the bytes.
- Where input and weight are both 8-bit, the bias is stored as int32 on the scale
  ``s_x s_w`` (the form onnxruntime's QDQ fusion turns into ``QLinearConv``), and the torch
  layer rounds it the same way in eval mode; otherwise the bias stays float. Sessions must
  disable onnxruntime's ``WeightBiasQuantization`` (:data:`ORT_DISABLED_OPTIMIZERS`), which
  would otherwise quantize float weights and biases the model did not train quantized.
- A ReLU before a uint8 quantizer with zero point 0 is what onnxruntime folds away.

onnxruntime turns ``DQ -> Conv -> Q`` into an integer ``QLinearConv`` only where the
convolution's output is quantized. Inside a residual block the projection feeds the float
``Add``, and the head feeds the float pooling, so those convolutions would run in float with
their weights dequantized at every run, and layout transposes around them. An export may
therefore *requantize* (``BlockSpec.out_step``, ``NetSpec.head_out_step``): the projection
output and the head output get an int8/uint8 quantize-dequantize at a step calibrated on
training images, and the skip path reuses the block input's quantized copy (the first
convolution quantizes it anyway), so the ``Add`` and the pooling become ``QLinearAdd`` and
``QLinearGlobalAveragePool``. That is a small change to the trained function; the parity
gate decides whether it is kept (:func:`lifelong.export.export_subnet`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lifelong.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
    META_FORMAT,
    MODEL_FORMAT,
)

__all__ = [
    "OPSET",
    "BlockSpec",
    "ConvSpec",
    "LinearSpec",
    "NetSpec",
    "build_block_model",
    "build_head_model",
    "build_model",
]

OPSET = 21
"""INT4 ``DequantizeLinear`` needs opset 21; onnxruntime 1.18+ runs it."""

FULL_BITS = 32
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """One convolution + batch norm (+ ReLU) with its quantizers, as numpy arrays.

    ``weight`` is ``(O, I / groups, k, k)`` before BN folding; ``w_step`` is ``(O,)``.
    ``bits == 32`` means float, and then the step is ``None``.
    """

    weight: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    stride: int
    groups: int
    relu: bool
    w_bits: int = FULL_BITS
    w_step: np.ndarray | None = None
    a_bits: int = FULL_BITS
    a_step: float | None = None
    a_signed: bool = True

    def __post_init__(self) -> None:
        o = self.weight.shape[0]
        assert self.weight.ndim == 4, f"conv weight must be (O, I, k, k), got {self.weight.shape}"
        for name in ("gamma", "beta", "mean", "var"):
            assert getattr(self, name).shape == (o,), f"{name} must be ({o},)"
        assert self.w_bits >= FULL_BITS or (self.w_step is not None and self.w_step.shape == (o,)), "w_step (O,)"
        assert self.a_bits >= FULL_BITS or self.a_step is not None, "a quantized input needs its step"
        assert self.a_bits in (8, FULL_BITS), f"activations are exported at 8 or 32 bits, not {self.a_bits}"
        assert self.w_bits in (4, 8, FULL_BITS), f"weights are exported at 4, 8 or 32 bits, not {self.w_bits}"

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1] * self.groups)


@dataclass(frozen=True, eq=False)
class LinearSpec:
    """The classifier: ``weight (O, I)``, ``bias (O,)``, quantizers as in :class:`ConvSpec`."""

    weight: np.ndarray
    bias: np.ndarray
    w_bits: int = FULL_BITS
    w_step: np.ndarray | None = None
    a_bits: int = FULL_BITS
    a_step: float | None = None
    a_signed: bool = False


@dataclass(frozen=True, eq=False)
class BlockSpec:
    """A block: its convolutions in order, and whether the input is added to the output."""

    convs: tuple[ConvSpec, ...]
    residual: bool = False
    out_step: float | None = None  # requantize the projection output (int8) so the block fuses


@dataclass(frozen=True, eq=False)
class NetSpec:
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec
    classifier: LinearSpec
    pixel_mean: float
    pixel_std: float
    metadata: dict[str, str] = field(default_factory=dict)
    head_out_step: float | None = None  # requantize the head output (uint8) so pooling fuses


class _Graph:
    """Nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const_int4(self, prefix: str, values: np.ndarray) -> str:
        name = self._name(prefix)
        packed = np.asarray(values).astype(np.int8).astype(ml_dtypes.int4)  # two values per byte in raw_data
        self.inits.append(numpy_helper.from_array(packed, name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, output: str | None = None, **attrs: object) -> str:
        out = output or self._name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(op), **attrs))
        return out


def _qdq_act(g: _Graph, x: str, step: float, signed: bool, prefix: str, relu_folded: bool = False) -> str:
    """Quantize-dequantize an activation; every activation is uint8 so that convolutions fuse.

    onnxruntime fuses ``DQ -> Conv -> Q`` only when input and output have the same type, so
    signed tensors use uint8 with zero point 128: ``[-128, 127]`` exactly as int8. With
    ``relu_folded`` a signed quantizer that follows a ReLU becomes uint8 with zero point 0,
    which lets onnxruntime drop the ReLU; its range grows from ``127 s`` to ``255 s`` (the one
    difference from training, for outliers only; the parity gate measures it).
    """
    s = g.const(prefix + ".a_scale", np.float32(step))
    z = g.const(prefix + ".a_zero", np.uint8(128 if signed and not relu_folded else 0))
    q = g.node("QuantizeLinear", [x, s, z], prefix + ".q")
    return g.node("DequantizeLinear", [q, s, z], prefix + ".dq")


def _quant_weight(w: np.ndarray, step: np.ndarray, bits: int) -> np.ndarray:
    """Integer weights exactly as the fake-quant computed them in float32."""
    qmax = 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (w.ndim - 1)
    return np.clip(np.round(w.astype(np.float32) / step.astype(np.float32).reshape(shape)), -qmax, qmax)


def _weight_input(
    g: _Graph, w: np.ndarray, bits: int, step: np.ndarray | None, gain: np.ndarray, prefix: str
) -> tuple[str, np.ndarray | None]:
    """The weight times ``gain`` per output channel: float, or DQ of integers. Returns (name, scale)."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    if bits >= FULL_BITS:
        folded = (w.astype(np.float64) * gain.reshape(shape)).astype(np.float32)
        return g.const(prefix + ".w", folded), None
    assert step is not None
    q = _quant_weight(w, step, bits) * np.sign(gain).reshape(shape)
    q[:, ...] = np.where(gain.reshape(shape) == 0, 0, q)
    scale = (step.astype(np.float64) * np.maximum(np.abs(gain), 1e-30)).astype(np.float32)
    o = w.shape[0]
    if bits == 8:
        qn = g.const(prefix + ".w_q", q.astype(np.int8))
        zn = g.const(prefix + ".w_zero", np.zeros(o, np.int8))
    else:
        qn = g.const_int4(prefix + ".w_q", q)
        zn = g.const_int4(prefix + ".w_zero", np.zeros(o, np.int8))
    sn = g.const(prefix + ".w_scale", scale)
    return g.node("DequantizeLinear", [qn, sn, zn], prefix + ".w_dq", axis=0), scale


def _bias_input(
    g: _Graph, bias: np.ndarray, a_step: float | None, w_scale: np.ndarray | None, w_bits: int, prefix: str
) -> str:
    if a_step is not None and w_scale is not None and w_bits == 8:
        scale = (np.float64(a_step) * w_scale.astype(np.float64)).astype(np.float32)
        q = np.round(bias.astype(np.float64) / scale.astype(np.float64))
        if np.all(np.abs(q) <= _INT32.max):  # the same test as QConvBN._integer_bias_bn
            qn = g.const(prefix + ".b_q", q.astype(np.int32))
            sn = g.const(prefix + ".b_scale", scale)
            zn = g.const(prefix + ".b_zero", np.zeros(len(bias), np.int32))
            return g.node("DequantizeLinear", [qn, sn, zn], prefix + ".b_dq", axis=0)
    return g.const(prefix + ".b", bias.astype(np.float32))


def _conv(g: _Graph, x: str, c: ConvSpec, prefix: str, quantized: bool = False, relu_folded: bool = False) -> str:
    """``quantized``: ``x`` is already the quantize-dequantize this layer's input quantizer makes.

    ``relu_folded``: ``x`` comes out of a ReLU and the fusing form is wanted (see :func:`_qdq_act`).
    """
    if c.a_bits < FULL_BITS and not quantized:
        assert c.a_step is not None
        x = _qdq_act(g, x, c.a_step, c.a_signed, prefix, relu_folded)
    inv_std = 1.0 / np.sqrt(c.var.astype(np.float64) + c.eps)
    gain = c.gamma.astype(np.float64) * inv_std  # BN folded per output channel
    bias = c.beta.astype(np.float64) - gain * c.mean.astype(np.float64)
    w, w_scale = _weight_input(g, c.weight, c.w_bits, c.w_step, gain, prefix)
    b = _bias_input(g, bias, c.a_step if c.a_bits < FULL_BITS else None, w_scale, c.w_bits, prefix)
    k = int(c.weight.shape[-1])
    y = g.node(
        "Conv", [x, w, b], prefix + ".conv",
        kernel_shape=[k, k], strides=[c.stride, c.stride], pads=[k // 2] * 4, group=c.groups,
    )  # fmt: skip
    return g.node("Relu", [y], prefix + ".relu") if c.relu else y


def _fuses(c: ConvSpec) -> bool:
    """Whether onnxruntime can run ``c`` as an integer convolution (8-bit input and weights)."""
    return c.a_bits == 8 and c.w_bits == 8


def _block(g: _Graph, x: str, b: BlockSpec, prefix: str, x_relu_folded: bool = False) -> str:
    """The block's graph; ``x_relu_folded``: ``x`` is a ReLU output and the fusing form is wanted."""
    first = b.convs[0]
    requant = b.residual and b.out_step is not None and _fuses(first) and _fuses(b.convs[-1])
    if requant:  # the skip path takes the copy of x the first convolution quantizes anyway
        assert first.a_step is not None
        x = _qdq_act(g, x, first.a_step, first.a_signed, f"{prefix}.0", x_relu_folded)
    h = x
    for i, c in enumerate(b.convs):
        h = _conv(g, h, c, f"{prefix}.{i}", quantized=requant and i == 0, relu_folded=x_relu_folded and i == 0)
    if not b.residual:
        return h
    if requant:
        assert b.out_step is not None
        h = _qdq_act(g, h, b.out_step, signed=True, prefix=f"{prefix}.out")
    return g.node("Add", [h, x], prefix + ".add")


def _ends_in_relu(b: BlockSpec) -> bool:
    return b.convs[-1].relu and not b.residual


def _classifier(g: _Graph, emb: str, c: LinearSpec) -> str:
    x = emb
    if c.a_bits < FULL_BITS:
        assert c.a_step is not None
        x = _qdq_act(g, x, c.a_step, c.a_signed, "fc")
    w, w_scale = _weight_input(g, c.weight, c.w_bits, c.w_step, np.ones(len(c.bias)), "fc")
    b = g.const("fc.b", c.bias.astype(np.float32))  # Gemm does not fuse here: the bias stays float, as trained
    return g.node("Gemm", [x, w, b], "fc", output=LOGITS_OUTPUT, transB=1)


def _model(g: _Graph, outputs: list[onnx.ValueInfoProto], metadata: dict[str, str], doc: str) -> onnx.ModelProto:
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *INPUT_SHAPE])
    graph = helper.make_graph(g.nodes, "lifelong", [image], outputs, g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lifelong", doc_string=doc
    )
    model.ir_version = 10  # what onnxruntime 1.18+ reads; opset 21 needs IR 10
    helper.set_model_props(model, {META_FORMAT: str(MODEL_FORMAT), **metadata})
    return model


def _tail(
    g: _Graph,
    x: str,
    head: ConvSpec,
    classifier: LinearSpec,
    head_out_step: float | None,
    emb_name: str | None,
    head_relu_folded: bool = False,
) -> str:
    """Head convolution, global pooling, the embedding and the classifier's logits."""
    x = _conv(g, x, head, "head", relu_folded=head_relu_folded)
    if head_out_step is not None and _fuses(head):
        x = _qdq_act(g, x, head_out_step, signed=False, prefix="head.out")  # after the ReLU: uint8
    pooled = g.node("GlobalAveragePool", [x], "pool")  # (N, C, 1, 1)
    emb = g.node("Flatten", [pooled], "embedding", output=emb_name, axis=1)  # (N, C)
    return _classifier(g, emb, classifier)


def build_model(net: NetSpec) -> onnx.ModelProto:
    """The deployable classifier: ``image -> (logits, embedding)`` with the QDQ of ``net``."""
    g = _Graph()
    m = g.const("pixel_mean", np.float32(net.pixel_mean))
    s = g.const("pixel_std", np.float32(net.pixel_std))
    x = g.node("Div", [g.node("Sub", [INPUT_NAME, m], "centred"), s], "normalised")  # as in training, exactly
    x = _conv(g, x, net.stem, "stem")
    fusing, relu = net.head_out_step is not None, net.stem.relu  # requantized exports also fold ReLUs
    for i, b in enumerate(net.blocks):
        x = _block(g, x, b, f"block{i}", x_relu_folded=fusing and relu)
        relu = _ends_in_relu(b)
    _tail(g, x, net.head, net.classifier, net.head_out_step, EMBEDDING_OUTPUT, head_relu_folded=fusing and relu)
    classes, width = net.classifier.weight.shape
    outputs = [
        helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["N", int(classes)]),
        helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", int(width)]),
    ]
    return _model(g, outputs, net.metadata, "lifelong subnet " + net.metadata.get("lifelong.subnet", ""))


def build_block_model(
    blocks: tuple[BlockSpec, ...], in_shape: tuple[int, int, int], next_a_bits: int = FULL_BITS
) -> onnx.ModelProto:
    """A graph of just ``blocks`` on an input of ``in_shape`` (C, H, W), for the latency profile.

    ``next_a_bits == 8`` ends the graph with the quantize-dequantize the following layer
    would apply, so that the last convolution fuses as it does inside a whole subnet.
    """
    g = _Graph()
    x = "x"
    for i, b in enumerate(blocks):
        x = _block(g, x, b, f"block{i}")
    if next_a_bits < FULL_BITS:  # after a ReLU the next quantizer is uint8 from 0, as in build_model
        x = _qdq_act(g, x, 0.05, signed=True, prefix="next", relu_folded=bool(blocks) and _ends_in_relu(blocks[-1]))
    g.node("Identity", [x], "y", output="y")
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(g.nodes, "block", [inp], [out], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lifelong")
    model.ir_version = 10
    return model


def build_head_model(
    head: ConvSpec, classifier: LinearSpec, in_shape: tuple[int, int, int], head_out_step: float | None = None
) -> onnx.ModelProto:
    """The fixed tail of every subnet (head conv, pooling, classifier) on ``in_shape``, for the profile."""
    g = _Graph()
    _tail(g, "x", head, classifier, head_out_step, None)
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])
    out = helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, None)
    graph = helper.make_graph(g.nodes, "head", [inp], [out], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lifelong")
    model.ir_version = 10
    return model

"""Build the ONNX graph of a subnet from plain numpy arrays (no torch).

The exporter fills a :class:`NetSpec` from a trained static subnet; the device profiler fills
one with random weights to time block choices. Both go through :func:`build_model`, so what
is profiled is exactly what is deployed.

How the learned quantization becomes QDQ (the parity gate in :mod:`lifelong.deploy.export` checks it):

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
convolution's output is quantized. In the plain CNNs of the space every convolution is read by
a quantizer, possibly through a max-pool or a flatten, both of which commute with rounding
(max-pool is monotone, flatten moves elements): the graph quantizes *before* them, with the
reader's own quantizer, so the pool runs on uint8 and the convolution fuses, and the function
is exactly the trained one. A global average pool does not commute; an export may therefore
*requantize* its input (``NetSpec.gap_step``, a uint8 quantize-dequantize at a step calibrated
on training images) so that it runs as ``QLinearGlobalAveragePool`` and the last convolution
fuses. That is a small change to the trained function; the parity gate decides whether it is
kept (:func:`lifelong.deploy.export.export_subnet`).

A fully connected layer is a ``Gemm``; with 8-bit input and weights its bias is stored as int32
on the scale ``s_x s_w`` (as for a convolution), which lets onnxruntime run it as an integer
``QGemm``; :class:`lifelong.nn.layers.QLinear` rounds its bias the same way in eval mode.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lifelong.deploy.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
    META_FORMAT,
    MODEL_FORMAT,
)
from lifelong.deploy.net_spec import ConvSpec, LinearSpec, NetSpec
from lifelong.space.config import FULL_BITS

__all__ = [
    "OPSET",
    "ConvSpec",
    "LinearSpec",
    "NetSpec",
    "build_model",
    "build_part_model",
]

OPSET = 21
"""INT4 ``DequantizeLinear`` needs opset 21; onnxruntime 1.18+ runs it."""

_INT32 = np.iinfo(np.int32)


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


def _qdq_act(g: _Graph, x: str, step: float, signed: bool, prefix: str) -> str:
    """Quantize-dequantize an activation; every activation is uint8 so that convolutions fuse.

    onnxruntime fuses ``DQ -> Conv -> Q`` only when input and output have the same type, so
    signed tensors (the normalised image) use uint8 with zero point 128: ``[-128, 127]``
    exactly as int8. Every other activation follows a ReLU and is unsigned with zero point 0,
    which also lets onnxruntime drop the ReLU before it.
    """
    s = g.const(prefix + ".a_scale", np.float32(step))
    z = g.const(prefix + ".a_zero", np.uint8(128 if signed else 0))
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


def _conv(g: _Graph, x: str, c: ConvSpec, prefix: str, quantized: bool = False) -> str:
    """``quantized``: ``x`` is already the quantize-dequantize this layer's input quantizer makes."""
    if c.a_bits < FULL_BITS and not quantized:
        assert c.a_step is not None
        x = _qdq_act(g, x, c.a_step, c.a_signed, prefix)
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


def _fuses(c: ConvSpec | LinearSpec) -> bool:
    """Whether onnxruntime can run ``c`` as an integer kernel (8-bit input and weights)."""
    return c.a_bits == 8 and c.w_bits == 8


def _linear(
    g: _Graph,
    x: str,
    c: LinearSpec,
    prefix: str,
    quantized: bool = False,
    output: str | None = None,
    after: tuple[float, bool] | None = None,
) -> tuple[str, bool]:
    """``after``: the reader's input quantizer. An unsigned one clamps at zero, so after a ReLU
    layer it replaces the ReLU (exactly) and follows the ``Gemm`` directly, which is the form
    onnxruntime runs as an integer ``QGemm``. Returns the output and whether it carries
    ``after``'s quantize-dequantize."""
    if c.a_bits < FULL_BITS and not quantized:
        assert c.a_step is not None
        x = _qdq_act(g, x, c.a_step, c.a_signed, prefix)
    w, w_scale = _weight_input(g, c.weight, c.w_bits, c.w_step, np.ones(len(c.bias)), prefix)
    b = _bias_input(g, c.bias.astype(np.float64), c.a_step if c.a_bits < FULL_BITS else None, w_scale, c.w_bits, prefix)
    if c.relu and after is not None and not after[1]:
        y = g.node("Gemm", [x, w, b], prefix + ".gemm", transB=1)
        return _qdq_act(g, y, after[0], False, prefix + ".out"), True
    y = g.node("Gemm", [x, w, b], prefix + ".gemm", output=None if c.relu else output, transB=1)
    return (g.node("Relu", [y], prefix + ".relu", output=output) if c.relu else y), False


_Quant = tuple[float, bool]  # (step, signed) of an activation quantizer


def _input_quant(layer: ConvSpec | LinearSpec | None) -> _Quant | None:
    """The input quantizer of ``layer``, None where it reads float."""
    if layer is None or layer.a_bits >= FULL_BITS:
        return None
    assert layer.a_step is not None
    return layer.a_step, layer.a_signed


def _layers(
    g: _Graph,
    x: str,
    convs: tuple[ConvSpec, ...],
    pool_after: tuple[bool, ...],
    after: _Quant | None,
    quantized: bool = False,
) -> tuple[str, bool]:
    """The convolutions and their max-pools. ``after`` quantizes the result (the reader's
    input quantizer); it is applied before a final max-pool, so the pool runs on uint8. Returns
    the output and whether it carries ``after``'s quantize-dequantize."""
    for i, (c, pool) in enumerate(zip(convs, pool_after, strict=True)):
        x = _conv(g, x, c, f"conv{i}", quantized=quantized)
        quantized = False
        if pool:
            reader = _input_quant(convs[i + 1]) if i + 1 < len(convs) else after
            if reader is not None:  # exact: max-pool commutes with monotone rounding
                x, quantized = _qdq_act(g, x, reader[0], reader[1], f"conv{i}.out"), True
            x = g.node("MaxPool", [x], f"conv{i}.pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    return x, quantized


def _embedding(g: _Graph, x: str, name: str) -> None:
    """The graph output ``name``: the last layer's input. Where that is a dequantized tensor,
    the output gets a second ``DequantizeLinear`` of its own, so that the one feeding the layer
    has a single reader and onnxruntime still fuses the layer into an integer kernel."""
    producer = next((n for n in g.nodes if x in n.output), None)
    if producer is not None and producer.op_type == "DequantizeLinear":
        g.nodes.append(helper.make_node("DequantizeLinear", list(producer.input), [name], name=g._name("embedding")))
    else:
        g.node("Identity", [x], "embedding", output=name)


def _head_input_quant(pool: str, fcs: tuple[LinearSpec, ...], gap_step: float | None) -> _Quant | None:
    """What quantizes the last feature map: the first FC's quantizer through a flatten (exact),
    or the requantization before a global pool."""
    if pool == "flat":
        return _input_quant(fcs[0])
    return (gap_step, False) if gap_step is not None and _fuses(fcs[0]) else None


def _head(
    g: _Graph,
    x: str,
    pool: str,
    fcs: tuple[LinearSpec, ...],
    gap_step: float | None,
    quantized: bool,
    emb_name: str | None,
) -> str:
    """The pool (or flatten) and the FC layers; names the last layer's input ``emb_name``.
    ``quantized``: ``x`` already carries :func:`_head_input_quant`'s quantize-dequantize."""
    q = _head_input_quant(pool, fcs, gap_step)
    if q is not None and not quantized:
        x = _qdq_act(g, x, q[0], q[1], "head.in")
    if pool == "gap":
        x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "gap")], "gap.flat", axis=1)  # (N, C)
        fc_quantized = False
    else:
        # quantized again after the flatten (exact: the values are on the grid already) so
        # that onnxruntime sees DQ -> Gemm and runs the layer as an integer QGemm
        x = g.node("Flatten", [x], "flat", axis=1)  # (N, C*H*W), channel-major as in torch
        fc_quantized = False
    if len(fcs) == 2:
        x, fc_quantized = _linear(g, x, fcs[0], "hidden", quantized=fc_quantized, after=_input_quant(fcs[1]))
    if emb_name is not None:
        _embedding(g, x, emb_name)
    return _linear(g, x, fcs[-1], "fc", quantized=fc_quantized, output=LOGITS_OUTPUT)[0]


def _model(
    g: _Graph, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], metadata: dict[str, str], doc: str
) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, "lifelong", inputs, outputs, g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lifelong", doc_string=doc
    )
    model.ir_version = 10  # what onnxruntime 1.18+ reads; opset 21 needs IR 10
    if metadata:
        helper.set_model_props(model, {META_FORMAT: str(MODEL_FORMAT), **metadata})
    return model


def build_model(net: NetSpec) -> onnx.ModelProto:
    """The deployable classifier: ``image -> (logits, embedding)`` with the QDQ of ``net``."""
    g = _Graph()
    m = g.const("pixel_mean", np.float32(net.pixel_mean))
    s = g.const("pixel_std", np.float32(net.pixel_std))
    x = g.node("Div", [g.node("Sub", [INPUT_NAME, m], "centred"), s], "normalised")  # as in training, exactly
    after = _head_input_quant(net.pool, net.fcs, net.gap_step)
    x, quantized = _layers(g, x, net.convs, net.pool_after, after)
    _head(g, x, net.pool, net.fcs, net.gap_step, quantized, EMBEDDING_OUTPUT)
    classes, width = net.fcs[-1].weight.shape
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *INPUT_SHAPE])
    outputs = [
        helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["N", int(classes)]),
        helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", int(width)]),
    ]
    return _model(g, [image], outputs, {META_FORMAT: str(MODEL_FORMAT), **net.metadata},
                  "lifelong subnet " + net.metadata.get("lifelong.subnet", ""))  # fmt: skip


def build_part_model(
    in_shape: tuple[int, int, int],
    convs: tuple[ConvSpec, ...] = (),
    pool_after: tuple[bool, ...] = (),
    after: ConvSpec | LinearSpec | None = None,
    head: tuple[str, tuple[LinearSpec, ...]] | None = None,
    quantized_input: bool = False,
) -> onnx.ModelProto:
    """A graph of a part of a subnet on an input of ``in_shape`` (C, H, W), for the latency profile.

    ``convs`` (with their pools) end with the quantize-dequantize of ``after``, the layer that
    would read them, so that the last convolution fuses as it does inside a whole subnet;
    ``head`` is ``(pool, fcs)`` (a global pool requantized, as a fusing export is).
    ``quantized_input``: the input already carries the first layer's quantize-dequantize.
    """
    g = _Graph()
    x = "x"
    if head is not None:
        x = _head(g, x, head[0], head[1], 0.05, quantized_input, None)
    else:
        x, quantized = _layers(g, x, convs, pool_after, _input_quant(after), quantized=quantized_input)
        if after is not None and not quantized and _input_quant(after) is not None:
            step, signed = _input_quant(after)  # type: ignore[misc]
            x = _qdq_act(g, x, step, signed, "next")
    g.node("Identity", [x], "y", output="y")
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model(g, [inp], [out], {}, "lifelong part")

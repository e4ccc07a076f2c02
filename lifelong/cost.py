"""Analytic cost of a subnet: parameters, multiply-accumulates, weight bytes, BitOps and
peak activation memory.

These need no torch and no device: they follow from the subnet's configuration alone, so the
search can call them millions of times. (Measured latency lives with the device profile;
:mod:`lifelong.latency_table` compiles both into tables for batches of subnets.)
"""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.space import BlockConfig, Precision, SearchSpace, SubnetConfig

__all__ = [
    "LayerCost",
    "SubnetCost",
    "activation_bytes_per_element",
    "activation_trace",
    "block_cost",
    "block_resolution",
    "block_trace",
    "head_cost",
    "head_trace",
    "peak_activation_bytes",
    "stem_cost",
    "stem_resolution",
    "stem_trace",
    "subnet_cost",
]


@dataclass(frozen=True)
class LayerCost:
    name: str
    params: int
    macs: int
    prec: Precision

    @property
    def weight_bits(self) -> int:
        return self.params * self.prec.w

    @property
    def bitops(self) -> int:
        return self.macs * self.prec.w * self.prec.a


@dataclass(frozen=True)
class SubnetCost:
    layers: tuple[LayerCost, ...]

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights stored at their trained precision (BN folded, biases as 32 bits)."""
        return sum(layer.weight_bits for layer in self.layers) // 8

    @property
    def bitops(self) -> int:
        return sum(layer.bitops for layer in self.layers)


def _conv(name: str, cin: int, cout: int, k: int, hw_out: int, prec: Precision, groups: int = 1) -> LayerCost:
    params = cout * (cin // groups) * k * k + cout  # + folded BN bias
    return LayerCost(name, params, hw_out * hw_out * cout * (cin // groups) * k * k, prec)


# -- the parts of a subnet ----------------------------------------------------------------------
# A subnet is a stem, blocks and a head; each part's cost depends only on the few values in its
# signature, which is what lets :mod:`lifelong.latency_table` cache parts across subnets.
def stem_resolution(space: SearchSpace) -> int:
    """Side of the stem's output feature map (ceil, as a padded strided conv)."""
    c = space.config
    return -(-c.image_size // c.stem_stride)


def block_resolution(space: SearchSpace, stage: int, first: bool) -> tuple[int, int]:
    """Input and output side of a block of ``stage``; only the first block of a stage strides."""
    hw = stem_resolution(space)
    for spec in space.config.stages[:stage]:
        hw = -(-hw // spec.stride)
    out = -(-hw // space.config.stages[stage].stride)
    return (hw, out) if first else (out, out)


def stem_cost(space: SearchSpace, width: int, prec: Precision) -> LayerCost:
    c = space.config
    return _conv("stem", c.in_channels, width, 3, stem_resolution(space), prec)


def block_cost(space: SearchSpace, stage: int, first: bool, cin: int, cout: int, b: BlockConfig) -> LayerCost:
    """Parameters and MACs of one block (an inverted residual's three convolutions together)."""
    hw, hw_out = block_resolution(space, stage, first)
    name = f"stage{stage}.{'first' if first else 'rest'}"
    if b.kind != "ir":
        return _conv(name, cin, cout, b.kernel, hw_out, b.prec)
    assert b.expand is not None, f"{name}: an inverted residual block needs an expand ratio"
    hid = cin * b.expand
    parts = [
        _conv(name + ".expand", cin, hid, 1, hw, b.prec),
        _conv(name + ".dw", hid, hid, b.kernel, hw_out, b.prec, groups=hid),
        _conv(name + ".project", hid, cout, 1, hw_out, b.prec),
    ]
    return LayerCost(name, sum(p.params for p in parts), sum(p.macs for p in parts), b.prec)


def head_cost(space: SearchSpace, cin: int, prec: Precision) -> LayerCost:
    """The fixed 1x1 feature conv and the classifier, at the last stage's resolution."""
    c = space.config
    hw = block_resolution(space, len(c.stages) - 1, False)[1]
    head = _conv("head", cin, c.head_width, 1, hw, prec)
    fc = LayerCost("classifier", c.head_width * c.num_classes + c.num_classes, c.head_width * c.num_classes, prec)
    return LayerCost("head", head.params + fc.params, head.macs + fc.macs, prec)


def subnet_cost(space: SearchSpace, cfg: SubnetConfig) -> SubnetCost:
    """Per-layer parameters and MACs of ``cfg`` at batch 1."""
    layers = [stem_cost(space, cfg.stem_width, cfg.stem_prec)]
    cin = cfg.stem_width
    for i, st in enumerate(cfg.stages):
        for j, b in enumerate(st.blocks):
            layer = block_cost(space, i, j == 0, cin, st.width, b)
            layers.append(LayerCost(f"stage{i}.block{j}", layer.params, layer.macs, layer.prec))
            cin = st.width
    layers.append(head_cost(space, cin, cfg.head_prec))
    return SubnetCost(tuple(layers))


# -- peak activation memory ---------------------------------------------------------------------
# The model of what is alive while one op runs (batch 1), so that a policy's peak-memory budget
# can be checked without running anything:
#
# - ops run in graph order: the stem conv; per block its convolutions (expand, depthwise,
#   project for an inverted residual; one conv for a plain block) and, for a residual block,
#   the add; the head conv, the global pooling and the classifier;
# - while an op runs, its input, its output and every tensor kept for a later op are alive
#   (the block input of a residual block lives until its add); a tensor is freed after its
#   last reader;
# - a tensor is stored at the activation precision of the layer that reads it, because the
#   activation quantizers sit at layer inputs (see :mod:`lifelong.onnx_graph`): 1 byte per
#   element for 8 bits or fewer, 4 for float. Tensors inside a block are read by that block.
#   The graph input and the logits are float.
#
# Weights are not counted here: they are the model bytes, which a peak-memory budget adds.
def activation_bytes_per_element(prec: Precision) -> int:
    """Bytes of one activation read by a layer at ``prec``: 1 when quantized to <= 8 bits, else 4."""
    return 1 if prec.a <= 8 else 4


def stem_trace(space: SearchSpace, width: int, reader: Precision) -> list[tuple[str, int]]:
    """The stem conv reads the float graph input; ``reader``: the precision of the first block."""
    c = space.config
    hw = stem_resolution(space)
    x = c.in_channels * c.image_size * c.image_size * 4
    return [("stem", x + width * hw * hw * activation_bytes_per_element(reader))]


def block_trace(
    space: SearchSpace,
    stage: int,
    first: bool,
    cin: int,
    cout: int,
    b: BlockConfig,
    reader: Precision,
    name: str | None = None,
) -> list[tuple[str, int]]:
    """``(op, live bytes)`` of one block; ``reader``: the precision of the layer after it."""
    hw, hw_out = block_resolution(space, stage, first)
    e_in, e_out = activation_bytes_per_element(b.prec), activation_bytes_per_element(reader)
    name = name or f"stage{stage}.{'first' if first else 'rest'}"
    x = cin * hw * hw * e_in  # the block input, read at the block's precision
    y = cout * hw_out * hw_out * e_out  # the block output, read by the next layer
    if b.kind != "ir":
        return [(name, x + y)]
    assert b.expand is not None, f"{name}: an inverted residual block needs an expand ratio"
    hid = cin * b.expand
    h1 = hid * hw * hw * e_in  # (hid, H, W)
    h2 = hid * hw_out * hw_out * e_in  # (hid, H', W')
    stride = space.config.stages[stage].stride if first else 1
    if not (stride == 1 and cin == cout):  # as in lifelong.layers: a skip needs equal shapes
        return [(name + ".expand", x + h1), (name + ".dw", h1 + h2), (name + ".project", h2 + y)]
    # residual: the input stays alive until the add, which reads the projection (this block)
    proj = cout * hw_out * hw_out * e_in
    return [
        (name + ".expand", x + h1),
        (name + ".dw", x + h1 + h2),
        (name + ".project", x + h2 + proj),
        (name + ".add", x + proj + y),
    ]


def head_trace(space: SearchSpace, cin: int, prec: Precision) -> list[tuple[str, int]]:
    """Head conv, global pooling and classifier; the logits are float."""
    c = space.config
    hw = block_resolution(space, len(c.stages) - 1, False)[1]
    e = activation_bytes_per_element(prec)
    feat = c.head_width * hw * hw * e  # (head_width, H, W), read by the pooling
    pooled = c.head_width * e
    return [
        ("head", cin * hw * hw * e + feat),
        ("pool", feat + pooled),
        ("classifier", pooled + c.num_classes * 4),
    ]


def activation_trace(space: SearchSpace, cfg: SubnetConfig) -> list[tuple[str, int]]:
    """Live activation bytes while each op of ``cfg`` runs at batch 1, in graph order.

    See the comment above :func:`activation_bytes_per_element` for the model.
    """
    blocks = [(i, j, st.width, b) for i, st in enumerate(cfg.stages) for j, b in enumerate(st.blocks)]
    readers = [b.prec for *_, b in blocks] + [cfg.head_prec]  # readers[n]: who reads the output of part n
    trace = stem_trace(space, cfg.stem_width, readers[0])
    cin = cfg.stem_width
    for n, (i, j, cout, b) in enumerate(blocks):
        trace += block_trace(space, i, j == 0, cin, cout, b, readers[n + 1], name=f"stage{i}.block{j}")
        cin = cout
    return trace + head_trace(space, cin, cfg.head_prec)


def peak_activation_bytes(space: SearchSpace, cfg: SubnetConfig) -> int:
    """The most activation bytes alive at once during one inference of ``cfg`` at batch 1."""
    return max(live for _, live in activation_trace(space, cfg))

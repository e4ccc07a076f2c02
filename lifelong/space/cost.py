"""Analytic cost of a subnet: parameters, multiply-accumulates, weight bytes, BitOps and
peak activation memory.

These need no torch and no device: they follow from the subnet's configuration alone, so the
search can call them millions of times. (Measured latency lives with the device profile;
:mod:`lifelong.device.latency_table` compiles both into tables for batches of subnets.)
"""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.space.config import Precision, SearchSpace, SubnetConfig, stage_sizes

__all__ = [
    "LayerCost",
    "SubnetCost",
    "activation_bytes_per_element",
    "activation_trace",
    "conv_resolution",
    "feature_count",
    "peak_activation_bytes",
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


def conv_resolution(space: SearchSpace, stage: int, position: int, down: str) -> tuple[int, int]:
    """Input and output side of convolution ``position`` of ``stage`` downsampling by ``down``:
    in a stride stage the first one halves the side and the later ones run at the half; in a
    pool stage all run at the stage's input side (the max-pool after them halves it)."""
    sizes = stage_sizes(space.config.image_size, stage + 1)
    if down != "stride":
        return sizes[stage], sizes[stage]
    return (sizes[stage], sizes[stage + 1]) if position == 0 else (sizes[stage + 1], sizes[stage + 1])


def feature_count(space: SearchSpace, cfg: SubnetConfig) -> int:
    """Inputs of the first fully connected layer: the pooled or the flattened last feature map."""
    width = cfg.stages[-1].width
    if cfg.head.pool == "gap":
        return width
    return width * stage_sizes(space.config.image_size, len(cfg.stages))[-1] ** 2


def _conv(name: str, cin: int, cout: int, k: int, hw_out: int, prec: Precision) -> LayerCost:
    params = cout * cin * k * k + cout  # + folded BN bias
    return LayerCost(name, params, hw_out * hw_out * cout * cin * k * k, prec)


def _fc(name: str, cin: int, cout: int, prec: Precision) -> LayerCost:
    return LayerCost(name, cin * cout + cout, cin * cout, prec)


def _fc_layers(space: SearchSpace, cfg: SubnetConfig) -> list[LayerCost]:
    c, h = space.config, cfg.head
    features = feature_count(space, cfg)
    if not h.hidden:
        return [_fc("out", features, c.num_classes, h.out_prec)]
    assert h.hidden_prec is not None
    return [_fc("hidden", features, h.hidden, h.hidden_prec), _fc("out", h.hidden, c.num_classes, h.out_prec)]


def subnet_cost(space: SearchSpace, cfg: SubnetConfig) -> SubnetCost:
    """Per-layer parameters and MACs of ``cfg`` at batch 1."""
    layers = []
    cin = space.config.in_channels
    for i, st in enumerate(cfg.stages):
        for j, conv in enumerate(st.convs):
            _, hw_out = conv_resolution(space, i, j, st.down)
            layers.append(_conv(f"stage{i}.conv{j}", cin, st.width, conv.kernel, hw_out, conv.prec))
            cin = st.width
    return SubnetCost(tuple(layers + _fc_layers(space, cfg)))


# -- peak activation memory ---------------------------------------------------------------------
# The model of what is alive while one op runs (batch 1), so that a policy's peak-memory budget
# can be checked without running anything:
#
# - ops run in graph order: per stage its convolutions and, when it downsamples by pooling, the
#   max-pool; then the global pooling or the flatten, and the fully connected layers;
# - while an op runs, its input and its output are alive (a plain CNN keeps nothing for later);
# - a tensor is stored at the activation precision of the layer that reads it, because the
#   activation quantizers sit at layer inputs (see :mod:`lifelong.deploy.onnx_graph`): 1 byte per
#   element for 8 bits or fewer, 4 for float. A max-pool keeps the type of its input. The
#   graph input and the logits are float.
#
# Weights are not counted here: they are the model bytes, which a peak-memory budget adds.
def activation_bytes_per_element(prec: Precision) -> int:
    """Bytes of one activation read by a layer at ``prec``: 1 when quantized to <= 8 bits, else 4."""
    return 1 if prec.a <= 8 else 4


def activation_trace(space: SearchSpace, cfg: SubnetConfig) -> list[tuple[str, int]]:
    """Live activation bytes while each op of ``cfg`` runs at batch 1, in graph order.

    See the comment above :func:`activation_bytes_per_element` for the model.
    """
    c = space.config
    convs = [(i, j, st, conv) for i, st in enumerate(cfg.stages) for j, conv in enumerate(st.convs)]
    fcs = _fc_layers(space, cfg)
    readers = [conv.prec for *_, conv in convs] + [fcs[0].prec]  # readers[n]: who reads the output of conv n
    trace = []
    x = c.in_channels * c.image_size * c.image_size * 4  # the float graph input
    for n, (i, j, st, _conv_cfg) in enumerate(convs):
        _, hw_out = conv_resolution(space, i, j, st.down)
        e = activation_bytes_per_element(readers[n + 1])
        y = st.width * hw_out * hw_out * e
        trace.append((f"stage{i}.conv{j}", x + y))
        x = y
        if st.down == "pool" and j == st.depth - 1:
            side = -(-hw_out // 2)
            pooled = st.width * side * side * e
            trace.append((f"stage{i}.pool", x + pooled))
            x = pooled
    features = feature_count(space, cfg) * activation_bytes_per_element(fcs[0].prec)
    if cfg.head.pool == "gap":
        trace.append(("pool", x + features))
    x = features
    for k, fc in enumerate(fcs):
        out_e = activation_bytes_per_element(fcs[k + 1].prec) if k + 1 < len(fcs) else 4
        y = (fc.params - fc.macs) * out_e  # params - MACs: one bias per output
        trace.append((fc.name, x + y))
        x = y
    return trace


def peak_activation_bytes(space: SearchSpace, cfg: SubnetConfig) -> int:
    """The most activation bytes alive at once during one inference of ``cfg`` at batch 1."""
    return max(live for _, live in activation_trace(space, cfg))

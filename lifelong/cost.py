"""Analytic cost of a subnet: parameters, multiply-accumulates, weight bytes and BitOps.

These need no torch and no device: they follow from the subnet's configuration alone, so the
search can call them millions of times. (Measured latency lives with the device profile.)
"""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.space import Precision, SearchSpace, SubnetConfig

__all__ = ["LayerCost", "SubnetCost", "subnet_cost"]


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


def subnet_cost(space: SearchSpace, cfg: SubnetConfig) -> SubnetCost:
    """Per-layer parameters and MACs of ``cfg`` at batch 1."""
    c = space.config
    hw = -(-c.image_size // c.stem_stride)  # ceil, as a padded strided conv
    layers = [_conv("stem", c.in_channels, cfg.stem_width, 3, hw, cfg.stem_prec)]
    cin = cfg.stem_width
    for i, (st, spec) in enumerate(zip(cfg.stages, c.stages, strict=True)):
        for j, b in enumerate(st.blocks):
            stride = spec.stride if j == 0 else 1
            hw_out = -(-hw // stride)
            name = f"stage{i}.block{j}"
            if b.kind == "ir":
                hid = cin * b.expand
                parts = [
                    _conv(name + ".expand", cin, hid, 1, hw, b.prec),
                    _conv(name + ".dw", hid, hid, b.kernel, hw_out, b.prec, groups=hid),
                    _conv(name + ".project", hid, st.width, 1, hw_out, b.prec),
                ]
                layers.append(LayerCost(name, sum(p.params for p in parts), sum(p.macs for p in parts), b.prec))
            else:
                layers.append(_conv(name, cin, st.width, b.kernel, hw_out, b.prec))
            cin, hw = st.width, hw_out
    head = _conv("head", cin, c.head_width, 1, hw, cfg.head_prec)
    fc = LayerCost(
        "classifier", c.head_width * c.num_classes + c.num_classes, c.head_width * c.num_classes, cfg.head_prec
    )
    layers.append(LayerCost("head", head.params + fc.params, head.macs + fc.macs, cfg.head_prec))
    return SubnetCost(tuple(layers))

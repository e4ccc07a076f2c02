"""What a subnet's ONNX graph is built from: its layers as numpy arrays with their quantizers.

The exporter fills a :class:`NetSpec` from a trained static subnet, the device profiler one
with random weights; :mod:`lifelong.deploy.onnx_graph` builds the graph from it. Kept apart
from the builder so that reading or describing a net does not load ``onnx`` (the serving
process reads the device profile, which describes nets, and never builds one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lifelong.space.config import FULL_BITS

__all__ = ["ConvSpec", "LinearSpec", "NetSpec"]


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
    """A fully connected layer: ``weight (O, I)``, ``bias (O,)``, quantizers as in :class:`ConvSpec`."""

    weight: np.ndarray
    bias: np.ndarray
    relu: bool = False
    w_bits: int = FULL_BITS
    w_step: np.ndarray | None = None
    a_bits: int = FULL_BITS
    a_step: float | None = None
    a_signed: bool = False

    def __post_init__(self) -> None:
        o = self.weight.shape[0]
        assert self.weight.ndim == 2 and self.bias.shape == (o,), (
            f"linear weight (O, I) and bias (O,), got {self.weight.shape}"
        )
        assert self.w_bits >= FULL_BITS or (self.w_step is not None and self.w_step.shape == (o,)), "w_step (O,)"
        assert self.a_bits >= FULL_BITS or self.a_step is not None, "a quantized input needs its step"


@dataclass(frozen=True, eq=False)
class NetSpec:
    """A plain CNN: convolutions (a 2x2 max-pool after those marked), the pool, the FC layers."""

    convs: tuple[ConvSpec, ...]
    pool_after: tuple[bool, ...]
    pool: str  # "flat" or "gap"
    fcs: tuple[LinearSpec, ...]
    pixel_mean: float
    pixel_std: float
    metadata: dict[str, str] = field(default_factory=dict)
    gap_step: float | None = None  # requantize the global pool's input (uint8) so it fuses

    def __post_init__(self) -> None:
        assert len(self.pool_after) == len(self.convs), "one pool flag per convolution"
        assert self.pool in ("flat", "gap") and 1 <= len(self.fcs) <= 2, "a pool and one or two FC layers"

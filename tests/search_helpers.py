"""Synthetic but structured inputs for the predictor and search tests.

The real accuracy data needs a trained supernet and the real latency table a profiled device;
the tests instead use known functions of the subnet, so that what the algorithms should find
is known: accuracy grows with compute and falls with low precision (plus a fixed random
effect per gene), and latency is a per-node cost plus a MAC-proportional one, cheaper for
INT8 layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lifelong.device.latency_table import CostTable, LatencyTable, part_key
from lifelong.device.profile import DeviceProfile
from lifelong.search.evaluator import FunctionEvaluator
from lifelong.space.codec import SubnetCodec
from lifelong.space.config import SearchSpace, SubnetConfig

SPACE = SearchSpace()
CODEC = SubnetCodec(SPACE)
COSTS = CostTable(SPACE, CODEC)


def structured_profile(space: SearchSpace = SPACE, correction: bool = True) -> DeviceProfile:
    """A profile of every row, with latencies that follow the rows' MACs and precision."""
    codec = SubnetCodec(space)
    costs = CostTable(space, codec)
    rng = np.random.default_rng(7)
    entries = {}
    for n, part in enumerate(codec.part_list):
        macs = float(costs._cost[n, 1])
        int8 = part.prec.w <= 8 and part.prec.a <= 8
        ms = 0.01 + macs / 4e8 * (0.4 if int8 else 1.0) + (0.01 if int8 else 0.0)
        ms *= 1 + 0.1 * rng.random()
        entries[part_key(part)] = [ms, ms * 18 + 0.01 * rng.random()]
    corr = {"1": [0.013, 0.8, 1.07, 0.02], "32": [0.2, 0.85, 0.95, 0.3]} if correction else {}
    return DeviceProfile({"cpu": "test"}, (1, 32), entries, [0.01, 0.02], 1.0, correction=corr, reference_ms=[1, 2])


def truth_weights(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, SPACE.encoding_length()) * 0.002


def true_accuracy(cfgs: Sequence[SubnetConfig], quantized: bool = False, seed: int = 0) -> np.ndarray:
    """A known accuracy: compute helps (saturating), low precision hurts, each gene a little.

    ``quantized`` adds what a real quantized evaluation adds: a penalty per 4-bit and 8-bit
    layer that depends on where the layer is (the early ones hurt more).
    """
    codes = CODEC.codes(cfgs)
    X = CODEC.onehot(codes).astype(np.float64)
    macs = COSTS.macs(codes).astype(np.float64)
    w4 = np.array([sum(p.w == 4 for p in c.layer_precisions()) for c in cfgs])
    a8 = np.array([sum(p.a == 8 for p in c.layer_precisions()) for c in cfgs])
    acc = 0.93 - 0.08 * np.exp(-macs / 1e8) - 0.004 * w4 - 0.001 * a8 + X @ truth_weights(seed)
    if quantized:
        early = np.array([sum(p.w < 32 for p in c.layer_precisions()[:3]) for c in cfgs])
        acc = acc - 0.006 * w4 - 0.004 * early - 0.01 * np.tanh(X @ truth_weights(seed + 1) * 100)
    return acc


def encoding_truth(cfgs: Sequence[SubnetConfig], quantized: bool = False, seed: int = 0) -> np.ndarray:
    """A random linear plus nonlinear function of the one-hot encoding (the predictor's own input).

    ``quantized`` shifts it as quantization would: a loss per low-precision layer, larger
    for some layers than for others, and a nonlinear interaction.
    """
    rng = np.random.default_rng(seed)
    n = SPACE.encoding_length()
    w, U, v = rng.normal(0, 1, n), rng.normal(0, 1, (n, 8)), rng.normal(0, 1, 8)
    X = CODEC.encode(cfgs).astype(np.float64)
    acc = 0.85 + 0.03 * X @ w / np.sqrt(30) + 0.015 * np.tanh(X @ U / np.sqrt(30)) @ v / np.sqrt(8)
    if quantized:
        low = np.array([sum(p.w < 32 or p.a < 32 for p in c.layer_precisions()) for c in cfgs])
        pen = np.abs(rng.normal(0, 1, n))
        acc = acc - 0.002 * low - 0.004 * np.tanh(X @ pen / 10) - 0.005 * np.tanh(X @ U[:, 0] / np.sqrt(30)) ** 2
    return acc


def samples(n: int, seed: int) -> list[SubnetConfig]:
    rng = np.random.default_rng(seed)
    return [SPACE.sample(rng) for _ in range(n)]


def landscape(profile: DeviceProfile | None = None, batch: int = 1) -> FunctionEvaluator:
    """The known landscape as an evaluator: true accuracy, table latency, weight bytes."""
    table = LatencyTable(profile or structured_profile(), SPACE, CODEC)
    return FunctionEvaluator(
        true_accuracy,
        lambda cfgs: table.predict(cfgs, batch),
        COSTS.weight_bytes,
        lambda cfgs: COSTS.weight_bytes(cfgs) + COSTS.peak_activation_bytes(cfgs),
    )

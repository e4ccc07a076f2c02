"""Latency, size and memory of many subnets at once, compiled into tables over part ids.

:class:`~lifelong.profile.DeviceProfile` predicts one subnet at a time from string keys; the
search needs tens of thousands per second. Both tables here number every part a subnet can
hold (:meth:`lifelong.codec.SubnetCodec.parts`) once, look up each part's figure once, and then
answer a whole batch of subnets with one gather per block slot:

- :class:`LatencyTable`: the four-term correction of :mod:`lifelong.latency` per profiled
  batch size, equal to ``DeviceProfile.predict`` to the last bit (the rows are summed in the
  same order, and an empty slot adds ``0.0``, which changes no float);
- :class:`CostTable`: parameters, MACs, weight bytes and BitOps (equal to
  :func:`lifelong.cost.subnet_cost`) and peak activation bytes (equal to
  :func:`lifelong.cost.peak_activation_bytes`).

Both accept subnets or codes; pass codes when several tables look at the same batch, so the
Python walk over the subnet objects happens once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lifelong.codec import Part, SubnetCodec
from lifelong.cost import (
    activation_bytes_per_element,
    block_cost,
    block_trace,
    head_cost,
    head_trace,
    stem_cost,
    stem_trace,
)
from lifelong.profile import DeviceProfile, ProfileError, block_key, runs_integer
from lifelong.space import SearchSpace, SubnetConfig

__all__ = ["CostTable", "LatencyTable", "part_key"]

Subnets = Sequence[SubnetConfig] | np.ndarray


def part_key(part: Part) -> str:
    """The device-profile row of ``part`` (as :func:`lifelong.profile.subnet_keys` spells it)."""
    if part.kind == "stem":
        return f"stem:{part.cout}:{part.prec}"
    if part.kind == "head":
        return f"head:{part.cin}:{part.prec}"
    b = part.block
    assert b is not None and part.stage is not None and part.first is not None, f"malformed part {part}"
    assert part.cin is not None and part.cout is not None, f"malformed part {part}"
    return block_key(part.stage, part.first, part.cin, part.cout, b.kind, b.kernel, b.expand, b.prec)


def _codes(codec: SubnetCodec, subnets: Subnets) -> np.ndarray:
    if isinstance(subnets, np.ndarray):
        if subnets.ndim != 2 or subnets.shape[1] != codec.length:
            raise ValueError(f"expected codes of shape (N, {codec.length}), got {subnets.shape}")
        return subnets
    return codec.codes(subnets)


class LatencyTable:
    """Predicted end-to-end latency (ms) of batches of subnets from a device profile.

    The table is a snapshot: the profile's rows and its fitted correction are read once, so
    build a new table after ``lifelong.latency.calibrate`` changes the correction.

    Args:
        profile: The device's measured block latencies.
        space: The search space the subnets come from.
        codec: Reuse the codec of an evaluator (built from ``space`` when left out).
    """

    def __init__(self, profile: DeviceProfile, space: SearchSpace, codec: SubnetCodec | None = None) -> None:
        self.space, self.codec = space, codec or SubnetCodec(space)
        self.batches = tuple(profile.batches)
        n_parts = len(self.codec.part_list)
        self._pad = n_parts
        # one row per part, plus the pad part (0 ms); NaN marks a part the profile lacks
        self._ms = np.zeros((n_parts + 1, len(self.batches)))  # (parts + 1, B)
        self._missing = np.zeros(n_parts + 1, bool)
        self._integer = np.zeros(n_parts + 1, bool)  # the part runs integer kernels
        for n, part in enumerate(self.codec.part_list):
            self._integer[n] = runs_integer(part.prec)
            row = profile.entries.get(part_key(part))
            if row is None or len(row) != len(self.batches):
                self._missing[n] = True
            else:
                self._ms[n] = row
        self.coverage = 1.0 - float(self._missing[:-1].mean())
        self._coef = [profile.coefficients(b) for b in self.batches]

    def _batch_index(self, batch: int) -> int:
        if batch not in self.batches:
            raise ProfileError(f"batch {batch} was not profiled (profiled: {list(self.batches)})")
        return self.batches.index(batch)

    def _parts(self, subnets: Subnets) -> np.ndarray:
        parts = self.codec.parts(_codes(self.codec, subnets))  # (N, P)
        missing = self._missing[parts]
        if missing.any():
            n, j = np.argwhere(missing)[0]
            key = part_key(self.codec.part_list[parts[n, j]])
            raise ProfileError(f"the profile has no row {key!r}: re-run `lifelong profile` for this search space")
        return parts

    def _terms(self, parts: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer rows (ms), other rows (ms) and integer/float borders of each subnet."""
        ms, integer = self._ms[:, i], self._integer[parts]  # (N, P)
        present = parts != self._pad
        s_int, s_other, borders = (np.zeros(len(parts)) for _ in range(3))
        prev = integer[:, 0]
        for j in range(parts.shape[1]):  # left to right, as DeviceProfile.terms
            row = ms[parts[:, j]]
            s_int += np.where(integer[:, j], row, 0.0)
            s_other += np.where(integer[:, j], 0.0, row)
            switch = present[:, j] & (integer[:, j] != prev)
            borders += switch
            prev = np.where(present[:, j], integer[:, j], prev)
        return s_int, s_other, borders

    def table_sums(self, subnets: Subnets, batch: int) -> np.ndarray:
        """``(N,)`` sums of the table rows (ms) at ``batch``, as ``DeviceProfile.table_sum``."""
        s_int, s_other, _ = self._terms(self._parts(subnets), self._batch_index(batch))
        return s_int + s_other

    def predict(self, subnets: Subnets, batch: int) -> np.ndarray:
        """``(N,)`` predicted latency (ms) at ``batch``, as ``DeviceProfile.predict``."""
        i = self._batch_index(batch)
        a, bi, bo, t = self._coef[i]
        s_int, s_other, borders = self._terms(self._parts(subnets), i)
        return a + bi * s_int + bo * s_other + t * borders

    def predict_all(self, subnets: Subnets) -> dict[int, np.ndarray]:
        """Predicted latency (ms) at every profiled batch size."""
        codes = _codes(self.codec, subnets)
        return {b: self.predict(codes, b) for b in self.batches}


class CostTable:
    """Analytic cost of batches of subnets: params, MACs, weight bytes, BitOps, peak activations."""

    def __init__(self, space: SearchSpace, codec: SubnetCodec | None = None) -> None:
        self.space, self.codec = space, codec or SubnetCodec(space)
        parts = self.codec.part_list
        # (parts + 1, 4): params, macs, weight bits, bitops; the last row is the empty part
        self._cost = np.zeros((len(parts) + 1, 4), np.int64)
        # (parts + 1, precisions): peak live activation bytes of a part, by the precision of its reader
        self._peak = np.zeros((len(parts) + 1, len(self.codec.precisions)), np.int64)
        for n, part in enumerate(parts):
            if part.kind == "stem":
                layer = stem_cost(space, part.cout, part.prec)
            elif part.kind == "head":
                layer = head_cost(space, part.cin, part.prec)
            else:
                layer = block_cost(space, part.stage, part.first, part.cin, part.cout, part.block)
            self._cost[n] = (layer.params, layer.macs, layer.weight_bits, layer.bitops)
            for r, reader in enumerate(self.codec.precisions):
                if part.kind == "head":
                    trace = head_trace(space, part.cin, part.prec)
                elif part.kind == "stem":
                    trace = stem_trace(space, part.cout, reader)
                else:
                    trace = block_trace(space, part.stage, part.first, part.cin, part.cout, part.block, reader)
                self._peak[n, r] = max(live for _, live in trace)
        assert all(activation_bytes_per_element(p) in (1, 4) for p in self.codec.precisions)

    def _sum(self, subnets: Subnets, column: int) -> np.ndarray:
        parts = self.codec.parts(_codes(self.codec, subnets))
        return self._cost[parts, column].sum(axis=1)  # integers: any order is exact

    def params(self, subnets: Subnets) -> np.ndarray:
        return self._sum(subnets, 0)

    def macs(self, subnets: Subnets) -> np.ndarray:
        return self._sum(subnets, 1)

    def weight_bytes(self, subnets: Subnets) -> np.ndarray:
        """``(N,)`` bytes of the weights at their trained precision, as ``SubnetCost.weight_bytes``."""
        return self._sum(subnets, 2) // 8

    def bitops(self, subnets: Subnets) -> np.ndarray:
        return self._sum(subnets, 3)

    def peak_activation_bytes(self, subnets: Subnets) -> np.ndarray:
        """``(N,)`` peak live activation bytes at batch 1, as :func:`lifelong.cost.peak_activation_bytes`."""
        codes = _codes(self.codec, subnets)
        parts, readers = self.codec.parts(codes), self.codec.readers(codes)
        return self._peak[parts, np.maximum(readers, 0)].max(axis=1)

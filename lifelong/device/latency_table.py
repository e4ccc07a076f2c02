"""Latency, size and memory of many subnets at once, compiled into tables over part ids.

:class:`~lifelong.device.profile.DeviceProfile` predicts one subnet at a time from string keys; the
search needs tens of thousands per second. Both tables here number every part a subnet can
hold (:meth:`lifelong.space.codec.SubnetCodec.parts`) once, look up each part's figure once, and then
answer a whole batch of subnets with one gather per convolution slot:

- :class:`LatencyTable`: the correction of :mod:`lifelong.device.latency` (table rows, borders and
  the parts' work) per profiled batch size, equal to ``DeviceProfile.predict`` to the last bit (the rows are summed in the
  same order, and an empty slot adds ``0.0``, which changes no float);
- :class:`CostTable`: parameters, MACs, weight bytes and BitOps (equal to
  :func:`lifelong.space.cost.subnet_cost`) and peak activation bytes (equal to
  :func:`lifelong.space.cost.peak_activation_bytes`). Each part's figures are read off
  :mod:`lifelong.space.cost` itself, on a *probe* subnet that holds the part, so the table cannot
  drift from the cost model: the part's layers, and the ops of its activation trace (its
  convolution and the max-pool after it; the head's global pool and fully connected layers),
  by the precision of the layer that reads the part's output.

Both accept subnets or codes; pass codes when several tables look at the same batch, so the
Python walk over the subnet objects happens once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lifelong.device.profile import (
    BASE_TERMS,
    CORRECTION_TERMS,
    WORK_TERMS,
    DeviceProfile,
    ProfileError,
    part_key,
    part_work,
    runs_integer,
)
from lifelong.space.codec import Part, SubnetCodec
from lifelong.space.config import ConvConfig, HeadConfig, Precision, SearchSpace, StageConfig, SubnetConfig, stage_sizes
from lifelong.space.cost import activation_trace, subnet_cost

__all__ = ["CostTable", "LatencyTable", "part_key"]

Subnets = Sequence[SubnetConfig] | np.ndarray


def _codes(codec: SubnetCodec, subnets: Subnets) -> np.ndarray:
    if isinstance(subnets, np.ndarray):
        if subnets.ndim != 2 or subnets.shape[1] != codec.length:
            raise ValueError(f"expected codes of shape (N, {codec.length}), got {subnets.shape}")
        return subnets
    return codec.codes(subnets)


class LatencyTable:
    """Predicted end-to-end latency (ms) of batches of subnets from a device profile.

    The table is a snapshot: the profile's rows and its fitted correction are read once, so
    build a new table after ``lifelong.device.latency.calibrate`` changes the correction.

    Args:
        profile: The device's measured part latencies.
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
        self._work = np.zeros((n_parts + 1, WORK_TERMS))  # part_work of each part; the pad part does none
        for n, part in enumerate(self.codec.part_list):
            self._integer[n] = runs_integer(part.prec)
            self._work[n] = part_work(part, space.config.num_classes)
            row = profile.entries.get(part_key(part))
            if row is None or len(row) != len(self.batches):
                self._missing[n] = True
            else:
                self._ms[n] = row
        self.coverage = 1.0 - float(self._missing[:-1].mean())
        self._coef = [profile.coefficients(b) for b in self.batches]
        # integer/float borders run over layers (the head's two count apart), not over parts
        self._prec_integer = np.array([runs_integer(p) for p in self.codec.precisions] + [False])  # [-1]: absent

    def _borders(self, codes: np.ndarray) -> np.ndarray:
        """``(N,)`` integer/float borders between consecutive layers, as ``integer_borders``."""
        precs = codes[:, self.codec.layer_prec_cols]  # (N, L), -1 where a layer is absent
        present, integer = precs >= 0, self._prec_integer[precs]
        borders = np.zeros(len(codes))
        prev = integer[:, 0]  # the first convolution is always there
        for j in range(1, precs.shape[1]):
            borders += present[:, j] & (integer[:, j] != prev)
            prev = np.where(present[:, j], integer[:, j], prev)
        return borders

    def _batch_index(self, batch: int) -> int:
        if batch not in self.batches:
            raise ProfileError(f"batch {batch} was not profiled (profiled: {list(self.batches)})")
        return self.batches.index(batch)

    def _parts(self, codes: np.ndarray) -> np.ndarray:
        parts = self.codec.parts(codes)  # (N, P)
        missing = self._missing[parts]
        if missing.any():
            n, j = np.argwhere(missing)[0]
            key = part_key(self.codec.part_list[parts[n, j]])
            raise ProfileError(f"the profile has no row {key!r}: re-run `lifelong profile` for this search space")
        return parts

    def _sums(self, parts: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Integer rows (ms) and other rows (ms) of each subnet."""
        ms, integer = self._ms[:, i], self._integer[parts]  # (N, P)
        s_int, s_other = np.zeros(len(parts)), np.zeros(len(parts))
        for j in range(parts.shape[1]):  # left to right, as DeviceProfile.terms (+ 0.0 changes no sum)
            row = ms[parts[:, j]]
            s_int += np.where(integer[:, j], row, 0.0)
            s_other += np.where(integer[:, j], 0.0, row)
        return s_int, s_other

    def table_sums(self, subnets: Subnets, batch: int) -> np.ndarray:
        """``(N,)`` sums of the table rows (ms) at ``batch``, as ``DeviceProfile.table_sum``."""
        s_int, s_other = self._sums(self._parts(_codes(self.codec, subnets)), self._batch_index(batch))
        return s_int + s_other

    def predict(self, subnets: Subnets, batch: int) -> np.ndarray:
        """``(N,)`` predicted latency (ms) at ``batch``, as ``DeviceProfile.predict``."""
        i = self._batch_index(batch)
        c = self._coef[i]
        codes = _codes(self.codec, subnets)
        parts = self._parts(codes)
        s_int, s_other = self._sums(parts, i)
        out = c[0] + c[1] * s_int + c[2] * s_other + c[3] * self._borders(codes)
        if any(c[BASE_TERMS:]):
            work = np.zeros((len(parts), WORK_TERMS))
            for j in range(parts.shape[1]):  # graph order, as DeviceProfile.terms
                work += self._work[parts[:, j]]
            for k in range(BASE_TERMS, len(CORRECTION_TERMS)):
                out += c[k] * work[:, k - BASE_TERMS]
        return out

    def predict_all(self, subnets: Subnets) -> dict[int, np.ndarray]:
        """Predicted latency (ms) at every profiled batch size."""
        codes = _codes(self.codec, subnets)
        return {b: self.predict(codes, b) for b in self.batches}


def _probe(space: SearchSpace, part: Part, reader: Precision) -> tuple[SubnetConfig, set[str]]:
    """A subnet holding ``part``, with ``reader`` the precision of the layer reading its output,
    and the names of the part's layers and trace ops in :mod:`lifelong.space.cost`.

    The cost model's figures for an op depend only on the op, the precision it runs at and
    that of its reader, so whatever the probe holds elsewhere does not matter (it need not even
    belong to the space).
    """
    c = space.config
    filler = ConvConfig(min(c.kernels), part.prec)

    def before(n: int, last_width: int) -> list[StageConfig]:  # stages 0..n-1, the last of `last_width`
        widths = [spec.widths[0] for spec in c.stages[: n - 1]] + [last_width]
        return [StageConfig(w, (filler,), "pool") for w in widths[-n:]] if n else []

    if part.kind == "head":
        assert part.stages is not None and part.pool is not None and part.hidden is not None and part.out_prec
        head = HeadConfig(part.pool, part.hidden, part.hidden_prec, part.out_prec)
        names = {"hidden", "out"} | ({"pool"} if part.pool == "gap" else set())
        return SubnetConfig(tuple(before(part.stages, part.cin)), head), names
    s, mode = part.stage, part.mode
    assert s is not None and part.cout is not None and part.kernel is not None and mode is not None
    conv, nxt = ConvConfig(part.kernel, part.prec), ConvConfig(min(c.kernels), reader)
    half = part.side != stage_sizes(c.image_size, s + 1)[s]  # a later convolution after a strided one
    if part.first:
        convs, j = ((conv,) if mode != "plain" else (conv, nxt)), 0
        down = "stride" if mode == "strided" else "pool"
    else:
        convs, j = ((filler, conv) if mode != "plain" or half else (filler, conv, nxt)), 1
        down = "stride" if half else "pool"
    stages = before(s, part.cin) + [StageConfig(part.cout, convs, down)]
    head = HeadConfig("flat", 0, None, reader)  # read by the head when the part's convolution is last
    names = {f"stage{s}.conv{j}"} | ({f"stage{s}.pool"} if mode == "pooled" else set())
    return SubnetConfig(tuple(stages), head), names


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
            for r, reader in enumerate(self.codec.precisions):
                probe, names = _probe(space, part, reader)
                live = [b for name, b in activation_trace(space, probe) if name in names]
                assert live, f"no op of {part} in the trace of its probe {probe}"
                self._peak[n, r] = max(live)
                if r == 0:  # weights do not depend on the reader
                    layers = [layer for layer in subnet_cost(space, probe).layers if layer.name in names]
                    assert layers, f"no layer of {part} in the cost of its probe {probe}"
                    self._cost[n] = [
                        sum(getattr(x, k) for x in layers) for k in ("params", "macs", "weight_bits", "bitops")
                    ]

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
        """``(N,)`` peak live activation bytes at batch 1, as :func:`lifelong.space.cost.peak_activation_bytes`."""
        codes = _codes(self.codec, subnets)
        parts, readers = self.codec.parts(codes), self.codec.readers(codes)
        return self._peak[parts, np.maximum(readers, 0)].max(axis=1)

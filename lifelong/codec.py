"""Integer codes of subnets: the fast path from :class:`SubnetConfig` objects to numpy arrays.

The search evaluates tens of thousands of subnets per second (predicted accuracy, latency,
size), so it walks each subnet's Python objects once, into a fixed-length integer *code*,
and computes everything else for a whole batch of codes with numpy:

- :meth:`SubnetCodec.onehot`: the predictor's input, equal to ``SearchSpace.encode`` row by row;
- :meth:`SubnetCodec.parts`: each subnet as a row of *part ids* (its stem, every block with
  its input and output width, its head), the units the device profile times and the cost model
  counts, so that latency and size become table gathers (:mod:`lifelong.latency_table`);
- :meth:`SubnetCodec.readers`: for each part, the precision of the layer that reads its output
  (the activation memory model needs it, see :mod:`lifelong.cost`).

Code layout (``-1`` marks the empty block slots past a stage's depth, so two subnets are equal
exactly when their codes are)::

    [stem width, stem precision, head precision,
     per stage: width, depth, per block slot: op, precision]

All entries are indexes into the space's choices (``op`` into :attr:`SubnetCodec.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lifelong.errors import SpaceError
from lifelong.space import BlockConfig, Precision, SearchSpace, StageConfig, SubnetConfig

__all__ = ["Part", "SubnetCodec"]

_EMPTY = -1


@dataclass(frozen=True)
class Part:
    """One part id: ``kind`` is ``"stem"``, ``"block"`` or ``"head"``; unused fields are None."""

    kind: str
    prec: Precision
    stage: int | None = None
    first: bool | None = None
    cin: int | None = None
    cout: int | None = None
    block: BlockConfig | None = None


class SubnetCodec:
    """Codes, one-hot encodings and part ids of the subnets of one search space."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        c = space.config
        self.precisions: tuple[Precision, ...] = space.precisions
        self.ops: tuple[tuple[str, int, int | None], ...] = tuple(
            (kind, k, e) for kind in c.block_kinds for k in c.kernels for e in (c.expands if kind == "ir" else (None,))
        )
        self._prec_index = {(p.w, p.a): i for i, p in enumerate(self.precisions)}
        self._block_index = {
            (*op, p.w, p.a): (o, i) for o, op in enumerate(self.ops) for i, p in enumerate(self.precisions)
        }
        self._stem_index = {w: i for i, w in enumerate(c.stem_widths)}
        self._stage_maps = [
            ({w: i for i, w in enumerate(s.widths)}, {d: i for i, d in enumerate(s.depths)}, max(s.depths))
            for s in c.stages
        ]
        self.slots = [(s, j) for s, spec in enumerate(c.stages) for j in range(max(spec.depths))]
        self.length = 3 + sum(2 + 2 * max(s.depths) for s in c.stages)
        self._layout()
        self._part_space()

    # -- codes ----------------------------------------------------------------------------------
    def codes(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """``(N, length)`` int64 codes; a subnet outside the space raises :class:`SpaceError`."""
        flat: list[int] = []
        pi, bi = self._prec_index, self._block_index  # plain tuples hash in C, dataclasses do not
        for cfg in cfgs:
            try:
                sp, hp = cfg.stem_prec, cfg.head_prec
                row = [self._stem_index[cfg.stem_width], pi[(sp.w, sp.a)], pi[(hp.w, hp.a)]]
                for st, (widx, didx, max_depth) in zip(cfg.stages, self._stage_maps, strict=True):
                    row += (widx[st.width], didx[st.depth])
                    for b in st.blocks:
                        row += bi[(b.kind, b.kernel, b.expand, b.prec.w, b.prec.a)]
                    row += (_EMPTY, _EMPTY) * (max_depth - len(st.blocks))
            except (KeyError, ValueError, AttributeError, TypeError):
                self._reject(cfg)
            if len(row) != self.length:
                self._reject(cfg)
            flat += row
        return np.fromiter(flat, np.int64, len(flat)).reshape(len(cfgs), self.length)  # (N, length)

    def _reject(self, cfg: object) -> None:
        if not isinstance(cfg, SubnetConfig):
            raise SpaceError(f"expected a SubnetConfig, got {type(cfg).__name__}: {cfg!r}")
        self.space.validate(cfg)  # raises with every problem named
        raise SpaceError(f"subnet {cfg} cannot be coded in this space")

    def decode(self, code: np.ndarray) -> SubnetConfig:
        """The subnet of one code row (the inverse of :meth:`codes`)."""
        c = self.space.config
        code = [int(x) for x in code]
        if len(code) != self.length:
            raise SpaceError(f"a code of this space has {self.length} entries, got {len(code)}")
        try:
            stem_w, stem_p, head_p = c.stem_widths[code[0]], self.precisions[code[1]], self.precisions[code[2]]
            at, stages = 3, []
            for spec in c.stages:
                width, depth = spec.widths[code[at]], spec.depths[code[at + 1]]
                slots = code[at + 2 : at + 2 + 2 * max(spec.depths)]
                blocks = []
                for j in range(depth):
                    kind, k, e = self.ops[slots[2 * j]]
                    blocks.append(BlockConfig(kind, k, e, self.precisions[slots[2 * j + 1]]))
                stages.append(StageConfig(width, tuple(blocks)))
                at += 2 + 2 * max(spec.depths)
        except IndexError as exc:
            raise SpaceError(f"code {code} has an index outside the space's choices") from exc
        return SubnetConfig(stem_w, stem_p, tuple(stages), head_p)

    # -- one-hot encoding -----------------------------------------------------------------------
    def _layout(self) -> None:
        """Column offsets of ``SearchSpace.encode`` (kept in step with it by a test)."""
        c = self.space.config
        n_prec = len(self.precisions)
        kinds, kernels, expands = c.block_kinds, c.kernels, c.expands
        block_len = 1 + len(kinds) + len(kernels) + len(expands) + n_prec
        self._op_kind = np.array([1 + kinds.index(k) for k, _, _ in self.ops])
        self._op_kernel = np.array([1 + len(kinds) + kernels.index(kk) for _, kk, _ in self.ops])
        self._op_expand = np.array(
            [-1 if e is None else 1 + len(kinds) + len(kernels) + expands.index(e) for _, _, e in self.ops]
        )
        self._prec_at = 1 + len(kinds) + len(kernels) + len(expands)
        col = len(c.stem_widths) + n_prec
        at = 3
        fixed_cols, fixed_offsets, slot_cols, slot_base = [0, 1], [0, len(c.stem_widths)], [], []
        for spec in c.stages:
            fixed_cols += [at, at + 1]
            fixed_offsets += [col, col + len(spec.widths)]
            col += len(spec.widths) + len(spec.depths)
            for j in range(max(spec.depths)):
                slot_cols.append(at + 2 + 2 * j)
                slot_base.append(col)
                col += block_len
            at += 2 + 2 * max(spec.depths)
        fixed_cols.append(2)
        fixed_offsets.append(col)  # the head precision comes last
        self.encoding_length = col + n_prec
        assert self.encoding_length == self.space.encoding_length(), "codec layout drifted from SearchSpace.encode"
        self._fixed_cols, self._fixed_offsets = np.array(fixed_cols), np.array(fixed_offsets)
        self._slot_cols, self._slot_base = np.array(slot_cols), np.array(slot_base)

    def onehot(self, codes: np.ndarray) -> np.ndarray:
        """``(N, encoding_length)`` float32, row ``n`` equal to ``space.encode(decode(codes[n]))``."""
        codes = np.asarray(codes)
        n, dummy = len(codes), self.encoding_length  # column `dummy` takes the writes of empty slots
        fixed = codes[:, self._fixed_cols] + self._fixed_offsets  # (N, F)
        ops = codes[:, self._slot_cols]  # (N, S)
        precs = codes[:, self._slot_cols + 1]  # (N, S)
        active = ops >= 0
        base = np.where(active, self._slot_base, dummy)
        expand = self._op_expand[ops]
        hot = np.concatenate(
            [
                fixed,
                base,
                np.where(active, base + self._op_kind[ops], dummy),
                np.where(active, base + self._op_kernel[ops], dummy),
                np.where(active & (expand >= 0), base + expand, dummy),
                np.where(active, base + self._prec_at + precs, dummy),
            ],
            axis=1,
        )  # (N, F + 5S)
        out = np.zeros((n, dummy + 1), np.float32)
        out[np.arange(n)[:, None], hot] = 1.0
        return np.ascontiguousarray(out[:, :dummy])

    def encode(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """``SearchSpace.encode`` for a batch of subnets: ``(N, encoding_length)`` float32."""
        return self.onehot(self.codes(cfgs))

    # -- parts ----------------------------------------------------------------------------------
    def _part_space(self) -> None:
        """Number every part a subnet can contain; the order follows the device profile's rows."""
        c = self.space.config
        n_ops, n_prec = len(self.ops), len(self.precisions)
        parts = [Part("stem", p, cout=w) for w in c.stem_widths for p in self.precisions]
        self._first_base, self._rest_base = [], []
        prev = c.stem_widths
        for s, spec in enumerate(c.stages):
            for first in (True, False):
                (self._first_base if first else self._rest_base).append(len(parts))
                pairs = [(a, b) for a in prev for b in spec.widths] if first else [(w, w) for w in spec.widths]
                for cin, cout in pairs:
                    for kind, k, e in self.ops:
                        for p in self.precisions:
                            parts.append(Part("block", p, s, first, cin, cout, BlockConfig(kind, k, e, p)))
            prev = spec.widths
        self._head_base = len(parts)
        parts += [Part("head", p, cin=w) for w in prev for p in self.precisions]
        self.part_list: tuple[Part, ...] = tuple(parts)
        self.pad_part = len(parts)  # the id of "no part" in :meth:`parts`
        self._n_ops, self._n_prec = n_ops, n_prec

    def parts(self, codes: np.ndarray) -> np.ndarray:
        """``(N, 2 + slots)`` part ids in graph order (stem, block slots, head); empty slots hold
        :attr:`pad_part`."""
        codes = np.asarray(codes)
        c = self.space.config
        n_ops, n_prec = self._n_ops, self._n_prec
        cols = [codes[:, 0] * n_prec + codes[:, 1]]
        prev = codes[:, 0]
        at = 3
        for s, spec in enumerate(c.stages):
            w, n_w = codes[:, at], len(spec.widths)
            for j in range(max(spec.depths)):
                op, p = codes[:, at + 2 + 2 * j], codes[:, at + 3 + 2 * j]
                if j == 0:
                    cols.append(self._first_base[s] + ((prev * n_w + w) * n_ops + op) * n_prec + p)
                else:
                    part = self._rest_base[s] + (w * n_ops + op) * n_prec + p
                    cols.append(np.where(op >= 0, part, self.pad_part))
            prev, at = w, at + 2 + 2 * max(spec.depths)
        cols.append(self._head_base + prev * n_prec + codes[:, 2])
        return np.stack(cols, axis=1)  # (N, P)

    def readers(self, codes: np.ndarray) -> np.ndarray:
        """``(N, 2 + slots)`` precision index of the layer reading each part's output (``-1`` for
        the head and empty slots)."""
        codes = np.asarray(codes)
        out = np.full((len(codes), 2 + len(self.slots)), _EMPTY, np.int64)
        nxt = codes[:, 2]  # the head reads the last block
        for n in range(len(self.slots), 0, -1):  # part n is block slot n - 1
            col = self._slot_cols[n - 1]
            op, p = codes[:, col], codes[:, col + 1]
            active = op >= 0
            out[:, n] = np.where(active, nxt, _EMPTY)
            nxt = np.where(active, p, nxt)
        out[:, 0] = nxt
        return out

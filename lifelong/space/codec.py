"""Integer codes of subnets: the fast path from :class:`SubnetConfig` objects to numpy arrays.

The search evaluates tens of thousands of subnets per second (predicted accuracy, latency,
size), so it walks each subnet's Python objects once, into a fixed-length integer *code*,
and computes everything else for a whole batch of codes with numpy:

- :meth:`SubnetCodec.onehot`: the predictor's input, equal to ``SearchSpace.encode`` row by row;
- :meth:`SubnetCodec.parts`: each subnet as a row of *part ids* (every convolution with its
  input and output width, resolution and downsampling mode, then the head), the units the
  device profile times and the cost model counts, so that latency and size become table
  gathers (:mod:`lifelong.latency_table`);
- :meth:`SubnetCodec.readers`: for each part, the precision of the layer that reads its output
  (the activation memory model needs it, see :mod:`lifelong.cost`).

Code layout (``-1`` marks what a subnet does not have: the hidden layer's precision when there
is no hidden layer, every entry of an absent stage, the convolution slots past a stage's
depth; so two subnets are equal exactly when their codes are)::

    [stage count, pool, hidden width, hidden precision, output precision,
     per stage: width, depth, downsampling, per convolution slot: kernel, precision]

All entries are indexes into the space's choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lifelong.errors import SpaceError
from lifelong.space.config import ConvConfig, HeadConfig, Precision, SearchSpace, StageConfig, SubnetConfig, stage_sizes

__all__ = ["MODES", "Part", "SubnetCodec"]

_EMPTY = -1
HEADER = 5  # stage count, pool, hidden width, hidden precision, output precision
MODES = ("plain", "strided", "pooled")
"""What a convolution does besides convolving: nothing, stride 2, or a 2x2 max-pool after it."""

# Variants of a convolution slot, by position. A first convolution is strided (stride stage),
# pooled (the only one of a pool stage) or plain (a deeper pool stage). A later one runs at
# the stage's input resolution in a pool stage (plain, or pooled when last) or at half of it
# after a strided first convolution.
_FIRST_VARIANTS = (("plain", 0), ("strided", 0), ("pooled", 0))  # (mode, 1 if at half resolution)
_REST_VARIANTS = (("plain", 0), ("plain", 1), ("pooled", 0))
_PLAIN, _STRIDE, _POOLED = 0, 1, 2


@dataclass(frozen=True)
class Part:
    """One part id: a convolution (``kind == "conv"``) or the head (``kind == "head"``).

    A convolution reads ``cin`` channels of ``side`` x ``side`` and writes ``cout``; ``stage``,
    ``first`` (the stage's first convolution or a later one), ``kernel``, ``mode`` (one of
    :data:`MODES`) and ``prec`` complete it. The head reads the last stage's ``cin`` channels
    of ``side`` x ``side`` after ``stages`` stages: ``pool``, ``hidden`` (0: none),
    ``hidden_prec`` and ``out_prec``; its ``prec`` is that of its first layer (the hidden one if
    any, else the output one), which decides whether its dominant kernel runs integer. Fields
    a kind does not use are None.
    """

    kind: str
    prec: Precision
    cin: int
    side: int
    stage: int | None = None
    first: bool | None = None
    cout: int | None = None
    kernel: int | None = None
    mode: str | None = None
    pool: str | None = None
    stages: int | None = None
    hidden: int | None = None
    hidden_prec: Precision | None = None
    out_prec: Precision | None = None


class SubnetCodec:
    """Codes, one-hot encodings and part ids of the subnets of one search space."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        c = space.config
        self.precisions: tuple[Precision, ...] = space.precisions
        self._prec_index = {(p.w, p.a): i for i, p in enumerate(self.precisions)}
        self._conv_index = {
            (k, p.w, p.a): (ki, pi) for ki, k in enumerate(c.kernels) for pi, p in enumerate(self.precisions)
        }
        self._count_index = {n: i for i, n in enumerate(space.stage_counts)}
        self._pool_index = {p: i for i, p in enumerate(c.pools)}
        self._hidden_index = {h: i for i, h in enumerate(c.hiddens)}
        self._stage_maps = [
            (
                {w: i for i, w in enumerate(s.widths)},
                {d: i for i, d in enumerate(s.depths)},
                {d: i for i, d in enumerate(c.downs)},
                max(s.depths),
            )
            for s in c.stages
        ]
        self.slots = [(s, j) for s, spec in enumerate(c.stages) for j in range(max(spec.depths))]
        self._stage_at, at = [], HEADER  # code column of each stage's width
        for spec in c.stages:
            self._stage_at.append(at)
            at += 3 + 2 * max(spec.depths)
        self.length = at
        # the code of stages n.. when a subnet has n stages: all empty
        self._absent = {
            n: [_EMPTY] * (self.length - self._stage_at[n]) if n < len(c.stages) else [] for n in self._count_index
        }
        self._layout()
        self._part_space()

    # -- codes ----------------------------------------------------------------------------------
    def codes(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """``(N, length)`` int64 codes; a subnet outside the space raises :class:`SpaceError`."""
        flat: list[int] = []
        pi, ci = self._prec_index, self._conv_index  # plain tuples hash in C, dataclasses do not
        counts, pools, hiddens, maps = self._count_index, self._pool_index, self._hidden_index, self._stage_maps
        for cfg in cfgs:
            try:
                h = cfg.head
                hp, op = h.hidden_prec, h.out_prec
                if h.hidden:
                    hpi = pi[(hp.w, hp.a)]
                elif hp is None:
                    hpi = _EMPTY
                else:
                    self._reject(cfg)
                n = len(cfg.stages)
                row = [counts[n], pools[h.pool], hiddens[h.hidden], hpi, pi[(op.w, op.a)]]
                for st, (widx, didx, dnidx, max_depth) in zip(cfg.stages, maps, strict=False):
                    convs = st.convs
                    row += (widx[st.width], didx[len(convs)], dnidx[st.down])
                    for cv in convs:
                        p = cv.prec
                        row += ci[(cv.kernel, p.w, p.a)]
                    row += (_EMPTY, _EMPTY) * (max_depth - len(convs))
                row += self._absent[n]
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

        def pick(choices: tuple, i: int):  # noqa: ANN202
            if i < 0:
                raise IndexError(i)
            return choices[i]

        try:
            hidden = pick(c.hiddens, code[2])
            hidden_prec = pick(self.precisions, code[3]) if hidden else None
            head = HeadConfig(pick(c.pools, code[1]), hidden, hidden_prec, pick(self.precisions, code[4]))
            stages = []
            for spec, at in zip(c.stages[: pick(self.space.stage_counts, code[0])], self._stage_at, strict=False):
                depth = pick(spec.depths, code[at + 1])
                convs = tuple(
                    ConvConfig(pick(c.kernels, code[at + 3 + 2 * j]), pick(self.precisions, code[at + 4 + 2 * j]))
                    for j in range(depth)
                )
                stages.append(StageConfig(pick(spec.widths, code[at]), convs, pick(c.downs, code[at + 2])))
        except IndexError as exc:
            raise SpaceError(f"code {code} has an index outside the space's choices") from exc
        return SubnetConfig(tuple(stages), head)

    # -- one-hot encoding -----------------------------------------------------------------------
    def _layout(self) -> None:
        """Column offsets of ``SearchSpace.encode`` (kept in step with it by a test)."""
        c = self.space.config
        n_prec = len(self.precisions)
        offsets = np.zeros(self.length, np.int64)  # code column -> its one-hot block's first column
        kernel_cols, presence = [], []  # slots: the kernel's code column, the "present" one-hot column
        col = len(self.space.stage_counts)  # offsets[0] = 0: the stage count comes first
        for spec, at in zip(c.stages, self._stage_at, strict=True):
            offsets[at : at + 3] = (col, col + len(spec.widths), col + len(spec.widths) + len(spec.depths))
            col += len(spec.widths) + len(spec.depths) + len(c.downs)
            for j in range(max(spec.depths)):
                kcol = at + 3 + 2 * j
                kernel_cols.append(kcol)
                presence.append(col)
                offsets[kcol], offsets[kcol + 1] = col + 1, col + 1 + len(c.kernels)
                col += 1 + len(c.kernels) + n_prec
        head = col + np.cumsum([0, len(c.pools), len(c.hiddens), n_prec])  # pool, hidden, its precision, output
        offsets[1:HEADER] = head
        self.encoding_length = col + len(c.pools) + len(c.hiddens) + 2 * n_prec
        assert self.encoding_length == self.space.encoding_length(), "codec layout drifted from SearchSpace.encode"
        self._offsets = offsets
        self._kernel_cols, self._presence = np.array(kernel_cols), np.array(presence)
        # the code column of each layer's precision index, in layer order (-1 where absent)
        self.layer_prec_cols = np.array([*(k + 1 for k in kernel_cols), 3, 4])

    def onehot(self, codes: np.ndarray) -> np.ndarray:
        """``(N, encoding_length)`` float32, row ``n`` equal to ``space.encode(decode(codes[n]))``."""
        codes = np.asarray(codes)
        n, dummy = len(codes), self.encoding_length  # column `dummy` takes the writes of what is absent
        hot = np.concatenate(
            [
                np.where(codes >= 0, codes + self._offsets, dummy),  # (N, length)
                np.where(codes[:, self._kernel_cols] >= 0, self._presence, dummy),  # (N, slots)
            ],
            axis=1,
        )
        out = np.zeros((n, dummy + 1), np.float32)
        out[np.arange(n)[:, None], hot] = 1.0
        return np.ascontiguousarray(out[:, :dummy])

    def encode(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """``SearchSpace.encode`` for a batch of subnets: ``(N, encoding_length)`` float32."""
        return self.onehot(self.codes(cfgs))

    # -- parts ----------------------------------------------------------------------------------
    def _part_space(self) -> None:
        """Number every part a subnet of the space can contain, and no other; the device
        profile times them in this order. Lookup tables map code indexes to part ids."""
        c = self.space.config
        n_k, n_p = len(c.kernels), len(self.precisions)
        sizes = stage_sizes(c.image_size, len(c.stages))
        parts: list[Part] = []
        self._first_ids: list[np.ndarray] = []  # per stage: (prev width, width, variant, kernel, prec)
        self._rest_ids: list[np.ndarray] = []  # per stage: (width, variant, kernel, prec)
        prev: tuple[int, ...] = (c.in_channels,)
        pool, stride = "pool" in c.downs, "stride" in c.downs
        for s, spec in enumerate(c.stages):
            deepest = max(spec.depths)
            first_ok = (pool and deepest >= 2, stride, pool and 1 in spec.depths)
            rest_ok = (pool and deepest >= 3, stride and deepest >= 2, pool and deepest >= 2)
            first = np.full((len(prev), len(spec.widths), 3, n_k, n_p), -1, np.int64)
            rest = np.full((len(spec.widths), 3, n_k, n_p), -1, np.int64)
            firsts = [(a, b) for a in range(len(prev)) for b in range(len(spec.widths))]
            rests = [(b, b) for b in range(len(spec.widths))]
            for is_first, pairs, variants, ok in (
                (True, firsts, _FIRST_VARIANTS, first_ok),
                (False, rests, _REST_VARIANTS, rest_ok),
            ):
                for a, b in pairs:  # indexes of the input and output widths
                    cin = prev[a] if is_first else spec.widths[b]
                    for v, (mode, half) in enumerate(variants):
                        if not ok[v]:
                            continue
                        for ki, k in enumerate(c.kernels):
                            for pi, p in enumerate(self.precisions):
                                where = (a, b, v, ki, pi) if is_first else (b, v, ki, pi)
                                (first if is_first else rest)[where] = len(parts)
                                parts.append(
                                    Part("conv", p, cin, sizes[s + half], s, is_first, spec.widths[b], k, mode)
                                )
            self._first_ids.append(first)
            self._rest_ids.append(rest)
            prev = spec.widths
        counts = self.space.stage_counts
        n_w = max(len(s.widths) for s in c.stages)
        head = np.full((len(counts), n_w, len(c.pools), len(c.hiddens), n_p, n_p), -1, np.int64)
        for ni, n in enumerate(counts):
            for wi, w in enumerate(c.stages[n - 1].widths):
                for pl, pool_kind in enumerate(c.pools):
                    for hi, hidden in enumerate(c.hiddens):
                        for hpi in range(n_p) if hidden else (None,):
                            for opi, out_prec in enumerate(self.precisions):
                                hp = self.precisions[hpi] if hpi is not None else None
                                head[ni, wi, pl, hi, slice(None) if hpi is None else hpi, opi] = len(parts)
                                parts.append(
                                    Part(
                                        "head", hp or out_prec, w, sizes[n], pool=pool_kind, stages=n,
                                        hidden=hidden, hidden_prec=hp, out_prec=out_prec,
                                    )
                                )  # fmt: skip
        self._head_ids = head
        self.part_list: tuple[Part, ...] = tuple(parts)
        self.pad_part = len(parts)  # the id of "no part" in :meth:`parts`
        self._depths = [np.array(s.depths) for s in c.stages]
        self._stride = c.downs.index("stride") if stride else -2  # -2: no code holds it
        self._counts = np.array(counts)
        self._width_cols = np.array(self._stage_at)

    def parts(self, codes: np.ndarray) -> np.ndarray:
        """``(N, slots + 1)`` part ids in graph order (every convolution slot, then the head);
        empty slots hold :attr:`pad_part`."""
        codes = np.asarray(codes)
        c = self.space.config
        cols = []
        prev = np.zeros(len(codes), np.int64)  # the input's channels: one choice
        for s, spec in enumerate(c.stages):
            at = self._stage_at[s]
            w = codes[:, at]
            depth = self._depths[s][codes[:, at + 1]]  # garbage where the stage is absent: masked below
            strided = codes[:, at + 2] == self._stride
            for j in range(max(spec.depths)):
                k, p = codes[:, at + 3 + 2 * j], codes[:, at + 4 + 2 * j]
                if j == 0:
                    v = np.where(strided, _STRIDE, np.where(depth == 1, _POOLED, _PLAIN))
                    part = self._first_ids[s][prev, w, v, k, p]
                else:
                    v = np.where(strided, _STRIDE, np.where(depth == j + 1, _POOLED, _PLAIN))
                    part = self._rest_ids[s][w, v, k, p]
                cols.append(np.where(k >= 0, part, self.pad_part))
            prev = w
        rows = np.arange(len(codes))
        last_width = codes[rows, self._width_cols[self._counts[codes[:, 0]] - 1]]
        head = self._head_ids[
            codes[:, 0], last_width, codes[:, 1], codes[:, 2], np.maximum(codes[:, 3], 0), codes[:, 4]
        ]
        cols.append(head)
        out = np.stack(cols, axis=1)  # (N, P)
        assert (out >= 0).all(), "a code maps to a part outside the part space"
        return out

    def readers(self, codes: np.ndarray) -> np.ndarray:
        """``(N, slots + 1)`` precision index of the layer reading each part's output: the next
        convolution, or the head's first layer (``-1`` for the head and empty slots)."""
        codes = np.asarray(codes)
        out = np.full((len(codes), len(self.slots) + 1), _EMPTY, np.int64)
        nxt = np.where(codes[:, 3] >= 0, codes[:, 3], codes[:, 4])  # the head's first layer
        for n in range(len(self.slots) - 1, -1, -1):
            col = self._kernel_cols[n]
            active = codes[:, col] >= 0
            out[:, n] = np.where(active, nxt, _EMPTY)
            nxt = np.where(active, codes[:, col + 1], nxt)
        return out

"""The weight-sharing + bit-sharing supernet and the static subnets extracted from it.

Verbs follow once-for-all: :meth:`Supernet.set_active_subnet`,
:meth:`Supernet.sample_active_subnet` and :meth:`Supernet.get_subnet`. The model takes
``float32 (B, C, H, W)`` pixels in ``[0, 1]`` and normalises them itself, so an exported model
is fed what a camera gives.

Weights: one :class:`~lifelong.nn.layers.QConvBN` per stage and conv position, sized for the
widest choice and the largest kernel (smaller kernels take its centre); the first conv of a
stage strides only when the subnet downsamples by stride. The head keeps one set of fully
connected layers per (pool, number of stages), because their input differs: a flattened
``(C, 7, 7)`` map after two stages, ``(C, 4, 4)`` after three, or ``C`` pooled features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.nn.allocator import tune_allocator
from lifelong.nn.layers import QConvBN, QLinear
from lifelong.space.config import Precision, SearchSpace, SubnetConfig, stage_sizes

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "ConvCall", "StaticSubnet", "Supernet", "init_quantizers", "recalibrate_bn"]

PIXEL_MEAN = 0.2860  # Fashion-MNIST training set
PIXEL_STD = 0.3530


def head_key(pool: str, n_stages: int) -> str:
    return f"{pool}{n_stages}"


class _Head(nn.Module):
    """The fully connected layers behind one (pool, number of stages)."""

    def __init__(self, in_max: int, hidden_max: int, classes: int, wb: tuple, ab: tuple) -> None:
        super().__init__()
        self.direct = QLinear(in_max, classes, relu=False, weight_bits=wb, act_bits=ab)
        if hidden_max:
            self.hidden = QLinear(in_max, hidden_max, relu=True, weight_bits=wb, act_bits=ab)
            self.out = QLinear(hidden_max, classes, relu=False, weight_bits=wb, act_bits=ab)


def _features(x: torch.Tensor, pool: str) -> torch.Tensor:
    return x.mean((2, 3)) if pool == "gap" else x.flatten(1)  # (B, C) or (B, C*H*W)


class Supernet(nn.Module):
    """Elastic dense conv stages and head choices with per-layer precision."""

    def __init__(self, space: SearchSpace | None = None) -> None:
        super().__init__()
        tune_allocator()  # a process holding a supernet trains, evaluates or exports: CPU torch work
        self.space = space or SearchSpace()
        c = self.space.config
        wb = tuple(sorted({p.w for p in c.precisions}))
        ab = tuple(sorted({p.a for p in c.precisions}))
        k_max = max(c.kernels)
        self.stages = nn.ModuleList()
        cin = c.in_channels
        for spec in c.stages:
            cout = max(spec.widths)
            # Only the first convolution reads signed values (the normalised image); every
            # other input follows a ReLU, so its 8-bit grid is unsigned [0, 255]: a bit more
            # resolution than int8, and the uint8-with-zero-point-0 form onnxruntime fuses.
            convs = nn.ModuleList(
                QConvBN(cin if j == 0 else cout, cout, k_max, 1, depthwise=False, act_signed=not self.stages and j == 0,
                        relu=True, weight_bits=wb, act_bits=ab)
                for j in range(max(spec.depths))
            )  # fmt: skip
            self.stages.append(convs)
            cin = cout
        self.heads = nn.ModuleDict()
        sizes = stage_sizes(c.image_size, len(c.stages))
        for n in self.space.stage_counts:
            width = max(c.stages[n - 1].widths)
            for pool in c.pools:
                in_max = width if pool == "gap" else width * sizes[n] ** 2
                self.heads[head_key(pool, n)] = _Head(in_max, max(c.hiddens), c.num_classes, wb, ab)
        self.dropout = 0.0  # on the hidden layer's output; the trainer sets it for the largest only
        self.active: SubnetConfig = self.space.largest()

    # -- the OFA verbs -------------------------------------------------------------------------
    def set_active_subnet(self, cfg: SubnetConfig) -> None:
        self.active = self.space.validate(cfg)

    def sample_active_subnet(
        self, rng: np.random.Generator, precisions: tuple[Precision, ...] | None = None
    ) -> SubnetConfig:
        cfg = self.space.sample(rng, precisions)
        self.active = cfg
        return cfg

    def get_subnet(self, cfg: SubnetConfig | None = None) -> StaticSubnet:
        """A static module with copies of only the active weights and quantizers of ``cfg``."""
        cfg = self.space.validate(cfg) if cfg is not None else self.active
        c = self.space.config
        layers: list[QConvBN] = []
        calls: list[ConvCall] = []
        cin = c.in_channels
        for st, convs in zip(cfg.stages, self.stages, strict=False):
            for j, conv in enumerate(st.convs):
                stride = 2 if st.down == "stride" and j == 0 else 1
                layers.append(convs[j].extract(cin, st.width, conv.kernel, conv.prec, stride))
                calls.append(
                    ConvCall(st.width, conv.kernel, conv.prec, pool_after=st.down == "pool" and j == st.depth - 1)
                )
                cin = st.width
        head = self.heads[head_key(cfg.head.pool, len(cfg.stages))]
        features = cin if cfg.head.pool == "gap" else cin * stage_sizes(c.image_size, len(cfg.stages))[-1] ** 2
        h = cfg.head
        if h.hidden:
            assert h.hidden_prec is not None
            fcs = [
                head.hidden.extract(features, h.hidden, h.hidden_prec),
                head.out.extract(h.hidden, c.num_classes, h.out_prec),
            ]
        else:
            fcs = [head.direct.extract(features, c.num_classes, h.out_prec)]
        out = StaticSubnet(cfg, layers, calls, fcs)
        out.train(self.training)
        return out

    # -- forward -----------------------------------------------------------------------------
    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, classes)`` and the output layer's input, the embedding ``(B, D)``."""
        cfg = self.active
        x = (x - PIXEL_MEAN) / PIXEL_STD  # (B, C, H, W)
        for st, convs in zip(cfg.stages, self.stages, strict=False):
            for j, conv in enumerate(st.convs):
                x = convs[j](x, st.width, conv.kernel, conv.prec, 2 if st.down == "stride" and j == 0 else 1)
            if st.down == "pool":
                x = F.max_pool2d(x, 2, ceil_mode=True)  # (B, C, ceil(H/2), ceil(W/2))
        head = self.heads[head_key(cfg.head.pool, len(cfg.stages))]
        feat = _features(x, cfg.head.pool)
        h = cfg.head
        if not h.hidden:
            return head.direct(feat, self.space.config.num_classes, h.out_prec), feat
        assert h.hidden_prec is not None
        emb = head.hidden(feat, h.hidden, h.hidden_prec)  # (B, hidden)
        if self.training and self.dropout:
            emb = F.dropout(emb, self.dropout)
        return head.out(emb, self.space.config.num_classes, h.out_prec), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


@dataclass(frozen=True)
class ConvCall:
    """How a static subnet calls one of its convolutions."""

    width: int
    kernel: int
    prec: Precision
    pool_after: bool


class StaticSubnet(nn.Module):
    """One subnet with exactly its own weights: what is evaluated, fine-tuned and exported."""

    def __init__(self, cfg: SubnetConfig, convs: list[QConvBN], calls: list[ConvCall], fcs: list[QLinear]) -> None:
        super().__init__()
        assert len(convs) == len(calls), "one call signature per convolution"
        assert len(fcs) in (1, 2), "an output layer, after a hidden one or not"
        self.cfg = cfg
        self.convs = nn.ModuleList(convs)
        self.fcs = nn.ModuleList(fcs)
        self.calls = tuple(calls)
        self.dropout = 0.0

    @property
    def name(self) -> str:
        return str(self.cfg)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - PIXEL_MEAN) / PIXEL_STD
        for conv, call in zip(self.convs, self.calls, strict=True):
            x = conv(x, call.width, call.kernel, call.prec)
            if call.pool_after:
                x = F.max_pool2d(x, 2, ceil_mode=True)
        emb = _features(x, self.cfg.head.pool)
        h = self.cfg.head
        if h.hidden:
            assert h.hidden_prec is not None
            emb = self.fcs[0](emb, h.hidden, h.hidden_prec)
            if self.training and self.dropout:
                emb = F.dropout(emb, self.dropout)
        out = self.fcs[-1]
        return out(emb, out.out_max, h.out_prec), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


def _batches(images: torch.Tensor | np.ndarray, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(images), batch_size):
        b = images[i : i + batch_size]
        yield b if isinstance(b, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(b))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 500) -> None:
    """Re-estimate every batch-norm statistic of the active subnet on ``images``.

    Shared BN statistics are meaningless for any one subnet; after this call they are the exact
    average over ``images`` (``float32 (N, C, H, W)`` in ``[0, 1]``) for the active subnet.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(bn.momentum, bn.training) for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    dropout = getattr(model, "dropout", 0.0)
    if dropout:
        model.dropout = 0.0  # statistics of the function that is evaluated
    try:
        for batch in _batches(images, batch_size):
            model(batch)
    finally:
        if dropout:
            model.dropout = dropout
    for bn, (momentum, _) in zip(bns, saved, strict=True):
        bn.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def init_quantizers(model: Supernet, images: torch.Tensor) -> None:
    """Initialise every quantizer of every layer and precision from one fixed batch.

    Done once, deterministically, before quantized subnets are sampled, so that data-parallel
    replicas start from identical step sizes. Every head (pool x number of stages, with and
    without the hidden layer) is run once per precision.
    """
    space = model.space
    saved, was_training = model.active, model.training
    model.eval()  # running statistics of BN stay as they are
    for prec in space.precisions:
        if prec.is_full:
            continue
        big = space.largest(prec)
        for n in space.stage_counts:
            for pool in space.config.pools:
                for hidden in sorted({min(space.config.hiddens), max(space.config.hiddens)}):
                    head = type(big.head)(pool, hidden, prec if hidden else None, prec)
                    model.set_active_subnet(SubnetConfig(big.stages[:n], head))
                    model(images)
    model.active = saved
    model.train(was_training)

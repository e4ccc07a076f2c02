"""The weight-sharing + bit-sharing supernet and the static subnets extracted from it.

Verbs follow once-for-all: :meth:`Supernet.set_active_subnet`,
:meth:`Supernet.sample_active_subnet` and :meth:`Supernet.get_subnet`. The model takes
``float32 (B, C, H, W)`` pixels in ``[0, 1]`` and normalises them itself, so an exported model
is fed what a camera gives.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from lifelong.allocator import tune_allocator
from lifelong.layers import Classifier, ConvBlock, IRBlock, QConvBN
from lifelong.space import Precision, SearchSpace, SubnetConfig

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "StaticSubnet", "Supernet", "init_quantizers", "recalibrate_bn"]

PIXEL_MEAN = 0.2860  # Fashion-MNIST training set
PIXEL_STD = 0.3530
STEM_KERNEL = 3


class Supernet(nn.Module):
    """Elastic stages of inverted-residual and plain-conv blocks with per-layer precision."""

    def __init__(self, space: SearchSpace | None = None) -> None:
        super().__init__()
        tune_allocator()  # a process holding a supernet trains, evaluates or exports: CPU torch work
        self.space = space or SearchSpace()
        c = self.space.config
        wb, ab = c.weight_bits, c.act_bits
        self.stem = QConvBN(
            c.in_channels, max(c.stem_widths), STEM_KERNEL, c.stem_stride,
            depthwise=False, act_signed=True, relu=True, weight_bits=wb, act_bits=ab,
        )  # fmt: skip
        self.stages = nn.ModuleList()
        cin = max(c.stem_widths)
        for spec in c.stages:
            cout = max(spec.widths)
            positions = nn.ModuleList()
            for j in range(max(spec.depths)):
                stride, block_in = (spec.stride, cin) if j == 0 else (1, cout)
                ops = nn.ModuleDict()
                if "ir" in c.block_kinds:
                    ops["ir"] = IRBlock(block_in, cout, max(c.kernels), max(c.expands), stride, wb, ab)
                if "conv" in c.block_kinds:
                    ops["conv"] = ConvBlock(block_in, cout, max(c.kernels), stride, wb, ab)
                positions.append(ops)
            self.stages.append(positions)
            cin = cout
        self.head = QConvBN(
            cin, c.head_width, 1, 1, depthwise=False, act_signed=True, relu=True, weight_bits=wb, act_bits=ab
        )
        self.classifier = Classifier(c.head_width, c.num_classes, wb, ab)
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
        stem = self.stem.extract(c.in_channels, cfg.stem_width, STEM_KERNEL, cfg.stem_prec)
        blocks: list[nn.Module] = []
        calls: list[tuple] = []
        cin = cfg.stem_width
        for st, positions in zip(cfg.stages, self.stages, strict=True):
            for j, b in enumerate(st.blocks):
                blocks.append(positions[j][b.kind].extract(cin, st.width, b.kernel, b.expand, b.prec))
                calls.append((st.width, b.kernel, b.expand, b.prec))
                cin = st.width
        head = self.head.extract(cin, c.head_width, 1, cfg.head_prec)
        classifier = self.classifier.extract(cfg.head_prec)
        out = StaticSubnet(cfg, stem, blocks, calls, head, classifier)
        out.train(self.training)
        return out

    # -- forward -----------------------------------------------------------------------------
    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, classes)`` and the penultimate embedding ``(B, head_width)``."""
        cfg = self.active
        x = (x - PIXEL_MEAN) / PIXEL_STD  # (B, C, H, W)
        x = self.stem(x, cfg.stem_width, STEM_KERNEL, cfg.stem_prec)
        for st, positions in zip(cfg.stages, self.stages, strict=True):
            for j, b in enumerate(st.blocks):
                x = positions[j][b.kind](x, st.width, b.kernel, b.expand, b.prec)
        x = self.head(x, self.space.config.head_width, 1, cfg.head_prec)
        return self.classifier(x, cfg.head_prec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]


class StaticSubnet(nn.Module):
    """One subnet with exactly its own weights: what is evaluated, fine-tuned and exported."""

    def __init__(
        self,
        cfg: SubnetConfig,
        stem: QConvBN,
        blocks: list[nn.Module],
        calls: list[tuple],
        head: QConvBN,
        classifier: Classifier,
    ) -> None:
        super().__init__()
        assert len(blocks) == len(calls), "one call signature per block"
        self.cfg = cfg
        self.stem, self.head, self.classifier = stem, head, classifier
        self.blocks = nn.ModuleList(blocks)
        self._calls = calls

    @property
    def name(self) -> str:
        return str(self.cfg)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - PIXEL_MEAN) / PIXEL_STD
        x = self.stem(x, self.cfg.stem_width, STEM_KERNEL, self.cfg.stem_prec)
        for block, (cout, k, e, prec) in zip(self.blocks, self._calls, strict=True):
            x = block(x, cout, k, e, prec)
        x = self.head(x, self.head.out_max, 1, self.cfg.head_prec)
        return self.classifier(x, self.cfg.head_prec)

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
    for batch in _batches(images, batch_size):
        model(batch)
    for bn, (momentum, _) in zip(bns, saved, strict=True):
        bn.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def init_quantizers(model: Supernet, images: torch.Tensor) -> None:
    """Initialise every quantizer of every op and precision from one fixed batch.

    Done once, deterministically, before quantized subnets are sampled, so that data-parallel
    replicas start from identical step sizes.
    """
    space = model.space
    saved, was_training = model.active, model.training
    model.eval()  # running statistics of BN stay as they are
    for prec in space.precisions:
        if prec.is_full:
            continue
        for kind in space.config.block_kinds:
            model.set_active_subnet(space.largest(prec, kind=kind))
            model(images)
    model.active = saved
    model.train(was_training)

"""A tiny search space of the current version for tests that train, adapt or export a supernet.

Two stages of 8-16 and 16-24 channels and a head of at most 16 hidden units: a training step
takes milliseconds, and every choice kind of the real space (widths, depths, kernels,
downsampling, pools, hidden widths, precisions) is present.
"""

from __future__ import annotations

from pathlib import Path

from lifelong.data.datasets import ArrayDataset
from lifelong.space.config import SpaceConfig, StageSpec

__all__ = ["SMALL_SPACE", "TINY_SPACE", "train_tiny_supernet"]

TINY_SPACE = SpaceConfig(
    stages=(StageSpec((8, 16), (1, 2)), StageSpec((16, 24), (1, 2))),
    min_stages=2,
    hiddens=(0, 16),
)

SMALL_SPACE = SpaceConfig(
    stages=(StageSpec((16, 32), (1, 2)), StageSpec((32, 64), (1, 2)), StageSpec((64,), (1,))),
    hiddens=(0, 64, 128),
)
"""A space holding the tutorial CNN (``c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8``) and every
kind of choice, whose largest subnet has a sixth of the default one's MACs: the export tests."""


def train_tiny_supernet(train: ArrayDataset, out: Path, *, epochs: int = 1, samples: int = 1200) -> Path:
    """A briefly trained supernet of :data:`TINY_SPACE` at ``out`` (seconds; full precision only)."""
    import torch

    from lifelong.train.trainer import TrainConfig, train_supernet

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, warmup_epochs=epochs, int8_epochs=0, batch_size=64, max_train_samples=samples,
                      val_fraction=0.0, checkpoint_every=1000)  # fmt: skip
    train_supernet(train, out, cfg, TINY_SPACE, progress=False)
    return out

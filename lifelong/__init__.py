"""lifelong: the ML core (search space, bit-sharing supernet, training, data, costs).

Names that need torch (the supernet, training, checkpoints, evaluation) load on first use,
so ``import lifelong`` stays light for the serving process, which never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from lifelong.errors import (
    CheckpointError,
    DataError,
    FormatVersionError,
    LifelongError,
    SpaceError,
    TrainingError,
)
from lifelong.space.config import (
    ConvConfig,
    HeadConfig,
    Precision,
    SearchSpace,
    SpaceConfig,
    StageConfig,
    StageSpec,
    SubnetConfig,
)
from lifelong.space.cost import SubnetCost, subnet_cost

_LAZY = {
    "ArrayDataset": "lifelong.data.datasets",
    "load_dataset": "lifelong.data.datasets",
    "load_fashion_mnist": "lifelong.data.datasets",
    "Supernet": "lifelong.nn.supernet",
    "StaticSubnet": "lifelong.nn.supernet",
    "recalibrate_bn": "lifelong.nn.supernet",
    "TrainConfig": "lifelong.train.trainer",
    "train_supernet": "lifelong.train.trainer",
    "Checkpoint": "lifelong.nn.checkpoint",
    "load_checkpoint": "lifelong.nn.checkpoint",
    "save_checkpoint": "lifelong.nn.checkpoint",
    "evaluate_subnet": "lifelong.train.evaluate",
}

__all__ = [
    "ArrayDataset",
    "Checkpoint",
    "CheckpointError",
    "ConvConfig",
    "DataError",
    "FormatVersionError",
    "HeadConfig",
    "LifelongError",
    "Precision",
    "SearchSpace",
    "SpaceConfig",
    "SpaceError",
    "StageConfig",
    "StageSpec",
    "StaticSubnet",
    "SubnetConfig",
    "SubnetCost",
    "Supernet",
    "TrainConfig",
    "TrainingError",
    "evaluate_subnet",
    "load_checkpoint",
    "load_dataset",
    "load_fashion_mnist",
    "recalibrate_bn",
    "save_checkpoint",
    "subnet_cost",
    "train_supernet",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lifelong' has no attribute {name!r}")

"""lifelong: the ML core (search space, bit-sharing supernet, training, data, costs).

Names that need torch (the supernet, training, checkpoints, evaluation) load on first use,
so ``import lifelong`` stays light for the serving process, which never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from lifelong.cost import SubnetCost, subnet_cost
from lifelong.errors import (
    CheckpointError,
    DataError,
    FormatVersionError,
    LifelongError,
    SpaceError,
    TrainingError,
)
from lifelong.space import (
    ConvConfig,
    HeadConfig,
    Precision,
    SearchSpace,
    SpaceConfig,
    StageConfig,
    StageSpec,
    SubnetConfig,
)

_LAZY = {
    "ArrayDataset": "lifelong.data",
    "load_dataset": "lifelong.data",
    "load_fashion_mnist": "lifelong.data",
    "Supernet": "lifelong.supernet",
    "StaticSubnet": "lifelong.supernet",
    "recalibrate_bn": "lifelong.supernet",
    "TrainConfig": "lifelong.train",
    "train_supernet": "lifelong.train",
    "Checkpoint": "lifelong.checkpoint",
    "load_checkpoint": "lifelong.checkpoint",
    "save_checkpoint": "lifelong.checkpoint",
    "evaluate_subnet": "lifelong.evaluate",
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

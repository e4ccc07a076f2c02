"""Accuracy of subnets: BN re-calibration on training images, then top-1 on labelled data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lifelong.nn.supernet import StaticSubnet, Supernet, recalibrate_bn
from lifelong.space.config import SubnetConfig
from lifelong.space.cost import subnet_cost

__all__ = ["SubnetEval", "evaluate_subnet", "predict_logits", "top1"]


@dataclass(frozen=True)
class SubnetEval:
    subnet: str
    top1: float
    params: int
    macs: int
    weight_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {
            "subnet": self.subnet,
            "top1": self.top1,
            "params": self.params,
            "macs": self.macs,
            "weight_bytes": self.weight_bytes,
        }


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Logits ``(N, classes)`` of ``images`` (``float32 (N, C, H, W)`` in ``[0, 1]``), eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        b = images[i : i + batch_size]
        b = b if isinstance(b, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(b))
        out.append(model(b.contiguous(memory_format=torch.channels_last)).numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def evaluate_subnet(
    supernet: Supernet,
    cfg: SubnetConfig,
    calib_images: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
) -> tuple[SubnetEval, StaticSubnet]:
    """Extract ``cfg``, re-calibrate its BN on ``calib_images``, and measure top-1."""
    sub = supernet.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(calib_images).contiguous(memory_format=torch.channels_last))
    acc = top1(predict_logits(sub, images), labels)
    cost = subnet_cost(supernet.space, cfg)
    return SubnetEval(str(cfg), acc, cost.params, cost.macs, cost.weight_bytes), sub

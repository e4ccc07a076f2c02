"""Supernet checkpoints: weights, the space, the training record, a format version.

A checkpoint is a dict of tensors and plain values written with ``torch.save`` and read with
``torch.load(weights_only=True)``, so loading never runs pickled code. Writes go to a
temporary file that is synced and renamed over the old one: a kill at any moment leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifelong.errors import CheckpointError, FormatVersionError
from lifelong.nn.supernet import Supernet
from lifelong.persist.digest import file_sha256
from lifelong.space.config import SearchSpace, SpaceConfig

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "file_sha256", "load_checkpoint", "save_atomic", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
KIND = "lifelong-supernet"


@dataclass
class Checkpoint:
    """What a checkpoint holds. ``train`` is the resumable training state (may be empty)."""

    space: SpaceConfig
    state_dict: dict[str, torch.Tensor]
    record: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.train.get("complete", False))

    def build(self) -> Supernet:
        """A supernet with these weights."""
        model = Supernet(SearchSpace(self.space))
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights do not fit its search space: {exc}") from exc
        return model


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT,
        "kind": KIND,
        "space": json.dumps(ckpt.space.to_dict()),
        "record": json.dumps(ckpt.record),
        "meta": json.dumps(ckpt.meta),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()},
        "train": ckpt.train,
    }
    return save_atomic(path, payload)


def save_atomic(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` under a temporary name, synced, then renamed: a kill leaves the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint without unpickling code; errors say what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train one with `lifelong train` or pass --checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable lifelong checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a lifelong supernet checkpoint (expected kind {KIND!r})")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT:
        raise FormatVersionError(
            f"checkpoint {path}",
            version,
            CHECKPOINT_FORMAT,
            "Retrain with `lifelong train`, or use the lifelong release that wrote it.",
        )
    try:
        space = SpaceConfig.from_dict(json.loads(payload["space"]))
        record = json.loads(payload["record"])
        meta = json.loads(payload.get("meta", "{}"))
        state_dict = payload["state_dict"]
        train = payload.get("train", {})
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is missing or has a malformed field: {exc}") from exc
    return Checkpoint(space=space, state_dict=state_dict, record=record, train=train, meta=meta)

"""The adaptation request: what the daemon asks of one adaptation worker, as a JSON file.

Kept apart from :mod:`lifelong.jobs.adapt` (which needs torch) so that the serving process
writes the same dataclass the worker reads: one definition of the format, versioned. The
result files' kinds and versions are defined here too, and :func:`read_adapt_result` is how
the serving process reads a worker's result back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import DataError, FormatVersionError
from lifelong.persist.versioned import read_versioned_json, write_json_atomic
from lifelong.persist.versioned_npz import read_versioned_npz, write_npz_atomic

__all__ = [
    "ADAPT_MODES",
    "ADAPT_REQUEST_FORMAT",
    "ADAPT_RESULT_FORMAT",
    "ADAPT_RESULT_KIND",
    "BN_RESULT_FORMAT",
    "BN_RESULT_KIND",
    "TASK_DATA_FORMAT",
    "AdaptRequest",
    "load_task_data",
    "read_adapt_result",
    "save_task_data",
]

ADAPT_REQUEST_FORMAT = 1
ADAPT_MODES = ("finetune", "bn")
_KIND = "lifelong-adapt-request"
ADAPT_RESULT_KIND, ADAPT_RESULT_FORMAT = "lifelong-adapt-result", 1
"""The labelled adaptation's ``result.json`` (:mod:`lifelong.jobs.adapt`)."""
BN_RESULT_KIND, BN_RESULT_FORMAT = "lifelong-bn-adapt-result", 1
"""The label-free answer's ``result.json`` (:mod:`lifelong.jobs.bn_adapt`)."""


TASK_DATA_KIND, TASK_DATA_FORMAT = "lifelong-adapt-task-data", 1
"""An adaptation's labelled local samples, held out from what made its candidate
(``task.npz`` beside the result, ``result["task_data"]``): the daemon checks the candidate on
them instead of the service's clean task images, since it is a model of the new data."""


def save_task_data(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write uint8 ``(N, 28, 28)`` images and their labels for the daemon's task check."""
    x, y = np.asarray(images), np.asarray(labels, np.int64)
    if x.dtype != np.uint8 or x.ndim != 3 or len(x) != len(y) or not len(x):
        raise DataError(f"task data must be uint8 (N, H, W) images with N labels, got {x.dtype} {x.shape}, {y.shape}")
    return write_npz_atomic(path, kind=TASK_DATA_KIND, version=TASK_DATA_FORMAT, arrays={"x": x, "y": y})


def load_task_data(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The images (float32 ``(N, 1, H, W)`` in [0, 1]) and labels of :func:`save_task_data`.

    Raises:
        DataError: missing, unreadable, of another kind or version, or malformed.
    """
    d = read_versioned_npz(path, kind=TASK_DATA_KIND, version=TASK_DATA_FORMAT, what="task data file", needs=("x", "y"))
    x, y = d["x"], d["y"]
    if x.dtype != np.uint8 or x.ndim != 3 or y.shape != (len(x),) or not len(x):
        raise DataError(f"{path}: task data must be uint8 (N, H, W) images with N labels, got {x.dtype} {x.shape}")
    return x[:, None].astype(np.float32) / np.float32(255.0), y.astype(np.int64)


def read_adapt_result(path: str | Path, mode: str) -> dict[str, Any]:
    """A worker's ``result.json`` for an adaptation of ``mode`` (``finetune`` or ``bn``), once
    its kind and format version are the ones this code reads.

    Raises:
        DataError: Missing, unreadable, or not an adaptation result.
        FormatVersionError: Written by another version of the worker.
    """
    kind, version = (BN_RESULT_KIND, BN_RESULT_FORMAT) if mode == "bn" else (ADAPT_RESULT_KIND, ADAPT_RESULT_FORMAT)
    return read_versioned_json(path, kind=kind, version=version, what="adaptation result", article="an")


@dataclass(frozen=True)
class AdaptRequest:
    """What the daemon asks of one adaptation (written as JSON, see :meth:`save`).

    Attributes:
        samples: ``(ref, label)`` of labelled local samples, newest first.
        checkpoint: The supernet version in use.
        supernet_dir: Where adapted versions are written (``STATE/supernet``).
        out_dir: This job's folder: the candidate model and the result go there.
        policy: The policy in force (``policies.policy_to_dict``).
        replay: The replay buffer file (built there from ``train_data`` if missing).
        replay_size: Its size when built.
        train_data: The original training data spec (``lifelong.data.datasets.load_dataset``), or
            None for Fashion-MNIST.
        front, predictor, profile: The cached front, the accuracy predictor and the device
            profile (each may be None or missing: the search step is then skipped).
        serving: The serving model: ``{"model_id", "subnet", "path"}`` (its ONNX file).
        original: The model that served when the drift began, where another (the label-free
            answer) has replaced it since: ``{"model_id", "path"}``. Forgetting is measured
            against it, not against the interim answer.
        trigger: Why (the drift, in words).
        max_seconds: The policy's time box; the job plans to finish within it.
        steps: Fine-tuning steps.
        candidates: Subnets measured for real after fine-tuning (the serving one included).
        search_evaluations: Predictor evaluations of the warm-started search.
        holdout_share: Share of local samples held out for validation.
        threads: torch threads.
        seed: Splits, batches, subnets.
        mode: ``"finetune"`` (labelled: fine-tune with replay, re-search, export) or ``"bn"``
            (label-free: re-estimate the serving subnet's batch-norm statistics on
            ``unlabelled`` and export it; :mod:`lifelong.jobs.bn_adapt`).
        unlabelled: ``"bn"`` mode: an ``.npz`` with ``x``, uint8 ``(N, 28, 28)`` local images.
        reference_mix: ``"bn"`` mode: the serving model's predicted-class shares on the data
            it was deployed on (its drift reference), for the label-free checks.
    """

    samples: tuple[tuple[str, int], ...]
    checkpoint: str
    supernet_dir: str
    out_dir: str
    policy: dict[str, Any]
    replay: str
    replay_size: int = 2000
    train_data: str | None = None
    front: str | None = None
    predictor: str | None = None
    profile: str | None = None
    serving: dict[str, Any] | None = None
    original: dict[str, Any] | None = None
    trigger: str = ""
    max_seconds: float = 300.0
    steps: int = 200
    candidates: int = 6
    search_evaluations: int = 4000
    holdout_share: float = 0.3
    threads: int = 2
    seed: int = 0
    mode: str = "finetune"
    unlabelled: str | None = None
    reference_mix: tuple[float, ...] | None = None
    format_version: int = ADAPT_REQUEST_FORMAT

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, {"kind": _KIND, **asdict(self)}, durable=False, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> AdaptRequest:
        path = Path(path)
        try:
            d = read_versioned_json(path, kind=_KIND, version=ADAPT_REQUEST_FORMAT, what="adaptation request")
        except FormatVersionError as exc:  # a DataError here, as the worker expects
            raise DataError(f"{path}: request format {exc.found!r}, expected {exc.supported}") from exc
        del d["kind"]
        try:
            d["samples"] = tuple((str(r), int(y)) for r, y in d["samples"])
            if d.get("reference_mix") is not None:
                d["reference_mix"] = tuple(float(v) for v in d["reference_mix"])
            if d.get("mode", "finetune") not in ADAPT_MODES:
                raise ValueError(f"mode {d['mode']!r} is not one of {ADAPT_MODES}")
            return cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed adaptation request ({exc})") from exc

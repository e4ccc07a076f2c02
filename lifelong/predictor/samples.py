"""The accuracy predictor's training data: subnets of the supernet, really evaluated.

Each sample is one subnet taken out of the supernet (``get_subnet``), its batch norm
re-calibrated on a fixed set of training images, and its top-1 measured on the validation
split that supernet training held out and never saw (the split is read from the checkpoint's
training settings, so it is the same images). Three kinds of samples, the first two as APQ
uses them:

- ``fp``: architectures at full precision (every layer ``w32a32``), many and cheap;
- ``quant``: subnets drawn as the search meets them (``SearchSpace.sample``: every layer's
  precision from the space's whole mix), fewer and dearer;
- ``corner``: the sandwich corners and the neighbourhood of the accurate one. Uniform draws
  all land in the supernet's middle, so a predictor trained on them alone has never seen the
  large subnets the front's accurate end is made of. The stream starts with the extremes
  (``largest`` and ``smallest`` of every block kind at every precision), then mutations of
  the largest subnet (:func:`corner_subnet`).

Which subnets are evaluated is fixed by the seed: each kind has its own random stream, and
the first ``n`` distinct subnets of a stream do not depend on how many are asked for. The
collection (hundreds of evaluations, tens of minutes) is therefore resumable and extensible:
the file is rewritten atomically after every evaluation, and a later run with the same
settings skips what the file already holds, whether the earlier run was killed or asked for
fewer samples.

File: JSON with a kind, a format version, the space, what the accuracies were measured with
(:class:`Provenance`: checkpoint sha256, data, split, calibration and validation sizes) and
the samples, each with the seconds its evaluation took. Reading it needs no torch; collecting
imports torch inside :func:`collect_predictor_data`. The ``corner`` kind did not change the
format: a file without corner samples means what it meant, and it is extended with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.errors import DataError, SpaceError
from lifelong.persist.versioned import read_versioned_json, write_json_atomic
from lifelong.progress import Progress
from lifelong.space.config import Precision, SearchSpace, SpaceConfig, SubnetConfig

if TYPE_CHECKING:
    from lifelong.data.datasets import ArrayDataset

__all__ = [
    "CORNER_MUTATION",
    "KINDS",
    "PREDICTOR_DATA_FORMAT",
    "CollectSettings",
    "PredictorData",
    "Provenance",
    "Sample",
    "calibration_images",
    "collect_predictor_data",
    "corner_subnet",
    "label_noise",
    "planned_subnets",
]

logger = logging.getLogger(__name__)

PREDICTOR_DATA_FORMAT = 1
_KIND = "lifelong-predictor-data"
KINDS = ("fp", "quant", "corner")
"""Sample kinds: full-precision architectures, subnets with the space's precision mix, and the
sandwich corners with the neighbourhood of the accurate one."""
_STREAM = {"fp": 0, "quant": 1, "calib": 2, "corner": 3}  # independent random streams under one seed
CORNER_MUTATION = (0.1, 0.4)
"""Range of the per-gene mutation probability of the corner stream's neighbours of the largest subnet."""


@dataclass(frozen=True)
class CollectSettings:
    """What to collect and how.

    Attributes:
        fp: Full-precision subnets to evaluate.
        quant: Subnets with the space's per-layer precision mix to evaluate.
        corner: Corner subnets to evaluate: the extremes at every precision first, then
            neighbours of the largest subnet (:func:`corner_subnet`).
        calib: Training images the batch norm of every subnet is re-calibrated on.
        val: Validation images top-1 is measured on (the first ``val`` of the split);
            ``None``: all of them.
        seed: Picks the subnets and the calibration images.
        threads: torch intra-op threads while evaluating.
        val_fraction: The validation split's share of the data; ``None``: the one the
            checkpoint's training used (what it never saw).
        split_seed: The split's seed; ``None``: the one the checkpoint's training used.
    """

    fp: int = 300
    quant: int = 400
    corner: int = 0
    calib: int = 1000
    val: int | None = None
    seed: int = 0
    threads: int = 2
    val_fraction: float | None = None
    split_seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.fp < 0 or self.quant < 0:
            problems.append(f"fp and quant must be >= 0, got {self.fp} and {self.quant}")
        if self.corner < 0:
            problems.append(f"corner must be >= 0 subnets (0: none), got {self.corner}")
        if self.calib < 1:
            problems.append(f"calib must be >= 1 image, got {self.calib}")
        if self.val is not None and self.val < 1:
            problems.append(f"val must be >= 1 image or None (all), got {self.val}")
        if self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be in (0, 1) or None, got {self.val_fraction}")
        if problems:
            raise DataError("invalid collection settings: " + "; ".join(problems))


@dataclass(frozen=True)
class Provenance:
    """What the accuracies were measured with. Samples are comparable only under equal ones,
    so a resumed collection must match the file's exactly."""

    checkpoint_sha256: str
    data_source: str
    val_fraction: float
    split_seed: int
    val_images: int
    calib_images: int
    seed: int

    def differences(self, held: Provenance) -> list[str]:
        """``"name: this (held: that)"`` for every field that differs from ``held``'s."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} (held: {getattr(held, f.name)!r})"
            for f in fields(self)
            if getattr(self, f.name) != getattr(held, f.name)
        ]


@dataclass(frozen=True)
class Sample:
    """One evaluated subnet: ``index`` is its position in its kind's stream.

    ``seconds`` is the evaluation's wall time, ``cpu_seconds`` the process's CPU time over it
    (summed over threads): on a shared machine the second says what it would cost alone.
    ``halves`` is top-1 on each half of the validation images: their difference over many
    subnets measures how noisy a label is (:func:`label_noise`), at no extra cost.
    """

    kind: str
    index: int
    subnet: str
    top1: float
    seconds: float
    cpu_seconds: float = 0.0
    halves: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["halves"] = list(self.halves) if self.halves is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Sample:
        try:
            halves = d.get("halves")
            s = cls(
                str(d["kind"]),
                int(d["index"]),
                str(d["subnet"]),
                float(d["top1"]),
                float(d["seconds"]),
                float(d.get("cpu_seconds", 0.0)),
                None if halves is None else (float(halves[0]), float(halves[1])),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DataError(f"sample {str(d)[:120]!r}: {exc}") from None
        accs = [s.top1, *(s.halves or ())]
        if (
            s.kind not in KINDS
            or s.index < 0
            or not all(0 <= a <= 1 for a in accs)
            or min(s.seconds, s.cpu_seconds) < 0
        ):
            raise DataError(
                f"sample {str(d)[:120]!r}: expected kind in {KINDS}, index >= 0, top1 and halves in [0, 1], "
                "seconds >= 0"
            )
        return s


@dataclass(frozen=True)
class PredictorData:
    """A collection of evaluated subnets (see the module docstring)."""

    space: SpaceConfig
    provenance: Provenance
    samples: tuple[Sample, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen = set()
        for s in self.samples:
            if (s.kind, s.index) in seen:
                raise DataError(f"sample {s.kind} #{s.index} appears twice")
            seen.add((s.kind, s.index))

    def of(self, kind: str) -> list[Sample]:
        """The samples of ``kind`` in stream order."""
        if kind not in KINDS:
            raise DataError(f"kind must be one of {KINDS}, got {kind!r}")
        return sorted((s for s in self.samples if s.kind == kind), key=lambda s: s.index)

    def subnets(self, kind: str) -> tuple[list[SubnetConfig], np.ndarray]:
        """The subnets of ``kind`` and their top-1 ``(N,)``, in stream order, checked against the space."""
        space = SearchSpace(self.space)
        chosen = self.of(kind)
        try:
            cfgs = [space.parse(s.subnet) for s in chosen]
        except SpaceError as exc:
            raise DataError(f"predictor data holds a subnet outside its space: {exc}") from exc
        return cfgs, np.array([s.top1 for s in chosen], dtype=np.float64)

    def measured_top1(self) -> dict[str, float]:
        """Validation top-1 by canonical subnet name, every kind (a subnet met twice: the mean)."""
        seen: dict[str, list[float]] = {}
        for s in self.samples:
            seen.setdefault(s.subnet, []).append(s.top1)
        return {name: float(np.mean(v)) for name, v in seen.items()}

    def with_sample(self, sample: Sample) -> PredictorData:
        return replace(self, samples=(*self.samples, sample))

    def cost(self) -> dict[str, Any]:
        """What the data cost to build: evaluations, wall and CPU seconds, in all and per kind."""
        out: dict[str, Any] = {
            "evaluations": len(self.samples),
            "seconds": float(sum(s.seconds for s in self.samples)),
            "cpu_seconds": float(sum(s.cpu_seconds for s in self.samples)),
        }
        for kind in KINDS:
            chosen = [s for s in self.samples if s.kind == kind]
            out[kind] = {
                "evaluations": len(chosen),
                "seconds": float(sum(s.seconds for s in chosen)),
                "cpu_seconds": float(sum(s.cpu_seconds for s in chosen)),
                "seconds_per_evaluation": float(np.mean([s.seconds for s in chosen])) if chosen else None,
            }
        return out

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "format_version": PREDICTOR_DATA_FORMAT,
            "space": self.space.to_dict(),
            "provenance": asdict(self.provenance),
            "info": self.info,
            "samples": [s.to_dict() for s in self.samples],
        }

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically and durably: a kill leaves the old file or the new one."""
        return write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> PredictorData:
        """Read a file written by :meth:`save`; every problem is named with the file."""
        path = Path(path)
        d = read_versioned_json(
            path,
            kind=_KIND,
            version=PREDICTOR_DATA_FORMAT,
            what="predictor data",
            article="",
            missing_hint="collect it with `lifelong predictor collect`",
            redo_hint="Collect it again with `lifelong predictor collect` to a new --out.",
        )
        shapes = {"space": dict, "provenance": dict, "samples": list, "info": dict}
        problems = [
            f"{key!r} must be a {'table' if kind is dict else 'list'}, found {type(d.get(key)).__name__}"
            for key, kind in shapes.items()
            if not isinstance(d.get(key, {} if key == "info" else None), kind)
        ]
        if problems:
            raise DataError(f"predictor data {path} is malformed: {'; '.join(problems)}")
        try:
            space = SpaceConfig.from_dict(d["space"])
            prov = Provenance(**d["provenance"])
            samples = tuple(Sample.from_dict(s) for s in d["samples"])
            return cls(space, prov, samples, d.get("info", {}))
        except (TypeError, SpaceError, DataError) as exc:
            raise DataError(f"predictor data {path} is malformed: {exc}") from exc


def label_noise(samples: list[Sample] | tuple[Sample, ...]) -> float | None:
    """Estimated standard deviation of one label's validation-sampling noise (accuracy in [0, 1]).

    Each half of the validation images gives an independent estimate of a subnet's accuracy;
    whatever all subnets share (a half that is easier for everyone) cancels in the spread of
    ``half1 - half2`` over subnets, which is twice the noise variance of one half, four times
    that of the full set. Calibration noise is not included. ``None`` for fewer than 3 samples
    with halves.
    """
    diffs = [s.halves[0] - s.halves[1] for s in samples if s.halves is not None]
    if len(diffs) < 3:
        return None
    return float(np.std(diffs, ddof=1) / 2)


# -- which subnets ------------------------------------------------------------------------------
def planned_subnets(space: SearchSpace, kind: str, n: int, seed: int) -> list[SubnetConfig]:
    """The first ``n`` distinct subnets of ``kind``'s stream under ``seed``.

    A prefix of a longer plan is the shorter plan, so asking for more extends a collection.
    """
    return [cfg for cfg, _ in zip(_stream(space, kind, seed), range(n), strict=False)]


def _stream(space: SearchSpace, kind: str, seed: int) -> Iterator[SubnetConfig]:
    if kind not in KINDS:
        raise DataError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, _STREAM[kind]])
    if kind == "corner":
        draws = itertools.chain(_extremes(space), (corner_subnet(space, rng) for _ in itertools.count()))
    else:
        precisions = (Precision(),) if kind == "fp" else None
        draws = (space.sample(rng, precisions) for _ in itertools.count())
    seen: set[str] = set()
    misses = 0
    for cfg in draws:
        name = str(cfg)
        if name in seen:
            misses += 1
            if misses >= 1000:  # a space too small to give n distinct subnets ends the stream
                return
            continue
        seen.add(name)
        yield cfg


def _extremes(space: SearchSpace) -> Iterator[SubnetConfig]:
    """The largest subnets at every precision, then the smallest ones: the sandwich rule's
    corners, which uniform draws never reach."""
    seen: list[SubnetConfig] = []
    for cfg in [*(space.largest(p) for p in space.precisions), *(space.smallest(p) for p in space.precisions)]:
        if cfg not in seen:  # a space of one architecture has one corner per precision
            seen.append(cfg)
            yield cfg


def corner_subnet(space: SearchSpace, rng: np.random.Generator) -> SubnetConfig:
    """A neighbour of the accurate corner: the largest subnet with a random precision mix, mutated.

    The mix is a random non-empty subset of the space's precisions, each layer drawing its
    precision from it: one precision (``largest(p)``) as often as any two, three, ... of
    them, so that uniform and mixed corners are both covered. Then every gene is resampled
    (:meth:`SearchSpace.mutate`) with a probability drawn from :data:`CORNER_MUTATION`, which
    also changes some layers' precisions.
    """
    precs = space.precisions
    k = int(rng.integers(1, len(precs) + 1))
    mix = tuple(precs[i] for i in sorted(rng.choice(len(precs), size=k, replace=False)))
    largest = space.largest()

    def pick() -> Precision:
        return mix[int(rng.integers(len(mix)))]

    base = largest.with_precisions(pick)
    return space.mutate(base, rng, float(rng.uniform(*CORNER_MUTATION)))


def calibration_images(train_part: ArrayDataset, n: int, seed: int) -> np.ndarray:
    """The ``n`` training images every subnet's BN is re-calibrated on: one fixed, seeded
    subset in the data's order, so that all subnets are measured alike."""
    idx = np.random.default_rng([seed, _STREAM["calib"]]).permutation(len(train_part))[:n]
    return train_part.subset(np.sort(idx)).as_float()


def _training_split(train_state: dict[str, Any], settings: CollectSettings) -> tuple[float, int]:
    """The validation fraction and seed the checkpoint's training used, unless overridden."""
    try:
        trained = json.loads(train_state.get("config") or "{}")
    except ValueError:
        trained = {}
    fraction = settings.val_fraction if settings.val_fraction is not None else trained.get("val_fraction")
    seed = settings.split_seed if settings.split_seed is not None else trained.get("seed", 0)
    if not fraction:
        raise DataError(
            "the checkpoint records no validation split (it was trained on all of its data, or by an older "
            "version): there are no images it never saw; pass a validation fraction and seed explicitly"
        )
    return float(fraction), int(seed)


# -- collection ---------------------------------------------------------------------------------
def collect_predictor_data(
    checkpoint: str | Path,
    out: str | Path,
    settings: CollectSettings | None = None,
    *,
    train_data: ArrayDataset | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> PredictorData:
    """Evaluate the planned subnets of ``checkpoint`` and append them to the file ``out``.

    Resumes: samples already in ``out`` are kept and not evaluated again, provided they were
    measured under the same :class:`Provenance` (else :class:`DataError` says which fields
    differ). The file is rewritten after every evaluation.

    Args:
        checkpoint: The supernet checkpoint.
        out: The data file, created or extended.
        settings: What to collect.
        train_data: The data the checkpoint was trained on (its split gives the validation
            and calibration images); default the Fashion-MNIST training set.
        progress: Show a progress bar on stderr.
        stop_after: Stop after this many new evaluations (as a kill would), for tests.
    """
    from lifelong.data.datasets import load_fashion_mnist
    from lifelong.nn.checkpoint import file_sha256, load_checkpoint

    settings = settings or CollectSettings()
    out = Path(out)
    ck = load_checkpoint(checkpoint)
    data = train_data if train_data is not None else load_fashion_mnist("train")
    if data.y is None:
        raise DataError(f"{data.source}: evaluating subnets needs labelled data")
    val_fraction, split_seed = _training_split(ck.train, settings)
    train_part, val_part = data.split(val_fraction, seed=split_seed)
    _check_same_data(ck.meta, ck.train, train_part)
    n_val = len(val_part) if settings.val is None else settings.val
    if n_val > len(val_part) or settings.calib > len(train_part):
        raise DataError(
            f"asked for {n_val} validation and {settings.calib} calibration images; the split of "
            f"{data.source} has {len(val_part)} and {len(train_part)}"
        )
    prov = Provenance(
        checkpoint_sha256=file_sha256(checkpoint),
        data_source=data.source,
        val_fraction=val_fraction,
        split_seed=split_seed,
        val_images=n_val,
        calib_images=settings.calib,
        seed=settings.seed,
    )
    with _exclusive(out):
        return _collect(ck, out, prov, settings, train_part, val_part, n_val, checkpoint, progress, stop_after)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One collection per file: two would each rewrite it with their own samples."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.lock")
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DataError(
                f"{out}: another `lifelong predictor collect` is writing this file (lock {lock}); "
                "wait for it or stop it first"
            ) from exc
        yield


def _collect(  # noqa: PLR0913
    ck: Any,
    out: Path,
    prov: Provenance,
    settings: CollectSettings,
    train_part: ArrayDataset,
    val_part: ArrayDataset,
    n_val: int,
    checkpoint: str | Path,
    progress: bool,
    stop_after: int | None,
) -> PredictorData:
    import torch

    from lifelong.nn.supernet import recalibrate_bn
    from lifelong.train.evaluate import predict_logits

    collected = _resume(out, ck.space, prov, checkpoint)
    space = SearchSpace(ck.space)
    plan = [
        (kind, i, cfg)
        for kind in KINDS
        for i, cfg in enumerate(planned_subnets(space, kind, _n(settings, kind), settings.seed))
    ]
    done = {(s.kind, s.index): s.subnet for s in collected.samples}
    for kind, i, cfg in plan:
        if (kind, i) in done and done[(kind, i)] != str(cfg):
            raise DataError(
                f"{out}: sample {kind} #{i} is {done[(kind, i)]}, but this version of lifelong plans {cfg} there; "
                "collect to a new --out"
            )
    todo = [(kind, i, cfg) for kind, i, cfg in plan if (kind, i) not in done]
    logger.info(
        "predictor data %s: %d samples held, %d to evaluate (fp %d, quant %d, corner %d; calib %d, val %d images)",
        out, len(collected.samples), len(todo), settings.fp, settings.quant, settings.corner, settings.calib, n_val,
    )  # fmt: skip
    if not todo:
        return collected

    calib = torch.from_numpy(calibration_images(train_part, settings.calib, settings.seed))  # (calib, 1, H, W)
    calib = calib.contiguous(memory_format=torch.channels_last)
    val_x, val_y = val_part.head(n_val).as_float(), val_part.y[:n_val]
    model = ck.build()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    bar = Progress(len(plan), done=len(plan) - len(todo), phase=todo[0][0], enabled=progress)
    try:
        for count, (kind, i, cfg) in enumerate(todo, start=1):
            t0, c0 = time.perf_counter(), time.process_time()
            sub = model.get_subnet(cfg)
            recalibrate_bn(sub, calib)
            correct = predict_logits(sub, val_x).argmax(1) == val_y  # (val,)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            half = len(correct) // 2
            top1 = float(correct.mean())
            halves = (float(correct[:half].mean()), float(correct[half:].mean())) if half else None
            collected = collected.with_sample(Sample(kind, i, str(cfg), top1, round(seconds, 4), round(cpu, 4), halves))
            collected.save(out)
            bar.update(1, phase=kind, top1=100 * top1, s_per_eval=seconds)
            if stop_after is not None and count >= stop_after:
                break
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
    return collected


def _n(settings: CollectSettings, kind: str) -> int:
    return {"fp": settings.fp, "quant": settings.quant, "corner": settings.corner}[kind]


def _resume(out: Path, space: SpaceConfig, prov: Provenance, checkpoint: str | Path) -> PredictorData:
    if not out.exists():
        return PredictorData(space, prov, (), {"checkpoint": str(checkpoint)})
    held = PredictorData.load(out)
    problems = prov.differences(held.provenance)
    if held.space != space:
        problems.append("the search space differs")
    if problems:
        raise DataError(
            f"{out} holds samples measured under other settings ({'; '.join(problems)}); "
            "collect to a new --out, or use the file's settings to extend it"
        )
    return held


def _check_same_data(meta: dict[str, Any], train_state: dict[str, Any], train_part: ArrayDataset) -> None:
    """Warn when the data is not what the checkpoint was trained on: its split would then not
    be the one training held out, and validation images may have been trained on."""
    try:
        capped = json.loads(train_state.get("config") or "{}").get("max_train_samples")
    except ValueError:
        capped = None
    expected = meta.get("train_samples")
    if capped is None and expected is not None and expected != len(train_part):
        logger.warning(
            "the checkpoint was trained on %s images, this split has %d for training: the data may not be "
            "what it was trained on (checkpoint source %s)",
            expected, len(train_part), meta.get("source"),
        )  # fmt: skip

"""The policy schema: one frozen, validated dataclass per section of a policy file.

A policy file is TOML with two top-level keys and one table per section::

    format_version = 1          # required: the policy format the file is written in
    name = "balanced"

    [target]                    # Target
    [budgets]                   # Budgets
    [objective]                 # Objective
    [class_weights]             # ClassWeights
    [drift]                     # DriftSettings
    [adaptation]                # AdaptationLimits
    [swap]                      # SwapRules
    [retention]                 # Retention
    [export]                    # ExportSettings

Every section and every key is optional except ``format_version``; what is left out takes
the default below. Each dataclass checks itself in ``__post_init__`` and raises
:class:`~policies.errors.PolicyValidationError` with all of its problems, so a ``Policy``
that exists is valid, and ``dataclasses.replace`` re-validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from policies._checks import CODE, Spec, check_table, check_value, choice, describe, integer, number, text
from policies.class_weights import ClassWeights
from policies.errors import PolicyValidationError, Problem

__all__ = [
    "AdaptationLimits",
    "Budgets",
    "ClassWeights",
    "DriftSettings",
    "ExportSettings",
    "OBJECTIVE_KINDS",
    "Objective",
    "POLICY_FORMAT",
    "Policy",
    "RUNTIMES",
    "Retention",
    "SwapRules",
    "Target",
]

POLICY_FORMAT = 1
"""The policy format this code reads and writes (the file's ``format_version``)."""

RUNTIMES = ("ort-cpu",)
"""Inference runtimes a policy may target."""

OBJECTIVE_KINDS = ("max-accuracy", "utility")
"""How the deployed point is chosen from the front (see :class:`Objective`)."""

_MISSING: Any = object()
"""Stands for a key that is not in the file."""

_NAME = text(100)
_DEFAULT_NAME = "custom"


def _option(default: object, spec: Spec) -> Any:
    """A dataclass field with its default and the spec it is checked against."""
    return field(default=default, metadata={"spec": spec})


class _Section:
    """Validation shared by the flat sections: one :class:`Spec` per field."""

    section: ClassVar[str]

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        return {f.name: f.metadata["spec"] for f in fields(cls)}

    @classmethod
    def check(cls, table: Mapping[str, object], file: str) -> tuple[dict[str, object], list[Problem]]:
        """Check a table of this section; return the normalised values given and all problems."""
        values, problems = check_table(cls.specs(), table, file, cls.section, _key_homes(cls.section))
        if not problems:
            full = {f.name: values.get(f.name, f.default) for f in fields(cls)}
            problems = cls._relations(full, file)
        return values, problems

    @classmethod
    def _relations(cls, values: dict[str, Any], file: str) -> list[Problem]:
        """Problems between keys, checked once every key is valid on its own."""
        return []

    def to_table(self) -> dict[str, object]:
        """The section as a TOML table; keys set to ``None`` (no limit) are left out."""
        pairs = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {k: v for k, v in pairs if v is not None}

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        values, problems = self.check(given, CODE)
        if problems:
            raise PolicyValidationError(problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)  # normalise (e.g. int -> float) on a frozen instance


@dataclass(frozen=True)
class Target(_Section):
    """The hardware and runtime the deployed model runs on.

    Attributes:
        runtime: One of :data:`RUNTIMES`; ``"ort-cpu"`` is onnxruntime on the CPU.
        threads: Intra-op threads of the inference session; 0 leaves the count to each model:
            the one its export timed fastest at ``batch`` on this device (1 or 2).
        batch: Batch size latency is measured and budgeted at.
    """

    section: ClassVar[str] = "target"
    runtime: str = _option("ort-cpu", choice(*RUNTIMES))
    threads: int = _option(2, integer(0, phrase="a positive integer, or 0 to leave the count to each model"))
    batch: int = _option(1, integer(1))

    @property
    def fixed_threads(self) -> int:
        """The count jobs time and train with: ``threads``, or 2 where each model has its own."""
        return self.threads or 2


@dataclass(frozen=True)
class Budgets(_Section):
    """Hard limits a deployed model must meet; ``None`` (the key left out) means no limit.

    Attributes:
        latency_ms_p95: 95th-percentile latency of one batch on the target, in milliseconds.
        model_bytes: Size of the exported model file.
        peak_memory_bytes: Peak memory of one inference (weights and activations).
    """

    section: ClassVar[str] = "budgets"
    latency_ms_p95: float | None = _option(None, number(gt=0, nullable=True))
    model_bytes: int | None = _option(None, integer(1, nullable=True))
    peak_memory_bytes: int | None = _option(None, integer(1, nullable=True))


@dataclass(frozen=True)
class Objective(_Section):
    """Which point of the accuracy/cost front to deploy, among those within the budgets.

    ``"max-accuracy"`` takes the most accurate point and ignores the weights. ``"utility"``
    trades accuracy against latency and size with the weights: only their ratios matter,
    a larger ``latency_weight`` or ``size_weight`` favours a faster or smaller model.

    Attributes:
        kind: One of :data:`OBJECTIVE_KINDS`.
        accuracy_weight: Reward for accuracy.
        latency_weight: Penalty for latency.
        size_weight: Penalty for model size.
    """

    section: ClassVar[str] = "objective"
    kind: str = _option("max-accuracy", choice(*OBJECTIVE_KINDS))
    accuracy_weight: float = _option(1.0, number(ge=0))
    latency_weight: float = _option(0.0, number(ge=0))
    size_weight: float = _option(0.0, number(ge=0))

    @classmethod
    def _relations(cls, values: dict[str, Any], file: str) -> list[Problem]:
        weights = ("accuracy_weight", "latency_weight", "size_weight")
        if values["kind"] == "utility" and not any(values[w] > 0 for w in weights):
            return [
                Problem(
                    file,
                    "objective",
                    'at least one weight > 0 when kind = "utility"',
                    "all three weights 0",
                    hint='set accuracy_weight = 1.0 or use kind = "max-accuracy"',
                )
            ]
        return []


@dataclass(frozen=True)
class DriftSettings(_Section):
    """When the service decides that data, labels or the environment have drifted.

    Attributes:
        window: Recent samples a live statistic is computed over.
        reference_window: Samples of the reference the live window is compared with.
        false_alarm_samples: Expected samples between two false alarms; sets the detectors'
            thresholds (larger: fewer false alarms, slower detection).
        accuracy_drop: Drop of accuracy on labelled feedback, absolute, that counts as drift.
        latency_factor: Live p95 latency over the deployed model's profiled latency that
            counts as environment drift (contention, throttling); a live p95 over the
            budget counts as well, whatever the factor.
        check_interval_s: Seconds between two drift checks.
    """

    section: ClassVar[str] = "drift"
    window: int = _option(500, integer(50))
    reference_window: int = _option(2000, integer(50))
    false_alarm_samples: int = _option(100_000, integer(1000))
    accuracy_drop: float = _option(0.05, number(gt=0, lt=1))
    latency_factor: float = _option(1.3, number(gt=1))
    check_interval_s: float = _option(30.0, number(gt=0))

    @classmethod
    def _relations(cls, values: dict[str, Any], file: str) -> list[Problem]:
        if values["reference_window"] < values["window"]:
            return [
                Problem(
                    file,
                    "drift.reference_window",
                    f"an integer >= drift.window ({values['window']})",
                    str(values["reference_window"]),
                    hint="a reference noisier than the live window makes the drift tests meaningless",
                )
            ]
        return []


@dataclass(frozen=True)
class AdaptationLimits(_Section):
    """Resources one adaptation job (fine-tuning and re-search in a worker) may take.

    Attributes:
        max_seconds: Wall-clock limit; the worker is stopped after it.
        answer_seconds: When the labelled answer should serve, counted from the drift's
            detection: a worker started once the labels are in gets what remains of it as its
            time box (within ``max_seconds``, and never under ``MIN_BOX_S``), so a slow trickle of
            labels shortens the fine-tuning instead of delaying the answer.
        priority: Nice value of the worker, 0 (normal) to 19 (lowest), so serving comes first.
        replay_buffer: Past samples kept and mixed into fine-tuning against forgetting.
        finetune_steps: Fine-tuning steps of the supernet per adaptation (0: BN re-calibration only).
        min_samples: Labelled local samples that must arrive after a drift is detected before
            adaptation starts (samples from before the drift would teach the old data).
        max_samples: The newest labelled local samples one adaptation uses at most.
        label_free: The first answer to data drift, before any label: ``"bn"`` re-estimates the
            serving model's batch-norm statistics on the next ``drift.window`` samples served (200 at least)
            (seconds, no label); ``"off"`` waits for the labelled adaptation alone.
        domain_memory: ``"on"``: after a data or label drift, when the newest samples served look
            like the data an earlier model served (its kept drift reference), that model serves
            again, without training; ``"off"``: never (a benchmark that swaps models of random
            weights on random inputs would see every earlier model match).
    """

    section: ClassVar[str] = "adaptation"
    max_seconds: float = _option(300.0, number(gt=0))
    answer_seconds: float = _option(110.0, number(gt=0))
    priority: int = _option(10, integer(0, 19))
    replay_buffer: int = _option(2000, integer(0))
    finetune_steps: int = _option(200, integer(0))
    min_samples: int = _option(300, integer(20))
    max_samples: int = _option(3000, integer(20))
    label_free: str = _option("bn", choice("bn", "off"))
    domain_memory: str = _option("on", choice("on", "off"))

    MIN_BOX_S: ClassVar[float] = 60.0
    """The shortest time box a labelled answer gets: loading, measuring and exporting take
    about half a minute on 2 cores under load, the rest fine-tunes."""

    def labelled_box(self, since_detection_s: float) -> float:
        """The labelled answer's time box when its labels are in ``since_detection_s`` after the
        detection: what remains of ``answer_seconds``, within ``[MIN_BOX_S, max_seconds]``."""
        left = self.answer_seconds - max(0.0, since_detection_s)
        return min(self.max_seconds, max(self.MIN_BOX_S, left))

    @classmethod
    def _relations(cls, values: dict[str, Any], file: str) -> list[Problem]:
        if values["max_samples"] < values["min_samples"]:
            expected = f"an integer >= adaptation.min_samples ({values['min_samples']})"
            return [Problem(file, "adaptation.max_samples", expected, str(values["max_samples"]))]
        return []


@dataclass(frozen=True)
class SwapRules(_Section):
    """When a new model replaces the deployed one, and when it is rolled back.

    Attributes:
        min_improvement: Gain in the objective's units a candidate must bring to be deployed.
        canary_window: Requests (or labelled samples) the new model is watched over after a swap.
        rollback_accuracy_drop: Accuracy drop against the previous model that rolls back.
        rollback_latency_factor: Live p95 latency over the previous model's that rolls back.
        max_forgetting: Accuracy on the original data (held-out replay samples) an adapted
            model may lose against the serving one; adaptation prefers candidates within it
            and never swaps to one beyond it.
        min_task_accuracy: Accuracy on the service's held-out images of the task (the replay
            buffer, or the task's test set) below which a model is refused before it serves and
            removed from the registry. 0 turns the check off; 0.2 (twice chance, the presets)
            refuses a model of another task or with zeroed weights and still lets one adapted
            to shifted data serve (BN statistics of a contrast shift: about 30% on clean images).
    """

    section: ClassVar[str] = "swap"
    min_improvement: float = _option(0.005, number(ge=0))
    canary_window: int = _option(200, integer(1))
    rollback_accuracy_drop: float = _option(0.02, number(gt=0, lt=1))
    rollback_latency_factor: float = _option(1.5, number(gt=1))
    max_forgetting: float = _option(0.02, number(ge=0, lt=1))
    min_task_accuracy: float = _option(0.0, number(ge=0, lt=1))


@dataclass(frozen=True)
class Retention(_Section):
    """How long models stay in the registry once they are no longer deployed.

    Attributes:
        keep_models: Models kept at least (the deployed one and one to roll back to, at least).
        keep_days: Days an undeployed model is kept, beyond the ``keep_models`` newest.
    """

    section: ClassVar[str] = "retention"
    keep_models: int = _option(5, integer(2))
    keep_days: float = _option(30.0, number(gt=0))


@dataclass(frozen=True)
class ExportSettings(_Section):
    """How the service turns a front point into a deployable model.

    Attributes:
        finetune_seconds: Train the chosen subnet alone from its supernet weights for this
            long before it is exported (APQ, OFA); 0 turns it off. Minutes of one niced core
            for a gain measured in ``benchmarks/results/finetune.json``.
    """

    section: ClassVar[str] = "export"
    finetune_seconds: float = _option(0.0, number(ge=0, lt=3601))


_SECTIONS: dict[str, type[Any]] = {
    cls.section: cls
    for cls in (
        Target, Budgets, Objective, ClassWeights, DriftSettings, AdaptationLimits, SwapRules, Retention, ExportSettings
    )
}  # fmt: skip
"""Section name in TOML -> its dataclass, in the order a policy file lists them."""


def _key_homes(exclude: str) -> dict[str, str]:
    """Every section key outside ``exclude``, mapped to its dotted name, for "did you mean"."""
    return {key: f"{name}.{key}" for name, cls in _SECTIONS.items() if name != exclude for key in cls.specs()}


def _format_version_problem(value: object, file: str) -> Problem | None:
    """The problem with a ``format_version`` (``_MISSING`` when the key is absent), if any."""
    if value is _MISSING:
        return Problem(
            file,
            "format_version",
            f"format_version = {POLICY_FORMAT}",
            "nothing (the key is missing)",
            hint=f"add `format_version = {POLICY_FORMAT}` as the first line: it records which policy "
            "format the file is written in",
        )
    if isinstance(value, bool) or not isinstance(value, int) or value != POLICY_FORMAT:
        return Problem(
            file,
            "format_version",
            f"{POLICY_FORMAT} (the only policy format this lifelong reads)",
            describe(value),
            hint="upgrade lifelong if the file was written for a newer one; otherwise "
            f"set format_version = {POLICY_FORMAT} and compare the keys with a shipped preset",
        )
    return None


@dataclass(frozen=True)
class Policy:
    """Everything the service is told to aim for; see the module docstring for the file layout.

    Attributes:
        format_version: :data:`POLICY_FORMAT`.
        name: A one-line name shown by ``lifelong status``.
    """

    format_version: int = POLICY_FORMAT
    name: str = _DEFAULT_NAME
    target: Target = field(default_factory=Target)
    budgets: Budgets = field(default_factory=Budgets)
    objective: Objective = field(default_factory=Objective)
    class_weights: ClassWeights = field(default_factory=ClassWeights)
    drift: DriftSettings = field(default_factory=DriftSettings)
    adaptation: AdaptationLimits = field(default_factory=AdaptationLimits)
    swap: SwapRules = field(default_factory=SwapRules)
    retention: Retention = field(default_factory=Retention)
    export: ExportSettings = field(default_factory=ExportSettings)

    def __post_init__(self) -> None:
        problems = [_format_version_problem(self.format_version, CODE)]
        problems.append(check_value(_NAME, self.name, CODE, "name")[1])
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                problems.append(Problem(CODE, name, f"a {cls.__name__}", describe(value)))
        problems = [p for p in problems if p is not None]
        if problems:
            raise PolicyValidationError(problems)

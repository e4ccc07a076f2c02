"""Class weights: how much each class counts when accuracy is measured.

Kept apart from the flat sections of :mod:`policies.schema` because its keys are data
(class indexes), not names fixed by the schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from policies._checks import CODE, Spec, check_value, describe, integer, number
from policies._toml import format_key
from policies.errors import PolicyValidationError, Problem

__all__ = ["ClassWeights"]

_INDEX = integer(0)
_WEIGHT = number(gt=0)


@dataclass(frozen=True)
class ClassWeights:
    """How much each class counts in accuracy; a class left out weighs 1.0.

    In TOML the keys are class indexes written as digit strings::

        [class_weights]
        "0" = 2.0     # errors on class 0 count twice
        7 = 0.5       # a bare digit key is the same string

    Indexes are checked against the model's number of classes where the policy is applied
    (:meth:`for_classes`), since a policy does not know the task.

    Attributes:
        weights: ``(class index, weight)`` pairs sorted by index; a mapping is accepted and
            converted.
    """

    section: ClassVar[str] = "class_weights"
    weights: tuple[tuple[int, float], ...] = ()

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        return {}

    @classmethod
    def check(cls, table: Mapping[str, object], file: str) -> tuple[dict[str, object], list[Problem]]:
        """Check a ``[class_weights]`` table; return ``{"weights": pairs}`` and all problems."""
        pairs, problems = [], []
        for raw_key, value in table.items():
            key = str(raw_key)  # TOML keys are strings; a dict built in Python may hold ints
            where = f"{cls.section}.{format_key(key)}"
            if not (key.isascii() and key.isdigit()):
                problems.append(
                    Problem(
                        file,
                        where,
                        'a class index written as digits, such as "3" = 2.0',
                        f"the key {key!r}",
                        hint="class names are not supported; use the index",
                    )
                )
                continue
            weight, problem = check_value(_WEIGHT, value, file, where)
            if problem is not None:
                problems.append(problem)
            else:
                pairs.append((int(key), weight))
        problems += cls._duplicates(pairs, file)
        return {"weights": tuple(sorted(pairs))}, problems

    @classmethod
    def _duplicates(cls, pairs: list[tuple[int, Any]], file: str) -> list[Problem]:
        seen: set[int] = set()
        problems = []
        for index, _ in pairs:
            if index in seen:
                problems.append(
                    Problem(
                        file, f"{cls.section}.{index}", "one weight per class", f"a second weight for class {index}"
                    )
                )
            seen.add(index)
        return problems

    def __post_init__(self) -> None:
        given = self.weights.items() if isinstance(self.weights, Mapping) else self.weights
        if isinstance(given, str) or not isinstance(given, Iterable):
            given = [given]  # reported below as not a pair
        pairs, problems = [], []
        for item in given:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                problems.append(Problem(CODE, self.section, "(class index, weight) pairs", describe(item)))
                continue
            index, weight = item
            where = f"{self.section}.{index}"
            index, bad_index = check_value(_INDEX, index, CODE, where)
            weight, bad_weight = check_value(_WEIGHT, weight, CODE, where)
            problems += [p for p in (bad_index, bad_weight) if p is not None]
            if bad_index is None and bad_weight is None:
                pairs.append((index, weight))
        problems += self._duplicates(pairs, CODE)
        if problems:
            raise PolicyValidationError(problems)
        object.__setattr__(self, "weights", tuple(sorted(pairs)))

    def to_table(self) -> dict[str, object]:
        return {str(index): weight for index, weight in self.weights}

    def weight(self, index: int) -> float:
        """The weight of class ``index`` (1.0 unless set)."""
        return dict(self.weights).get(index, 1.0)

    def for_classes(self, num_classes: int) -> tuple[float, ...]:
        """One weight per class of a task with ``num_classes`` classes.

        Raises:
            PolicyValidationError: A weight is set for a class the task does not have.
        """
        problems = [
            Problem(CODE, f"{self.section}.{i}", f"a class index from 0 to {num_classes - 1}", str(i))
            for i, _ in self.weights
            if i >= num_classes
        ]
        if problems:
            raise PolicyValidationError(problems)
        return tuple(self.weight(i) for i in range(num_classes))

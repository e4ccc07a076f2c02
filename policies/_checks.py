"""How one policy value is checked: a :class:`Spec` per key, and the words for problems.

A spec knows the phrase for what it expects (shown in problems), whether a value passes,
and how a passing value is normalised: a TOML integer given for a float key becomes a
float, so a policy read back from its own TOML compares equal. ``bool`` is never a number
here, although Python makes it an ``int``: ``threads = true`` is a mistake, not 1 thread.
"""

from __future__ import annotations

import datetime
import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies._toml import format_key, format_value
from policies.errors import Problem

CODE = "<code>"
"""The ``file`` of problems found in a policy built in Python rather than read from a file."""


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Spec:
    """What one key accepts.

    Attributes:
        expected: The phrase shown after "expected" in a problem.
        accepts: Whether a value passes (``None`` is handled by ``nullable``).
        convert: Normalises a passing value.
        nullable: Whether ``None`` (no limit; the key left out of the TOML) passes.
        choices: Known values, for a "did you mean" on a misspelt string.
    """

    expected: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same
    nullable: bool = False
    choices: tuple[str, ...] = ()


def _fmt(bound: float) -> str:
    return f"{bound:g}"


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(lo: int | None = None, hi: int | None = None, *, nullable: bool = False, phrase: str | None = None) -> Spec:
    """An integer in ``[lo, hi]`` (``phrase``: how an error describes it, when the range alone does not say)."""
    if phrase is not None:
        pass
    elif lo is not None and hi is not None:
        phrase = f"an integer from {lo} to {hi}"
    elif lo == 1:
        phrase = "a positive integer"
    elif lo is not None:
        phrase = f"an integer >= {lo}"
    else:
        phrase = "an integer"

    def accepts(value: object) -> bool:
        return _is_integer(value) and (lo is None or value >= lo) and (hi is None or value <= hi)

    return Spec(phrase, accepts, int, nullable=nullable)


def number(
    *, gt: float | None = None, ge: float | None = None, lt: float | None = None, nullable: bool = False
) -> Spec:
    """A finite number with the given strict (``gt``, ``lt``) or closed (``ge``) bounds."""
    if gt == 0 and ge is None and lt is None:
        phrase = "a positive number"
    elif gt is not None and lt is not None:
        phrase = f"a number strictly between {_fmt(gt)} and {_fmt(lt)}"
    else:
        parts = [f"{op} {_fmt(b)}" for op, b in ((">", gt), (">=", ge), ("<", lt)) if b is not None]
        phrase = "a number " + " and ".join(parts) if parts else "a number"

    def accepts(value: object) -> bool:
        return (
            _is_number(value)
            and (gt is None or value > gt)
            and (ge is None or value >= ge)
            and (lt is None or value < lt)
        )

    return Spec(phrase, accepts, float, nullable=nullable)


def choice(*options: str) -> Spec:
    """One of a fixed set of strings."""
    return Spec("one of " + ", ".join(format_value(o) for o in options), lambda v: v in options, choices=options)


def text(max_length: int) -> Spec:
    """A one-line string of printable characters."""
    return Spec(
        f"a one-line text of 1 to {max_length} printable characters",
        lambda v: isinstance(v, str) and 0 < len(v) <= max_length and v.isprintable(),
    )


def describe(value: object) -> str:
    """``value`` as a problem's "found": TOML spelling for scalars, a word for the rest."""
    if isinstance(value, bool):
        return f"{format_value(value)} (a boolean)"
    if isinstance(value, str | int | float):
        return format_value(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value):
            return "an array of tables"
        return "an array"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    if value is None:
        return "nothing (None)"
    return f"a {type(value).__name__} ({value!r})"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be, if any is close enough."""
    by_lower = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None


def check_value(spec: Spec, value: object, file: str, key: str) -> tuple[object, Problem | None]:
    """The normalised value, or the problem with it."""
    if value is None and spec.nullable:
        return None, None
    if spec.accepts(value):
        return spec.convert(value), None
    suggestion = closest(value, spec.choices) if isinstance(value, str) and spec.choices else None
    return value, Problem(file, key, spec.expected, describe(value), suggestion)


def unknown_key(
    file: str, key: str, where: str, known: Iterable[str], elsewhere: Mapping[str, str], *, what: str = "key"
) -> Problem:
    """The problem with an unknown ``key`` shown as ``where``.

    Args:
        file: Where the policy came from.
        key: The unknown key as written.
        where: Its dotted name in the problem.
        known: The keys allowed at this place, for a "did you mean".
        elsewhere: Keys that belong to another place, mapped to their dotted name there, so
            that ``threads`` under ``[budgets]`` suggests ``target.threads``.
        what: "key" or "section".
    """
    known = sorted(known)
    suggestion = closest(key, known) or elsewhere.get(key)
    hint = None if suggestion else "known keys here: " + ", ".join(known)
    return Problem(file, where, "", f"unknown {what}", suggestion, hint)


def check_table(
    specs: Mapping[str, Spec], table: Mapping[str, object], file: str, section: str, elsewhere: Mapping[str, str]
) -> tuple[dict[str, object], list[Problem]]:
    """Check every key of one section; return the normalised values given and all problems."""
    values: dict[str, object] = {}
    problems: list[Problem] = []
    for raw_key, value in table.items():
        key = str(raw_key)  # TOML keys are strings; a dict built in Python may hold others
        where = f"{section}.{format_key(key)}"
        spec = specs.get(key)
        if spec is None:
            problems.append(unknown_key(file, key, where, specs, elsewhere))
            continue
        normalised, problem = check_value(spec, value, file, where)
        if problem is None:
            values[key] = normalised
        else:
            problems.append(problem)
    return values, problems

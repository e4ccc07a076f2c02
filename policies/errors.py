"""Exceptions raised by ``policies``, and the :class:`Problem` a bad policy is reported with.

Every error raised on purpose derives from :class:`PolicyError`, which is also a
:class:`ValueError`, so callers may catch either. A policy is validated as a whole: the
loader collects every problem in every section before it raises, so one
:class:`PolicyValidationError` names each bad key at once and nothing is half-applied.

::

    PolicyError (ValueError)
    ├── PolicyFileError            missing, unreadable, not UTF-8, or not valid TOML
    └── PolicyValidationError      valid TOML that breaks the schema: carries every Problem

``PolicyError`` derives from ``ValueError`` alone: ``ValueError`` already is an
``Exception``, and listing both bases would not give a consistent method resolution order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PolicyError", "PolicyFileError", "PolicyValidationError", "Problem"]


class PolicyError(ValueError):
    """Base class of every error raised on purpose by ``policies``."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy, in words a person can act on.

    Rendered by ``str()`` as one line, for example::

        policy.toml: budgets.latency_ms_p95: expected a positive number, found -3
        policy.toml: budgets.latncy_ms: unknown key (did you mean 'latency_ms_p95'?)

    Attributes:
        file: Where the policy came from: a path, ``presets/NAME.toml``, or ``<code>`` for a
            policy built in Python.
        key: The dotted key at fault (``section.key``), or a section or top-level key.
        expected: What would be accepted; empty when no value would do (an unknown key),
            in which case ``found`` says what is wrong.
        found: The offending value, spelled as in TOML, or what is wrong with the key.
        suggestion: The closest known key or value, for a "did you mean".
        hint: What to do about it, where that is not obvious from the rest.
    """

    file: str
    key: str
    expected: str
    found: str
    suggestion: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        what = f"expected {self.expected}, found {self.found}" if self.expected else self.found
        if self.suggestion:
            what += f" (did you mean {self.suggestion!r}?)"
        if self.hint:
            what += f"; {self.hint}"
        return f"{where}: {what}"


class PolicyFileError(PolicyError):
    """A policy file that is missing, unreadable, or not valid TOML.

    Attributes:
        path: The file, as given.
        reason: What went wrong, without the path.
        line: 1-based line of a TOML syntax error, when known.
        column: 1-based column of a TOML syntax error, when known.
    """

    def __init__(
        self, path: str | os.PathLike[str], reason: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.line = line
        self.column = column
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        # The default reduce would call __init__ with the message alone; worker processes
        # send errors back through pickle.
        return type(self), (self.path, self.reason, self.line, self.column)


class PolicyValidationError(PolicyError):
    """A policy that breaks the schema; ``problems`` lists every problem found.

    The message is a header line followed by one line per problem.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        if not self.problems:
            raise ValueError("PolicyValidationError needs at least one problem")
        files = ", ".join(dict.fromkeys(p.file for p in self.problems))
        count = len(self.problems)
        header = f"invalid policy in {files} ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.problems,)

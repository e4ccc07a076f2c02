"""Exceptions raised by the ``lifelong`` core.

Every error the core raises on purpose derives from :class:`LifelongError`, and also from
the builtin it refines, so callers may catch either. Messages name the offending value and
what was expected; the CLI and the service turn them into exit codes and HTTP statuses.

::

    LifelongError
    ├── DataError (ValueError)            unreadable, missing or malformed data
    ├── SpaceError (ValueError)           a subnet outside the search space, a bad string
    ├── CheckpointError (ValueError)      an unreadable or inconsistent checkpoint
    │   └── FormatVersionError            written by a format this code cannot read
    ├── DriftError (ValueError)           a drift detector given bad settings
    ├── TrainingError (RuntimeError)      training cannot start or continue
    └── ExportError (RuntimeError)        a subnet that cannot become a deployable model
        └── ParityError                   the exported model disagrees with the torch subnet
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DataError",
    "DriftError",
    "ExportError",
    "FormatVersionError",
    "LifelongError",
    "ParityError",
    "SpaceError",
    "TrainingError",
]


class LifelongError(Exception):
    """Base class of every error raised on purpose by ``lifelong``."""


class DataError(LifelongError, ValueError):
    """Data that is missing, truncated, corrupt or of the wrong shape."""


class SpaceError(LifelongError, ValueError):
    """A subnet, string or encoding that does not belong to the search space."""


class CheckpointError(LifelongError, ValueError):
    """A checkpoint that cannot be read or does not match what is asked of it."""


class FormatVersionError(CheckpointError):
    """A persisted object written in a format version this code does not read."""

    def __init__(self, what: str, found: object, supported: int, hint: str = "") -> None:
        self.what = what
        self.found = found
        self.supported = supported
        msg = f"{what} has format version {found!r}; this version of lifelong reads version {supported}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class DriftError(LifelongError, ValueError):
    """A drift detector or monitor given settings it cannot work with."""


class TrainingError(LifelongError, RuntimeError):
    """Training cannot start or cannot go on."""


class ExportError(LifelongError, RuntimeError):
    """A subnet that cannot be exported, or an export that cannot be written."""


class ParityError(ExportError):
    """The exported model does not compute what the torch subnet computes (the parity gate)."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report

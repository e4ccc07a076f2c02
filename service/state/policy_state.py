"""The policy in force, where it came from, and why the last edit of its file was refused.

A policy file is applied whole or not at all: :func:`policies.load_policy` validates every
key before anything is built, so an invalid edit leaves the policy in force untouched and
its problems are kept in :attr:`PolicyState.error` for ``lifelong status``. Without a file
(or with an invalid one at start) the ``balanced`` preset applies.

**Whose file.** The status is read by every client of the predict socket, and the policy
path is one an operator may point anywhere. So a file that is a symbolic link, is not owned
by root or the service's own user, or is writable by others is refused before it is read;
and what the status says of a refused file never quotes it: the keys the schema knows and
what was expected of them, a TOML error's line and column, never a value or an unknown key's
name (the full text goes to the journal, which only the operator reads).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from policies import Policy, PolicyError, load_policy, load_preset
from policies.errors import PolicyFileError, PolicyValidationError

__all__ = ["DEFAULT_PRESET", "PolicyState", "file_problem", "redacted"]

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "balanced"


def file_problem(path: Path) -> str | None:
    """Why the service must not read ``path`` (a link, another owner, writable by others), or None."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot stat the policy file: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; the service reads a regular file only (a link could make it read any file)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    owners = {0, os.geteuid()}
    if st.st_uid not in owners:
        return f"is owned by uid {st.st_uid}; expected root or the service's user (uid {os.geteuid()})"
    if st.st_mode & stat.S_IWOTH:
        return f"is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}); expected 0640 or 0644"
    return None


def redacted(exc: PolicyError) -> str:
    """What the status may say of a refused policy: no value and no unknown key name from it."""
    if isinstance(exc, PolicyValidationError):
        lines = []
        for p in exc.problems:
            if p.expected:  # a key the schema knows: its name and what it takes
                lines.append(f"{p.key}: expected {p.expected}")
            else:  # an unknown key or section: only where, and the schema's suggestion
                section = p.key.rsplit(".", 1)[0] if "." in p.key else "the top level"
                hint = f" (did you mean {p.suggestion!r}?)" if p.suggestion else ""
                lines.append(f"an {p.found} in {section}{hint}")
        return f"invalid policy ({len(lines)} problem{'s' if len(lines) != 1 else ''}): " + "; ".join(lines)
    if isinstance(exc, PolicyFileError):
        if exc.line is not None:
            return f"not valid TOML at line {exc.line}, column {exc.column}"
        return exc.reason.split(":", 1)[0]
    return type(exc).__name__


class PolicyState:
    """Keeps the policy read from ``path``.

    Args:
        path: The policy file; it may not exist (yet).
        preset: The preset in force while no valid file was read.
    """

    def __init__(self, path: Path, preset: str = DEFAULT_PRESET) -> None:
        self.path = Path(path)
        self.policy: Policy = load_preset(preset)
        self.source = f"preset:{preset}"
        self.error: str | None = None
        self.loaded_at = time.time()

    def reload(self) -> Policy | None:
        """Read and validate the file; the new policy if it was applied, else None.

        None when the file does not exist (the policy in force stays, no error) or is
        invalid (the policy in force stays, :attr:`error` says why).
        """
        if not os.path.lexists(self.path):
            logger.info("no policy file at %s; the policy %r stays in force", self.path, self.policy.name)
            return None
        refused = file_problem(self.path)
        if refused is not None:
            self.error = f"{self.path}: {refused}"
            logger.error("policy file refused, %r stays in force: %s", self.policy.name, self.error)
            return None
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.error = f"{self.path}: {redacted(exc)}"
            logger.error("policy file rejected, %r stays in force:\n%s", self.policy.name, exc)
            return None
        self.policy, self.source, self.error, self.loaded_at = policy, str(self.path), None, time.time()
        logger.info("policy %r from %s in force", policy.name, self.path)
        return policy

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.policy.name,
            "source": self.source,
            "file": str(self.path),
            "loaded_at": self.loaded_at,
            "error": self.error,
            "threads": self.policy.target.threads,
            "batch": self.policy.target.batch,
        }

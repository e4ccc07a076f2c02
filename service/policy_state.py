"""The policy in force, where it came from, and why the last edit of its file was refused.

A policy file is applied whole or not at all: :func:`policies.load_policy` validates every
key before anything is built, so an invalid edit leaves the policy in force untouched and
its problems are kept in :attr:`PolicyState.error` for ``lifelong status``. Without a file
(or with an invalid one at start) the ``balanced`` preset applies.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from policies import Policy, PolicyError, load_policy, load_preset

__all__ = ["DEFAULT_PRESET", "PolicyState"]

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "balanced"


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
        if not self.path.exists():
            logger.info("no policy file at %s; the policy %r stays in force", self.path, self.policy.name)
            return None
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.error = str(exc)
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
        }

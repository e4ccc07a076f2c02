"""Test-only fault injection. ``LIFELONG_TEST_PAUSE_AT=POINT`` makes the daemon, on
reaching ``POINT``, write the point's name into ``$LIFELONG_TEST_PAUSE_MARKER`` (default
``STATE/test-paused``) and sleep for an hour, so that a test can ``kill -9`` it exactly
there. Points: ``swap`` (the new model serves in memory, the registry not yet switched),
``registry-write`` (the model's bytes partly written in the registry's temporary folder),
``registry-rename`` (complete, not yet renamed into place), ``deploy-pending`` (the pending
deployment row written, the pointer not switched), ``pointer`` (the pointer switched, the
link and the row not). The registry points set the registry's own hook
(``LIFELONG_REGISTRY_PAUSE``). Never set these outside tests.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from service.errors import SettingsError

__all__ = ["PAUSE_ENV", "PAUSE_MARKER_ENV", "PAUSE_POINTS", "arm_registry_pause", "pause_for_tests"]

logger = logging.getLogger(__name__)

PAUSE_ENV, PAUSE_MARKER_ENV = "LIFELONG_TEST_PAUSE_AT", "LIFELONG_TEST_PAUSE_MARKER"
_REGISTRY_PAUSES = {
    "registry-write": "add:writing",
    "registry-rename": "add:before-rename",
    "deploy-pending": "deploy:pending",
    "pointer": "set_current:pointer",
}
PAUSE_POINTS = ("swap", *_REGISTRY_PAUSES)


def pause_for_tests(point: str) -> None:
    """The fault-injection hook described in the module docstring."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(point)
    logger.warning("test pause at %r (%s): sleeping until killed", point, PAUSE_ENV)
    time.sleep(3600)


def arm_registry_pause(state_dir: Path) -> None:
    point = os.environ.get(PAUSE_ENV)
    if not point:
        return
    if point not in PAUSE_POINTS:
        raise SettingsError(f"{PAUSE_ENV}={point!r}: expected one of {', '.join(PAUSE_POINTS)}")
    os.environ.setdefault(PAUSE_MARKER_ENV, str(state_dir / "test-paused"))
    if point in _REGISTRY_PAUSES:
        os.environ["LIFELONG_REGISTRY_PAUSE"] = _REGISTRY_PAUSES[point]
        os.environ["LIFELONG_REGISTRY_PAUSE_MARKER"] = os.environ[PAUSE_MARKER_ENV]
    logger.warning("test fault injection armed: the daemon will pause at %r", point)

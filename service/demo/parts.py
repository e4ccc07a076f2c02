"""What the demo's run holds that its step mixins read and write (:class:`DemoParts`).

The run (:class:`service.demo.run._Demo`) sets these in its constructor; the mixins
(:mod:`service.demo.waits`, :mod:`service.demo.preference`) declare them here once, as the
daemon's parts do with :class:`service.daemon.parts.DaemonParts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.demo.prepare import ExportedPick, StepRunner
from service.demo.report import Timeline

__all__ = ["DemoParts"]


class DemoParts:
    """The demo run's state, as its mixins see it."""

    s: Any  # DemoSettings
    runner: StepRunner
    timeline: Timeline
    daemon: Any  # DemoDaemon: its policy file
    streamer: Any  # Streamer | None
    initial: Any  # Policy
    fast: Any  # Policy | None
    picks: dict[str, ExportedPick]
    names: dict[str, str]
    models: dict[str, dict[str, Any]]
    milestones: dict[str, Any]
    notes: list[str]
    last_status: dict[str, Any] | None
    adaptation: dict[str, Any] | None
    _stream: Callable[..., bool]

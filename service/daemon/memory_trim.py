"""Freed heap memory given back to the system once the service has gone idle.

After a burst of batch-32 requests the serving process keeps tens of megabytes it no longer
uses: onnxruntime's buffers of the burst are freed, but glibc's allocator keeps the freed
pages in its heaps (one per thread that allocated). ``malloc_trim(0)`` returns them. Side by
side on the largest subnet of the search space (FP32, batch 32, one session): 125 MB after
the runs without onnxruntime's arena, 73 MB after the trim; 116 -> 101 MB with the arena.
onnxruntime's own arena keeps the size of the largest batch run: the daemon's trim first runs
the serving model once at batch 1 with arena shrinkage (:meth:`Runtime.release_memory
<service.serving.runtime.Runtime.release_memory>`), then ``malloc_trim``: 101 -> 74 MB on that
model. A trim costs a few milliseconds, so it runs once per idle spell: when no prediction and
no swap happened for ``idle_s`` seconds, and not again until there was one.

glibc only; elsewhere (musl) :class:`IdleTrim` does nothing and says so in its status.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["IdleTrim", "malloc_trim"]

logger = logging.getLogger(__name__)


def malloc_trim() -> Callable[[], Any] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: fn(0)


class IdleTrim:
    """Calls ``trim`` once each time ``activity()`` stays the same for ``idle_s`` seconds.

    Args:
        activity: Changes whenever the service works (predictions and swaps served).
        idle_s: Quiet time before a trim.
        trim: The trim (default glibc's; None: none).
        clock: Seconds (tests).
    """

    def __init__(self, activity: Callable[[], Any], idle_s: float = 3.0, *,
                 trim: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.activity, self.idle_s, self.clock = activity, idle_s, clock
        self.trim = trim if trim is not None else malloc_trim()
        self.trims = 0
        self._seen: Any = object()
        self._since = clock()
        self._done = False

    def tick(self) -> bool:
        """Trim if the service has been idle long enough since its last work; True if it did."""
        now, seen = self.clock(), self.activity()
        if seen != self._seen:
            self._seen, self._since, self._done = seen, now, False
            return False
        if self._done or self.trim is None or now - self._since < self.idle_s:
            return False
        t0 = time.perf_counter()
        self.trim()
        self._done, self.trims = True, self.trims + 1
        logger.debug("idle for %.0f s: heap trimmed in %.1f ms", now - self._since, 1e3 * (time.perf_counter() - t0))
        return True

    def status(self) -> dict[str, Any]:
        return {"available": self.trim is not None, "trims": self.trims, "idle_s": self.idle_s}

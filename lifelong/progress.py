"""A small progress bar with phase, ETA and running figures, for long jobs.

On a terminal it redraws one line; elsewhere (a log, a CI job, systemd's journal) it writes a
plain line every ``every_fraction`` of the work, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """``Progress(total, phase=...)``; call :meth:`update` per unit of work, :meth:`close` at the end."""

    def __init__(
        self,
        total: int,
        *,
        phase: str = "",
        done: int = 0,
        stream: IO[str] | None = None,
        enabled: bool = True,
        width: int = 24,
        every_fraction: float = 0.05,
    ) -> None:
        self.total = max(1, total)
        self.done = done
        self.phase = phase
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, int(self.total * every_fraction))
        self._start = time.monotonic()
        self._start_done = done
        self._last_draw = 0.0
        self._last_logged = done
        self.figures: dict[str, float | str] = {}

    def eta_seconds(self) -> float | None:
        elapsed = time.monotonic() - self._start
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        frac = min(1.0, self.done / self.total)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        eta = self.eta_seconds()
        figures = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.figures.items())
        eta_text = format_duration(eta) if eta is not None else "--:--"
        return f"[{self.phase}] |{bar}| {100 * frac:5.1f}% {self.done}/{self.total} {figures} ETA {eta_text}"

    def update(self, n: int = 1, *, phase: str | None = None, **figures: float | str) -> None:
        self.done += n
        if phase is not None:
            self.phase = phase
        self.figures.update(figures)
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.25 or self.done >= self.total:
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
                self._last_draw = now
        elif self.done - self._last_logged >= self.every or self.done >= self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_logged = self.done

    def close(self) -> None:
        """End the bar's line (once: a second close writes nothing)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.enabled and self.tty:
            self.stream.write("\r" + self.line() + "\033[K\n")
            self.stream.flush()

"""The demo's waits for the daemon's answers to a shift: the first answer (label-free BN
statistics, or the labelled fine-tune when no label-free answer is asked for) and then the
labelled one, streaming shifted images meanwhile.

A mixin of the demo's run (:class:`service.demo.run._Demo`), which holds the state named below;
these methods read the daemon's status through the stream's polls (:func:`status_facts`) and
record what they saw in the run's milestones, models and notes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.demo.parts import DemoParts
from service.demo.report import status_facts

__all__ = ["LABELLED_WAIT_S", "NO_ADAPTATION_WAIT_S", "AdaptationWaits"]

NO_ADAPTATION_WAIT_S = 30.0
"""How long to wait for an adaptation swap from a daemon whose status has no adaptation section."""
LABELLED_WAIT_S = 240.0
"""How long to wait for the labelled answer after the label-free one."""


class AdaptationWaits(DemoParts):
    """Waiting for the adaptation's answers (the demo's run provides the attributes)."""

    def _wait_adaptation(self, pool: np.ndarray, shift_at: float) -> bool:
        """Wait for the adaptation's outcome; True if the daemon swapped to an adapted model."""
        s = self.s
        supported = bool(self.last_status and "adaptation" in self.last_status)
        limit = s.timeout if supported else min(s.timeout, NO_ADAPTATION_WAIT_S)
        with self.runner.step(
            f"wait for the first answer: BN statistics of the new data (no labels needed), or fine-tune, "
            f"re-search, validate, swap once labels are in (at most {limit:.0f} s)"
        ) as note:
            t0 = time.monotonic()
            known = set(self.names)

            def last_outcome(f: dict[str, Any]) -> dict[str, Any] | None:
                last = (f["adaptation"] or {}).get("last") or {}
                return last if float(last.get("finished") or 0) >= shift_at else None

            def ended(f: dict[str, Any]) -> bool:
                return last_outcome(f) is not None or (f["model"] is not None and f["model"] not in known)

            def started(f: dict[str, Any]) -> bool:
                return (f["adaptation"] or {}).get("state") == "running" or ended(f)

            # full rate until the labels are in and the worker runs, then a fifth: the worker needs the CPU
            self._stream("shifted", pool, until=started, timeout=limit, shift=s.shift, expect=known)
            left = max(0.0, limit - (time.monotonic() - t0))
            done = self._stream(
                "shifted", pool, until=ended, timeout=left, rate=s.rate / 5, shift=s.shift, expect=known
            )
            if done and last_outcome(status_facts(self.last_status)) is None:  # swapped: its record follows
                self._stream("shifted", pool, until=lambda f: last_outcome(f) is not None, timeout=10,
                             rate=s.rate / 5, shift=s.shift, expect=known)  # fmt: skip
            facts = status_facts(self.last_status)
            last = last_outcome(facts)
            serving = facts["model"]
            moved = serving is not None and serving not in known
            swapped = moved or (last is not None and last.get("outcome") == "swapped")  # (a canary may undo it)
            if last is not None:
                self.adaptation = last
                self.milestones["adaptation_outcome"] = last.get("outcome")
                self.milestones["adaptation_mode"] = last.get("mode")
                self.milestones["adaptation_after_detection_s"] = self._after_detection(last)
                note.detail = f"{last.get('outcome')}: {last.get('reason')}"
                cand = last.get("candidate") or {}
                if cand:
                    adapted = next((m for m, n in self.names.items() if n == "adapted"), None)  # from its deploy event
                    key = cand.get("model_id") or (serving if moved else adapted) or "(candidate)"
                    self.models.setdefault(key, {}).update(
                        {"name": "adapted" if swapped else "adaptation candidate", "subnet": cand.get("subnet"),
                         "local_accuracy": cand.get("local_accuracy"), "latency_ms": cand.get("latency_ms")}
                    )  # fmt: skip
                if last.get("outcome") != "swapped":
                    self.notes.append(f"the adaptation {last.get('outcome')} the serving model: {last.get('reason')}")
            elif swapped:
                note.detail = f"the daemon swapped to {serving}"
            else:
                note.outcome = "timed out"
                why = (
                    "" if supported else " (this daemon's status has no adaptation section: adaptation is not built in)"
                )
                note.detail = f"no adaptation within {limit:.0f} s{why}; the original model serves on"
                self.notes.append(note.detail)
            if moved:
                self.names.setdefault(serving, "adapted")
                self.models.setdefault(serving, {}).setdefault("name", "adapted")
            if swapped:
                entry = self.timeline.first("deploy", after=shift_at, source="daemon")
                if entry is not None:
                    self.milestones["adapted_swap_t"] = entry["t"]
            if not done and last is None and not swapped and supported:
                self.notes.append(f"the adaptation did not finish within {limit:.0f} s")
        return swapped

    def _after_detection(self, last: dict[str, Any]) -> float | None:
        """Seconds from the drift's detection to when an adaptation's outcome was recorded."""
        at = self.milestones.get("drift_detected_t")
        finished = last.get("finished")
        return None if at is None or finished is None else round(float(finished) - self.timeline.started - at, 1)

    def _wait_labelled(self, pool: np.ndarray, after: float) -> bool:
        """After the label-free first answer (swapped in or kept out): the labelled adaptation
        stayed pending; wait for its outcome (it replaces the serving model only if better on
        held-out local samples). True if the daemon swapped to its model."""
        s = self.s
        limit = min(s.timeout, LABELLED_WAIT_S)
        with self.runner.step(
            "wait for the labelled answer: fine-tune with replay once the labels are in, swapped in only if "
            f"it beats the label-free answer on held-out local samples (at most {limit:.0f} s)"
        ) as note:
            t0, known = time.monotonic(), set(self.names)

            def last_after(f: dict[str, Any]) -> dict[str, Any] | None:
                last = (f["adaptation"] or {}).get("last") or {}
                return last if float(last.get("finished") or 0) > after else None

            def started(f: dict[str, Any]) -> bool:
                return (f["adaptation"] or {}).get("state") == "running" or last_after(f) is not None

            self._stream("shifted", pool, until=started, timeout=limit, shift=s.shift, expect=known)
            left = max(0.0, limit - (time.monotonic() - t0))
            self._stream("shifted", pool, until=lambda f: last_after(f) is not None, timeout=left,
                         rate=s.rate / 5, shift=s.shift, expect=known)  # fmt: skip
            facts = status_facts(self.last_status)
            last = last_after(facts)
            if last is None:
                note.outcome = "timed out"
                note.detail = f"no labelled answer within {limit:.0f} s; the model serving goes on"
                self.notes.append(note.detail)
                return False
            self.milestones["labelled_outcome"] = last.get("outcome")
            self.milestones["labelled_after_detection_s"] = self._after_detection(last)
            note.detail = f"{last.get('outcome')}: {last.get('reason')}"
            serving = facts["model"]
            if last.get("outcome") == "swapped" and serving is not None and serving not in known:
                self.names[serving] = "adapted (labelled)"
                cand = last.get("candidate") or {}
                self.models.setdefault(serving, {}).update(
                    {"name": "adapted (labelled)", "subnet": cand.get("subnet"),
                     "local_accuracy": cand.get("local_accuracy"), "latency_ms": cand.get("latency_ms")}
                )  # fmt: skip
                return True
            return False

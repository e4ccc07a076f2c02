"""The demo's preference changes: the latency budget lowered in the policy file before the
shift (the daemon answers from its cached front) and raised again after the adaptation (the
daemon answers from the adapted supernet's front, exporting its choice if needed), each
followed by a measurement of the model it chose.

A mixin of the demo's run (:class:`service.demo.run._Demo`), which holds the state named below.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.demo.daemon import atomic_write
from service.demo.parts import DemoParts
from service.demo.prepare import policy_text
from service.demo.report import status_facts

__all__ = ["EXPORT_WAIT_S", "PREFERENCE_WAIT_S", "PreferenceSteps"]

PREFERENCE_WAIT_S = 60.0
"""How long to wait for the daemon to answer the new policy."""
EXPORT_WAIT_S = 180.0
"""How long to wait for the daemon to export the front's choice from the adapted supernet and swap."""


class PreferenceSteps(DemoParts):
    """The two policy rewrites and their waits (the demo's run provides the attributes)."""

    def _preference(self, pool: np.ndarray, shift: str | None) -> None:
        s = self.s
        if self.fast is None or "fast" not in self.picks:
            return
        b0, b1 = self.initial.budgets.latency_ms_p95, self.fast.budgets.latency_ms_p95
        what = f"latency budget {b0:g} -> {b1:g} ms"
        with self.runner.step(f"preference change: rewrite the policy file ({what})") as note:
            before = status_facts(self.last_status)["model"]
            header = f"lifelong demo: the preference change ({what})"
            written = time.time()
            atomic_write(self.daemon.policy, policy_text(self.fast, header))
            self.timeline.note("preference", f"policy file rewritten: {what} (policy 'demo-fast')")

            def answered(f: dict[str, Any]) -> bool:
                return (
                    f["model"] != before
                    or self.timeline.first("preference", after=written, source="daemon") is not None
                )

            limit = min(s.timeout, PREFERENCE_WAIT_S)
            self._stream("transition", pool, until=answered, timeout=limit, shift=shift)
            facts = status_facts(self.last_status)
            answer = self.timeline.first("preference", after=written, source="daemon")
            if facts["model"] != before and facts["model"] is not None:
                self.milestones["preference_swap_s"] = round(time.time() - written, 1)
                note.detail = f"now serving {self.names.get(facts['model'], facts['model'])} ({facts['model']})"
                if self.names.get(before) == "adapted" and facts["model"] == self.picks["fast"].model_id:
                    self.notes.append(
                        f"the preference change was answered with {facts['model']}, exported from the original "
                        "supernet before the adaptation: the adapted supernet's version of that subnet was never "
                        "exported, so what the adaptation gained on the new data is lost"
                    )
            elif answer is not None:
                note.detail = f"the daemon kept {before}: {answer['message']}"
            else:
                note.outcome = "timed out"
                note.detail = f"no answer to the new policy within {limit:.0f} s"
                self.notes.append(note.detail)
        if facts["model"] != before:
            kind = "shifted" if shift else "clean"
            with self.runner.step(f"measure the preferred model on {s.measure_samples} {kind} images") as note:
                self._stream("preference", pool, min_samples=s.measure_samples, timeout=s.timeout, shift=shift)
                tally = self.streamer.tallies["preference"] if self.streamer else None
                note.detail = f"accuracy {100 * (tally.accuracy or 0):.1f}%" if tally else ""

    def _relax(self, pool: np.ndarray) -> None:
        """The budget lowered before the shift is raised again after the adaptation.

        The daemon answers from the adapted supernet's front. A choice never exported from the
        adapted supernet is exported by a worker and swapped in (a file exported from the
        original would throw the adaptation away); the adapted model itself may be the choice.
        """
        s = self.s
        if self.fast is None or "fast" not in self.picks:
            return
        b1, b0 = self.fast.budgets.latency_ms_p95, self.initial.budgets.latency_ms_p95
        what = f"latency budget {b1:g} -> {b0:g} ms"
        limit = min(s.timeout, EXPORT_WAIT_S)
        with self.runner.step(
            f"preference change after the adaptation: rewrite the policy file ({what}); the daemon answers from "
            f"the adapted supernet's front, exporting its choice if needed (at most {limit:.0f} s)"
        ) as note:
            before = status_facts(self.last_status)["model"]
            written = time.time()
            atomic_write(self.daemon.policy, policy_text(self.initial, f"lifelong demo: the budget relaxed ({what})"))
            self.timeline.note("preference", f"policy file rewritten: {what} (policy {self.initial.name!r})")

            def export_last(f: dict[str, Any]) -> dict[str, Any] | None:
                last = (f.get("export") or {}).get("last") or {}
                return last if float(last.get("finished") or 0) >= written else None

            def settled(f: dict[str, Any]) -> bool:
                if (f["model"] is not None and f["model"] != before) or export_last(f) is not None:
                    return True
                answer = self.timeline.first("preference", after=written, source="daemon")
                return answer is not None and "export" not in answer["message"]  # answered without an export

            # a fifth of the rate while the worker exports: it needs the CPU
            self._stream("relaxed", pool, until=settled, timeout=limit, rate=s.rate / 5, shift=s.shift)
            facts = status_facts(self.last_status)
            last = export_last(facts)
            moved = facts["model"] is not None and facts["model"] != before
            if moved:
                deployed = self.timeline.first("deploy", after=written, source="daemon")
                self.milestones["export_swap_s"] = round((deployed["at"] if deployed else time.time()) - written, 1)
                self.names.setdefault(facts["model"], "re-exported")
                if last is not None:
                    self.models.setdefault(facts["model"], {}).update(
                        {"name": self.names[facts["model"]], "subnet": last.get("subnet")}
                    )
                note.detail = f"now serving {facts['model']}" + (f": {last['reason']}" if last else "")
            elif last is not None:
                note.detail = f"export {last.get('outcome')}: {last.get('reason')}"
                self.notes.append(f"the budget relaxed after the adaptation was not answered by a swap: {note.detail}")
            else:
                answer = self.timeline.first("preference", after=written, source="daemon")
                if answer is not None and "export" not in answer["message"]:
                    note.detail = f"the daemon kept {before}: {answer['message']}"
                else:
                    note.outcome = "timed out"
                    note.detail = f"no export and swap within {limit:.0f} s of the relaxed budget"
                    self.notes.append(note.detail)
        if moved:
            with self.runner.step(f"measure the re-exported model on {s.measure_samples} shifted images") as note:
                self._stream("re-exported", pool, min_samples=s.measure_samples, timeout=s.timeout, shift=s.shift)
                tally = self.streamer.tallies["re-exported"] if self.streamer else None
                note.detail = f"accuracy {100 * (tally.accuracy or 0):.1f}%" if tally else ""

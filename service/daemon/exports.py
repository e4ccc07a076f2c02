"""The daemon's side of exporting front points: an export wished (by a drift answer or the
operator), started by a worker when no adaptation runs, and deployed when it ends if the
cached front, asked again on the export's own timing, still chooses it
(:mod:`service.workers.front_export` keeps the wish and the worker).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError
from policies import Policy
from service.daemon.parts import DaemonParts
from service.workers.front_export import OPERATOR, ExportDone, ResumeExport

logger = logging.getLogger(__name__)


__all__ = ["ExportAnswers"]


class ExportAnswers(DaemonParts):
    """Exports of front points: wished, started, and deployed when the front still chooses them."""

    def _want_export(self, kind: str, subnet: str | None, policy: Policy, reason: str) -> str:
        if self.exporter is None or subnet is None:
            return "no export possible"
        said = self.exporter.want(kind, subnet, policy, reason)
        self._worker_tick()  # start it now rather than at the next tick
        return said

    def _export_command(self, subnet: str, reason: str | None = None) -> dict[str, Any]:
        """``lifelong deploy SUBNET --export``: export it from the supernet in use, deploy it when done."""
        why = reason or f"operator: export and deploy {subnet}"
        said = self._want_export(OPERATOR, subnet, self.policy, why)
        self._event("export", f"{subnet} asked for by the operator: {said}")
        return {"subnet": subnet, "export": said, "status": None if self.exporter is None else self.exporter.status()}

    def _export_moot(self, kind: str) -> None:
        if self.exporter is not None:
            self.exporter.drop(kind)

    def _worker_tick(self) -> None:
        """Start a pending adaptation, or else a wished export (on the loop, every ``ADAPT_TICK_S``)."""
        self._adaptation_tick()
        if self.exporter is None:
            return
        busy = "an adaptation runs" if self.adaptation is not None and self.adaptation.running else None
        message = self.exporter.tick(busy=busy)
        if message is not None:
            self._event("export", message)

    def _resume_export(self, event: ResumeExport) -> None:
        """An export wished or running when the daemon last stopped: ask the front again (on the loop)."""
        assert self.exporter is not None and self.store is not None and self.registry is not None
        assert self.runtime is not None and self.drift is not None
        wish, error = self.exporter.resume()
        if error is not None:
            self._event("export", f"the export wished before the restart is dropped: {error}")
        if wish is None:
            return
        if wish.kind == OPERATOR:
            said = self._want_export(OPERATOR, wish.subnet, wish.policy, wish.reason)
            self._event("export", f"{wish.subnet}, asked for by the operator before the restart: {said}")
            return
        policy = self.policy if wish.kind == "preference" else wish.policy
        answer = self._ask_front(policy)
        message = f"an export of {wish.subnet} was wanted before the restart ({wish.kind} drift): {answer.reason}"
        self._answer_from_front(wish.kind, policy, answer, message, event="export")

    def _on_export_done(self, event: ExportDone) -> None:
        """The export worker ended (on the loop): deploy the model if the front still chooses it."""
        assert self.exporter is not None and self.store is not None and self.registry is not None
        assert self.runtime is not None and self.drift is not None
        wish, report, why = self.exporter.finish(event)
        if wish is None:
            self._event("export", why)
            return
        if report is None:
            self.exporter.record_outcome("failed", why)
            self._event("export", f"{why}; {self.runtime.current_id} serves on")
            return
        timed = self._record_export_timing(wish.subnet, report)
        if timed:
            why = f"{why}; {timed}"
        if wish.kind == OPERATOR:  # asked for by name: deployed as any model the operator deploys
            self._deploy_export(report, why, f"{wish.reason}: {why}", judge="all")
            return
        policy = self.policy if wish.kind == "preference" else wish.policy  # a newer policy may have come
        answer = self._ask_front(policy)  # on the export's own timing, when it was timed
        if answer.action != "export-needed" or answer.subnet != wish.subnet:
            outcome = f"not deployed: the cached front now answers {answer.action} ({answer.reason})"
            self.exporter.record_outcome("kept", f"{why}; {outcome}")
            self._event("export", f"{why}; {outcome}")
            if answer.action == "export-needed":
                self._want_export(wish.kind, answer.subnet, policy, answer.reason)
            return
        if self._deploy_export(report, why, f"{wish.kind} drift: the cached front's choice {why}", judge="errors"):
            self.drift.clear_needed(wish.kind)

    def _record_export_timing(self, subnet: str, report: dict[str, Any]) -> str | None:
        """Write the exported file's timing (the worker timed it at the profile's batch sizes)
        into the cached front as that point's measured latency, so the front is asked again on
        what the model takes here, not on the latency model; a note for the event, or None."""
        latency = report.get("latency_ms")
        front = self.fronts.get()
        if not isinstance(latency, dict) or not latency or front is None:
            return None
        try:
            point = front[subnet]
            ms = {int(b): float(v) for b, v in latency.items()}
            front.with_measurement(subnet, latency_ms=ms, latency_source="export").save(self.fronts.path)
        except KeyError:
            return None  # not a point of the cached front (an operator's export)
        except (LifelongError, OSError, TypeError, ValueError) as exc:
            logger.warning("the export's timing was not written into the front: %s", exc)
            return None
        b = self.policy.target.batch
        if b not in ms:
            return None
        return f"timed here at {ms[b]:.3f} ms at batch {b} (the latency model said {point.latency_at(b, measured=False):.3f})"

    def _deploy_export(self, report: dict[str, Any], why: str, reason: str, *, judge: str) -> bool:
        """Deploy an exported file through the validated swap and record how it went; True if it serves."""
        assert self.exporter is not None
        try:
            self._deploy(path=str(report["path"]), reason=reason, judge=judge)
        except LifelongError as exc:  # _deploy recorded why; the current model serves on
            self.exporter.record_outcome("refused", f"{why}; the deploy was refused: {exc}")
            return False
        self.exporter.record_outcome("deployed", why)
        Path(str(report["path"])).unlink(missing_ok=True)  # the registry holds its copy
        return True

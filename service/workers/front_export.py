"""The daemon's side of exporting a front point: the cached front chose a model never exported.

A preference change (a new policy) or a slower device is answered from the cached front
(:mod:`service.drift.preference`). When the point it chooses was never exported (from the supernet
in use), the answer is "export needed": the daemon then asks for it here. :meth:`FrontExport.want`
records the wish (the newest answer replaces an older one); the scheduler's tick
(:meth:`FrontExport.tick`) starts ``service.workers.export_worker`` under the
:class:`~service.workers.supervisor.WorkerSupervisor` once no adaptation runs (both need the CPU and an
adaptation ends with a candidate of its own). The worker exports the subnet from the supernet
version in use (an adapted version with the calibration images it keeps beside it, see
:mod:`lifelong.data.calibration`) behind the parity gate into ``STATE/export/JOB/model.onnx``.

Its end is a loop event (:class:`ExportDone`); the daemon asks the front again with the policy
in force and, if it still chooses that subnet, deploys the file through its validated swap.
Serving never waits for any of it. The job is a row of the store's ``jobs`` table.

What is wished or running is also kept in ``STATE/export/wanted.json`` (versioned), removed
when nothing is: a daemon restarted meanwhile (a crash, ``systemctl restart``) reads it back
(:meth:`FrontExport.resume`) and asks the front again, so the answer to a policy change is not
lost with the process.

No torch here: this module runs in the serving process.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.data.calibration import calibration_path, domain_calibration
from lifelong.errors import DataError, LifelongError
from lifelong.jobs.export_request import ExportRequest
from lifelong.persist.supernet_versions import adapted_in_use, current_supernet
from lifelong.persist.versioned import read_versioned_json, write_json_atomic
from policies import Policy, parse_policy, policy_to_dict
from service.errors import ServiceError
from service.state.paths import default_profile
from service.state.store import Store
from service.workers.supervisor import WorkerHandle, WorkerProgress, WorkerState, WorkerSupervisor

__all__ = [
    "EXPORT_NICE",
    "EXPORT_TIME_LIMIT_S",
    "OPERATOR",
    "ExportDone",
    "ExportWish",
    "FrontExport",
    "ResumeExport",
    "prune_job_folders",
]

logger = logging.getLogger(__name__)

WORKER_MODULE = "service.workers.export_worker"
EXPORT_TIME_LIMIT_S = 900.0
"""An export takes tens of seconds on 2 cores (BN re-calibration, two parity passes); a job
still running after this is stuck."""
EXPORT_NICE = 10
"""Below serving, above nothing: an export answers a user's request and should not starve."""
OPERATOR = "operator"
"""The kind of an export asked for by name (``lifelong deploy SUBNET --export``), not by drift."""
WISH_FORMAT = 1
_WISH_KIND = "lifelong-export-wish"


@dataclass(frozen=True)
class ResumeExport:
    """Loop event: read back an export wished or running before the daemon restarted."""


@dataclass(frozen=True)
class ExportDone:
    """Loop event: the export worker ``job_id`` ended (any way)."""

    job_id: str


@dataclass(frozen=True)
class ExportWish:
    """A front point to export: why (``kind`` "preference" or "environment") and for which policy."""

    kind: str
    subnet: str
    policy: Policy
    reason: str
    since: float

    @property
    def why(self) -> str:
        return "asked for by the operator" if self.kind == OPERATOR else f"{self.kind} drift"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "why": self.why, "subnet": self.subnet, "policy": self.policy.name,
                "reason": self.reason, "since": self.since}  # fmt: skip

    def save(self, path: Path) -> Path:
        doc = {"kind": _WISH_KIND, "format_version": WISH_FORMAT, "wish": self.kind, "subnet": self.subnet,
               "policy": policy_to_dict(self.policy), "reason": self.reason, "since": self.since}  # fmt: skip
        return write_json_atomic(path, doc, indent=1)

    @classmethod
    def load(cls, path: Path) -> ExportWish | None:
        """The wish kept at ``path``, None when there is none.

        Raises:
            LifelongError: the file cannot be read or holds no wish this code reads.
        """
        d = read_versioned_json(path, kind=_WISH_KIND, version=WISH_FORMAT, what="export wish", missing_ok=True)  # fmt: skip
        if d is None:
            return None
        try:
            policy = parse_policy(d["policy"], source=f"{path} [policy]")
            return cls(str(d["wish"]), str(d["subnet"]), policy, str(d.get("reason", "")), float(d["since"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed export wish ({type(exc).__name__}: {exc})") from exc


class FrontExport:
    """At most one export at a time: the wish, the running job, and how the last one ended.

    Args:
        state_dir: The service's state directory (``supernet/`` is read, ``export/`` written).
        store: Where the job's row goes.
        supervisor: Starts and bounds the worker.
        post: Puts an event on the daemon's loop (called from the supervision thread).
        parity_images: Test images of the worker's parity gate.
    """

    def __init__(
        self,
        state_dir: Path,
        store: Store,
        supervisor: WorkerSupervisor,
        post: Callable[[object], None],
        *,
        parity_images: int = 2000,
    ) -> None:
        self.state_dir, self.store, self.supervisor, self.post = Path(state_dir), store, supervisor, post
        self.parity_images = parity_images
        self.wish: ExportWish | None = None
        self.handle: WorkerHandle | None = None
        self.exporting: ExportWish | None = None
        self.job_row: int | None = None
        self.last: dict[str, Any] | None = None
        self.outcomes: Counter[str] = Counter()  # how exports ended since the daemon started
        self._lock = threading.Lock()  # progress arrives on the supervision thread, status is read by the API

    @property
    def running(self) -> bool:
        return self.handle is not None and not self.handle.done

    def want(self, kind: str, subnet: str, policy: Policy, reason: str) -> str:
        """Ask for ``subnet`` to be exported (on the loop); returns what happens, in words."""
        if self.running and self.exporting is not None and self.exporting.subnet == subnet:
            self.wish = None
            self._persist()
            return f"its export is already running ({self.handle.job_id if self.handle else '-'})"
        self.wish = ExportWish(kind, subnet, policy, reason, time.time())
        self._persist()
        if self.running:
            return f"its export starts when the running export of {self.exporting.subnet if self.exporting else '?'} ends"  # fmt: skip
        return "its export is queued"

    def drop(self, kind: str) -> None:
        """Forget a wish of ``kind``: the front answered that need another way."""
        if self.wish is not None and self.wish.kind == kind:
            self.wish = None
            self._persist()

    def tick(self, *, busy: str | None = None) -> str | None:
        """Start the wished export unless one runs or ``busy`` says what else holds the CPU (on the loop)."""
        if self.wish is None or self.running or busy:
            return None
        wish, self.wish = self.wish, None
        return self._start(wish)

    def _start(self, wish: ExportWish) -> str:
        folder = self.state_dir / "supernet"
        try:
            checkpoint = current_supernet(folder)
            version = adapted_in_use(folder)
        except LifelongError as exc:
            return self._refuse(wish, f"the supernet in use cannot be found: {exc}")
        if not checkpoint.is_file():
            return self._refuse(wish, f"no supernet at {checkpoint} to export from: train one (`lifelong train`)")
        calibration = None
        if domain_calibration(folder).is_file():  # a label-free answer: the statistics of the data served now
            calibration = domain_calibration(folder)
        elif version is not None:
            calibration = calibration_path(checkpoint)
            if not calibration.is_file():
                return self._refuse(
                    wish,
                    f"the adapted supernet {checkpoint.name} has no calibration images ({calibration.name}); "
                    "a model exported from it would carry the original data's BN statistics",
                )
        job_id = f"export-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"  # two in one second stay apart
        out = self.state_dir / "export" / job_id
        request = ExportRequest(
            checkpoint=str(checkpoint),
            subnet=wish.subnet,
            out=str(out / "model.onnx"),
            calibration=None if calibration is None else str(calibration),
            parity_images=self.parity_images,
            threads=wish.policy.target.fixed_threads,
            reason=wish.reason,
            finetune_seconds=wish.policy.export.finetune_seconds,
            profile=str(profile) if (profile := default_profile(self.state_dir)).is_file() else None,
        )
        path = request.save(out / "request.json")
        row = self.store.start_job("export", message=f"{wish.subnet}: {wish.why}")
        try:
            handle = self.supervisor.start(
                WORKER_MODULE,
                [str(path)],
                job_id=job_id,
                time_limit_s=EXPORT_TIME_LIMIT_S + request.finetune_seconds,
                nice=EXPORT_NICE,
                on_progress=self._on_progress,
                on_done=lambda h: self.post(ExportDone(h.job_id)),
            )
        except ServiceError as exc:
            self.store.finish_job(row.id, state="failed", error=str(exc))
            return self._refuse(wish, f"the worker could not start: {exc}")
        self.store.update_job(row.id, pid=handle.pid)
        with self._lock:
            self.handle, self.exporting, self.job_row = handle, wish, row.id
        self._persist()
        src = "the original supernet" if version is None else f"the adapted supernet {checkpoint.name}"
        return f"export of {wish.subnet} started ({job_id}) from {src}"

    def _refuse(self, wish: ExportWish, reason: str) -> str:
        self._set_last("failed", f"{wish.subnet} not exported: {reason}", wish, None)
        self._persist()
        return f"no export of {wish.subnet}: {reason}"

    def _on_progress(self, handle: WorkerHandle, p: WorkerProgress) -> None:
        """Supervision thread: the job's progress into its store row."""
        if self.job_row is not None:
            try:
                self.store.update_job(self.job_row, progress=p.fraction, message=p.message or p.phase)
            except Exception:  # noqa: BLE001 - the store closing at shutdown must not kill supervision
                logger.exception("could not record the export's progress")

    def finish(self, event: ExportDone) -> tuple[ExportWish | None, dict[str, Any] | None, str]:
        """The job ended (on the loop): what it was for, its report (None if it failed) and why."""
        handle, wish = self.handle, self.exporting
        if handle is None or handle.job_id != event.job_id or wish is None:
            return None, None, f"unknown export job {event.job_id}"
        report = handle.result if handle.state is WorkerState.SUCCEEDED else None
        if report is not None and not Path(str(report.get("path", ""))).is_file():
            report, why = (
                None,
                f"{wish.subnet} not exported: the export reported {report.get('path')!r}, which is no file",
            )
        elif report is None:
            why = f"{wish.subnet} not exported: the export {handle.state}: {handle.error or 'no detail'}"
        else:
            parity = report.get("parity") or {}
            why = (f"{wish.subnet} exported by the service ({report.get('bytes')} bytes, parity agreement "
                   f"{100 * float(parity.get('agreement', 0.0)):.2f}%, {float(report.get('seconds') or 0):.1f} s)")  # fmt: skip
        if self.job_row is not None:
            state = "done" if report is not None else ("killed" if handle.state is WorkerState.CANCELLED else "failed")
            self.store.finish_job(self.job_row, state=state, error=None if report else why, message=why)
        if handle.state is not WorkerState.CANCELLED:  # cancelled: the daemon is stopping; a restart resumes it
            self._persist()
        return wish, report, why

    # -- kept across restarts --------------------------------------------------------------------

    @property
    def wish_path(self) -> Path:
        return self.state_dir / "export" / "wanted.json"

    def _persist(self) -> None:
        """Keep the wish, else the running export's, in :attr:`wish_path`; remove it when neither."""
        keep = self.wish or (self.exporting if self.running else None)
        try:
            if keep is None:
                self.wish_path.unlink(missing_ok=True)
            else:
                keep.save(self.wish_path)
        except (OSError, LifelongError) as exc:  # serving goes on; only a restart would lose the wish
            logger.warning("cannot keep the export wish in %s: %s", self.wish_path, exc)

    def resume(self) -> tuple[ExportWish | None, str | None]:
        """The wish kept before a restart (its file removed), and why it could not be read, if so."""
        try:
            wish = ExportWish.load(self.wish_path)
        except LifelongError as exc:
            self.wish_path.unlink(missing_ok=True)
            return None, str(exc)
        self.wish_path.unlink(missing_ok=True)
        return wish, None

    def record_outcome(self, outcome: str, reason: str) -> None:
        wish = self.exporting
        if wish is not None:
            self._set_last(outcome, reason, wish, self.handle)

    def _set_last(self, outcome: str, reason: str, wish: ExportWish, handle: WorkerHandle | None) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.last = {
                "outcome": outcome,
                "reason": reason,
                "subnet": wish.subnet,
                "kind": wish.kind,
                "job": None if handle is None else handle.job_id,
                "started": wish.since if handle is None else handle.started_at,
                "finished": time.time(),
            }

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def status(self) -> dict[str, Any]:
        """For ``/v1/status``: idle, wanted or running, the job's progress, the last outcome."""
        with self._lock:
            handle, exporting = self.handle, self.exporting
            last = None if self.last is None else dict(self.last)
        running = handle is not None and not handle.done
        p = handle.progress if running and handle is not None else None
        wish = self.wish
        return {
            "state": "running" if running else ("wanted" if wish else "idle"),
            "wanted": None if wish is None else wish.to_dict(),
            "subnet": exporting.subnet if running and exporting else None,
            "job": handle.to_dict() if running and handle is not None else None,
            "phase": None if p is None else p.phase,
            "progress": None if p is None else p.fraction,
            "message": None if p is None else p.message,
            "last": last,
        }


def prune_job_folders(roots: list[Path], before: float, busy: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Remove the worker job folders (``STATE/adapt/JOB``, ``STATE/export/JOB``) last changed
    before ``before``, except those of the running jobs ``busy``; returns their names.

    A deployed model lives on in the registry; what a job folder keeps (its request, its result,
    a candidate not deployed) is only worth the retention time of the rest of the history.
    """
    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.name in busy:
                continue
            try:
                newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
            except OSError:
                continue
            if newest < before:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(f"{root.name}/{folder.name}")
    return removed

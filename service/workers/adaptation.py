"""The daemon's side of adaptation: when to start a worker, what it is told, and whether to swap.

A data, label or accuracy drift makes adaptation *pending*: the worker needs labelled samples
of the new data, and those arrive after the drift is detected (feedback labels through the
API, labelled inbox files). A scheduler tick (:data:`ADAPT_TICK_S`) asks the loop to look;
once ``adaptation.min_samples`` labels arrived since the detection, :meth:`Adaptation.tick`
writes an :class:`~lifelong.jobs.adapt.AdaptRequest` (the newest ``max_samples`` of them by
reference, the policy in force, the supernet version in use, the serving model) into
``STATE/adapt/JOB/`` and starts ``service.workers.adapt_worker`` under the
:class:`~service.workers.supervisor.WorkerSupervisor`, time-boxed by ``adaptation.max_seconds`` and niced
by ``adaptation.priority``. Serving never waits on it; at most one runs.

The job's phase and progress go to the store's ``searches`` row as the worker reports them;
its end is a loop event (:class:`AdaptationDone`). The loop then reads the result and asks
:func:`decide_swap`, a pure function of the result and the policy: swap only when the
candidate meets the budgets, beats the serving model on held-out local samples by
``swap.min_improvement`` and does not forget the original data by more than
``swap.max_forgetting`` (measured on held-out replay samples). A candidate slower than the
serving model but within the latency budget is accepted: the policy's objective already
traded its latency against its accuracy when the worker chose it. The swap itself is the
daemon's validated deploy, followed by the canary watch on errors and accuracy (its latency
was judged against the budget; against the replaced model's it is a choice, not a fault).

**Label-free first answer.** A data drift that a change of class mix does not explain also
asks for a *label-free* job (``label_free=`` of :meth:`Adaptation.request`): once a drift
window of samples has been served after the detection, the newest of them (unlabelled, from
the daemon's memory of recent requests) go to a worker in ``"bn"`` mode
(:mod:`lifelong.jobs.bn_adapt`: the serving subnet's BN statistics re-estimated on them,
exported behind the parity gate), seconds instead of minutes and no label. Its candidate is
judged by :func:`decide_label_free`: on the labelled local samples that already arrived since
the drift, where there are enough (the job measures both models on them), else on its class mix. The labelled adaptation stays pending meanwhile and, once
its labels are in, replaces the first answer only by beating it on held-out local samples
(the same :func:`decide_swap`, against whatever serves then).

No torch here: this module runs in the serving process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import LifelongError
from lifelong.jobs.adapt_request import AdaptRequest, read_adapt_result
from lifelong.persist.supernet_versions import current_supernet
from policies import Policy, policy_to_dict
from service.errors import ServiceError
from service.state.paths import default_front, default_predictor, default_profile
from service.state.store import ModelRecord, Store
from service.workers.supervisor import WorkerHandle, WorkerProgress, WorkerState, WorkerSupervisor
from service.workers.swap_decision import SwapDecision, decide_label_free, decide_swap

__all__ = [
    "ADAPT_TICK_S",
    "LABEL_FREE_SAMPLES",
    "Adaptation",
    "AdaptationDone",
    "AdaptationTick",
    "LabelFree",
    "SwapDecision",
    "decide_label_free",
    "decide_swap",
]

logger = logging.getLogger(__name__)

ADAPT_TICK_S = 2.0
"""Seconds between looks at a pending adaptation (a count query in the store)."""
WORKER_MODULE = "service.workers.adapt_worker"
LABEL_FREE_SAMPLES = 200
"""Fewest samples served after a data drift that the label-free answer re-estimates BN
statistics on (more when the drift window is longer): fewer give noisy statistics."""
PENDING_EXPIRY_S = 3600.0
"""A labelled adaptation still waiting for its labels this long after the drift is dropped
(the drift, if it lasts, asks again); the label-free answer does not wait for labels."""
IDLE_PRIORITY = 19
"""At the lowest priority the worker runs under ``SCHED_IDLE``: CPU only when serving leaves
some. Above it, ``nice`` alone: a worker starved by a steady request stream would never
finish, and a drifted model would serve on."""
GRACE_S = 60.0
"""Added to ``adaptation.max_seconds`` for the worker's hard limit: the job plans to finish
within the time box and needs a little more to export and validate what it has."""


@dataclass(frozen=True)
class AdaptationTick:
    """Loop event: look whether a pending adaptation can start."""


@dataclass(frozen=True)
class AdaptationDone:
    """Loop event: the adaptation worker ``job_id`` ended (any way)."""

    job_id: str


def _summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """What the store's ``searches`` row keeps of an adaptation's result."""
    return {k: result.get(k) for k in ("candidate", "serving", "original", "seconds", "phases", "mode")}


def _last_record(
    outcome: str, reason: str, trigger: str, started: float, finished: float | None, result: Mapping[str, Any] | None
) -> dict[str, Any]:
    """How an adaptation ended, for the status (from the job just ended, or from the store)."""
    cand, serving, original = (
        (result or {}).get("candidate"),
        (result or {}).get("serving"),
        (result or {}).get("original"),
    )
    return {
        "outcome": outcome,
        "reason": reason,
        "mode": None if result is None else result.get("mode", "finetune"),  # bn: the label-free answer
        "trigger": trigger,
        "started": started,
        "finished": finished,
        "seconds": None if result is None else result.get("seconds"),
        "candidate": None
        if not cand
        else {k: cand.get(k) for k in ("subnet", "local_accuracy", "replay_accuracy", "latency_ms", "path")},
        "serving": None
        if not serving
        else {k: serving.get(k) for k in ("model_id", "subnet", "local_accuracy", "replay_accuracy")},
        "original": None if not original else {k: original.get(k) for k in ("model_id", "replay_accuracy")},
    }


@dataclass(frozen=True)
class LabelFree:
    """A label-free first answer wanted: for ``model_id``, once ``samples`` more were served
    than the ``served`` count at the detection; ``reference_mix`` for its judge."""

    model_id: str
    served: int
    samples: int
    reference_mix: tuple[float, ...] | None


@dataclass
class _Pending:
    trigger: str
    since: float
    label_free: LabelFree | None = None
    original: str | None = None  # the model serving when the drift began (the label-free answer may replace it)


class Adaptation:
    """At most one adaptation at a time: pending, running, and the last one's outcome.

    Args:
        state_dir: The service's state directory (supernet, front, predictor, profile, jobs).
        store: Where the job's row and the labelled samples are.
        supervisor: Starts and bounds the worker.
        post: Puts an event on the daemon's loop (called from the supervision thread).
    """

    def __init__(self, state_dir: Path, store: Store, supervisor: WorkerSupervisor, post: Callable[[object], None]):
        self.state_dir, self.store, self.supervisor, self.post = Path(state_dir), store, supervisor, post
        self.pending: _Pending | None = None
        self.handle: WorkerHandle | None = None
        self.search_id: int | None = None
        self.trigger: str | None = None
        self.outcomes: Counter[str] = Counter()  # how adaptations ended since the daemon started
        self._lock = threading.Lock()  # progress is written by the supervision thread, read by the API
        self._row_state: str | None = None
        self._label_free_tried: set[str] = set()  # serving models a label-free answer was started for
        self.mode: str | None = None  # of the job running (or last run)
        self.last: dict[str, Any] | None = self._last_from_store()

    @property
    def running(self) -> bool:
        return self.handle is not None and not self.handle.done

    def supernet_dir(self) -> Path:
        return self.state_dir / "supernet"

    def request(
        self, trigger: str, at: float | None = None, *, cooldown_s: float = 0.0, label_free: LabelFree | None = None
    ) -> str:
        """Note that drift asks for adaptation (on the loop); returns what happens, in words.

        Within ``cooldown_s`` of the end of the last labelled adaptation, the request is
        declined: after a refused or rolled-back candidate the same drift is seen again at once,
        and adapting back to back would keep a core busy for nothing. A ``label_free`` answer is
        tried once per serving model, whatever the cool-down (the way back to the original data
        is such an answer, right after the first).
        """
        now = time.time() if at is None else at
        if label_free is not None and label_free.model_id in self._label_free_tried:
            label_free = None
        if label_free is not None and not self.running and current_supernet(self.supernet_dir()).is_file():
            if self.pending is None:
                self.pending = _Pending(trigger, now, label_free, original=label_free.model_id)
            elif self.pending.label_free is None:
                self.pending.label_free = label_free
            return (
                f"label-free answer pending: BN statistics re-estimated on the next {label_free.samples} samples served"
            )
        last = self.last
        if last is not None and now - float(last.get("finished") or 0.0) < cooldown_s:
            wait = cooldown_s - (now - float(last["finished"]))
            return f"no adaptation for {wait:.0f} s more: the last one ended {last.get('outcome')} {now - last['finished']:.0f} s ago"
        if self.running:
            return f"an adaptation is already running ({self.trigger})"
        if self.pending is not None:
            return f"an adaptation is already pending ({self.pending.trigger})"
        if not current_supernet(self.supernet_dir()).is_file():
            return f"no supernet at {self.supernet_dir()}: train one (`lifelong train`) to adapt"
        self.pending = _Pending(trigger, now)
        return "adaptation pending: waiting for labelled local samples"

    def cancel_pending(self) -> None:
        self.pending = None

    def tick(
        self,
        policy: Policy,
        serving: ModelRecord | None,
        serving_path: Path | None,
        *,
        served: int = 0,
        recent_images: Callable[[int], Any] | None = None,
        model_path: Callable[[str], Path | None] | None = None,
    ) -> str | None:
        """Start the pending adaptation if enough labels arrived, or its label-free answer once
        enough samples were served (on the loop); returns an event message.

        Args:
            served: Samples served so far (the drift feed's count).
            recent_images: The newest ``n`` served images, uint8 ``(n, 28, 28)`` (or fewer, or None).
            model_path: The ONNX file of a registered model (None if gone): the model that served
                when the drift began, when a label-free answer has replaced it since, goes to the
                labelled job as the ``original`` its forgetting is measured against.
        """
        p = self.pending
        if p is None or self.running:
            return None
        lf = p.label_free
        if lf is not None and served - lf.served >= lf.samples and recent_images is not None:
            p.label_free = None
            if serving is None or serving.id != lf.model_id:
                return f"label-free answer dropped: {lf.model_id} no longer serves"
            images = recent_images(lf.samples)
            if images is None or len(images) < lf.samples // 2:
                return f"label-free answer dropped: only {0 if images is None else len(images)} recent images kept"
            self._label_free_tried.add(lf.model_id)
            # labels of the new data that already arrived judge the answer (none: its class mix does)
            checks = self.store.labelled_samples(policy.adaptation.min_samples, since=p.since)
            labelled = [(s.ref, int(s.label)) for s in checks if s.label is not None]
            return self._start_label_free(policy, p.trigger, images, lf, serving, serving_path, labelled)
        a = policy.adaptation
        have = self.store.count_labelled(since=p.since)
        if have < a.min_samples:
            if lf is None and time.time() - p.since > PENDING_EXPIRY_S:
                self.pending = None
                return (
                    f"pending adaptation dropped after {PENDING_EXPIRY_S / 3600:g} h: {have} of the "
                    f"{a.min_samples} labelled local samples it waited for arrived ({p.trigger})"
                )
            return None
        self.pending = None
        samples = self.store.labelled_samples(a.max_samples, since=p.since)
        labelled = [(s.ref, int(s.label)) for s in samples if s.label is not None]
        box = a.labelled_box(time.time() - p.since)
        extra = None
        if p.original and (serving is None or serving.id != p.original) and model_path is not None:
            original_path = model_path(p.original)
            if original_path is not None:
                extra = {"original": {"model_id": p.original, "path": str(original_path)}}
        return self._start(policy, p.trigger, labelled, serving, serving_path, max_seconds=box, extra=extra)

    def _start_label_free(
        self,
        policy: Policy,
        trigger: str,
        images: Any,
        lf: LabelFree,
        serving: ModelRecord,
        serving_path: Path | None,
        labelled: list[tuple[str, int]] | None = None,
    ) -> str:
        job_id = f"adapt-bn-{time.strftime('%Y%m%dT%H%M%S')}"
        folder = self.state_dir / "adapt" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        unlabelled = folder / "unlabelled.npz"
        np.savez(unlabelled, x=np.asarray(images, np.uint8))
        extra = {"mode": "bn", "unlabelled": str(unlabelled), "reference_mix": lf.reference_mix}
        checked = f" (judged on {len(labelled)} labelled ones)" if labelled else ""
        return self._start(policy, f"label-free: {trigger}", labelled or [], serving, serving_path, job_id=job_id,
                           extra=extra, what=f"{len(images)} unlabelled local images{checked}")  # fmt: skip

    def _start(
        self,
        policy: Policy,
        trigger: str,
        samples: list[tuple[str, int]],
        serving: ModelRecord | None,
        serving_path: Path | None,
        *,
        job_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        what: str | None = None,
        max_seconds: float | None = None,
    ) -> str:
        job_id = job_id or f"adapt-{time.strftime('%Y%m%dT%H%M%S')}"
        folder = self.state_dir / "adapt" / job_id
        a = policy.adaptation
        box = a.max_seconds if max_seconds is None else max_seconds
        request = AdaptRequest(
            samples=tuple(samples),
            checkpoint=str(current_supernet(self.supernet_dir())),
            supernet_dir=str(self.supernet_dir()),
            out_dir=str(folder),
            policy=policy_to_dict(policy),
            replay=str(self.state_dir / "replay" / "replay.npz"),
            replay_size=a.replay_buffer,
            front=str(default_front(self.state_dir)),
            predictor=str(default_predictor(self.state_dir)),
            profile=str(default_profile(self.state_dir)),
            serving=None
            if serving is None
            else {"model_id": serving.id, "subnet": serving.subnet, "path": str(serving_path or "")},
            trigger=trigger,
            max_seconds=box,
            steps=a.finetune_steps,
            threads=policy.target.fixed_threads,
            **dict(extra or {}),
        )
        path = request.save(folder / "request.json")
        search = self.store.start_search(f"adaptation: {trigger}", phase="starting")
        try:
            handle = self.supervisor.start(
                WORKER_MODULE,
                [str(path)],
                job_id=job_id,
                time_limit_s=box + GRACE_S,
                nice=a.priority,
                sched_idle=a.priority >= IDLE_PRIORITY,
                on_progress=self._on_progress,
                on_done=lambda h: self.post(AdaptationDone(h.job_id)),
            )
        except ServiceError as exc:
            self.store.finish_search(search.id, state="failed", error=str(exc))
            self._set_last("failed", f"the worker could not start: {exc}", trigger, time.time(), None)
            return f"adaptation not started: {exc}"
        with self._lock:
            self.handle, self.search_id, self.trigger = handle, search.id, trigger
            self.mode = (extra or {}).get("mode", "finetune")
        return (
            f"adaptation started ({job_id}) on {what or f'{len(samples)} labelled local samples'}, "
            f"time box {box:.0f} s: {trigger}"
        )

    def _on_progress(self, handle: WorkerHandle, p: WorkerProgress) -> None:
        """Supervision thread: the job's phase and progress into its store row."""
        if self.search_id is not None:
            try:
                self.store.update_search(self.search_id, phase=p.phase, progress=p.fraction)
            except Exception:  # noqa: BLE001 - the store closing at shutdown must not kill supervision
                logger.exception("could not record the adaptation's progress")

    def finish(self, event: AdaptationDone, policy: Policy) -> tuple[SwapDecision, dict[str, Any] | None]:
        """The job ended (on the loop): its result and the swap decision; the store row is closed."""
        handle = self.handle
        if handle is None or handle.job_id != event.job_id:
            return SwapDecision(False, f"unknown adaptation job {event.job_id}"), None
        result: dict[str, Any] | None = None
        if handle.state is WorkerState.SUCCEEDED:
            try:
                result = read_adapt_result(str((handle.result or {})["result"]), self.mode or "finetune")
            except (KeyError, LifelongError) as exc:
                decision = SwapDecision(False, f"the adaptation's result cannot be read: {exc}")
            else:
                decision = decide_swap(result, policy)
        else:
            decision = SwapDecision(False, f"the adaptation {handle.state}: {handle.error or 'no detail'}")
        state = {WorkerState.SUCCEEDED: "done", WorkerState.CANCELLED: "cancelled"}.get(handle.state, "failed")
        self._row_state = state
        if self.search_id is not None:
            summary = None if result is None else _summary(result)
            self.store.finish_search(self.search_id, state=state, result=summary, error=None if state == "done" else decision.reason)  # fmt: skip
        return decision, result

    def record_outcome(self, outcome: str, reason: str, result: Mapping[str, Any] | None) -> None:
        handle = self.handle
        started = handle.started_at if handle is not None else time.time()
        self._set_last(outcome, reason, self.trigger or "", started, result)
        if self.search_id is not None and self._row_state is not None:  # the outcome outlives the process
            summary = {} if result is None else _summary(result)
            self.store.finish_search(
                self.search_id, state=self._row_state, result={**summary, "outcome": outcome, "reason": reason},
                error=None if self._row_state == "done" else reason,
            )  # fmt: skip

    def _last_from_store(self) -> dict[str, Any] | None:
        """How the newest finished adaptation ended, from the store (after a restart), or None."""
        try:
            rows = self.store.recent_searches(20)
        except Exception:  # noqa: BLE001 - a store that cannot answer only loses this line of the status
            logger.exception("could not read the last adaptation from the store")
            return None
        row = next((r for r in rows if r.trigger.startswith("adaptation: ") and r.finished is not None), None)
        if row is None:
            return None
        result = row.result if isinstance(row.result, dict) else {}
        cand = result.get("candidate") or {}
        reason = (
            result.get("reason")
            or row.error
            or (
                f"candidate {cand.get('subnet')} (the swap decision was not recorded)" if cand else "no detail recorded"
            )
        )
        outcome = result.get("outcome") or row.state
        return _last_record(
            outcome, reason, row.trigger.removeprefix("adaptation: "), row.started, row.finished, result
        )

    def _set_last(self, outcome: str, reason: str, trigger: str, started: float, result: Mapping[str, Any] | None) -> None:  # fmt: skip
        with self._lock:
            self.outcomes[outcome] += 1
            self.last = _last_record(outcome, reason, trigger, started, time.time(), result)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def status(self) -> dict[str, Any]:
        """For ``/v1/status``: idle, pending or running, the job's progress, the last outcome."""
        with self._lock:
            handle, last = self.handle, None if self.last is None else dict(self.last)
        running = handle is not None and not handle.done
        p = handle.progress if running and handle is not None else None
        pending = None if self.pending is None else asdict(self.pending)
        if pending is not None:
            lf = pending.get("label_free")
            pending["waiting_for"] = (
                f"{lf['samples']} samples served after the drift, for the label-free answer"
                if lf
                else "labelled local samples of the new data (adaptation.min_samples)"
            )
            pending["expires"] = pending["since"] + PENDING_EXPIRY_S
        return {
            "state": "running" if running else ("pending" if pending else "idle"),
            "mode": self.mode if running else None,
            "pending": pending,
            "job": handle.to_dict() if running and handle is not None else None,
            "trigger": self.trigger if running else None,
            "phase": None if p is None else p.phase,
            "progress": None if p is None else p.fraction,
            "message": None if p is None else p.message,
            "last": last,
        }

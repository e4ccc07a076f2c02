"""The drift check job: feed the drift monitor what serving saw, keep what it decides.

:class:`DriftCheck` owns one :class:`~lifelong.drift.monitor.DriftMonitor` for the model that
serves. Its :meth:`~DriftCheck.run` is the scheduler job :data:`DRIFT_CHECK_JOB` (every
``drift.check_interval_s`` of the policy, brought forward when samples pile up): it drains
the :class:`~service.drift.feed.DriftFeed`, feeds the monitor in slices of its check
spacing (so a check comes every ``window / 5`` samples whatever the job's interval), and
records the decisions. The monitor is touched by that job only (one run at a time), never
by the loop or the API: the loop's policy changes reach it at the next run.

**References.** A new monitor is built whenever the serving model differs from the one
watched (a deploy, a rollback, a restart): it takes the first ``drift.reference_window``
samples the new model serves as its reference, unless a reference of that model was kept
before. Once collected, a reference is kept in ``STATE/drift/MODEL.npz``
(:mod:`service.drift.reference`), so a restart after a shift compares with the data the
model was deployed on, not with the shifted data that arrives after the restart.

**What is stored** (the ``drift_events`` table, kept small): a drift *episode* begins with
the first check that drifts and ends with the first that does not. The first drifting
decision of an episode is stored at once and passed to ``on_detected`` (the daemon's
``_on_drift``); while the episode lasts, one row per ``repeat_every_s`` with the number of
drifting checks since. Checks that find nothing are summed into one row per kind every
``summary_every_s``. Preference drift (:meth:`DriftCheck.record_preference`) is stored each
time, with the answer the daemon gave it. Every check is counted for the status and for
Prometheus (:meth:`DriftCheck.metrics_text`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.drift.detectors import DRIFT_KINDS, DriftDecision
from lifelong.drift.monitor import DriftMonitor
from lifelong.errors import DataError, DriftError
from service.drift.preference import FrontCache, PreferenceAnswer, profiled_latency_ms
from service.drift.reference import ReferenceFiles
from service.jobs import JobSpec
from service.serving.class_mix import ClassMix

if TYPE_CHECKING:
    from policies import Policy
    from service.drift.feed import DriftFeed
    from service.serving.runtime import Runtime
    from service.state.store import Store

__all__ = ["DRIFT_CHECK_JOB", "DriftCheck", "DriftDetected"]

logger = logging.getLogger(__name__)

DRIFT_CHECK_JOB = "drift-check"
"""Name under which the drift check is scheduled."""
_COUNTERS = ("checks", "drifted", "events")


@dataclass(frozen=True)
class DriftDetected:
    """Loop event: drift episodes that began in one check of ``model_id``."""

    model_id: str
    decisions: tuple[DriftDecision, ...]
    class_mix: dict[str, Any] | None = None  # ClassMix.judge's answer when data or label drift began


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


class DriftCheck:
    """The drift monitor of the serving model, its job, and what it found.

    Args:
        store: Where drift events go.
        runtime: Says which model serves and how many classes it has.
        policy: Returns the policy in force (read at every run).
        feed: What serving saw since the last run.
        reference_dir: Where references are kept (``STATE/drift``).
        fronts: The cached front, for the serving model's expected latency.
        on_detected: Called (on the job's thread) with the episodes that began in a run;
            must return quickly (the daemon enqueues them for its loop).
        summary_every_s: Seconds between two stored summaries of checks that found nothing.
        repeat_every_s: Seconds between two stored rows of one ongoing drift episode.
        max_checks_per_run: Checks one run makes at most; of more samples waiting, the
            newest are taken and the rest counted as skipped (a bound on a run's time).
        cpu_share: Share of one core the checks may take when runs are brought forward
            (:meth:`may_run_early`); the scheduled runs are not held back.
    """

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        policy: Callable[[], Policy],
        *,
        feed: DriftFeed,
        reference_dir: str | os.PathLike[str],
        fronts: FrontCache | None = None,
        on_detected: Callable[[DriftDetected], None] | None = None,
        summary_every_s: float = 900.0,
        repeat_every_s: float = 60.0,
        max_checks_per_run: int = 30,
        cpu_share: float = 0.25,
    ) -> None:
        if not (isinstance(max_checks_per_run, int) and max_checks_per_run >= 1):
            raise ValueError(f"max_checks_per_run={max_checks_per_run!r}; expected an integer >= 1")
        if not 0 < cpu_share <= 1:
            raise ValueError(f"cpu_share={cpu_share!r}; expected a share of one core in (0, 1]")
        self.store, self.runtime, self.policy, self.feed = store, runtime, policy, feed
        self.references = ReferenceFiles(reference_dir)
        self.class_mix = ClassMix(runtime)
        self.fronts = fronts
        self.on_detected = on_detected
        self.summary_every_s, self.repeat_every_s = summary_every_s, repeat_every_s
        self.max_checks_per_run, self.cpu_share = max_checks_per_run, cpu_share
        self._early_after = 0.0  # time.monotonic() before which a run is not brought forward
        # the job's own state (one run at a time: APScheduler's max_instances=1)
        self._monitor: DriftMonitor | None = None
        self._model: str | None = None
        self._built_for: Policy | None = None
        self._refused: tuple[str, Policy] | None = None  # a monitor these settings cannot make: not retried
        self._ref: dict[str, Any] = {}
        self._lat_ref: list[float] = []  # the serving model's first latencies (environment reference)
        self._episodes: dict[str, dict[str, float]] = {}
        self._quiet: dict[str, dict[str, float]] = {}
        # what the status and the metrics read, from any thread
        self._lock = threading.Lock()
        self._counts = {k: dict.fromkeys(_COUNTERS, 0) for k in DRIFT_KINDS}
        self._latest: dict[str, dict[str, Any]] = {}
        self._needs: deque[dict[str, Any]] = deque(maxlen=10)
        self._watch: dict[str, Any] = {}
        self._last_run: dict[str, Any] | None = None
        self._error: str | None = None
        self._skipped = 0
        self._drifting: frozenset[str] = frozenset()  # the kinds with an episode under way, for readers
        self._episode_since: float | None = None  # when the open data/label/accuracy episode began, for readers
        self._mix_answered: tuple[DriftDecision, ...] = ()  # the drift the class-mix correction answered

    def job(self) -> JobSpec:
        """The scheduler job, at the policy's ``drift.check_interval_s``."""
        return JobSpec(DRIFT_CHECK_JOB, self.run, self.policy().drift.check_interval_s)

    def may_run_early(self) -> bool:
        """Whether a run may be brought forward now without the checks taking more than ``cpu_share``."""
        return time.monotonic() >= self._early_after

    # -- the job ---------------------------------------------------------------------------------

    def run(self) -> list[DriftDecision]:
        """One pass: drain the feed, feed the serving model's monitor, record; the decisions made."""
        started = time.perf_counter()
        drained = self.feed.drain()
        serving = self.runtime.current_id
        if serving is None:
            self._forget()
            return []
        policy = self.policy()
        monitor = self._monitor_for(serving, policy)
        if monitor is None:
            return []
        emb, classes, latencies, outcomes = drained.for_model(serving)
        probs = drained.probabilities_for(serving)
        if emb is None or classes is None:
            emb, classes = np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
        if probs is not None and len(probs) != len(classes):
            probs = None
        ms = np.array([v for b, v in latencies if b == policy.target.batch], dtype=np.float64)
        bits = np.array(outcomes, dtype=bool)
        step = monitor.check_every
        most = step * self.max_checks_per_run  # of more than a run may check, the newest matter
        skipped = sum(max(0, len(a) - most) for a in (emb, ms, bits))
        emb, classes, ms, bits = emb[-most:], classes[-most:], ms[-most:], bits[-most:]
        self.class_mix.observe(emb, classes, None if probs is None else probs[-most:])
        decisions: list[DriftDecision] = []
        try:
            for i in range(0, len(emb), step):
                self._collect_reference(emb[i : i + step], classes[i : i + step])
                decisions += monitor.observe(embeddings=emb[i : i + step], predictions=classes[i : i + step])
            for i in range(0, len(bits), step):
                decisions += monitor.observe(correct=bits[i : i + step])
            self._collect_latency_reference(monitor, ms, policy.drift.reference_window)
            for i in range(0, len(ms), step):
                decisions += monitor.observe(latency_ms=ms[i : i + step])
        except (DataError, DriftError) as exc:  # e.g. a kept reference of another width: start over
            logger.warning("drift monitor of %s reset: %s", serving, exc)
            self._set_error(f"monitor of {serving} reset: {exc}")
            if self._ref.get("source") == "kept":
                self.references.drop(serving)  # collect a new one rather than fail the same way again
            self._monitor = None
        self._keep_reference(serving)
        begun = self._record(serving, decisions)
        mix = self._class_mix(serving, begun)
        took = time.perf_counter() - started
        self._early_after = time.monotonic() + took * (1 - self.cpu_share) / self.cpu_share
        with self._lock:
            self._skipped += skipped
            self._last_run = {
                "at": time.time(),
                "duration_ms": took * 1e3,
                "skipped": skipped,
                "samples": len(emb),
                "labels": len(bits),
                "latencies": len(ms),
                "decisions": len(decisions),
            }
            if self._monitor is not None:
                self._watch["monitor"] = self._monitor.status()
                self._watch["reference"] = self._reference_status()
        if begun and self.on_detected is not None:
            self.on_detected(DriftDetected(serving, tuple(begun), mix))
        overruled = self.class_mix.take_overrule()
        if overruled is not None and self._mix_answered and self.on_detected is not None:
            # the drift the removed correction answered, answered again (adaptation)
            again = {"answered": False, "overruled": True, "reason": f"feedback overruled the class-mix correction: {overruled}"}  # fmt: skip
            self.on_detected(DriftDetected(serving, self._mix_answered, again))
        return decisions

    def _class_mix(self, serving: str, begun: list[DriftDecision]) -> dict[str, Any] | None:
        """Judge a data or label drift just begun as a change of class mix; else follow one in force."""
        try:
            message = self.class_mix.refresh()
            if message is not None:
                logger.info("class mix on %s: %s", serving, message)
            if any(d.kind in ("data", "label") for d in begun):
                found = self.class_mix.judge()
                logger.info("class mix on %s: %s", serving, found["reason"])
                if found.get("answered"):
                    self._mix_answered = tuple(d for d in begun if d.kind in ("data", "label"))
                return found
        except (ValueError, DataError) as exc:  # a reference of another width, a model swapped meanwhile
            logger.warning("class-mix correction of %s skipped: %s", serving, exc)
            return {"answered": False, "reason": f"the class-mix test failed: {exc}"}
        return None

    def _forget(self) -> None:
        self._monitor, self._model, self._built_for = None, None, None
        with self._lock:
            self._watch, self._drifting, self._episode_since = {}, frozenset(), None

    def _monitor_for(self, serving: str, policy: Policy) -> DriftMonitor | None:
        """The monitor of ``serving``: built anew after a swap or new drift settings, else updated."""
        if self._monitor is not None and self._model == serving and self._built_for is not None:
            self._refresh_profiled(serving, policy)
            if policy is self._built_for:
                return self._monitor
            if policy.drift == self._built_for.drift:
                self._monitor.update_policy(policy)  # a new latency budget applies at once
                self._built_for = policy
                return self._monitor
        if self._refused == (serving, policy):
            return None
        stats = self.runtime.stats()
        if stats.model_id != serving or not stats.num_classes:
            return None  # swapped meanwhile: the next run builds the right one
        front = self.fronts.get() if self.fronts is not None else None
        profiled = profiled_latency_ms(front, self.store.get_model(serving), policy.target.batch)
        kept = self.references.load(serving, policy.drift.reference_window)
        try:
            monitor = DriftMonitor.from_policy(
                policy,
                num_classes=stats.num_classes,
                profiled_latency_ms=profiled,
                embedding_reference=None if kept is None else kept[0],
                prediction_reference=None if kept is None else kept[1],
            )
        except (DriftError, DataError) as exc:
            self._set_error(f"drift checks are off for {serving} until the policy or the model changes: {exc}")
            logger.error("drift checks are off for %s: %s", serving, exc)
            self._monitor, self._refused = None, (serving, policy)
            return None
        changed = self._model != serving
        self._monitor, self._model, self._built_for = monitor, serving, policy
        self._episodes.clear()
        now = time.time()
        self._quiet = {k: {"since": now, "checks": 0} for k in DRIFT_KINDS}
        self._ref = {"source": "kept" if kept is not None else "collecting", "emb": [], "cls": [], "n": 0}
        self._lat_ref = []
        self.class_mix.watch(serving, stats.num_classes, policy.drift.window)
        self._mix_answered = ()  # a new monitor: the old model's corrected drift is not this one's
        if kept is not None:
            self._ref["n"] = len(kept[0])
            self.class_mix.set_reference(kept[0], kept[1])
        with self._lock:
            if changed:  # the old model's decisions; a policy change's answer stays
                self._latest = {k: v for k, v in self._latest.items() if k == "preference"}
            self._error, self._drifting, self._episode_since = None, frozenset(), None
            self._watch = {
                "model": serving,
                "since": now,
                "profiled_latency_ms": profiled,
                "monitor": monitor.status(),
                "reference": self._reference_status(),
            }
        logger.info(
            "drift monitor for %s: reference %s, window %d, check every %d samples, profiled latency %s ms",
            serving,
            "kept" if kept is not None else f"from its first {policy.drift.reference_window} samples",
            policy.drift.window,
            monitor.check_every,
            "?" if profiled is None else f"{profiled:.3g}",
        )
        return monitor

    def _refresh_profiled(self, serving: str, policy: Policy) -> None:
        """A model deployed before its latency was measured gets it once the probe has measured it.

        Without it, environment drift could only be judged against the budget: contention that
        doubles a 0.8 ms model's latency would go unseen under a 5 ms budget.
        """
        monitor = self._monitor
        if monitor is None or monitor.environment.profiled_ms is not None or self._lat_done():
            return
        front = self.fronts.get() if self.fronts is not None else None
        profiled = profiled_latency_ms(front, self.store.get_model(serving), policy.target.batch)
        if profiled is not None:
            monitor.environment.profiled_ms = profiled
            with self._lock:
                self._watch["profiled_latency_ms"] = profiled
            logger.info("drift monitor for %s: profiled latency %.3g ms (measured since it was deployed)", serving, profiled)  # fmt: skip

    def _lat_done(self) -> bool:
        ref = self._built_for.drift.reference_window if self._built_for is not None else None
        return ref is not None and len(self._lat_ref) >= ref

    def _collect_latency_reference(self, monitor: DriftMonitor, ms: np.ndarray, size: int) -> None:
        """The serving model's own first ``size`` latencies at the policy's batch, as the data
        detector takes its first embeddings: their p95 becomes the latency environment drift is
        judged against (over the probe's or the front's figure, taken from a few runs or
        another process)."""
        ref = self._lat_ref
        if len(ref) >= size or not len(ms):
            return
        ref.extend(float(v) for v in ms[: size - len(ref)])
        if len(ref) >= size:
            p95 = float(np.percentile(ref, 95))
            monitor.environment.profiled_ms = p95
            with self._lock:
                self._watch["profiled_latency_ms"] = p95
                self._watch["latency_reference"] = f"p95 of its first {size} live latencies"
            logger.info("drift monitor: environment reference %.3g ms (p95 of the first %d live latencies)", p95, size)

    # -- references ------------------------------------------------------------------------------

    def _collect_reference(self, emb: np.ndarray, classes: np.ndarray) -> None:
        """Keep a copy of the rows the monitor takes as its reference (the first it is fed)."""
        if self._built_for is None:
            return
        ref, size = self._ref, self._built_for.drift.reference_window
        if ref.get("source") != "collecting" or ref["n"] >= size:
            return
        take = min(len(emb), size - ref["n"])
        ref["emb"].append(np.array(emb[:take], np.float32))
        ref["cls"].append(np.array(classes[:take], np.int64))
        ref["n"] += take

    def _reference_status(self) -> dict[str, Any]:
        target = None if self._built_for is None else self._built_for.drift.reference_window
        return {"source": self._ref.get("source"), "samples": self._ref.get("n", 0), "target": target}

    def _keep_reference(self, model_id: str) -> None:
        """Once the monitor's reference is complete, keep it on disk for a restart."""
        ref, monitor = self._ref, self._monitor
        if monitor is None or ref.get("source") != "collecting" or not monitor.data.reference_count:
            return
        ref["source"] = "collected"
        emb, cls = np.concatenate(ref.pop("emb")), np.concatenate(ref.pop("cls"))
        self.class_mix.set_reference(emb, cls)
        if ref["n"] >= monitor.data.reference_count:
            self.references.save(model_id, emb, cls)

    # -- recording -------------------------------------------------------------------------------

    def _store(self, d: DriftDecision, model_id: str | None, extra: dict[str, Any] | None = None) -> None:
        """One ``drift_events`` row: the decision, with the reference size and model in its detail."""
        detail = {**d.detail, "reference": d.reference, "model": model_id, **(extra or {})}
        try:
            self.store.record_drift(
                d.kind,
                decision=d.drifted,
                statistic=_plain(d.statistic),
                threshold=_plain(d.threshold),
                p_value=_plain(d.p_value),
                window=d.window,
                detail=_plain(detail),
            )
        except Exception:  # the store may be closing; a lost event must not stop the checks
            logger.exception("cannot store a %s drift event", d.kind)
            return
        with self._lock:
            self._counts[d.kind]["events"] += 1

    def _record(self, model_id: str, decisions: list[DriftDecision]) -> list[DriftDecision]:
        """Count every decision, store episodes and summaries; the decisions that began an episode."""
        now, begun = time.time(), []
        for d in decisions:
            with self._lock:
                c = self._counts[d.kind]
                c["checks"] += 1
                c["drifted"] += int(d.drifted)
                self._latest[d.kind] = d.to_dict() | {"at": now, "model": model_id}
            quiet = self._quiet.setdefault(d.kind, {"since": now, "checks": 0})
            episode = self._episodes.get(d.kind)
            if d.drifted and episode is None:
                self._episodes[d.kind] = {"since": now, "checks": 1, "stored_at": now, "unstored": 0}
                self._store(d, model_id, {"episode": {"since": now, "checks": 1}, "action": "re-search needed"})
                logger.warning(
                    "%s drift on %s: statistic %.4g, threshold %.4g, p %s, window %d against %d",
                    d.kind, model_id, d.statistic, d.threshold, _fmt_p(d.p_value), d.window, d.reference,
                )  # fmt: skip
                begun.append(d)
            elif d.drifted and episode is not None:
                episode["checks"] += 1
                episode["unstored"] += 1
                if now - episode["stored_at"] >= self.repeat_every_s:
                    info = {
                        "since": episode["since"],
                        "checks": episode["checks"],
                        "since_last_row": episode["unstored"],
                    }
                    self._store(d, model_id, {"episode": info})
                    episode["stored_at"], episode["unstored"] = now, 0
            else:
                if episode is not None:
                    logger.info("%s drift on %s is over after %d drifting checks", d.kind, model_id, episode["checks"])
                    del self._episodes[d.kind]
                quiet["checks"] += 1
                if now - quiet["since"] >= self.summary_every_s:
                    self._store(d, model_id, {"summary": {"since": quiet["since"], "checks": quiet["checks"]}})
                    self._quiet[d.kind] = {"since": now, "checks": 0}
        with self._lock:
            self._drifting = frozenset(self._episodes)
            starts = [e["since"] for k, e in self._episodes.items() if k in ("data", "label", "accuracy")]
            self._episode_since = min(starts) if starts else None
        return begun

    def episode_since(self) -> float | None:
        """When the data, label or accuracy drift episode under way on the serving model began
        (the earliest kind's start), or None when there is none: figures from before it describe
        data the model no longer sees."""
        with self._lock:
            return self._episode_since

    def record_preference(self, decision: DriftDecision, answer: PreferenceAnswer | None) -> None:
        """Store a preference-drift decision (only if the policy changed) with the answer given to it."""
        now = time.time()
        model = self.runtime.current_id
        with self._lock:
            c = self._counts["preference"]
            c["checks"] += 1
            c["drifted"] += int(decision.drifted)
            entry = decision.to_dict() | {"at": now, "model": model}
            if answer is not None:
                entry["answer"] = answer.to_dict()
            self._latest["preference"] = entry
        if decision.drifted:
            self._store(decision, model, {"answer": None if answer is None else answer.to_dict()})

    def note_needed(self, kind: str, action: str, reason: str) -> None:
        """Remember that a drift calls for work not started here (shown until :meth:`clear_needed`)."""
        with self._lock:
            self._needs.append({"at": time.time(), "kind": kind, "action": action, "reason": reason})

    def clear_needed(self, kind: str | None = None) -> None:
        """Forget what was needed (of one kind, or all): it was answered."""
        with self._lock:
            kept = [n for n in self._needs if kind is not None and n["kind"] != kind]
            self._needs.clear()
            self._needs.extend(kept)

    def _set_error(self, message: str | None) -> None:
        with self._lock:
            self._error = message

    # -- reading (any thread) --------------------------------------------------------------------

    def reference_mix(self) -> tuple[float, ...] | None:
        """The serving model's predicted-class shares on its drift reference (None while collecting)."""
        return self.class_mix.reference_mix()

    def status(self) -> dict[str, Any]:
        """The ``drift`` section of ``/v1/status``."""
        with self._lock:
            out = {
                "watching": dict(self._watch) or None,
                "error": self._error,
                "check_interval_s": self.policy().drift.check_interval_s,
                "last_run": self._last_run,
                "latest": {k: dict(v) for k, v in self._latest.items()},
                "counts": {k: dict(v) for k, v in self._counts.items()},
                "drifting": sorted(self._drifting),
                "needs": list(self._needs),
                "skipped": self._skipped,
            }
        out["feed"] = self.feed.stats()
        out["class_mix"] = self.class_mix.status()
        return out

    def metrics_text(self) -> str:
        """The drift families in the Prometheus text format (appended to ``/metrics``)."""
        with self._lock:
            counts = {k: dict(v) for k, v in self._counts.items()}
            latest = {k: dict(v) for k, v in self._latest.items()}
            drifting, needs, skipped = self._drifting, len(self._needs), self._skipped
        feed = self.feed.stats()
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: list[tuple[str, Any]]) -> None:
            lines.extend([f"# HELP lifelong_{name} {text}", f"# TYPE lifelong_{name} {kind}"])
            lines.extend(f"lifelong_{name}{labels} {value}" for labels, value in samples)

        per_kind = [(k, f'{{kind="{k}"}}') for k in DRIFT_KINDS]
        family(
            "drift_checks_total",
            "counter",
            "Drift checks run, by kind.",
            [(lb, counts[k]["checks"]) for k, lb in per_kind],
        )
        family(
            "drift_detections_total", "counter", "Drift checks that found drift, by kind.",
            [(lb, counts[k]["drifted"]) for k, lb in per_kind],
        )  # fmt: skip
        family(
            "drift_events_total", "counter", "Drift events stored (drift episodes, their repeats, policy changes), by kind.",
            [(lb, counts[k]["events"]) for k, lb in per_kind],
        )  # fmt: skip
        family(
            "drift_drifting",
            "gauge",
            "1 while a drift episode of that kind lasts.",
            [(lb, int(k in drifting)) for k, lb in per_kind],
        )
        for field_name, text in (("statistic", "Statistic"), ("threshold", "Threshold"), ("p_value", "p-value")):
            samples = [
                (f'{{kind="{k}"}}', f"{float(d[field_name]):.6g}")
                for k, d in sorted(latest.items())
                if isinstance(d.get(field_name), int | float)
            ]
            if samples:
                family(f"drift_{field_name}", "gauge", f"{text} of the latest drift check, by kind.", samples)
        family("drift_research_needed", "gauge", "Drifts waiting for a re-search or adaptation.", [("", needs)])
        family(
            "drift_fed_samples_total", "counter", "Served samples handed to the drift check.", [("", feed["samples"])]
        )
        family(
            "drift_dropped_samples_total", "counter", "Samples not checked: the feed was full or a run had too many.",
            [("", feed["dropped_samples"] + skipped)],
        )  # fmt: skip
        return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to None (as DriftDecision.to_dict)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value

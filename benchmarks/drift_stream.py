"""The drift benchmark's stream: shifts, the streaming client, the status reader, figures from the logs.

Used by ``benchmarks/drift.py``; the pure parts (:func:`shift_images`,
:func:`class_prior_indices`, :func:`detection_delay`, :func:`recovered_fraction`,
:func:`build_targets`) are tested by ``tests/test_drift_benchmark.py`` without a daemon.
Numpy, Pillow, sqlite3 and the service's client only: no torch.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import target  # noqa: E402

from service.api.client import Client  # noqa: E402
from service.demo.stream import SHIFTS as CAMERA_SHIFTS  # noqa: E402
from service.demo.stream import shift_images as camera_shift  # noqa: E402
from service.serving.ort_runtime import OrtRuntime  # noqa: E402
from service.serving.runtime import RuntimeSettings  # noqa: E402

SHIFTS = ("noise", "contrast", "brightness", "rotation", "class-prior")
DRIFT_KINDS = ("data", "label", "accuracy", "environment")
PHASES = ("clean", "shifted", "post", "return")
"""Stream phases: before the shift, after it (served by the original model until a swap), after a swap."""

# shift strengths, as in benchmarks/drift_detectors.py (there on float pixels in [0, 1])
NOISE_SIGMA = 0.2
CONTRAST = 0.5  # x * 0.5 + 0.25: half the contrast, same mean grey
BRIGHTNESS = 0.2
ROTATION_DEG = 15.0
PRIOR_CLASSES = (0, 2, 4, 6)  # T-shirt, pullover, coat, shirt: the classes the model confuses most
PRIOR_SHARE = 0.9


class BenchmarkError(RuntimeError):
    """The benchmark cannot go on (no daemon, a setup step failed)."""


# -- pure helpers --------------------------------------------------------------------------------
def shift_images(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``uint8 (N, 28, 28)`` images under the shift ``name``, still ``uint8 (N, 28, 28)``.

    The demo's transforms (:func:`service.demo.stream.shift_images`) at this benchmark's
    strengths: ``noise``: gaussian noise of sigma ``NOISE_SIGMA`` (of full scale);
    ``contrast``: pixels squeezed to ``x * 0.5 + 0.25``; ``brightness``: ``+ 0.2``, clipped;
    ``rotation``: 15 degrees, bilinear; ``clean`` and ``class-prior`` leave the pixels alone
    (the prior shift is in which images are drawn, :func:`class_prior_indices`).
    """
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"shift_images: expected uint8 (N, H, W) images, got {x.dtype} {x.shape}")
    if name in ("clean", "class-prior"):
        return x.copy()
    if name not in CAMERA_SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of clean, {', '.join(SHIFTS)}")
    return camera_shift(
        name, x, rng, noise_std=NOISE_SIGMA, contrast=CONTRAST, brightness=BRIGHTNESS, rotation_deg=ROTATION_DEG
    )


def class_prior_indices(
    labels: np.ndarray,
    pool: np.ndarray,
    n: int,
    rng: np.random.Generator,
    dominant: Sequence[int] = PRIOR_CLASSES,
    share: float = PRIOR_SHARE,
) -> np.ndarray:
    """``n`` indices drawn from ``pool``: exactly ``round(n * share)`` of a ``dominant`` class, shuffled.

    Within each group (dominant classes, the others) images are drawn uniformly, without
    replacement while the group has enough of them.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"share={share!r}; expected a fraction in [0, 1]")
    pool = np.asarray(pool)
    is_dom = np.isin(labels[pool], list(dominant))
    groups = (pool[is_dom], pool[~is_dom])
    want = (round(n * share), n - round(n * share))
    parts = []
    for group, k in zip(groups, want, strict=True):
        if k and not len(group):
            raise ValueError(f"no images of {'the dominant' if group is groups[0] else 'the other'} classes in pool")
        if k:
            parts.append(rng.choice(group, k, replace=k > len(group)))
    out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    rng.shuffle(out)
    return out


def samples_at(log: Sequence[tuple[float, int]], t: float) -> int:
    """Samples answered by time ``t``, from a log of ``(time, samples answered)`` in time order."""
    times = np.fromiter((a for a, _ in log), float, len(log))
    i = int(np.searchsorted(times, t, side="right"))
    return 0 if i == 0 else int(log[i - 1][1])


def detection_delay(log: Sequence[tuple[float, int]], shift_at: int, event_time: float | None) -> int | None:
    """Samples answered after the shift point when the daemon recorded the drift (None: not detected)."""
    if event_time is None:
        return None
    return samples_at(log, event_time) - shift_at


def recovered_fraction(
    clean: float | None, before: float | None, after: float | None, min_loss: float = 0.01
) -> float | None:
    """Share of the accuracy lost to the shift that adaptation won back.

    ``(after - before) / (clean - before)``; None when a figure is missing or the shift cost
    less than ``min_loss`` (nothing to recover: the ratio would be noise).
    """
    if clean is None or before is None or after is None:
        return None
    lost = clean - before
    if lost < min_loss:
        return None
    return (after - before) / lost


def accuracy(y: np.ndarray, pred: np.ndarray) -> float | None:
    return float((np.asarray(y) == np.asarray(pred)).mean()) if len(y) else None


def _met(value: float | None, ok: Callable[[float], bool]) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and ok(value)


def build_targets(results: dict[str, dict[str, Any]], labelled: bool = True) -> list[dict[str, Any]]:
    """The issue's targets for the scenarios that ran; a missing figure (no detection, no swap) is not met.

    With feedback labels: 80% of the lost accuracy recovered; without any: 50%, from the
    label-free answer. The first answer (a swap or the class-mix correction) within 30 s of
    the detection either way, and clean accuracy at most 0.5 pt below before.
    """
    out = []
    share = 0.8 if labelled else 0.5
    for name in SHIFTS:
        r = results.get(name)
        if r is None or "error" in r:
            continue
        d = r["detection"]["delay_samples"]
        out.append(
            target(f"{name}: detection delay (samples after the shift)", d, "<= 500", _met(d, lambda v: v <= 500))
        )
        a = r["adaptation"]
        if r["accuracy"]["lost"] is not None and r["accuracy"]["lost"] >= 0.01:
            f = r["accuracy"]["recovered_fraction"]
            out.append(
                target(f"{name}: share of the lost accuracy recovered", f, f">= {share}", _met(f, lambda v: v >= share))
            )
        s = a["detection_to_swap_s"]
        out.append(
            target(
                f"{name}: detection to first answer (s, {os.cpu_count()} cores)", s, "<= 30", _met(s, lambda v: v <= 30)
            )
        )
        lab = r.get("labelled")
        if labelled and lab is not None:
            t = lab.get("detection_to_labelled_s")
            out.append(
                target(f"{name}: detection to the labelled answer (s)", t, "<= 120", _met(t, lambda v: v <= 120))
            )
        ret = r.get("return")
        if ret is not None:
            g = ret.get("clean_gap_pt_at_500")
            out.append(
                target(
                    f"{name}: data back to clean: clean accuracy gap to the original 500 samples in (pt)",
                    g,
                    "<= 0.5",
                    _met(g, lambda v: v <= 0.5),
                )
            )
        drop = r["forgetting"]["clean_drop_pt"]
        out.append(
            target(
                f"{name}: clean test accuracy drop after adaptation (pt)",
                drop,
                "<= 0.5",
                _met(drop, lambda v: v <= 0.5),
            )
        )
        first = r["forgetting"].get("first_answer_clean_drop_pt")
        if first is not None:  # the label-free answer, replaced by the labelled one since
            out.append(
                target(
                    f"{name}: clean test accuracy drop of the first answer, since replaced (pt)",
                    first,
                    "<= 0.5",
                    _met(first, lambda v: v <= 0.5),
                )
            )
    r = results.get("none")
    if r is not None and "error" not in r:
        n = r["false_alarms"]
        out.append(target(f"false alarms (drift episodes) in {r['samples']} clean samples", n, "0", n == 0))
    errors = sum(r.get("request_errors", 0) for r in results.values())
    failed = [k for k, r in results.items() if "error" in r]
    out.append(target("request errors, all scenarios", errors, "0", errors == 0 and not failed))
    return out


def labelled_answer(events: Sequence[dict[str, Any]], t_detect: float) -> dict[str, Any]:
    """How the labelled adaptation ended, read from the daemon's own ``adapt`` events: the
    first outcome after the detection that is not the label-free answer's."""
    for e in sorted(events, key=lambda e: e["at"]):
        m = str(e.get("message", ""))
        if e.get("kind") != "adapt" or e["at"] < t_detect or not m.startswith("adaptation "):
            continue
        outcome, _, why = m.removeprefix("adaptation ").partition(":")
        # the label-free answer's reason starts "label-free:"; a labelled one may name it later on
        if outcome not in ("swapped", "kept", "failed", "cancelled") or why.strip().startswith("label-free"):
            continue
        return {"outcome": outcome, "reason": m, "detection_to_labelled_s": e["at"] - t_detect}
    return {"outcome": None, "reason": "no labelled outcome among the daemon's events", "detection_to_labelled_s": None}


# -- streaming -----------------------------------------------------------------------------------
class IndexCycle:
    """Endless shuffled passes over ``pool``; ``draw`` (optional) makes each chunk instead."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator, draw: Callable[[int], np.ndarray] | None = None):
        self.pool, self.rng, self.draw = np.asarray(pool), rng, draw
        self._buf = np.zeros(0, np.int64)

    def take(self, n: int) -> np.ndarray:
        while len(self._buf) < n:
            more = self.draw(4096) if self.draw is not None else self.rng.permutation(self.pool)
            self._buf = np.concatenate([self._buf, more])
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


@dataclass
class Record:
    """Every answer and every error of one scenario's stream.

    ``chunks`` holds one ``(phase index, model index, labels, predicted classes, time)`` per
    answered request; ``log`` the ``(time, samples answered)`` after each, which maps a time
    the daemon reports to a position in the stream (:func:`samples_at`).
    """

    models: list[str] = field(default_factory=list)
    chunks: list[tuple[int, int, np.ndarray, np.ndarray, float]] = field(default_factory=list)
    log: list[tuple[float, int]] = field(default_factory=lambda: [(0.0, 0)])  # (time, samples answered)
    request_ms: list[tuple[float, int, float, float]] = field(default_factory=list)  # (t, phase, client ms, server ms)
    errors: list[str] = field(default_factory=list)
    feedback_sent: int = 0
    first_answer: dict[str, float] = field(default_factory=dict)  # model -> time of its first answer

    def model_index(self, model: str, t: float) -> int:
        if model not in self.models:
            self.models.append(model)
            self.first_answer[model] = t
        return self.models.index(model)

    def arrays(self) -> dict[str, np.ndarray]:
        if not self.chunks:
            z = np.zeros(0, np.int64)
            return {"phase": z, "model": z, "y": z, "pred": z, "t": np.zeros(0)}
        n = [len(c[2]) for c in self.chunks]
        return {
            "phase": np.repeat([c[0] for c in self.chunks], n),
            "model": np.repeat([c[1] for c in self.chunks], n),
            "y": np.concatenate([c[2] for c in self.chunks]),
            "pred": np.concatenate([c[3] for c in self.chunks]),
            "t": np.repeat([c[4] for c in self.chunks], n),
        }

    def accuracy(self, phase: str, model: str | None = None, after: float | None = None) -> tuple[float | None, int]:
        a = self.arrays()
        keep = a["phase"] == PHASES.index(phase)
        if model is not None:
            keep &= a["model"] == (self.models.index(model) if model in self.models else -1)
        if after is not None:
            keep &= a["t"] >= after
        return accuracy(a["y"][keep], a["pred"][keep]), int(keep.sum())

    @property
    def answered(self) -> int:
        return self.log[-1][1]


class Streamer:
    """Sends predict requests at a steady rate, and feedback for a fraction of the samples."""

    def __init__(
        self, client: Client, record: Record, *, rate: float, batch: int, fraction: float, rng: np.random.Generator
    ):
        self.client, self.rec, self.rng = client, record, rng
        self.rate, self.batch, self.fraction = rate, batch, fraction
        self._next = time.monotonic()

    def run(
        self,
        source: Callable[[int], tuple[np.ndarray, np.ndarray]],
        phase: str,
        *,
        samples: int | None = None,
        until: Callable[[], bool] | None = None,
        seconds: float | None = None,
    ) -> int:
        """Stream until ``samples`` are answered, ``until()`` is true or ``seconds`` pass; samples answered."""
        sent, failed_in_row = 0, 0
        deadline = None if seconds is None else time.monotonic() + seconds
        code = PHASES.index(phase)
        while True:
            if samples is not None and sent >= samples:
                break
            if (until is not None and until()) or (deadline is not None and time.monotonic() >= deadline):
                break
            n = self.batch if samples is None else min(self.batch, samples - sent)
            x, y = source(n)
            wait = self._next - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next = max(self._next, time.monotonic() - 1.0) + n / self.rate  # at most 1 s of catching up
            t0 = time.perf_counter()
            try:
                ans = self.client.predict(x)
            except Exception as exc:  # every failure counts, whatever it is
                self.rec.errors.append(f"{time.time():.3f} predict: {type(exc).__name__}: {exc}")
                failed_in_row += 1
                if failed_in_row >= 20:
                    raise BenchmarkError(f"20 predict requests in a row failed; last: {exc}") from exc
                time.sleep(0.2)
                continue
            failed_in_row = 0
            now = time.time()
            ms = (time.perf_counter() - t0) * 1e3
            m = self.rec.model_index(ans.model, now)
            self.rec.chunks.append((code, m, np.asarray(y), ans.classes, now))
            self.rec.log.append((now, self.rec.answered + n))
            self.rec.request_ms.append((now, code, ms, ans.latency_ms))
            sent += n
            pick = np.flatnonzero(self.rng.random(n) < self.fraction)
            if pick.size:
                try:
                    self.client.feedback(labels=[(ans.request_id, int(i), int(y[i])) for i in pick])
                    self.rec.feedback_sent += int(pick.size)
                except Exception as exc:
                    self.rec.errors.append(f"{time.time():.3f} feedback: {type(exc).__name__}: {exc}")
        return sent


class StatusPoller(threading.Thread):
    """Reads ``/v1/status`` every ``interval`` seconds: the events, drift counts and adaptation state."""

    def __init__(self, socket: Path, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.client = Client(socket, timeout=30)
        self.interval = interval
        self.events: dict[tuple[float, str, str], dict[str, Any]] = {}
        self.snapshots: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.has_adaptation = False
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def poll(self) -> dict[str, Any] | None:
        try:
            doc = self.client.status()
        except Exception as exc:
            self.errors.append(f"{time.time():.3f} status: {type(exc).__name__}: {exc}")
            return None
        drift = doc.get("drift") or {}
        snap = {
            "t": time.time(),
            "model": doc.get("model") or (doc.get("runtime") or {}).get("model_id"),
            "drifting": drift.get("drifting"),
            "drifted": {k: v.get("drifted") for k, v in (drift.get("counts") or {}).items()},
            "adaptation": doc.get("adaptation"),
            "canary": (doc.get("canary") or {}).get("model_id") if doc.get("canary") else None,
            "drift": {"class_mix": {k: v for k, v in (drift.get("class_mix") or {}).items() if k != "history"}},
        }
        with self._lock:
            self.has_adaptation = self.has_adaptation or "adaptation" in doc
            for e in doc.get("events") or []:
                self.events.setdefault((e.get("at"), e.get("kind"), e.get("message")), e)
            self.snapshots.append(snap)
        return doc

    def events_since(self, t: float, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = [
                e for e in self.events.values() if (e.get("at") or 0) >= t and (kinds is None or e.get("kind") in kinds)
            ]
        return sorted(found, key=lambda e: e["at"])

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self.snapshots[-1] if self.snapshots else None

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.client.close()


def drift_episodes(state: Path) -> list[dict[str, Any]]:
    """Drift episodes begun, oldest first, from the store's ``drift_events`` (first row of each episode)."""
    db = state / "state.db"
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT at, detector, statistic, threshold, p_value, window, detail FROM drift_events "
            "WHERE decision = 1 AND detector != 'preference' ORDER BY at, id"
        ).fetchall()
    finally:
        con.close()
    out = []
    for at, kind, stat, thr, p, window, detail in rows:
        d = json.loads(detail) if detail else {}
        episode = d.get("episode") or {}
        if episode.get("checks") != 1:
            continue  # a repeat row of an ongoing episode
        out.append(
            {"at": at, "kind": kind, "statistic": stat, "threshold": thr, "p_value": p, "window": window,
             "model": d.get("model"), "monitor_sample": d.get("sample")}
        )  # fmt: skip
    return out


def clean_accuracy(path: Path, x: np.ndarray, y: np.ndarray, threads: int = 2) -> float:
    """Top-1 of an ONNX model on clean images, through the serving runtime's own code (offline)."""
    rt = OrtRuntime(RuntimeSettings(intra_op_threads=threads, warmup_runs=0))
    rt.swap("offline", path)
    preds = np.concatenate([rt.predict(x[i : i + 500]).classes for i in range(0, len(x), 500)])
    return float((preds == y).mean())


def latency_summary(ms: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(ms, float)
    if not a.size:
        return {"n": 0}
    p50, p95, p99 = (float(v) for v in np.percentile(a, [50, 95, 99]))
    return {"n": int(a.size), "p50": p50, "p95": p95, "p99": p99}

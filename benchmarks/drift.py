"""Benchmark: the lifelong loop under drift, through the real daemon and the real API.

    .venv/bin/python benchmarks/drift.py                                 # all scenarios, ~20-50 min
    .venv/bin/python benchmarks/drift.py --scenarios noise --quick       # one short scenario, ~2 min
    .venv/bin/python benchmarks/drift.py --state-dir /work/state --profile benchmarks/work/deploy/device.json

Writes ``benchmarks/results/drift.json`` (``drift-quick.json`` with ``--quick``;
``drift-SCENARIOS.json`` for a subset) and a timeline ``drift.png`` beside it.

Every scenario starts ``lifelong serve`` (the installed script) as a subprocess on a fresh
state directory under ``benchmarks/work/drift/SCENARIO/``, prepared from a source state
(``--state-dir``): the trained supernet, the device profile (``--profile`` where the source
has none), the accuracy predictor and the cached front are copied, and a benchmark policy
is written: the ``balanced`` preset with ``drift.check_interval_s = 2`` (``--check-interval``)
and the adaptation limits of the options. The policy's chosen front point is exported once
(``lifelong export``, cached under ``benchmarks/work/drift/cache``, keyed by the
checkpoint's hash) and deployed through the daemon's admin API (:meth:`Client.deploy`).

Then the Fashion-MNIST test set is streamed through :class:`service.api.client.Client` over the
Unix socket: ``predict`` requests of ``--batch`` uint8 images at ``--rate`` samples/s, and
``feedback`` labels for a random ``--feedback-fraction`` of the samples. The test set is
split once per scenario (seeded): 8000 images feed the stream, 2000 are held out and only
streamed after a swap, so that the accuracy after adaptation is measured on images that no
feedback label ever reached. Scenarios (``--scenarios``, comma separated):

- ``none``: ``--samples`` clean samples (20,000: the test set twice); false alarms are the
  drift episodes that began.
- ``noise``, ``contrast``, ``brightness``, ``rotation``, ``class-prior``: ``--shift-at``
  clean samples (at least the policy's ``drift.reference_window``, the monitor's reference),
  then the shift (:func:`shift_images`; ``class-prior`` resamples the stream so that classes
  0, 2, 4 and 6 make up 90% of it, :func:`class_prior_indices`). Streams shifted samples
  until a drift episode begins (at most ``--detect-limit`` samples), then on until the
  adaptation ends (the status ``adaptation`` key, see ``/work/notes/adapt_contract.md``) or
  the serving model changes, for at most ``--timeout`` seconds after detection; after a swap,
  ``--post-samples`` held-out shifted samples. With feedback labels, the first answer is the
  label-free one; the stream goes on until the labelled adaptation that stayed pending ends
  (``labelled``: its outcome and seconds after detection). Then the data returns: after a
  swap, ``--return-samples`` clean held-out samples (``return``: after how many the original
  model served again, and the clean test accuracy of the model serving 500 samples in).
- ``preference``: after ``--shift-at`` clean samples the policy file is rewritten with the
  budgets and objective of another preset for which the cached front chooses another
  subnet (exported and registered at setup); measures the seconds from the file's save to
  the first answer from the new model.
- ``cpu``: batch-1 requests (latency is watched at the policy's batch size); after
  ``--shift-at`` samples, ``--cpu-hogs`` busy-loop processes start, for at most
  ``--contention-seconds`` (or 10 s after environment drift is detected); reports request
  latencies before and during, when environment drift began, and what the daemon did.

Per scenario: the detection delay in samples (samples answered after the shift until the
time the daemon recorded the episode's start, mapped through the log of (time, samples
answered), :func:`detection_delay`; the episodes are read from the store's ``drift_events``
afterwards); drift episodes begun before the shift; the serving model's accuracy on the
clean stream, on the shifted stream before the swap and, from the new model, after it;
the share of the lost accuracy recovered (:func:`recovered_fraction`); seconds from
detection to the swap (the ``adaptation:`` deployment in the history, else the first
answer of the new model); every exception of the streaming client; and the clean test-set
accuracy of the new model (its ONNX file from ``STATE/models/ID/model.onnx``, run with
:class:`service.serving.ort_runtime.OrtRuntime` offline) against the original's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import markdown_targets, write_results  # noqa: E402
from drift_stream import (  # noqa: E402
    BRIGHTNESS,
    CONTRAST,
    DRIFT_KINDS,
    NOISE_SIGMA,
    PHASES,
    PRIOR_CLASSES,
    PRIOR_SHARE,
    ROTATION_DEG,
    SHIFTS,
    BenchmarkError,
    IndexCycle,
    Record,
    StatusPoller,
    Streamer,
    build_targets,
    class_prior_indices,
    clean_accuracy,
    detection_delay,
    drift_episodes,
    labelled_answer,
    latency_summary,
    recovered_fraction,
    samples_at,
    shift_images,
)

from lifelong.data.datasets import load_fashion_mnist  # noqa: E402
from lifelong.nn.checkpoint import file_sha256  # noqa: E402
from lifelong.search.front import Front, choose  # noqa: E402
from policies import Policy, load_preset, policy_to_toml  # noqa: E402
from tests.daemon_harness import DaemonProcess  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "drift"
LIFELONG = Path(sys.executable).parent / "lifelong"
SCENARIOS = ("none", *SHIFTS, "preference", "cpu")
PREFERENCE_PRESETS = ("battery-saver", "low-latency", "accuracy-first")
HELD_OUT = 2000  # test images kept out of the stream until a swap
RETURN_WITHIN = 500  # the return phase's target: the original's clean accuracy back within these samples


# -- setup ---------------------------------------------------------------------------------------
def benchmark_policy(args: argparse.Namespace) -> Policy:
    """The ``balanced`` preset with a short drift check interval and the adaptation limits of the options."""
    base = load_preset("balanced")
    return replace(
        base,
        name="drift-benchmark",
        drift=replace(base.drift, check_interval_s=args.check_interval),
        adaptation=replace(base.adaptation, max_seconds=args.adapt_seconds),
    )


def preference_policy(base: Policy, front: Front, serving_subnet: str) -> tuple[Policy, str, str]:
    """``base`` with the budgets and objective of the first preset whose front choice is another subnet."""
    for preset in PREFERENCE_PRESETS:
        p = load_preset(preset)
        new = replace(base, name=f"drift-benchmark-{preset}", budgets=p.budgets, objective=p.objective)
        point = choose(front, new)
        if point is not None and point.subnet != serving_subnet:
            return new, preset, point.subnet
    raise BenchmarkError(f"no preset of {PREFERENCE_PRESETS} makes the cached front choose another subnet")


def write_policy(path: Path, policy: Policy) -> None:
    """Write atomically (the daemon watches the file) after ``lifelong policy check`` passed on it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(policy_to_toml(policy))
    check = subprocess.run([str(LIFELONG), "policy", "check", str(tmp)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise BenchmarkError(f"lifelong policy check refused the benchmark policy:\n{check.stdout}{check.stderr}")
    os.replace(tmp, path)


def exported(subnet: str, checkpoint: Path, sha: str) -> Path:
    """The subnet's ONNX export, from the cache or made once by ``lifelong export``."""
    out = WORK / "cache" / f"{sha[:16]}-{subnet}.onnx"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.onnx")
    print(f"exporting {subnet} (cached in {out.parent}) ...", flush=True)
    cmd = [str(LIFELONG), "export", subnet, "--out", str(tmp), "--checkpoint", str(checkpoint), "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise BenchmarkError(f"`{' '.join(cmd)}` failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    os.replace(tmp, out)
    return out


def refuse_if_served(sock: Path) -> None:
    """Stop if a daemon of an earlier run still serves this scenario's socket: its state is about to be deleted."""
    if not sock.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
    except OSError:
        return  # a stale socket file: nobody listens
    finally:
        probe.close()
    raise BenchmarkError(f"a daemon still serves {sock} (an interrupted run?): stop it (lifelong status shows its pid)")


def prepare_state(source: Path, profile: Path | None, dest: Path) -> dict[str, str]:
    """A fresh state directory with copies of the source's supernet, profile, predictor and front."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    files = {
        "supernet/supernet.pt": source / "supernet" / "supernet.pt",
        "profile/device.json": profile or source / "profile" / "device.json",
        "predictor/predictor.npz": source / "predictor" / "predictor.npz",
        "predictor/samples.json": source / "predictor" / "samples.json",
        "front/front.json": source / "front" / "front.json",
    }
    copied = {}
    for rel, src in files.items():
        if not src.is_file():
            if rel == "predictor/samples.json":
                continue  # optional: the predictor's training data
            raise BenchmarkError(f"{src} is missing: the source state needs {rel} (see --state-dir, --profile)")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)  # copies: a worker must never write through a link into the source
        copied[rel] = str(src)
    return copied


# -- one scenario ----------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every scenario shares: options, data, the policy and the exported models."""

    args: argparse.Namespace
    x: np.ndarray
    y: np.ndarray
    policy: Policy
    model: Path  # the policy's choice, exported
    subnet: str
    clean_accuracy: float  # of ``model`` on the whole clean test set
    pref_policy: Policy | None = None
    pref_model: Path | None = None
    pref_preset: str | None = None
    pref_subnet: str | None = None


class Scenario:
    """One daemon on one fresh state, one stream, and what they showed."""

    def __init__(self, name: str, setup: Setup, index: int) -> None:
        self.name, self.setup, self.args = name, setup, setup.args
        self.rng = np.random.default_rng([self.args.seed, index])
        self.dir = WORK / name
        self.state = self.dir / "state"
        self.record = Record()
        order = self.rng.permutation(len(setup.y))
        self.held_out, self.stream_pool = order[:HELD_OUT], order[HELD_OUT:]
        self.out: dict[str, Any] = {"scenario": name}

    # sources: n -> (uint8 images, labels)
    def source(self, pool: np.ndarray, shift: str) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
        x, y = self.setup.x, self.setup.y
        draw = None
        if shift == "class-prior":
            draw = lambda n: class_prior_indices(y, pool, n, self.rng)  # noqa: E731
        cycle = IndexCycle(pool, self.rng, draw)

        def next_batch(n: int) -> tuple[np.ndarray, np.ndarray]:
            idx = cycle.take(n)
            return shift_images(shift, x[idx], self.rng), y[idx]

        return next_batch

    def run(self) -> dict[str, Any]:
        a = self.args
        t0 = time.monotonic()
        run_dir = self.dir / "run"
        refuse_if_served(run_dir / "api.sock")
        self.out["state_files"] = prepare_state(a.state_dir, a.profile, self.state)
        write_policy(self.state / "policy.toml", self.setup.policy)
        shutil.rmtree(run_dir, ignore_errors=True)  # the last run's sockets and log
        run_dir.mkdir(parents=True)
        models_dir = str((WORK / "cache").resolve())  # where exported() keeps the models deployed by path
        daemon = DaemonProcess(self.state, run_dir, script=True, watchdog_s=None, args=("--deploy-dir", models_dir))
        poller: StatusPoller | None = None
        hogs: list[subprocess.Popen[bytes]] = []
        try:
            daemon.start()
            client = daemon.client(timeout=60)
            if self.name == "preference":
                assert self.setup.pref_model is not None
                self.out["model_b"] = client.deploy(path=self.setup.pref_model, reason="benchmark setup")["model_id"]
            self.model_a = client.deploy(path=self.setup.model, reason="benchmark setup")["model_id"]
            self.out["model"] = self.model_a
            poller = StatusPoller(daemon.socket, a.poll)
            poller.start()
            batch = 1 if self.name == "cpu" else a.batch
            streamer = Streamer(
                client, self.record, rate=a.rate, batch=batch, fraction=a.feedback_fraction, rng=self.rng
            )
            runner = getattr(self, f"_run_{self.name.replace('-', '_')}", None) or self._run_shift
            runner(streamer, poller, hogs)
            self.out["history"] = client.history(limit=50)["deployments"]
            final = poller.poll()
            self.out["final_status"] = (
                None
                if final is None
                else {k: final.get(k) for k in ("model", "drift", "adaptation", "canary", "live", "workers")}
            )
            client.close()
        except Exception as exc:
            self.out["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{self.name}: FAILED: {exc}\n{daemon.log()}", file=sys.stderr, flush=True)
        finally:
            try:
                stop_hogs(hogs)
                if poller is not None:
                    poller.stop()
                    self.out["status_errors"] = poller.errors[:20]
                    self.out["events"] = [
                        {"at": e["at"], "kind": e["kind"], "message": e["message"]} for e in poller.events_since(0)
                    ][-200:]
                    self.out["adaptation_in_status"] = poller.has_adaptation
            finally:  # the daemon goes down whatever failed above
                try:
                    self.out["daemon_exit_code"] = daemon.stop() if daemon.proc is not None else None
                except Exception as exc:
                    self.out["daemon_exit_code"] = f"{type(exc).__name__}: {exc}"
                finally:
                    daemon.close()
                self.out["daemon_log"] = str(daemon.log_path)
        self.out["episodes"] = drift_episodes(self.state)
        self.out["request_errors"] = len(self.record.errors)
        self.out["request_error_messages"] = self.record.errors[:20]
        self.out["samples_answered"] = self.record.answered
        self.out["feedback_labels_sent"] = self.record.feedback_sent
        self.out["models_answering"] = {m: t for m, t in self.record.first_answer.items()}
        self.out["seconds"] = time.monotonic() - t0
        if "error" not in self.out:
            try:
                self._analyse()
            except Exception as exc:  # keep the raw figures of this scenario and go on with the next
                self.out["error"] = f"analysis failed: {type(exc).__name__}: {exc}"
                traceback.print_exc()
        return self.out

    # -- runners -------------------------------------------------------------------------------
    def _stream_clean(self, streamer: Streamer) -> None:
        n = self.args.shift_at
        streamer.run(self.source(self.stream_pool, "clean"), "clean", samples=n)
        self.t_shift = time.time()
        self.out["shift_at"] = self.record.answered

    def _run_none(self, streamer: Streamer, poller: StatusPoller, hogs: list) -> None:
        x, y = self.setup.x, self.setup.y
        passes = [self.rng.permutation(len(y)) for _ in range(math.ceil(self.args.samples / len(y)))]
        order = np.concatenate(passes)[: self.args.samples]  # the test set twice, each pass shuffled
        pos = [0]

        def source(n: int) -> tuple[np.ndarray, np.ndarray]:
            idx = order[pos[0] : pos[0] + n]
            pos[0] += len(idx)
            return x[idx], y[idx]

        self.t_shift = time.time()
        streamer.run(source, "clean", samples=len(order))

    def _run_shift(self, streamer: Streamer, poller: StatusPoller, hogs: list) -> None:
        a = self.args
        self._stream_clean(streamer)
        shifted = self.source(self.stream_pool, self.name)
        print(f"{self.name}: shift at {self.out['shift_at']} samples", flush=True)

        def detected() -> bool:
            return bool(poller.events_since(self.t_shift, ("drift",)))

        streamer.run(shifted, "shifted", samples=a.detect_limit, until=detected)
        drift = poller.events_since(self.t_shift, ("drift",))
        if not drift:
            poller.poll()
            drift = poller.events_since(self.t_shift, ("drift",))
        if not drift:
            self.out["wait"] = f"no drift event within {a.detect_limit} shifted samples"
            print(f"{self.name}: {self.out['wait']}", flush=True)
            return
        t_detect = drift[0]["at"]
        print(f"{self.name}: drift event after {self.record.answered - self.out['shift_at']} shifted samples: "
              f"{drift[0]['message'][:160]}", flush=True)  # fmt: skip
        self.out["wait"] = self._wait_adaptation(streamer, poller, shifted, t_detect)
        print(f"{self.name}: {self.out['wait']}", flush=True)
        swapped = self._new_model()
        corrected = getattr(self, "t_corrected", None) is not None
        if (swapped is not None or corrected) and a.feedback_fraction > 0:
            # a label-free answer (or a class-mix correction, which feedback may overrule) first:
            # then whatever the labels bring
            self.out["labelled"] = self._wait_labelled(streamer, poller, shifted, t_detect)
            print(f"{self.name}: labelled answer: {self.out['labelled']['outcome']}", flush=True)
            swapped = self._new_model()
        if swapped is not None or corrected:
            streamer.run(self.source(self.held_out, self.name), "post", samples=a.post_samples)
        if swapped is not None and a.return_samples:
            self.t_return = time.time()
            self.out["return_at"] = self.record.answered
            print(f"{self.name}: the data returns to clean for {a.return_samples} samples", flush=True)
            streamer.run(self.source(self.held_out, "clean"), "return", samples=a.return_samples)

    def _wait_labelled(
        self, streamer: Streamer, poller: StatusPoller, shifted: Callable, t_detect: float
    ) -> dict[str, Any]:
        """After the label-free first answer: stream shifted samples (with their feedback labels)
        until the labelled adaptation that stayed pending ends, or the timeout after detection.

        After a class-mix correction, feedback needs some labels to judge it before an
        adaptation can be pending: no adaptation within 30 s means the correction stood."""
        swapped = self._new_model()
        t_corrected = getattr(self, "t_corrected", None)
        assert swapped is not None or t_corrected is not None
        t_first, grace = (self.record.first_answer[swapped], 10.0) if swapped is not None else (t_corrected, 30.0)
        found: dict[str, Any] = {}
        busy: list[bool] = []

        def done() -> bool:
            snap = poller.latest() or {}
            adapt = snap.get("adaptation") or {}
            last = adapt.get("last")  # the label-free job's own record says mode "bn"
            if last and last.get("mode") == "finetune" and (last.get("finished") or 0) >= t_detect:
                found.update(outcome=last.get("outcome"), reason=last.get("reason"), finished=last.get("finished"))
                return True
            if adapt.get("state") in ("running", "pending"):
                busy.append(True)  # idle after this is the moment before the outcome is recorded
            elif adapt.get("state") == "idle" and not busy and snap.get("t", 0) > t_first + grace:
                found.update(outcome="none", reason="no labelled adaptation pending after the first answer")
                return True
            return False

        streamer.run(shifted, "shifted", until=done, seconds=max(0.0, t_detect + self.args.timeout - time.time()))
        if not found:
            found.update(outcome="timeout", reason=f"no labelled answer within {self.args.timeout:g} s of detection")
        fin = found.get("finished")
        found["detection_to_labelled_s"] = None if fin is None else fin - t_detect
        found["serving_after"] = self.record.models[self.record.chunks[-1][1]] if self.record.chunks else None
        return found  # flow control only: the analysis reads the answer from the daemon's events

    def _new_model(self) -> str | None:
        """The first model other than the one deployed at setup that answered after the shift."""
        t_shift = getattr(self, "t_shift", None)
        for m, t in self.record.first_answer.items():
            if m != self.model_a and t_shift is not None and t >= t_shift:
                return m
        return None

    def _wait_adaptation(self, streamer: Streamer, poller: StatusPoller, shifted: Callable, t_detect: float) -> str:
        """Stream shifted samples until the adaptation ends, the model changes, or the timeout."""
        a = self.args
        deadline = t_detect + a.timeout
        why: list[str] = []

        def done() -> bool:
            if self._new_model() is not None:
                why.append("the serving model changed")
                return True
            snap = poller.latest() or {}
            mix = ((snap.get("drift") or {}).get("class_mix")) or {}
            if mix.get("in_force") and (mix.get("since") or 0) >= t_detect - 5:
                self.t_corrected = float(mix["since"])
                why.append("the class-mix correction is in force")
                return True
            last = (snap.get("adaptation") or {}).get("last")
            if last and (last.get("finished") or 0) >= t_detect:
                if last.get("outcome") == "swapped":
                    return False  # the next answer comes from the new model: wait for it
                why.append(f"adaptation ended: {last.get('outcome')}: {last.get('reason')}")
                return True
            return False

        streamer.run(shifted, "shifted", until=done, seconds=max(0.0, deadline - time.time()))
        if why:
            return why[0]
        snap = poller.latest() or {}
        state = (
            (snap.get("adaptation") or {}).get("state")
            if poller.has_adaptation
            else "no 'adaptation' key in the status"
        )
        return f"no swap within timeout ({a.timeout:g} s after detection; adaptation state: {state})"

    def _run_preference(self, streamer: Streamer, poller: StatusPoller, hogs: list) -> None:
        a, s = self.args, self.setup
        assert s.pref_policy is not None
        self._stream_clean(streamer)
        b = self.out["model_b"]
        serving = self.record.models[self.record.chunks[-1][1]] if self.record.chunks else None
        self.out["serving_at_edit"] = serving
        write_policy(self.state / "policy.toml", s.pref_policy)
        t_save = time.time()
        self.t_shift = t_save
        print(f"preference: policy rewritten with {s.pref_preset}'s budgets and objective; waiting for {b}", flush=True)
        src = self.source(self.stream_pool, "clean")
        streamer.run(src, "shifted", until=lambda: b in self.record.first_answer and self.record.first_answer[b] >= t_save,
                     seconds=a.timeout)  # fmt: skip
        first_b = self.record.first_answer.get(b)
        switched = first_b is not None and first_b >= t_save
        self.out["preference"] = {
            "preset": s.pref_preset,
            "from_subnet": s.subnet,
            "to_subnet": s.pref_subnet,
            "model_from": self.model_a,
            "model_to": b,
            "switched": switched,
            "save_to_new_model_s": first_b - t_save if switched else None,
        }
        if switched:
            streamer.run(src, "post", samples=min(a.post_samples, 500))
        print(f"preference: switched {switched}, {self.out['preference']['save_to_new_model_s']} s", flush=True)

    def _run_cpu(self, streamer: Streamer, poller: StatusPoller, hogs: list) -> None:
        a = self.args
        self._stream_clean(streamer)
        for _ in range(a.cpu_hogs):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        t_start = self.t_shift = time.time()
        print(f"cpu: {len(hogs)} busy loops started (pids {[h.pid for h in hogs]})", flush=True)
        src = self.source(self.stream_pool, "clean")
        seen: list[float] = []

        def detected() -> bool:
            env = [e for e in poller.events_since(t_start, ("drift",)) if "environment" in e["message"]]
            if env and not seen:
                seen.append(time.time())
            return bool(seen) and time.time() - seen[0] >= 10.0

        streamer.run(src, "shifted", until=detected, seconds=a.contention_seconds)
        stop_hogs(hogs)
        t_stop = time.time()
        streamer.run(src, "post", samples=min(a.post_samples, 1000))
        self.out["contention"] = {
            "hogs": a.cpu_hogs,
            "started": t_start,
            "stopped": t_stop,
            "seconds": t_stop - t_start,
        }

    # -- analysis ------------------------------------------------------------------------------
    def _analyse(self) -> None:
        rec, out = self.record, self.out
        episodes = [e for e in out["episodes"] if e["model"] in (None, getattr(self, "model_a", None))]
        t_shift = getattr(self, "t_shift", None)
        shift_at = out.get("shift_at", 0)
        before = [e for e in episodes if t_shift is None or e["at"] < t_shift]
        after = [e for e in episodes if t_shift is not None and e["at"] >= t_shift]
        out["episodes_before_shift"] = len(before)
        per_kind: dict[str, Any] = {}
        for kind in DRIFT_KINDS:
            first = next((e for e in after if e["kind"] == kind), None)
            if first is not None:
                per_kind[kind] = {
                    "at": first["at"],
                    "delay_samples": detection_delay(rec.log, shift_at, first["at"]),
                    "delay_s": first["at"] - t_shift,
                    "monitor_sample": first["monitor_sample"],
                    # data and label monitors count the served samples: their own delay, without the job's lag
                    "monitor_delay_samples": first["monitor_sample"] - shift_at
                    if kind in ("data", "label") and first["monitor_sample"] is not None
                    else None,
                    "statistic": first["statistic"],
                    "threshold": first["threshold"],
                }
        first_any = min(after, key=lambda e: e["at"]) if after else None
        if self.name == "none":
            out["samples"] = rec.answered
            out["false_alarms"] = len(episodes)
            out["false_alarms_by_kind"] = {k: sum(e["kind"] == k for e in episodes) for k in DRIFT_KINDS}
            out["accuracy"] = rec.accuracy("clean")[0]
            return
        if self.name == "cpu":
            ms = rec.request_ms
            out["latency_ms"] = {
                PHASES[p] if p != 1 else "contention": {
                    "client": latency_summary([c for _, q, c, _ in ms if q == p]),
                    "server": latency_summary([s for _, q, _, s in ms if q == p]),
                }
                for p in range(3)
            }  # fmt: skip
            env = per_kind.get("environment")
            out["environment_drift"] = env
            out["detection"] = {"by_kind": per_kind, "first_kind": None if first_any is None else first_any["kind"]}
            out["daemon_did"] = [e for e in out.get("events", []) if t_shift is not None and e["at"] >= t_shift]
            watching = ((out.get("final_status") or {}).get("drift") or {}).get("watching") or {}
            out["environment_monitor"] = {
                "profiled_latency_ms": watching.get("profiled_latency_ms"),
                "limit_ms": ((watching.get("monitor") or {}).get("environment") or {}).get("limit_ms"),
            }
            return
        if self.name == "preference":
            out["detection"] = {"by_kind": per_kind}
            pref = out["preference"]
            deps = [d for d in out.get("history", []) if str(d.get("reason", "")).startswith("preference drift")]
            pref["deployment"] = deps[-1] if deps else None  # the oldest: history is newest first
            pref["save_to_deployment_s"] = None if not deps else deps[-1]["at"] - t_shift
            return
        # shift scenarios
        swap_model = self._new_model()
        corrected_at = getattr(self, "t_corrected", None)  # first answered on the logits
        corrected = corrected_at if swap_model is None else None  # ... and only so
        hist = [d for d in out.get("history", []) if str(d.get("reason", "")).startswith("adaptation:")]
        swap_dep = min(hist, key=lambda d: d["at"]) if hist else None
        t_detect = None if first_any is None else first_any["at"]
        if swap_dep is not None:
            t_swap = swap_dep["at"]
        elif corrected is not None:
            t_swap = corrected
        else:
            t_swap = None if swap_model is None else rec.first_answer[swap_model]
        clean_acc, n_clean = rec.accuracy("clean", self.model_a)
        before_acc, n_before = rec.accuracy("shifted", self.model_a, after=t_shift)
        # the post phase is answered by whatever serves once the answers are in: the label-free
        # model, or the labelled one that replaced it, or the serving model with its logits corrected
        after_acc, n_after = (None, 0) if swap_model is None and corrected is None else rec.accuracy("post")
        first_acc, n_first = (None, 0)
        if swap_model is not None:  # the first answer, on the shifted stream before the labelled one replaced it
            first_acc, n_first = rec.accuracy("shifted", swap_model, after=rec.first_answer[swap_model])
        out["detection"] = {
            "delay_samples": None if first_any is None else detection_delay(rec.log, shift_at, first_any["at"]),
            "delay_s": None if first_any is None else first_any["at"] - t_shift,
            "first_kind": None if first_any is None else first_any["kind"],
            "by_kind": per_kind,
        }
        final_adapt = (out.get("final_status") or {}).get("adaptation")
        adapt_events = [e for e in out.get("events", []) if e["kind"] == "adapt" and e["at"] >= t_shift]
        started = next((e for e in adapt_events if "started" in e["message"]), None)
        out["adaptation"] = {
            "answer": ("class-mix correction" if corrected_at is not None else "")
            + (", then a swap" if corrected_at is not None and swap_model else "swap" if swap_model else "")
            or None,
            "swapped_to": swap_model,
            "swap_deployment": swap_dep,
            "detection_to_swap_s": None if t_swap is None or t_detect is None else t_swap - t_detect,
            "detection_to_first_answer_s": None
            if t_detect is None or (swap_model is None and corrected_at is None)
            else (corrected_at if corrected_at is not None else rec.first_answer[swap_model]) - t_detect,
            "detection_to_start_s": None if started is None or t_detect is None else started["at"] - t_detect,
            "rollbacks_after_swap": [
                d for d in out.get("history", []) if "rollback" in str(d.get("reason", "")) and d["at"] >= (t_swap or 0)
            ]
            if t_swap is not None
            else [],
            "events": adapt_events,
            "status_at_end": final_adapt,
            "outcome": out.get("wait"),
        }
        lost = None if clean_acc is None or before_acc is None else clean_acc - before_acc
        out["accuracy"] = {
            "clean_stream": clean_acc,
            "clean_stream_n": n_clean,
            "shifted_before_swap": before_acc,
            "shifted_before_swap_n": n_before,
            "shifted_after_swap": after_acc,
            "shifted_after_swap_n": n_after,
            "shifted_first_answer": first_acc,
            "shifted_first_answer_n": n_first,
            "lost": lost,
            "recovered_fraction": recovered_fraction(clean_acc, before_acc, after_acc),
        }
        forgetting: dict[str, Any] = {"original_clean_accuracy": self.setup.clean_accuracy}
        # the model the adaptation ends with (the labelled answer's, where it replaced the first),
        # and the first answer's when another replaced it
        final = (out.get("labelled") or {}).get("serving_after") or swap_model
        if final == self.model_a:
            final = swap_model
        for key, model in (("", final), ("first_answer_", swap_model if swap_model != final else None)):
            if model is None:
                continue
            path = self.state / "models" / model / "model.onnx"
            if path.is_file():
                acc = clean_accuracy(path, self.setup.x, self.setup.y)
                forgetting |= {f"{key}model": model, f"{key}new_clean_accuracy": acc,
                               f"{key}clean_drop_pt": 100 * (self.setup.clean_accuracy - acc)}  # fmt: skip
            else:
                forgetting[f"{key}error"] = f"{path} not found"
        if corrected is not None:  # no weight changed; the correction goes when the mix returns (tested)
            forgetting |= {"new_clean_accuracy": self.setup.clean_accuracy, "clean_drop_pt": 0.0,
                           "note": "the model did not change: a logit correction, removed when the mix returns"}  # fmt: skip
        forgetting.setdefault("clean_drop_pt", None)
        out["forgetting"] = forgetting
        if "labelled" in out and t_detect is not None:
            out["labelled"] = labelled_answer(out.get("events", []), t_detect) | {"wait": out["labelled"]}
        if getattr(self, "t_return", None) is not None:
            out["return"] = self._analyse_return()

    def _analyse_return(self) -> dict[str, Any]:
        """The data back to clean after an adaptation: when did the original model serve again,
        and how far is the model serving 500 samples in from the original's clean accuracy?"""
        rec, a = self.record, self.record.arrays()
        keep = a["phase"] == PHASES.index("return")
        models, hits = a["model"][keep], (a["y"][keep] == a["pred"][keep])
        orig = rec.models.index(self.model_a) if self.model_a in rec.models else -1
        back = np.flatnonzero(models == orig)
        at = min(RETURN_WITHIN, len(models) - 1)
        model_at = rec.models[int(models[at])] if len(models) else None
        out: dict[str, Any] = {
            "samples": int(keep.sum()),
            "original_back_after_samples": int(back[0]) if len(back) else None,
            "model_at_500": model_at,
            "stream_accuracy_first_500": float(hits[:RETURN_WITHIN].mean()) if len(hits) else None,
            "stream_accuracy_after_500": float(hits[RETURN_WITHIN:].mean()) if len(hits) > RETURN_WITHIN else None,
            "original_clean_accuracy": self.setup.clean_accuracy,
        }
        if model_at == self.model_a:
            acc = self.setup.clean_accuracy
        elif model_at is not None and (self.state / "models" / model_at / "model.onnx").is_file():
            acc = clean_accuracy(self.state / "models" / model_at / "model.onnx", self.setup.x, self.setup.y)
        else:
            acc = None
        out["clean_accuracy_at_500"] = acc
        out["clean_gap_pt_at_500"] = None if acc is None else 100 * (self.setup.clean_accuracy - acc)
        return out


def relabel(path: Path) -> None:
    """Recompute every shift scenario's labelled answer in a written result from its own
    events (:func:`labelled_answer`), and the targets; the file says it was done."""
    doc = json.loads(path.read_text())
    for r in doc["scenarios"].values():
        det = (r.get("detection") or {}).get("by_kind") or {}
        t_detect = min((k["at"] for k in det.values()), default=None)
        if "labelled" in r and t_detect is not None:
            r["labelled"] = labelled_answer(r.get("events", []), t_detect) | {
                "wait": r["labelled"].get("wait", r["labelled"])
            }
    doc["targets"] = build_targets(doc["scenarios"], labelled=doc["settings"]["feedback_fraction"] > 0)
    doc["relabelled"] = "labelled answers recomputed from the run's own events by `benchmarks/drift.py --relabel`"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown_targets(doc["targets"]))


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    """End the busy loops this benchmark started, by their own pids."""
    for h in hogs:
        if h.poll() is None:
            h.send_signal(signal.SIGTERM)
    for h in hogs:
        try:
            h.wait(5)
        except subprocess.TimeoutExpired:
            h.kill()
            h.wait(5)
    hogs.clear()


# -- report ----------------------------------------------------------------------------------------
def summary_line(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{name}: error: {r['error']}"
    if name == "none":
        return f"none: {r['samples']} clean samples, {r['false_alarms']} drift episodes {r['false_alarms_by_kind']}, accuracy {r['accuracy']}"
    if name == "preference":
        p = r.get("preference") or {}
        return (
            f"preference ({p.get('preset')}'s budgets): switched {p.get('switched')}; policy save to deployment "
            f"{p.get('save_to_deployment_s')} s, to the first answer of the new model {p.get('save_to_new_model_s')} s"
        )
    if name == "cpu":
        env = r.get("environment_drift")
        lat = r.get("latency_ms", {})
        when = "not detected" if not env else f"after {env['delay_s']:.1f} s"
        p95 = [lat.get(k, {}).get("client", {}).get("p95") for k in ("clean", "contention")]
        return f"cpu: environment drift {when}; client p95 {p95[0]} -> {p95[1]} ms"
    d, acc, ad = r["detection"], r["accuracy"], r["adaptation"]
    return (
        f"{name}: detected after {d['delay_samples']} samples ({d['first_kind']}), episodes before shift "
        f"{r['episodes_before_shift']}; accuracy clean {acc['clean_stream']}, shifted {acc['shifted_before_swap']}, "
        f"after swap {acc['shifted_after_swap']}; swap {ad['detection_to_swap_s']} s after detection; "
        f"{ad['outcome']}; labelled {(r.get('labelled') or {}).get('outcome')} "
        f"{(r.get('labelled') or {}).get('detection_to_labelled_s')} s; return gap "
        f"{(r.get('return') or {}).get('clean_gap_pt_at_500')} pt; errors {r['request_errors']}"
    )


def plot(results: dict[str, dict[str, Any]], records: dict[str, Record], path: Path) -> Path | None:
    """One panel per scenario: rolling accuracy of the answers against samples streamed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [n for n in results if n in records and records[n].chunks]
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.4 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        a = records[name].arrays()
        hit = (a["y"] == a["pred"]).astype(float)
        k = min(200, len(hit))
        roll = np.convolve(hit, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(hit) + 1), roll, lw=1)
        r = results[name]
        if "shift_at" in r:
            ax.axvline(r["shift_at"], color="k", ls="--", lw=1, label="shift")
        det = (r.get("detection") or {}).get("delay_samples")
        if det is not None:
            ax.axvline(r["shift_at"] + det, color="r", ls=":", lw=1, label="drift detected")
        for m, t in records[name].first_answer.items():
            if m != r.get("model"):
                ax.axvline(samples_at(records[name].log, t), color="g", lw=1, label=f"model {m[:8]}")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(f"accuracy ({k})")
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    axes[-1, 0].set_xlabel("samples streamed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)} [all]")
    ap.add_argument("--state-dir", type=Path, default=Path("/work/state"), help="source state [/work/state]")
    ap.add_argument("--profile", type=Path, default=None, help="device profile [STATE/profile/device.json]")
    ap.add_argument("--samples", type=int, default=None, help="clean samples of the 'none' run [20000; quick 3000]")
    ap.add_argument("--shift-at", type=int, default=None, help="clean samples before the shift [3000; quick 2500]")
    ap.add_argument("--detect-limit", type=int, default=5000, help="shifted samples streamed waiting for detection")
    ap.add_argument(
        "--post-samples", type=int, default=None, help="held-out shifted samples after a swap [2000; quick 500]"
    )
    ap.add_argument("--feedback-fraction", type=float, default=0.3)
    ap.add_argument(
        "--return-samples", type=int, default=None,
        help="clean held-out samples after the adaptation: does the original come back? [1500; quick 600; 0: skip]",
    )  # fmt: skip
    ap.add_argument("--rate", type=float, default=None, help="samples per second [100; quick 200]")
    ap.add_argument("--batch", type=int, default=8, help="images per predict request (the cpu run sends 1)")
    ap.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for adaptation after detection [420; quick 60]"
    )
    ap.add_argument("--check-interval", type=float, default=2.0, help="the policy's drift.check_interval_s")
    ap.add_argument(
        "--adapt-seconds", type=float, default=240.0,
        help="the policy's adaptation.max_seconds (the label wait and the swap fit in the 300 s target beside it)",
    )  # fmt: skip
    ap.add_argument("--cpu-hogs", type=int, default=os.cpu_count() or 2, help="busy loops of the cpu run [cores]")
    ap.add_argument("--contention-seconds", type=float, default=None, help="longest contention [90; quick 30]")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between status reads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="short runs of the same code (smoke test)")
    ap.add_argument("--no-png", action="store_true")
    ap.add_argument(
        "--relabel", type=Path, default=None, help="recompute the labelled answers of a written result, then exit"
    )
    args = ap.parse_args(argv)
    quick = args.quick
    for key, full, short in (
        ("samples", 20_000, 3000),
        ("shift_at", 3000, 2500),
        ("post_samples", 2000, 500),
        ("return_samples", 1500, 600),
        ("rate", 100.0, 200.0),
        ("timeout", 420.0, 60.0),
        ("contention_seconds", 90.0, 30.0),
    ):
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad:
        ap.error(f"--scenarios: unknown {', '.join(bad)}; expected a comma list of {', '.join(SCENARIOS)}")
    if not 0 <= args.feedback_fraction <= 1:
        ap.error(f"--feedback-fraction {args.feedback_fraction}: expected a fraction in [0, 1]")
    if args.rate <= 0 or args.batch < 1:
        ap.error("--rate must be > 0 and --batch >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.relabel is not None:
        relabel(args.relabel)
        return
    t_start, load_start = time.monotonic(), os.getloadavg()
    policy = benchmark_policy(args)
    if args.shift_at < policy.drift.reference_window:
        sys.exit(f"--shift-at {args.shift_at}: must be >= the policy's drift.reference_window "
                 f"({policy.drift.reference_window}), the samples the drift monitor takes as its reference")  # fmt: skip
    checkpoint = args.state_dir / "supernet" / "supernet.pt"
    front_path = args.state_dir / "front" / "front.json"
    for p in (checkpoint, front_path):
        if not p.is_file():
            sys.exit(f"{p} not found: --state-dir must hold a trained supernet and a cached front (lifelong search)")
    sha = file_sha256(checkpoint)
    front = Front.load(front_path)
    chosen = choose(front, policy)
    if chosen is None:
        sys.exit(f"the cached front {front_path} has no point within policy {policy.name!r}'s budgets")
    model = exported(chosen.subnet, checkpoint, sha)
    test = load_fashion_mnist("test")
    setup = Setup(args, test.x, test.y, policy, model, chosen.subnet, clean_accuracy(model, test.x, test.y))
    print(f"model {chosen.subnet}: clean test accuracy {setup.clean_accuracy:.4f} ({model.name})", flush=True)
    if "preference" in args.scenarios:
        pp, preset, subnet = preference_policy(policy, front, chosen.subnet)
        setup.pref_policy, setup.pref_preset, setup.pref_subnet = pp, preset, subnet
        setup.pref_model = exported(subnet, checkpoint, sha)

    results: dict[str, dict[str, Any]] = {}
    records: dict[str, Record] = {}
    for name in args.scenarios:
        print(f"== {name}", flush=True)
        sc = Scenario(name, setup, SCENARIOS.index(name))
        results[name] = sc.run()
        records[name] = sc.record
        print(summary_line(name, results[name]), flush=True)

    targets = build_targets(results, labelled=args.feedback_fraction > 0)
    name = (
        "drift-quick"
        if args.quick
        else "drift"
        if args.scenarios == list(SCENARIOS)
        else "drift-" + "-".join(args.scenarios)
    ) + ("-nolabels" if args.feedback_fraction == 0 else "")
    png_dir = WORK if args.quick else ROOT / "benchmarks" / "results"  # a smoke test's plot stays out of git
    png = None if args.no_png else plot(results, records, png_dir / f"{name}.png")
    payload = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        } | {"checkpoint_sha256": sha, "held_out": HELD_OUT, "prior_classes": PRIOR_CLASSES, "prior_share": PRIOR_SHARE,
             "shifts": {"noise_sigma": NOISE_SIGMA, "contrast": CONTRAST, "brightness": BRIGHTNESS, "rotation_deg": ROTATION_DEG}},
        "policy": policy_to_toml(policy),
        "preference_policy": None if setup.pref_policy is None else policy_to_toml(setup.pref_policy),
        "model": {"subnet": chosen.subnet, "file": str(model), "clean_accuracy": setup.clean_accuracy},
        "seconds": time.monotonic() - t_start,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "png": None if png is None else str(png.relative_to(ROOT)),
        "scenarios": results,
        "targets": targets,
    }  # fmt: skip
    out = write_results(name, payload)
    print()
    for n, r in results.items():
        print(summary_line(n, r))
    print()
    print(markdown_targets(targets))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

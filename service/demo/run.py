"""``lifelong demo``: the whole lifelong loop on this machine, in a few minutes, shown live.

What a person watching sees, step by step (each printed with its duration):

1. **prepare** (:mod:`service.demo.prepare`): the supernet, the device profile, the accuracy
   predictor and the front, reused from the state directory or made with quick settings;
   the initial policy's choice and the faster point a lower latency budget would choose,
   exported to ONNX behind the parity gate;
2. **serve**: a fresh daemon (``lifelong serve``, a subprocess, never torch) in
   ``STATE/demo/service``, with the demo policy: drift checked every two seconds, a short
   adaptation; the initial choice deployed through the validated hot swap;
3. **stream** Fashion-MNIST test images through :class:`~service.api.client.Client` (predict,
   and the true label fed back for a share of them), one live line a second: samples,
   accuracy on the last 500, the model serving, drift, adaptation;
4. **preference change**: the policy file is rewritten with a lower latency budget; the
   daemon answers from its cached front and swaps to a faster model within a second or two;
5. **shift**: the images change (noise, contrast, brightness or rotation) and the demo waits
   for the daemon to detect it, then for the adaptation (the daemon fine-tunes the supernet
   on the labelled local samples, re-searches, validates and swaps: :mod:`service.workers.adaptation`),
   then measures the model serving on shifted images the adaptation never saw;
6. **relax** the budget again: the daemon answers from its cached front, which after the swap
   is the adapted supernet's (accuracy measured or predicted on the local data); if it chooses
   a subnet never exported from the adapted supernet, the daemon exports it in a worker
   (:mod:`service.workers.front_export`) and swaps to it, and the demo measures it on unseen shifted
   images; if it chooses the adapted model, that serves on;
7. **stop** the daemon (SIGTERM) and write ``STATE/demo/report.md`` and ``report.json``
   (timeline, accuracy before the shift, after it, after adaptation, after the preference
   changes) with the front as ``front.png``.

What does not happen within ``--timeout`` seconds (no drift detected, no adaptation: a
daemon without the adaptation half says so in its status) is said plainly and the demo goes
on. Ctrl-C stops the daemon and writes what was seen so far.

The daemon runs in a state directory of its own, rebuilt for every run, so that a demo never
touches a service's store; the cached artifacts (supernet, profile, predictor, front) are
copied or linked into it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import LifelongError
from service.api.client import Client
from service.demo.candidates import prepare_initial
from service.demo.daemon import DemoDaemon, atomic_write
from service.demo.preference import PreferenceSteps
from service.demo.prepare import (
    ExportedPick,
    StepRunner,
    fast_policy,
    initial_policy,
    policy_text,
    prepare_exports,
    prepare_models,
)
from service.demo.report import Timeline, build_report, format_summary, live_line, status_facts, write_report
from service.demo.stream import SHIFTS, Streamer
from service.demo.waits import AdaptationWaits
from service.errors import DemoError, ServiceError
from service.state.paths import default_front

__all__ = ["DemoSettings", "run_demo"]

Say = Callable[[str], None]

POOL_A = 7000
"""Test images (of 10,000, shuffled) streamed before adaptation; the rest measure after it, unseen by it."""
_SERVICE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY", "RUNTIME_DIRECTORY",
                "CONFIGURATION_DIRECTORY", "LIFELONG_SOCKET", "LIFELONG_POLICY", "LIFELONG_STATE_DIR")  # fmt: skip


@dataclass(frozen=True)
class DemoSettings:
    """What the demo does.

    Attributes:
        state_dir: The demo's state directory: the cache of supernet, profile, predictor and
            front, and ``demo/`` with the report and the daemon's own state.
        samples: Clean samples streamed before the shift (at least the drift reference, 1,000).
        shift: The shift injected, one of :data:`~service.demo.stream.SHIFTS`.
        timeout: Seconds to wait for each of the drift detection and the adaptation.
        train: Train a quick supernet when there is none (else fail).
        rate: Samples a second while streaming (a fifth of it while the adaptation runs, so
            the worker has the CPU).
        label_fraction: Share of the samples whose true label is fed back.
        measure_samples: Samples the model is measured on after adaptation and after the
            preference change.
        finetune_seconds: Each chosen point is fine-tuned alone from its supernet weights for
            this long before its export (``lifelong finetune``): a quick supernet's subnets are
            far from what they reach alone; 0 exports the supernet's weights as they are. With
            fine-tuning, the initial choice is made among a spread of candidates
            (:data:`~service.demo.candidates.CANDIDATE_SHARES`) on their validation accuracy.
        seed: Seeds the image order, the noise and the labelled share.
    """

    state_dir: Path
    samples: int = 3000
    shift: str = "noise"
    timeout: float = 300.0
    train: bool = True
    rate: float = 150.0
    label_fraction: float = 0.5
    measure_samples: int = 1500
    finetune_seconds: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.shift not in SHIFTS:
            problems.append(f"shift={self.shift!r}: expected one of {', '.join(SHIFTS)}")
        if self.samples < 1:
            problems.append(f"samples={self.samples}: expected at least 1")
        if self.timeout < 5:
            problems.append(f"timeout={self.timeout}: expected at least 5 seconds")
        if not 1 <= self.rate <= 5000:
            problems.append(f"rate={self.rate}: expected 1 to 5000 samples a second")
        if not 0 < self.label_fraction <= 1:
            problems.append(f"label_fraction={self.label_fraction}: expected a share in (0, 1]")
        if self.measure_samples < 1:
            problems.append(f"measure_samples={self.measure_samples}: expected at least 1")
        if not 0 <= self.finetune_seconds <= 3600:
            problems.append(f"finetune_seconds={self.finetune_seconds}: expected 0 to 3600 seconds")
        if problems:
            raise ValueError("; ".join(problems))


class _Demo(AdaptationWaits, PreferenceSteps):
    def __init__(self, settings: DemoSettings, say: Say) -> None:
        self.s, self.say = settings, say
        self.state = settings.state_dir
        self.folder = self.state / "demo"
        self.svc = self.folder / "service"
        self.timeline = Timeline(time.time())
        env = {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}
        self.runner = StepRunner(say, self.folder / "logs", self.timeline.started, env)
        self.notes: list[str] = []
        self.milestones: dict[str, Any] = {}
        self.names: dict[str, str] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.daemon = DemoDaemon(self.state, self.svc, self.folder / "logs" / "serve.log", env)
        self.streamer: Streamer | None = None
        self.status_client: Client | None = None
        self.last_status: dict[str, Any] | None = None
        self.adapt_phases: set[str] = set()
        self.deployments: list[dict[str, Any]] = []
        self.front: Any = None
        self.picks: dict[str, ExportedPick] = {}
        self.initial: Any = None
        self.fast: Any = None
        self.ckpt: Path | None = None
        self.adaptation: dict[str, Any] | None = None
        self.cursors: dict[int, int] = {}
        self.last_poll = 0.0

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.say(f"lifelong demo in {self.state} (report and logs in {self.folder})")
        live, outcome = False, "completed"
        try:
            self._prepare()
            live = True
            self._start_service()
            self._scenario()
        except KeyboardInterrupt:
            outcome = "interrupted"
            self.notes.append("interrupted by Ctrl-C; what was seen until then is reported")
            if not live:
                raise
        except LifelongError as exc:  # a step failed, the daemon refused a model or went away
            outcome = f"failed: {exc}"
            if not live:
                raise
        finally:
            if live:
                self._stop_service()
        doc = self._report(outcome)
        if outcome == "interrupted":
            raise KeyboardInterrupt
        if outcome.startswith("failed"):
            raise DemoError(f"{outcome.removeprefix('failed: ')} (report: {self.folder / 'report.md'})")
        return doc

    def _prepare(self) -> None:
        from lifelong.search.front import Front

        initial = initial_policy()
        policy_file = self.folder / "policy-initial.toml"
        atomic_write(policy_file, policy_text(initial, "lifelong demo: the policy the daemon starts with"))
        ckpt = prepare_models(self.runner, self.state, policy_file, train=self.s.train)
        self.front = Front.load(default_front(self.state))
        batch, tune = initial.target.batch, self.s.finetune_seconds
        first, picks, note = prepare_initial(self.runner, self.state, ckpt, self.front, initial, finetune_seconds=tune)
        if note:
            self.notes.append(note)
        fast = fast_policy(self.front, initial, first)
        points = {} if picks else {"initial": first}
        if fast is None:
            self.notes.append(
                "no point of the front is faster than the initial choice: the preference change is skipped"
            )
        else:
            points["fast"] = fast[1]
        picks.update(prepare_exports(self.runner, self.state, ckpt, points, batch, finetune_seconds=tune))
        self.picks = picks
        self.initial, self.fast = initial, None if fast is None else fast[0]
        self.ckpt = ckpt
        for pick in self.picks.values():
            self.names[pick.model_id] = pick.role
            self.models[pick.model_id] = pick.to_dict()

    # -- the daemon ------------------------------------------------------------------------------
    def _start_service(self) -> None:
        with self.runner.step("start the daemon: `lifelong serve` in a fresh state directory") as note:
            assert self.ckpt is not None
            policy = policy_text(self.initial, "lifelong demo: the policy the daemon starts with")
            # the fast choice goes into the registry, so the preference change finds it exported
            register = [
                (p.onnx, {"source": f"demo export ({p.role} policy)", "accuracy": p.test_accuracy})
                for p in self.picks.values()
                if p.role == "fast"
            ]
            self.daemon.prepare(self.ckpt, policy, register)
            self.last_status = self.daemon.start()
            self.status_client = Client(self.daemon.socket, timeout=20)
            pid = (self.last_status.get("daemon") or {}).get("pid")
            note.detail = f"pid {pid}, socket {self.daemon.socket}, policy {self.daemon.policy}"
            self.timeline.note("start", f"daemon started (pid {pid}) in {self.svc}")

    def _stop_service(self) -> None:
        if self.status_client is not None:
            with contextlib.suppress(ServiceError):
                self.deployments = list(self.status_client.history(50).get("deployments") or [])
        code, seconds, killed = self.daemon.stop()
        if killed:
            self.notes.append("the daemon did not stop within 30 s of SIGTERM and was killed")
        self.timeline.note("stop", f"daemon stopped (SIGTERM): exit code {code} in {seconds:.1f} s")
        self.say(f"daemon stopped: exit code {code} ({seconds:.1f} s after SIGTERM)")
        for client in (self.status_client, None if self.streamer is None else self.streamer.client):
            if client is not None:
                client.close()

    # -- streaming -------------------------------------------------------------------------------
    def _poll(self, phase: str) -> dict[str, Any]:
        """Read the status, show new daemon events and one live line; the status facts."""
        assert self.status_client is not None and self.streamer is not None
        self.daemon.check()
        try:
            status: dict[str, Any] | None = self.status_client.status()
        except ServiceError:
            status = None
        if status is not None:
            self.last_status = status
            for e in self.timeline.merge_events(status.get("events")):
                self._learn_name(e)
                self.say(f"  >> {e['t']:7.1f} s  {e['kind']}: {e['message']}")
            adapt = status.get("adaptation") or {}
            phase_now = adapt.get("phase")
            if adapt.get("state") == "running" and phase_now and phase_now not in self.adapt_phases:
                self.adapt_phases.add(phase_now)
                self.timeline.note("adapt-phase", f"adaptation phase: {phase_now}", source="status")
        self.last_poll = time.monotonic()
        t = time.time() - self.timeline.started
        self.say("  " + live_line(t, phase, self.streamer.sent, self.streamer.window_accuracy, status, self.names))
        return status_facts(status) | {"ok": status is not None}

    def _learn_name(self, event: dict[str, Any]) -> None:
        if event["kind"] != "deploy":
            return
        model_id = event["message"].split(" ", 1)[0]
        if model_id in self.names:
            return
        if "adaptation:" in event["message"]:
            self.names[model_id] = "adapted"
        elif "exported by the service" in event["message"]:
            self.names[model_id] = "re-exported"
        elif "preference" in event["message"]:
            self.names[model_id] = "preferred"

    def _stream(
        self,
        phase: str,
        pool: np.ndarray,
        *,
        until: Callable[[dict[str, Any]], bool] | None = None,
        min_samples: int = 0,
        timeout: float,
        rate: float | None = None,
        shift: str | None = None,
        expect: set[str] | None = None,
    ) -> bool:
        """Send batches from ``pool`` at ``rate`` until ``until(status facts)`` holds and
        ``min_samples`` were sent; a live line every second. False if ``timeout`` came first."""
        assert self.streamer is not None
        rate = rate or self.s.rate
        batch = max(1, round(self.s.rate / 10))  # one batch size throughout: the live latency stays comparable
        t0 = time.monotonic()
        next_send, next_poll = t0, max(t0, self.last_poll + 1.0)
        sent0 = self.streamer.sent
        while True:
            now = time.monotonic()
            if now >= next_poll:
                facts = self._poll(phase)
                next_poll = now + 1.0
                if self.streamer.sent - sent0 >= min_samples and (until is None or until(facts)):
                    return True
                if now - t0 > timeout:
                    return False
            if now >= next_send:
                cursor = self.cursors.get(id(pool), 0)
                index = pool[np.arange(cursor, cursor + batch) % len(pool)]
                self.cursors[id(pool)] = (cursor + batch) % len(pool)
                try:
                    self.streamer.send(index, phase, shift, expect=expect)
                except ServiceError as exc:
                    self.daemon.check()
                    self.say(f"  request failed: {exc}")
                next_send = max(next_send + batch / rate, now - 1.0)  # fell behind: no burst to catch up
            else:
                time.sleep(max(0.0, min(next_send, next_poll) - now))

    # -- the scenario ----------------------------------------------------------------------------
    def _scenario(self) -> None:
        from lifelong.data.datasets import load_fashion_mnist

        s, run = self.s, self.runner
        test = load_fashion_mnist("test")
        order = np.random.default_rng(s.seed).permutation(len(test))
        pool_a, pool_b = order[:POOL_A], order[POOL_A:]
        assert test.y is not None
        self.streamer = Streamer(
            Client(self.daemon.socket, timeout=150), test.x, test.y, label_fraction=s.label_fraction, seed=s.seed
        )
        initial = self.picks["initial"]
        with run.step("deploy the initial policy's choice (loaded, validated, warmed up, swapped in)") as note:
            result = self.streamer.client.deploy(
                data=initial.onnx.read_bytes(), name=initial.onnx.name, reason="demo: the initial policy's choice"
            )
            took = result.get("load_ms")
            note.detail = f"{initial.model_id} ({initial.subnet}) serves" + (f"; {took:.0f} ms to load" if took else "")

        pct = f"{100 * s.label_fraction:.0f}%"
        with run.step(
            f"stream clean test images: {s.samples} at {s.rate:.0f}/s, true label fed back for {pct}"
        ) as note:
            ok = self._stream(
                "clean", pool_a, until=lambda f: f["reference_done"], min_samples=s.samples,
                timeout=s.samples / s.rate * 4 + 60,
            )  # fmt: skip
            acc = self.streamer.tallies["clean"].accuracy
            note.detail = f"accuracy {100 * (acc or 0):.1f}% on {self.streamer.tallies['clean'].n} samples"
            if not ok:
                note.outcome = "timed out"
                self.notes.append("the drift reference was not complete when the shift began")

        self._preference(pool_b, None)  # before the shift: its model is then the one adapted

        shift_at = time.time()
        sent_at_shift = self.streamer.sent
        self.timeline.note("shift", f"the images change: {s.shift} (from sample {sent_at_shift})")
        self.milestones["shift_t"] = round(shift_at - self.timeline.started, 1)
        with run.step(f"inject a {s.shift} shift and wait for the drift detection (at most {s.timeout:.0f} s)") as note:

            def detected(f: dict[str, Any]) -> bool:
                return bool(f["drifting"]) or self.timeline.first("drift", after=shift_at, source="daemon") is not None

            found = self._stream("shifted", pool_a, until=detected, timeout=s.timeout, shift=s.shift)
            first = self.timeline.first("drift", after=shift_at, source="daemon")
            if found:
                at = first["at"] if first else time.time()
                delay, samples = at - shift_at, self.streamer.sent - sent_at_shift
                self.milestones["drift_detected_t"] = round(at - self.timeline.started, 1)
                self.milestones["detection_delay_s"] = round(delay, 1)
                self.milestones["detection_samples_at_most"] = samples
                note.detail = f"{delay:.1f} s (at most {samples} samples) after the shift" + (
                    f": {first['message']}" if first else ""
                )
            else:
                note.outcome = "timed out"
                note.detail = f"no drift detected within {s.timeout:.0f} s"
                self.notes.append(f"no drift detected within {s.timeout:.0f} s of the {s.shift} shift")

        swapped = False
        if found:
            swapped = self._wait_adaptation(pool_a, shift_at)
        if (self.adaptation or {}).get("mode") == "bn":
            if swapped:
                with run.step(
                    f"measure the label-free answer on {s.measure_samples} shifted images it never saw"
                ) as note:
                    self._stream("label-free", pool_b, min_samples=s.measure_samples, timeout=s.timeout, shift=s.shift)
                    note.detail = f"accuracy {100 * (self.streamer.tallies['label-free'].accuracy or 0):.1f}%"
            # kept or swapped, the labelled adaptation stays pending: its answer is the demo's next step
            labelled = self._wait_labelled(pool_a, float(self.adaptation.get("finished") or time.time()))
            swapped = swapped or labelled
        if swapped:
            with run.step(f"measure the adapted model on {s.measure_samples} shifted images it never saw") as note:
                self._stream("adapted", pool_b, min_samples=s.measure_samples, timeout=s.timeout, shift=s.shift)
                note.detail = f"accuracy {100 * (self.streamer.tallies['adapted'].accuracy or 0):.1f}%"
            self._relax(pool_b)

    # -- the report ------------------------------------------------------------------------------
    def _report(self, outcome: str) -> dict[str, Any]:
        from lifelong.search.front import Front, plot_front

        png = None
        if self.front is not None and "initial" in self.picks:
            png = self.folder / "front.png"
            marks = {
                f"{p.role} policy's choice ({100 * (p.test_accuracy or 0):.1f}% measured)": (
                    p.latency_ms,
                    p.test_accuracy or 0.0,
                )
                for p in self.picks.values()
            }
            with contextlib.suppress(Exception):  # a report without its plot beats no report
                plot_front(self.front, png, batch=1, chosen=self.picks["initial"].subnet, baselines=marks,
                           title=f"the front: {len(self.front)} points (circled: the initial choice)")  # fmt: skip
            refreshed = default_front(self.svc)
            if refreshed.exists() and refreshed.read_bytes() != default_front(self.state).read_bytes():
                with contextlib.suppress(Exception):
                    plot_front(Front.load(refreshed), self.folder / "front-after-adaptation.png", batch=1)
                    self.notes.append("the daemon refreshed its front: front-after-adaptation.png")
        for e in self.timeline.entries:  # what the daemon undid or refused is worth saying in words
            if e["source"] == "daemon" and e["kind"] in ("auto-rollback", "deploy-refused", "policy-rejected", "error"):
                self.notes.append(f"{e['kind']} at {e['t']:.1f} s: {e['message']}")
        tallies = {} if self.streamer is None else {k: v.to_dict() for k, v in self.streamer.tallies.items()}
        for row in tallies.values():
            row["by_model"] = {self.names.get(m, m): v for m, v in row["by_model"].items()}
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.s).items()}
        doc = build_report(
            timeline=self.timeline,
            steps=self.runner.steps,
            tallies=tallies,
            models=self.models,
            settings=settings,
            outcome=outcome,
            notes=self.notes,
            milestones=self.milestones,
            adaptation=self.adaptation,
            deployments=self.deployments,
            png=None if png is None or not png.exists() else str(png),
        )
        js, md = write_report(doc, self.folder)
        self.say("")
        for line in format_summary(doc):
            self.say(line)
        self.say(f"report: {md} (and {js.name}" + (", front.png)" if doc.get("front_png") else ")"))
        return doc


def run_demo(settings: DemoSettings, say: Say) -> dict[str, Any]:
    """Run the demo; returns the report (``STATE/demo/report.json``'s content).

    Args:
        settings: What to do.
        say: Prints one line for the person watching (the CLI passes ``click.echo``).

    Raises:
        DemoError: It cannot start (no supernet with ``train`` off, a daemon of an earlier
            demo still running) or a step failed (the report is written when the daemon ran).
        KeyboardInterrupt: Ctrl-C; the daemon was stopped and the report written.
    """
    return _Demo(settings, say).run()

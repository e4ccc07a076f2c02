"""The demo's preparation: what the gateway needs before it serves, made quickly or reused.

Each step runs the ``lifelong`` command a person would run (``python -m service.cli.main ...`` in
a subprocess: torch is imported there, never in the demo's own process), with settings cut
for a demo, and is skipped when its result is already in the state directory:

==========  ==========================================  ==========================================
step        reused when                                 else runs
==========  ==========================================  ==========================================
supernet    ``STATE/supernet/supernet.pt`` is complete  ``train --preset quick`` (resumes)
profile     ``profile --check`` says it fits            ``profile --fit-subnets 16 --check-subnets 8``
predictor   ``STATE/predictor/predictor.npz`` exists    ``predictor collect --fp 30 --quant 50
                                                        --corner 24 --val 1500``, then ``build``
front       ``STATE/front/front.json`` exists           ``search --policy`` the demo's policy
exports     ``STATE/exports/SUBNET.onnx`` of this       ``export SUBNET --parity-images 2000``
            checkpoint, with its ``.json`` report
==========  ==========================================  ==========================================

The demo's two policies are made here: the ``initial`` one (the ``balanced`` preset with a
drift check every few seconds and a short adaptation) and the ``fast`` one the preference
change writes later, whose latency budget is set from the front so that it picks a faster
point than the initial policy does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lifelong.persist.digest import file_sha256
from service.demo.report import Step
from service.errors import DemoError
from service.state.paths import default_checkpoint, default_front, default_predictor, default_profile

if TYPE_CHECKING:
    from lifelong.search.front import Front, FrontPoint
    from policies import Policy

__all__ = [
    "DEMO_PREDICTOR",
    "ExportedPick",
    "StepRunner",
    "fast_policy",
    "initial_policy",
    "policy_text",
    "prepare_exports",
    "prepare_models",
]

Say = Callable[[str], None]

DEMO_PREDICTOR = {"fp": 30, "quant": 50, "corner": 24, "val": 1500, "calib": 400, "holdout": 15}
"""A quick accuracy predictor: 80 evaluated subnets instead of 700, each on fewer images, and
the 24 corners (the largest and smallest subnet of every block kind and precision; about
12 s). A quick supernet trains its corners best (largest W8A8 82%, its chosen middle subnets
about 60%); measured, the corners keep their top-1 in the search, so the demo's policy
chooses the largest W8A8 (82%) where, without them, it chose a 58% subnet."""
DEMO_PROFILE = {"fit": 16, "check": 8}
"""Subnets the latency model is fitted and checked on (the full profile: 60 and 50)."""
PARITY_IMAGES = 2000
"""Test images an export's parity gate runs on (the full gate: 10,000)."""

# What the demo changes in the 'balanced' preset, by section: drift is checked every two
# seconds over a 500-sample window against a 1,000-sample reference, so a shift shows
# within seconds; adaptation is short; a live latency only flags environment drift at 2x
# the profile (the demo shares its machine, and environment drift is not its subject).
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "drift": {"check_interval_s": 2.0, "window": 500, "reference_window": 1000, "latency_factor": 2.0},
    "adaptation": {"max_seconds": 240.0, "finetune_steps": 100, "min_samples": 300},
}


# -- running steps -------------------------------------------------------------------------------
@dataclass
class StepNote:
    """What a step says about itself when it ends (set inside the ``with``)."""

    outcome: str = "done"
    detail: str = ""


@dataclass
class StepRunner:
    """Runs the demo's steps: numbered, timed, printed, logged.

    Args:
        say: Prints one line for the person watching.
        logs: Folder of the steps' logs (one file per step).
        started: Wall-clock time the demo started (steps keep seconds since).
        env: Environment of the subprocesses.
    """

    say: Say
    logs: Path
    started: float
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    steps: list[Step] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepNote]:
        """Time a step; a failure or Ctrl-C is recorded as the step's outcome, then re-raised."""
        note, t0 = StepNote(), time.time()
        self.say(f"[{len(self.steps) + 1}] {name}")
        try:
            yield note
        except KeyboardInterrupt:
            note.outcome, note.detail = "interrupted", note.detail or "Ctrl-C"
            raise
        except BaseException as exc:
            note.outcome, note.detail = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            seconds = time.time() - t0
            self.steps.append(Step(name, round(t0 - self.started, 1), round(seconds, 1), note.outcome, note.detail))
            self.say(f"    {note.outcome} in {seconds:.1f} s" + (f": {note.detail}" if note.detail else ""))

    def cli(self, args: list[str], log_name: str, *, echo: bool = True) -> str:
        """Run ``lifelong ARGS`` (this interpreter, ``-m service.cli.main``); returns its stdout.

        Its stderr (progress) is shown indented as it comes, and so is its stdout when
        ``echo``; both go to ``LOGS/log_name.log``.

        Raises:
            DemoError: The command failed (its last error line and the log are named).
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{log_name}.log"
        cmd = [sys.executable, "-m", "service.cli.main", *args]
        out: list[str] = []
        err_tail: list[str] = []
        with open(log_path, "a") as log:
            log.write(f"$ lifelong {' '.join(args)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=self.env
            )
            assert proc.stdout is not None and proc.stderr is not None
            lock = threading.Lock()

            def pump(stream: IO[str], keep: list[str], show: bool) -> None:
                for line in stream:
                    line = line.rstrip("\n")
                    with lock:
                        keep.append(line)
                        log.write(line + "\n")
                        log.flush()
                    if show and line.strip():
                        self.say(f"    | {line}")

            reader = threading.Thread(target=pump, args=(proc.stderr, err_tail, True), daemon=True)
            reader.start()
            try:
                pump(proc.stdout, out, echo)
                rc = proc.wait()
            except KeyboardInterrupt:  # the child had the Ctrl-C too: let it stop (it saves what it did)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise
            reader.join(5)
        if rc != 0:
            last = next((line for line in reversed(err_tail) if line.strip()), f"exit code {rc}")
            raise DemoError(f"`lifelong {' '.join(args)}` failed: {last.strip()} (log: {log_path})")
        return "\n".join(out)


# -- policies ------------------------------------------------------------------------------------
def _with(policy: Policy, name: str, changes: dict[str, dict[str, Any]]) -> Policy:
    from policies import parse_policy, policy_to_dict

    doc = policy_to_dict(policy)
    doc["name"] = name
    for section, values in changes.items():
        table = doc.setdefault(section, {})
        table.update({k: v for k, v in values.items() if k in table or section == "budgets"})
    return parse_policy(doc, f"<demo policy {name!r}>")


def initial_policy() -> Policy:
    """The policy the demo's daemon starts with: 'balanced', with the drift and adaptation of :data:`DEMO_OVERRIDES`.

    A key the installed schema does not have is left out, so the demo follows the schema.
    """
    from policies import load_preset

    return _with(load_preset("balanced"), "demo", DEMO_OVERRIDES)


def fast_policy(front: Front, initial: Policy, first: FrontPoint | None = None) -> tuple[Policy, FrontPoint] | None:
    """The preference change: ``initial`` with a latency budget that makes the front choose a faster point.

    The budget is the latency of the median point among those faster than the initial
    choice (``first``, by default the front's choice under ``initial``; rounded up to the
    microsecond, so that point qualifies), else of the fastest.

    Returns:
        The policy and the point it chooses; None when no point is faster than the initial choice.
    """
    from lifelong.search.front import choose

    batch = initial.target.batch
    first = choose(front, initial) if first is None else first
    if first is None:
        return None
    l0 = first.latency_at(batch)
    faster = sorted(p.latency_at(batch) for p in front.points if p.latency_at(batch) < l0)
    for q in (0.5, 0.0):
        if not faster:
            break
        budget = math.ceil(faster[int(q * (len(faster) - 1))] * 1000) / 1000
        policy = _with(initial, "demo-fast", {"budgets": {"latency_ms_p95": budget}})
        pick = choose(front, policy)
        if pick is not None and pick.subnet != first.subnet:
            return policy, pick
    return None


def policy_text(policy: Policy, header: str) -> str:
    """The policy as a TOML file with ``header`` as comment lines on top; checked to read back equal."""
    from policies import parse_policy_text, policy_to_toml

    text = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines()) + "\n" + policy_to_toml(policy)
    if parse_policy_text(text, "<demo policy>") != policy:
        raise AssertionError("the demo policy does not read back equal")
    return text


# -- models --------------------------------------------------------------------------------------
def _checkpoint_complete(runner: StepRunner, ckpt: Path) -> bool:
    """Whether ``ckpt`` holds a finished training (asked in a subprocess: reading it needs torch)."""
    code = "import sys; from lifelong.nn.checkpoint import load_checkpoint; sys.exit(0 if load_checkpoint(sys.argv[1]).complete else 3)"
    done = subprocess.run(
        [sys.executable, "-c", code, str(ckpt)], env=runner.env, capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 3):
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise DemoError(f"the supernet checkpoint {ckpt} cannot be read: {last}")
    return done.returncode == 0


def prepare_models(runner: StepRunner, state: Path, policy_file: Path, *, train: bool) -> Path:
    """Supernet, device profile, accuracy predictor and front in ``state``: reused, or made quickly.

    Args:
        runner: Runs and records the steps.
        state: The demo's state directory (the cache).
        policy_file: The demo's initial policy, searched for when there is no front yet.
        train: Train the quick supernet when there is none (else fail).

    Returns:
        The supernet checkpoint.

    Raises:
        DemoError: No checkpoint and ``train`` is off, or a step failed.
    """
    sd = ["--state-dir", str(state)]
    ckpt = default_checkpoint(state)
    with runner.step("supernet: the weight-sharing network every model is cut from") as note:
        if ckpt.exists() and _checkpoint_complete(runner, ckpt):
            note.outcome, note.detail = "reused", f"{ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB)"
        elif not train:
            what = "is unfinished" if ckpt.exists() else "does not exist"
            raise DemoError(
                f"the supernet checkpoint {ckpt} {what} and --no-train was given: run without --no-train "
                f"(`lifelong train --preset quick --state-dir {state}` takes a few minutes) or copy a trained "
                "supernet.pt there"
            )
        else:
            runner.cli(["train", "--preset", "quick", "--no-eval", *sd], "train")
            note.detail = f"quick preset (3 epochs on 7,000 images) -> {ckpt}"

    prof = default_profile(state)
    with runner.step("profile: this device's latency of every block choice") as note:
        fits = False
        if prof.exists():
            try:
                runner.cli(["profile", "--check", *sd], "profile", echo=False)
                fits = True
            except DemoError:
                fits = False
        if fits:
            note.outcome, note.detail = "reused", f"{prof} fits this device"
        else:
            p = DEMO_PROFILE
            runner.cli(["profile", "--fit-subnets", str(p["fit"]), "--check-subnets", str(p["check"]), *sd], "profile")
            note.detail = f"{prof} (latency model on {p['fit']} + {p['check']} subnets)"

    pred = default_predictor(state)
    with runner.step("accuracy predictor: top-1 of any subnet without evaluating it") as note:
        if pred.exists():
            note.outcome, note.detail = "reused", str(pred)
        else:
            d = DEMO_PREDICTOR
            args = [
                "--fp",
                str(d["fp"]),
                "--quant",
                str(d["quant"]),
                "--corner",
                str(d["corner"]),
                "--val",
                str(d["val"]),
            ]
            runner.cli(["predictor", "collect", *args, "--calib", str(d["calib"]), *sd], "predictor")
            runner.cli(["predictor", "build", "--holdout", str(d["holdout"]), *sd], "predictor")
            note.detail = (
                f"{pred} from {d['fp']} + {d['quant']} evaluated subnets and {d['corner']} corners "
                "(the full one: 300 + 400 + 60)"
            )

    front = default_front(state)
    with runner.step("search: the Pareto front of accuracy vs latency and size (NSGA-II)") as note:
        if front.exists():
            note.outcome, note.detail = "reused", str(front)
        else:
            runner.cli(["search", "--policy", str(policy_file), *sd], "search")
            note.detail = str(front)
    return ckpt


@dataclass(frozen=True)
class ExportedPick:
    """A point of the front exported to ONNX, as the demo deploys it.

    Attributes:
        role: ``initial`` or ``fast`` (which policy chose it), or ``candidate N``.
        subnet: Its canonical name.
        onnx: The model file.
        model_id: Its id in the daemon's registry (``sha256[:16]`` of the file).
        test_accuracy: Top-1 of the ONNX model on the parity images (Fashion-MNIST test).
        val_accuracy: Top-1 on the validation split after fine-tuning (None without).
        latency_ms: The front's latency at batch 1 (measured if the front has it, else predicted).
        bytes: The model file's size.
    """

    role: str
    subnet: str
    onnx: Path
    model_id: str
    test_accuracy: float | None
    latency_ms: float
    bytes: int
    val_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.role,
            "subnet": self.subnet,
            "onnx": str(self.onnx),
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "latency_ms": self.latency_ms,
            "bytes": self.bytes,
        }


def prepare_exports(
    runner: StepRunner,
    state: Path,
    ckpt: Path,
    points: dict[str, FrontPoint],
    batch: int,
    *,
    finetune_seconds: float = 0.0,
) -> dict[str, ExportedPick]:
    """Export each chosen point behind the parity gate, or reuse an export of the same
    checkpoint (and the same fine-tuning).

    Args:
        runner: Runs and records the steps.
        state: The demo's state directory.
        ckpt: The supernet the points are cut from.
        points: Role (``initial``, ``fast``) -> the point its policy chose.
        batch: The batch size latencies are shown at.
        finetune_seconds: Fine-tune each point alone this long first (``lifelong finetune``); 0: not.
    """
    sha = file_sha256(ckpt)
    out: dict[str, ExportedPick] = {}
    tuned = f", fine-tuned alone for {finetune_seconds:g} s" if finetune_seconds > 0 else ""
    for role, point in points.items():
        onnx = state / "exports" / f"{point.subnet}{'.ft' if finetune_seconds > 0 else ''}.onnx"
        sidecar = onnx.with_suffix(".json")
        what = role if role.startswith("candidate") else f"the {role} policy's choice"
        with runner.step(f"export {what} to ONNX{tuned} (parity gate on {PARITY_IMAGES} images)") as note:
            report = None
            if onnx.exists() and sidecar.exists():
                with contextlib.suppress(OSError, ValueError):
                    doc = json.loads(sidecar.read_text())
                    if doc.get("checkpoint_sha256") == sha and doc.get("finetune_seconds", 0) == finetune_seconds:
                        report = doc
            if report is not None:
                note.outcome = "reused"
            else:
                args = ["--out", str(onnx), "--parity-images", str(PARITY_IMAGES), "--json"]
                if finetune_seconds > 0:
                    args = ["finetune", point.subnet, "--seconds", str(finetune_seconds), *args]
                else:
                    args = ["export", point.subnet, *args]
                cmd = "finetune" if finetune_seconds > 0 else "export"
                report = json.loads(
                    runner.cli([*args, "--state-dir", str(state), "--checkpoint", str(ckpt)], cmd, echo=False)
                )
                report["checkpoint_sha256"], report["finetune_seconds"] = sha, finetune_seconds
                sidecar.write_text(json.dumps(report, indent=2) + "\n")
            data = onnx.read_bytes()
            parity = report.get("parity") or {}
            pick = ExportedPick(
                role=role,
                subnet=point.subnet,
                onnx=onnx,
                model_id=hashlib.sha256(data).hexdigest()[:16],
                test_accuracy=parity.get("onnx_top1"),
                latency_ms=point.latency_at(batch),
                bytes=len(data),
                val_accuracy=(report.get("finetune") or {}).get("val_top1_after"),
            )
            form = "integer kernels" if report.get("requantized") else "exact form"
            val = "" if pick.val_accuracy is None else f" (validation {100 * pick.val_accuracy:.2f}%)"
            note.detail = (
                f"{pick.model_id}: {point.subnet}, top-1 {100 * (pick.test_accuracy or 0):.2f}%{val}, "
                f"{pick.latency_ms:.3f} ms, {pick.bytes / 1e3:.0f} kB ({form})"
            )
            out[role] = pick
    return out

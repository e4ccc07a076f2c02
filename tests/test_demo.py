"""``lifelong demo``'s parts that run in seconds: the shifts, the policies, the live line, the report, its errors.

The full demo (train, profile, search, a daemon, adaptation) takes minutes and is not run here.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from daemon_harness import remove, short_dir
from tiny_models import write_classifier

from lifelong.search.front import Front, FrontPoint, choose
from policies import load_preset, parse_policy_text
from service.api.client import Client
from service.cli.main import cli
from service.demo.candidates import measured_choice, spread_candidates
from service.demo.daemon import DemoDaemon
from service.demo.prepare import (
    StepRunner,
    fast_policy,
    initial_policy,
    policy_text,
)
from service.demo.report import (
    Step,
    Timeline,
    build_report,
    format_report,
    format_summary,
    live_line,
    status_facts,
    write_report,
)
from service.demo.run import DemoSettings
from service.demo.stream import SHIFTS, PhaseTally, Streamer, shift_images
from service.errors import DemoError

SUBNETS = [
    "c16.k3w8a8.s_c32.k3w8a8.s_hg.ow8a8",
    "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8",
    "c48.k5w8a8.k3w8a8.p_c96.k3w8a8.k3w8a8.p_c128.k3w8a8.p_hf.d256w8a8.ow8a8",
]


# -- shifts --------------------------------------------------------------------------------------
def _images(n: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 6:22, 10:18] = rng.integers(120, 255, (n, 16, 8))  # a bright bar off-centre, as a garment
    return x


@pytest.mark.parametrize("name", SHIFTS)
def test_every_shift_keeps_uint8_images_and_changes_them(name: str) -> None:
    x = _images()
    y = shift_images(name, x, np.random.default_rng(1))
    assert y.dtype == np.uint8 and y.shape == x.shape
    assert np.abs(y.astype(int) - x.astype(int)).mean() > 5, f"{name} hardly changes the images"


def test_the_shifts_do_what_their_names_say() -> None:
    x, rng = _images(), np.random.default_rng(1)
    contrast = shift_images("contrast", x, rng)
    assert contrast.std() < 0.95 * x.std() and contrast.min() > 0 and contrast.max() < x.max()
    bright = shift_images("brightness", x, rng)
    assert bright.min() >= 12 and bright.mean() > x.mean() + 10  # the black background is lifted
    rotated = shift_images("rotation", x, rng)
    assert rotated[:, :, :8].sum() > 0 and x[:, :, :8].sum() == 0  # the bar swings into the empty left columns
    a = shift_images("noise", x, np.random.default_rng(3))
    b = shift_images("noise", x, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, shift_images("noise", x, np.random.default_rng(4)))


def test_a_bad_shift_or_bad_images_are_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="unknown shift 'fog'; expected one of noise, contrast"):
        shift_images("fog", _images(), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expected uint8 images \(N, H, W\), got float64"):
        shift_images("noise", _images().astype(float), np.random.default_rng(0))


def test_phase_tally_counts_by_model_and_summarises_latency() -> None:
    t = PhaseTally()
    t.add("aaaa", 10, 9, 0.5)
    t.add("bbbb", 10, 5, 1.5)
    t.add("bbbb", 10, 6, float("nan"))
    d = t.to_dict()
    assert d["samples"] == 30 and d["accuracy"] == pytest.approx(20 / 30)
    assert d["by_model"] == {"aaaa": {"samples": 10, "accuracy": 0.9}, "bbbb": {"samples": 20, "accuracy": 0.55}}
    assert d["request_latency_ms"]["requests"] == 2 and d["request_latency_ms"]["p50"] == pytest.approx(1.0)
    assert PhaseTally().to_dict()["accuracy"] is None


def test_the_demo_daemon_serves_a_fresh_state_refuses_a_second_start_and_the_streamer_scores_it(tmp_path: Path) -> None:
    run = short_dir("lldemo")
    try:
        cache = run / "cache"
        (cache / "front").mkdir(parents=True)
        (cache / "front" / "front.json").write_text("{}")  # seeded as is (the daemon reads it only when asked)
        ckpt = cache / "supernet.pt"
        ckpt.write_bytes(b"not read: the daemon only links it")
        favoured = write_classifier(tmp_path / "three.onnx", favour_class=3, seed=3)  # answers class 3, always
        spare = write_classifier(tmp_path / "seven.onnx", favour_class=7, seed=7)
        daemon = DemoDaemon(cache, run / "svc", run / "serve.log", dict(os.environ))
        # one-class models answer 10% of the task: the task check's floor is off for them
        policy = initial_policy()
        policy = replace(policy, swap=replace(policy.swap, min_task_accuracy=0.0))
        daemon.prepare(ckpt, policy_text(policy, "test"), [(spare, {"source": "demo export (fast policy)"})])
        assert (run / "svc" / "supernet" / "supernet.pt").resolve() == ckpt.resolve()
        assert (run / "svc" / "front" / "front.json").read_text() == "{}"
        status = daemon.start()
        try:
            assert status["policy"]["name"] == "demo" and status["daemon"]["pid"] == daemon.proc.pid
            with pytest.raises(DemoError, match=r"a daemon of an earlier demo still serves at .* \(pid \d+\): stop it"):
                DemoDaemon(cache, run / "svc", run / "other.log", dict(os.environ)).prepare(ckpt, "")
            with Client(daemon.socket, timeout=30) as client:
                model_id = client.deploy(data=favoured.read_bytes(), name="three.onnx")["model_id"]
                assert len(list((run / "svc" / "models").glob("*/model.onnx"))) == 2  # the spare is registered too
                labels = np.array([3, 1] * 20)
                streamer = Streamer(client, _images(40), labels, label_fraction=0.5, seed=0, window=30)
                for start in (0, 10, 20):
                    streamer.send(np.arange(start, start + 10), "clean", shift="noise")
                streamer.send(np.arange(30, 40), "shifted", expect={"some-other-model"})
                clean = streamer.tallies["clean"].to_dict()
                assert clean["samples"] == 30 and clean["accuracy"] == 0.5 and list(clean["by_model"]) == [model_id]
                assert "shifted" not in streamer.tallies and streamer.tallies["transition"].n == 10
                assert streamer.window_accuracy == 0.5 and streamer.sent == 40 and 5 < streamer.labelled < 35
                status = client.status()
            assert status["live"]["feedback"]["labelled"] == streamer.labelled
            facts = status_facts(status)
            assert facts["model"] == model_id and facts["p50_ms"] > 0 and facts["drifting"] == []
            line = live_line(3.0, "clean", 40, 0.5, status, {model_id: "three"})
            assert "model three " in line and " ms | " in line
        finally:
            code, seconds, killed = daemon.stop()
        assert code == 0 and not killed and seconds < 30 and daemon.proc is None
    finally:
        remove(run)


# -- policies ------------------------------------------------------------------------------------
def _front(latencies: list[float], accuracies: list[float]) -> Front:
    pts = [
        FrontPoint(s, a, {1: ms, 32: 10 * ms}, 100_000, 1_000_000)
        for s, a, ms in zip(SUBNETS, accuracies, latencies, strict=True)
    ]
    return Front(tuple(pts))


def test_the_initial_policy_is_balanced_with_quick_drift_checks_and_reads_back_from_its_file() -> None:
    p = initial_policy()
    balanced = load_preset("balanced")
    assert p.name == "demo" and p.budgets == balanced.budgets and p.objective == balanced.objective
    assert p.drift.check_interval_s == 2.0 and p.drift.reference_window == 1000
    text = policy_text(p, "the demo's policy\n\nsecond paragraph")
    assert text.startswith("# the demo's policy\n#\n# second paragraph\n")
    assert parse_policy_text(text) == p


def test_the_fast_policy_sets_a_budget_that_makes_the_front_choose_a_faster_point() -> None:
    front = _front([0.2, 0.3, 0.6], [0.84, 0.86, 0.90])
    initial = initial_policy()
    first = choose(front, initial)
    assert first is not None and first.subnet == SUBNETS[2]  # 5 ms budget: the most accurate wins the utility
    policy, pick = fast_policy(front, initial)
    assert pick.subnet != first.subnet and pick.latency_at(1) < first.latency_at(1)
    assert policy.name == "demo-fast" and pick.latency_at(1) <= policy.budgets.latency_ms_p95 < first.latency_at(1)
    assert choose(front, policy) == pick
    assert policy.drift == initial.drift  # only the preference changes


def test_no_fast_policy_when_the_initial_choice_is_already_the_fastest() -> None:
    front = _front([0.2, 0.3, 0.6], [0.95, 0.86, 0.80])
    assert choose(front, initial_policy()).subnet == SUBNETS[0]
    assert fast_policy(front, initial_policy()) is None


def test_the_candidates_spread_below_the_choice_and_the_measured_accuracy_decides() -> None:
    front = _front([0.1, 0.3, 0.6], [0.84, 0.86, 0.90])
    initial = initial_policy()
    cands = spread_candidates(front, initial)
    # the choice (0.6 ms) and the best at or under 0.3 ms; the fastest (0.1 ms) is left to the
    # preference change
    assert [c.subnet for c in cands] == [SUBNETS[2], SUBNETS[1]]
    assert [c.subnet for c in spread_candidates(front, initial, (1.0, 0.9))] == [SUBNETS[2], SUBNETS[1]]
    # fine-tuned, the deep choice gained least: the policy takes a faster point that measured better
    first = measured_choice(front, initial, {SUBNETS[2]: 0.874, SUBNETS[1]: 0.913, SUBNETS[0]: 0.885})
    assert first is not None and first.subnet == SUBNETS[1] and first.measured_accuracy == 0.913
    # measured as predicted, the choice stays
    again = measured_choice(front, initial, {c.subnet: c.accuracy for c in cands})
    assert again is not None and again.subnet == SUBNETS[2]
    # the preference change is then relative to the measured choice
    fast = fast_policy(front, initial, first)
    assert fast is not None and fast[1].subnet == SUBNETS[0]
    assert spread_candidates(_front([9.0, 9.5, 9.9], [0.8, 0.85, 0.9]), initial) == []  # nothing within 5 ms


def test_an_all_fp32_point_joins_the_candidates_when_none_of_the_spread_is() -> None:
    fp32 = [s.replace("w8a8", "w32a32") for s in SUBNETS]
    quantized = [FrontPoint(s, a, {1: ms, 32: 10 * ms}, 100_000, 1_000_000)
                 for s, a, ms in zip(SUBNETS, [0.86, 0.88, 0.90], [0.1, 0.3, 0.6], strict=True)]  # fmt: skip
    full = [
        FrontPoint(fp32[0], 0.80, {1: 0.05, 32: 0.5}, 400_000, 1_000_000),  # the fastest: left to the preference
        FrontPoint(fp32[1], 0.85, {1: 0.2, 32: 2.0}, 400_000, 1_000_000),
        FrontPoint(fp32[2], 0.89, {1: 0.9, 32: 9.0}, 400_000, 1_000_000),
    ]  # fmt: skip  (slower than the choice)
    initial = initial_policy()
    cands = spread_candidates(Front(tuple(quantized + full)), initial)
    assert [c.subnet for c in cands] == [SUBNETS[2], SUBNETS[1], SUBNETS[0], fp32[1]]
    # a spread that has an FP32 point already gets no other
    better = FrontPoint(fp32[1], 0.89, {1: 0.2, 32: 2.0}, 400_000, 1_000_000)
    mixed = spread_candidates(Front(tuple([*quantized[1:], better, full[0]])), initial)
    assert [c.subnet for c in mixed] == [SUBNETS[2], fp32[1]]


# -- the live line and the timeline ---------------------------------------------------------------
STATUS = {
    "live": {"model": "0123456789abcdef", "latency": {"batch": 15, "n": 40, "p50_ms": 1.234, "p95_ms": 2.0}},
    "drift": {"drifting": [], "watching": {"reference": {"source": "collecting", "samples": 400, "target": 1000}}},
    "events": [],
}


def test_live_line_shows_reference_progress_and_that_the_daemon_has_no_adaptation() -> None:
    line = live_line(12.34, "clean", 1500, 0.861, STATUS, {"0123456789abcdef": "initial"})
    assert line.split(" | ") == [
        "   12.3 s", "clean     ", "  1500 sent", "acc  86.1%", "model initial 1.23 ms", "drift: reference 400/1000",
        "adapt: n/a",
    ]  # fmt: skip
    assert status_facts(STATUS)["reference_done"] is False and status_facts(STATUS)["has_adaptation"] is False


def test_live_line_shows_drift_a_running_adaptation_and_its_outcome() -> None:
    status = json.loads(json.dumps(STATUS))
    status["drift"] = {"drifting": ["data", "accuracy"], "watching": {"reference": {"samples": 1000, "target": 1000}}}
    status["adaptation"] = {"state": "running", "phase": "finetune", "progress": 0.42, "last": None}
    line = live_line(80.0, "shifted", 5200, 0.61, status)
    assert "DRIFT: data,accuracy" in line and "adapt: finetune 42%" in line and "model 01234567" in line
    status["drift"]["drifting"] = []
    status["adaptation"] = {"state": "idle", "last": {"outcome": "swapped", "finished": 5.0}}
    line = live_line(90.0, "adapted", 6000, 0.8, status)
    assert "no drift" in line and "adapt: idle (last swapped)" in line
    status["adaptation"] = {"state": "pending", "last": None}
    assert "adapt: pending (waiting for labels)" in live_line(85.0, "shifted", 5500, 0.3, status)
    assert status_facts(status)["reference_done"] is True
    assert "daemon: no answer" in live_line(1.0, "clean", 0, None, None)


def test_timeline_merges_daemon_events_once_and_finds_the_first_of_a_kind() -> None:
    tl = Timeline(started=1000.0)
    tl.note("shift", "noise", at=1010.0)
    events = [
        {"at": 1012.5, "kind": "drift", "message": "data drift"},
        {"at": 999.0, "kind": "start", "message": "before the demo"},
        {"at": 1011.0, "kind": "deploy", "message": "abc serves"},
    ]
    added = tl.merge_events(events)
    assert [e["kind"] for e in added] == ["deploy", "drift"]
    assert tl.merge_events(events) == []  # the status repeats its recent events: each is kept once
    assert [(e["t"], e["source"], e["kind"]) for e in tl.entries] == [
        (10.0, "demo", "shift"), (11.0, "daemon", "deploy"), (12.5, "daemon", "drift"),
    ]  # fmt: skip
    assert tl.first("drift", after=1010.0)["message"] == "data drift"
    assert tl.first("deploy", after=1011.5) is None and tl.first("shift", source="daemon") is None


# -- the report ----------------------------------------------------------------------------------
def test_report_has_the_accuracy_of_every_phase_the_timeline_and_what_did_not_happen(tmp_path: Path) -> None:
    tl = Timeline(started=1000.0)
    tl.note("shift", "the images change: noise", at=1030.0)
    tl.merge_events([{"at": 1034.0, "kind": "drift", "message": "data drift on abc | statistic 9"}])
    clean, shifted = PhaseTally(), PhaseTally()
    clean.add("abc", 3000, 2580, 0.3)
    shifted.add("abc", 1000, 610, 0.3)
    doc = build_report(
        timeline=tl,
        steps=[
            Step("supernet", 0.5, 3.5, "reused", "supernet.pt"),
            Step("wait for adaptation", 40.0, 30.0, "timed out"),
        ],
        tallies={"clean": clean.to_dict(), "shifted": shifted.to_dict()},
        models={
            "abc": {"name": "initial", "subnet": SUBNETS[0], "test_accuracy": 0.86, "latency_ms": 0.3},
            "(not deployed)": {
                "name": "adaptation candidate",
                "subnet": SUBNETS[1],
                "local_accuracy": 0.709,
                "latency_ms": {"1": 0.43},
            },
        },  # fmt: skip
        settings={"state_dir": "/tmp/x", "shift": "noise"},
        outcome="completed",
        notes=["no adaptation within 30 s"],
        milestones={"detection_delay_s": 4.0, "export_swap_s": 7.5},
        png=str(tmp_path / "front.png"),
        finished=1100.0,
    )
    assert doc["seconds"] == 100.0 and list(doc["accuracy"]) == [
        "clean",
        "shifted",
        "label-free",
        "adapted",
        "preference",
        "re-exported",
    ]
    assert doc["accuracy"]["clean"]["accuracy"] == pytest.approx(0.86) and doc["accuracy"]["adapted"]["samples"] == 0
    md = format_report(doc)
    assert "| before the shift | 3000 | 86.0% | initial (86.0%, 3000) |" in md
    assert "| after adaptation | 0 | ? | - |" in md
    assert "- no adaptation within 30 s" in md and "- detection delay s: 4.0" in md
    assert "| 34.0 | daemon | drift | data drift on abc \\| statistic 9 |" in md  # a | in a message keeps the table
    assert (
        f"| `(not deployed)` | adaptation candidate | `{SUBNETS[1]}` | - (70.9% on held-out local samples) | 0.430 |"
        in md
    )
    assert "| wait for adaptation | timed out | 30.0 |" in md and "![front](front.png)" in md
    assert format_summary(doc) == [
        "summary (100 s, completed):",
        "  accuracy before the shift: 86.0% on 3000 samples",
        "  accuracy after the shift, before adaptation: 61.0% on 1000 samples",
        "  accuracy after the label-free answer (BN statistics of the new data): -",
        "  accuracy after adaptation: -",
        "  accuracy after the preference change: -",
        "  accuracy after the budget was relaxed again (a model exported from the supernet in use): -",
        "  drift detected 4.0 s after the shift",
        "  budget relaxed after the adaptation: exported from the supernet in use and swapped in 7.5 s",
        "  note: no adaptation within 30 s",
    ]
    js, mdp = write_report(doc, tmp_path / "demo")
    assert json.loads(js.read_text()) == json.loads(json.dumps(doc)) and mdp.read_text() == md


# -- settings and errors -------------------------------------------------------------------------
def test_settings_name_every_bad_value() -> None:
    with pytest.raises(ValueError, match=r"shift='fog': expected one of .*; timeout=1: expected at least 5"):
        DemoSettings(Path("/tmp"), shift="fog", timeout=1)
    with pytest.raises(ValueError, match=r"label_fraction=0: expected a share in \(0, 1\]"):
        DemoSettings(Path("/tmp"), label_fraction=0)


def test_demo_without_a_checkpoint_and_no_train_fails_with_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--no-train", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    ckpt = tmp_path / "supernet" / "supernet.pt"
    assert f"error: the supernet checkpoint {ckpt} does not exist and --no-train was given" in result.output
    assert "lifelong train --preset quick" in result.output
    assert "[1] supernet" in result.output and "failed in" in result.output


def test_demo_refuses_bad_options_before_doing_anything(tmp_path: Path) -> None:
    for args, expected in (
        (["--shift", "fog"], "'fog' is not one of 'noise', 'contrast', 'brightness', 'rotation'"),
        (["--samples", "10"], "10 is not in the range x>=1000"),
    ):
        result = CliRunner().invoke(cli, ["demo", "--state-dir", str(tmp_path), *args])
        assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "demo").exists()


def test_a_failing_step_command_names_its_error_and_its_log(tmp_path: Path) -> None:
    lines: list[str] = []
    runner = StepRunner(lines.append, tmp_path / "logs", started=0.0)
    with pytest.raises(DemoError, match=r"`lifelong profile --check --state-dir .*` failed: .*\(log: .*profile.log\)"):
        with runner.step("profile"):
            runner.cli(["profile", "--check", "--state-dir", str(tmp_path)], "profile")
    assert runner.steps[0].outcome == "failed" and "failed" in lines[-1]
    assert "$ lifelong profile --check" in (tmp_path / "logs" / "profile.log").read_text()


def test_the_summary_names_the_label_free_answer_and_then_the_labelled_one() -> None:
    milestones = {"detection_delay_s": 2.2, "adaptation_outcome": "swapped", "adaptation_mode": "bn",
                  "adaptation_after_detection_s": 7.0, "labelled_outcome": "kept", "labelled_after_detection_s": 98.1}  # fmt: skip
    lines = format_summary({"seconds": 792.0, "outcome": "completed", "accuracy": {}, "milestones": milestones})
    assert lines[1:] == [
        "  drift detected 2.2 s after the shift",
        "  label-free answer: swapped, 7.0 s after the detection",
        "  labelled answer: kept, 98.1 s after the detection",
    ]
    milestones["adaptation_mode"] = "finetune"  # labels came first: the first answer is the labelled one
    del milestones["labelled_outcome"]
    lines = format_summary({"seconds": 1.0, "outcome": "completed", "milestones": milestones})
    assert lines[-1] == "  adaptation: swapped, 7.0 s after the detection"

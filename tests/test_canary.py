"""The canary watch: the pure decision, the live per-model figures it reads, and the real daemon
promoting a good model and rolling back a slow one and an inaccurate one by itself."""

from __future__ import annotations

import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, commit_model, remove, short_dir, wait_until
from tiny_models import write_classifier

from policies import SwapRules
from service.api.app import FeedbackLabel
from service.api.feedback import StoreFeedback
from service.daemon.canary import (
    MIN_BASELINE_REQUESTS,
    PROMOTE,
    ROLLBACK,
    WATCH,
    Baseline,
    CanaryWatch,
    LatencyRef,
    binom_cdf,
    decide,
    make_baseline,
    paired_baseline,
    quantile_bounds,
)
from service.daemon.documents import format_history, format_status, precision_summary
from service.errors import InferenceError
from service.serving.live import LiveFigures, LiveMonitor
from service.serving.runtime import MemoryRuntime, RuntimeSettings
from service.state.store import Store

RULES = SwapRules(canary_window=200, rollback_accuracy_drop=0.02, rollback_latency_factor=1.5)
rng = np.random.default_rng(0)  # images only


def lat(n: int, ms: float = 1.0, *, spikes: float = 0.0, seed: int = 0) -> tuple[float, ...]:
    """``n`` latencies around ``ms`` (5% spread), a fraction ``spikes`` of them 6 ms longer (a GIL or core wait)."""
    r = np.random.default_rng(seed)
    x = ms * (1 + 0.05 * r.standard_normal(n))
    x[r.random(n) < spikes] += 6.0
    return tuple(float(v) for v in np.abs(x))


def live_baseline(n: int = 300, ms: float = 1.0, labelled: int = 0, correct: int = 0, **kw) -> Baseline:
    figures = LiveFigures("old", 0.0, n, 0, None, {1: lat(n, ms, seed=kw.pop("seed", 1), **kw)})
    return make_baseline("old", figures, accuracy=(labelled, correct))


def canary(requests: int, ms: float = 1.0, labelled: int = 0, correct: int = 0, errors: int = 0, **kw) -> LiveFigures:
    latencies = {1: lat(requests, ms, seed=kw.pop("seed", 2), **kw)}
    return LiveFigures("new", 0.0, requests, errors, "boom" if errors else None, latencies, labelled, correct)


# -- statistics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n", "p"), [(16, 20, 0.95), (58, 59, 0.95), (3, 50, 0.05), (0, 10, 0.3), (10, 10, 0.5)])
def test_binomial_cdf_matches_exact_rational_arithmetic(k: int, n: int, p: float) -> None:
    q = Fraction(p)
    exact = sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k + 1))
    assert binom_cdf(k, n, p) == pytest.approx(float(exact), rel=1e-9)


def test_quantile_bounds_are_the_textbook_order_statistics() -> None:
    assert quantile_bounds(range(1, 21)) == (17, None)  # 20 values cannot bound a p95 from above
    assert quantile_bounds(range(1, 51)) == (45, None)
    assert quantile_bounds(range(1, 60)) == (53, 59)  # from 59 values on the maximum does, at 95%
    assert quantile_bounds([]) == (None, None)
    x = rng.exponential(size=1000)
    lo, hi = quantile_bounds(x)
    assert lo < np.percentile(x, 95) < hi


def test_a_baseline_needs_59_requests_at_a_batch_size_or_a_probe() -> None:
    short = LiveFigures("old", 0.0, 40, 0, None, {1: lat(MIN_BASELINE_REQUESTS - 1), 8: lat(100, 3.0)})
    b = make_baseline("old", short, probes={1: 0.9, 8: 99.0})
    assert b.latency[1] == LatencyRef(0.9, 0.9, 0, "probe"), "too short a live window: the probe stands in"
    assert b.latency[8].source == "live" and b.latency[8].requests == 100, "a live window beats a probe"
    assert b.latency[8].p95_ms <= b.latency[8].upper_ms
    assert make_baseline(None).latency == {}


# -- the decision ------------------------------------------------------------------------------------


def test_a_canary_as_good_as_its_baseline_is_watched_then_promoted() -> None:
    base = live_baseline(labelled=200, correct=180)
    early = decide(RULES, base, canary(120, labelled=30, correct=27))
    assert early.action == WATCH and early.progress == pytest.approx(0.6)
    done = decide(RULES, base, canary(200, labelled=60, correct=54))
    assert done.action == PROMOTE
    assert "no degradation over 200 requests" in done.reason and "latency p95" in done.reason
    assert {c.figure: c.state for c in done.checks} == {"errors": "ok", "latency": "ok", "accuracy": "ok"}


def test_a_slower_canary_is_rolled_back_once_it_served_enough_requests() -> None:
    base = live_baseline(ms=1.0)
    assert decide(RULES, base, canary(49, ms=3.0)).action == WATCH, "min(canary_window, 50) requests first"
    d = decide(RULES, base, canary(50, ms=3.0))
    assert d.action == ROLLBACK
    check = d.check("latency")
    assert check.state == "degraded" and check.value == pytest.approx(3.0, rel=0.15)
    assert check.threshold == pytest.approx(1.5 * base.latency[1].upper_ms)
    assert (
        d.reason.startswith("latency p95 3")
        and f"> threshold {check.threshold:.3g} ms = 1.5 x baseline p95" in d.reason
    )
    small = SwapRules(canary_window=10)
    assert decide(small, base, canary(10, ms=3.0)).action == ROLLBACK, "a window under 50 needs only the window"


def test_latency_noise_does_not_roll_back_where_a_plain_p95_ratio_would() -> None:
    # the same 0.1 ms model before and after, under contention: 5% of its requests wait 6 ms for
    # the GIL or a core, so whether a window's p95 lands in those waits is a coin toss
    naive = bounded = 0
    for seed in range(40):
        base = live_baseline(n=200, ms=0.1, spikes=0.05, seed=100 + seed)
        can = canary(50, ms=0.1, spikes=0.05, seed=200 + seed)
        naive += np.percentile(can.latencies_ms[1], 95) > 1.5 * base.latency[1].p95_ms
        bounded += decide(RULES, base, can).action == ROLLBACK
    assert naive >= 5 and bounded == 0, (naive, bounded)


@pytest.mark.parametrize("seed", range(5))
def test_latency_degradation_beyond_the_factor_rolls_back(seed: int) -> None:
    base = live_baseline(seed=seed)
    assert decide(RULES, base, canary(200, ms=1.3, seed=50 + seed)).action == PROMOTE, "30% slower: within 1.5x"
    assert decide(RULES, base, canary(50, ms=1.8, seed=50 + seed)).action == ROLLBACK, "80% slower is not"


def test_accuracy_rolls_back_only_on_a_significant_drop_with_enough_labels() -> None:
    base = live_baseline(labelled=200, correct=180)  # 90%
    few = decide(RULES, base, canary(60, labelled=9, correct=0))
    assert few.action == WATCH and few.check("accuracy").state == "waiting", "fewer than 10 labels: not judged"
    noise = decide(RULES, base, canary(60, labelled=20, correct=15))  # 75%: below 88%, but 20 labels
    assert noise.action == WATCH and noise.check("accuracy").state == "ok"
    assert "not significantly" in noise.check("accuracy").detail
    drop = decide(RULES, base, canary(60, labelled=20, correct=12))  # 60%
    assert drop.action == ROLLBACK
    assert drop.reason.startswith("accuracy 60.0% on 20 labels vs baseline 90.0% on 200 (threshold 88.0%")
    assert drop.check("accuracy").value == pytest.approx(0.6) and drop.check("accuracy").threshold == pytest.approx(
        0.88
    )
    unknown = decide(RULES, live_baseline(labelled=5, correct=5), canary(200, labelled=50, correct=0))
    assert unknown.action == PROMOTE and unknown.check("accuracy").state == "skipped", "no baseline accuracy"


def test_inference_errors_roll_back_unless_the_baseline_failed_as_often() -> None:
    d = decide(RULES, live_baseline(), canary(30, errors=1))
    assert d.action == ROLLBACK and d.reason.startswith("1 inference errors in 30 requests (3.3%) vs 0.0%")
    assert "(last: boom)" in d.reason
    flaky = Baseline("old", {}, requests=100, errors=10)
    assert decide(RULES, flaky, canary(200, errors=5)).action == PROMOTE


def test_without_a_baseline_the_window_decides_and_latency_waits_for_a_comparable_batch() -> None:
    assert decide(RULES, make_baseline(None), canary(200)).action == PROMOTE
    base = live_baseline()
    other_batch = LiveFigures("new", 0.0, 200, 0, None, {8: lat(200, 5.0)})
    d = decide(RULES, base, other_batch)
    assert d.action == WATCH and "waiting for latency" in d.reason
    later = LiveFigures("new", 0.0, 400, 0, None, {8: lat(400, 5.0)})
    assert decide(RULES, base, later).action == PROMOTE, "after twice the window it stops waiting"


def test_the_watch_reports_itself() -> None:
    watch = CanaryWatch(7, "new", live_baseline(labelled=20, correct=20))
    with pytest.raises(ValueError, match="figures of 'old' given to the watch of 'new'"):
        watch.evaluate(RULES, LiveFigures("old"))
    d = watch.evaluate(RULES, canary(80))
    doc = watch.to_dict()
    assert watch.last is d and doc["decision"]["action"] == "watch" and doc["previous"] == "old"
    assert doc["baseline"]["accuracy"] == 1.0 and set(doc["baseline"]["latency"]) == {"1"}


# -- live figures ------------------------------------------------------------------------------------


def _fn(favour: int):
    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = np.zeros((len(x), 10), np.float32)
        logits[:, favour] = 5.0
        if (x.reshape(len(x), -1).mean(axis=1) == 0.5).any():  # an input the model cannot handle
            logits[:, 0] = np.nan
        return logits, x.reshape(len(x), -1)[:, :8].copy()

    return fn


def test_the_runtime_reports_each_request_to_the_model_that_served_it(tmp_path: Path) -> None:
    rt = MemoryRuntime({"a": _fn(3), "b": _fn(7)}, RuntimeSettings(warmup_runs=0))
    live = LiveMonitor(window=16, max_batches=2, max_models=2)
    rt.observer = live.observe
    rt.swap("a", None)
    for n in (1, 1, 4):
        rt.predict(np.zeros((n, 28, 28), np.uint8))
    with pytest.raises(InferenceError, match="NaN"):
        rt.predict(np.full((1, 28, 28), 0.5, np.float32))
    rt.swap("b", None)
    rt.predict(np.zeros((2, 28, 28), np.uint8))
    a, b = live.figures("a"), live.figures("b")
    assert (a.requests, a.errors, a.last_error) == (4, 1, "NaN or infinite outputs")
    assert {k: len(v) for k, v in a.latencies_ms.items()} == {1: 2, 4: 1} and a.main_batch() == 1
    assert (b.requests, b.errors, list(b.latencies_ms)) == (1, 0, [2])
    live.begin("b")
    assert live.figures("b").requests == 0, "a model starting to serve starts a fresh record"
    for n in (5, 6, 7):
        live.observe("a", n, 1.0)
    assert list(live.figures("a").latencies_ms) == [6, 7], "batch sizes are bounded"
    live.observe("c", 1, 1.0)
    assert live.figures("b").requests == 0 and live.figures("b").since is None, "models are bounded (LRU)"
    assert live.figures("a").percentiles(7) == {"batch": 7, "n": 1, "p50_ms": 1.0, "p95_ms": 1.0}

    rt.observer = lambda *a: 1 / 0  # a broken observer never fails a request
    assert rt.predict(np.zeros((1, 28, 28), np.uint8)).model_id == "b"


def test_feedback_outcomes_go_to_the_model_that_made_the_prediction(tmp_path: Path) -> None:
    rt = MemoryRuntime({"a": _fn(3), "b": _fn(7)}, RuntimeSettings(warmup_runs=0))
    live = LiveMonitor()
    with Store.open(tmp_path) as store:
        sink = StoreFeedback(store, tmp_path / "fb", on_outcomes=live.add_outcomes)
        rt.swap("a", None)
        x = np.zeros((2, 1, 28, 28), np.float32)
        sink.record("r1", x, rt.predict(x))
        rt.swap("b", None)
        sink.record("r2", x, rt.predict(x))
        sink.label([FeedbackLabel("r1", 0, 3), FeedbackLabel("r1", 1, 3), FeedbackLabel("r2", 0, 3)])
    assert (live.figures("a").labelled, live.figures("a").correct) == (2, 2), "a's late labels count for a"
    assert (live.figures("b").labelled, live.figures("b").correct) == (1, 0)


# -- status text ---------------------------------------------------------------------------------------


def test_precision_summary_reads_the_subnet_string_without_torch() -> None:
    s = precision_summary("c32.k3w8a8.k5w32a32.p_c64.k3w8a8.s_hf.d128w8a8.ow32a32")
    assert s["counts"] == {"w8a8": 3, "w32a32": 2} and s["layers"] == 5
    assert [st["stage"] for st in s["stages"]] == ["c32", "c64", "head"]
    assert s["stages"][-1]["precisions"] == ["w8a8", "w32a32"]
    assert precision_summary("tiny_mlp") is None and precision_summary(None) is None


def test_status_text_shows_canary_progress_live_figures_and_precision() -> None:
    watch = CanaryWatch(4, "new", live_baseline(labelled=40, correct=36))
    subnet = "c32.k3w8a8.k3w8a8.p_c64.k3w32a32.p_hg.ow8a8"
    doc = {
        "model": "new",
        "store": {"model": {"subnet": subnet}, "deployment": {"state": "canary", "id": 4, "reason": "deploy x"}},
        "runtime": {},
        "canary": watch.to_dict(watch.evaluate(RULES, canary(120, labelled=12, correct=11))),
        "live": {
            "model": "new",
            "errors": 0,
            "latency": {"batch": 1, "n": 120, "p50_ms": 0.98, "p95_ms": 1.07},
            "feedback": {"labelled": 12, "correct": 11, "accuracy": 11 / 12},
        },
        "precision": precision_summary(subnet),
    }
    text = format_status(doc)
    assert "canary:   120/200 requests, 12 labels; 0 inference errors; latency p95 1." in text
    assert "ms baseline (batch 1, rollback above " in text and "accuracy 91.7% on 12 labels vs 90.0% baseline" in text
    assert "live:     accuracy 91.7% on its last 12 feedback labels; latency p50 0.98 ms p95 1.07 ms (batch 1" in text
    assert "precision w8a8 x3, w32a32 x1 (4 layers: c32 w8a8 x2 | c64 w32a32 | head w8a8)" in text
    doc["store"]["model"]["subnet"], doc["precision"] = "tiny_mlp", None
    assert "precision unknown (subnet 'tiny_mlp' is not a lifelong subnet string)" in format_status(doc)
    # during a drift episode the labels from before it are marked stale, and every figure says its age
    now = time.time()
    doc["live"]["feedback"] |= {"labelled": 500, "correct": 343, "accuracy": 0.686, "newest_at": now - 3,
                                "drift": {"since": now - 42, "labelled": 120, "correct": 26, "accuracy": 26 / 120, "stale": 380}}  # fmt: skip
    text = format_status(doc)
    assert "accuracy 68.6% on its last 500 feedback labels (newest 3 s ago); since the drift began 42 s ago: " in text
    assert "21.7% on 120, the other 380 stale; latency" in text
    doc["live"]["feedback"]["drift"] |= {"labelled": 0, "accuracy": None, "stale": 500}
    assert "since the drift began 42 s ago: no label yet, the other 500 stale" in format_status(doc)


# -- the real daemon -------------------------------------------------------------------------------------

WINDOW = 30
POLICY = f'format_version = 1\nname = "canary-test"\n[swap]\ncanary_window = {WINDOW}\n'


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("canary-models")
    return {
        "a": write_classifier(d / "a.onnx", favour_class=3, seed=3),
        "a2": write_classifier(d / "a2.onnx", favour_class=3, seed=13),  # as good as a
        "b": write_classifier(d / "b.onnx", favour_class=7, seed=7),  # always wrong on class 3
        "slow": write_classifier(d / "slow.onnx", favour_class=3, seed=5, slow_matmuls=6, slow_size=384),  # ~10 ms
    }


@pytest.fixture
def daemon(models):
    run = short_dir("llk")
    state = run / "state"
    commit_model(state, models["a"])
    (state / "policy.toml").write_text(POLICY)
    d = DaemonProcess(state, run).start()
    yield d
    d.close()
    remove(run)


def serve(d: DaemonProcess, n: int, *, label: int | None = None, labels: int = 0) -> str:
    """``n`` predictions of one image; the first ``labels`` get feedback ``label``. Returns the model that served."""
    with d.client() as c:
        answers = [c.predict(rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)) for _ in range(labels)]
        if labels:  # before the rest: the last request may end a canary window, whose verdict counts these
            assert c.feedback(labels=[(a.request_id, 0, label) for a in answers]) == labels
        answers += [c.predict(rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)) for _ in range(n - labels)]
    return answers[-1].model


def event(d: DaemonProcess, kind: str) -> dict:
    def find() -> dict | None:
        with d.client() as c:
            return next((e for e in c.status()["events"] if e["kind"] == kind), None)

    return wait_until(find, timeout=15, what=f"a {kind!r} event")


def test_a_good_model_is_promoted_after_its_canary_window(daemon, models) -> None:
    serve(daemon, 70, label=3, labels=20)  # the baseline: a, right on all 20 labels
    with daemon.client() as c:
        result = c.deploy(data=models["a2"].read_bytes(), name="a2.onnx")
        new = result["model_id"]
        assert result["deployment"]["state"] == "canary" and result["canary"]["window"] == WINDOW
        serve(daemon, 10)
        doc = c.status()
    assert doc["canary"]["model"] == new and doc["canary"]["decision"]["action"] == "watch"
    assert f"canary:   10/{WINDOW} requests" in format_status(doc)
    serve(daemon, WINDOW, label=3, labels=12)
    promoted = event(daemon, "canary-promoted")
    assert promoted["message"].startswith(f"{new} is active: no degradation over ")
    with daemon.client() as c:
        doc, history = c.status(), c.history()
    assert doc["store"]["deployment"]["state"] == "active" and doc["canary"] is None
    assert history["deployments"][0]["detail"].startswith("promoted: no degradation")
    assert "accuracy 100.0% on 12 labels vs baseline 100.0% on 20" in history["deployments"][0]["detail"]
    assert "live:     accuracy 100.0% on its last 12 feedback labels" in format_status(doc)


def test_a_slow_model_is_rolled_back_by_itself(daemon, models) -> None:
    old = serve(daemon, 70)
    with daemon.client() as c:
        slow = c.deploy(data=models["slow"].read_bytes(), name="slow.onnx")["model_id"]
    assert serve(daemon, WINDOW) == slow
    rolled = event(daemon, "auto-rollback")
    assert rolled["message"].startswith(f"{old} serves again (was {slow}): auto-rollback: latency p95 ")
    with daemon.client() as c:
        assert c.predict(np.zeros((1, 28, 28), np.uint8)).model == old
        history = c.history()
    row = next(r for r in history["deployments"] if r["model_id"] == slow)
    assert row["state"] == "rolled-back" and "> threshold" in row["detail"]
    assert "x baseline p95" in row["detail"] and f"batch 1, {WINDOW} requests" in row["detail"]
    assert f"rolled-back  {slow}" in format_history(history)


def test_an_inaccurate_model_is_rolled_back_on_feedback_labels(daemon, models) -> None:
    old = serve(daemon, 20, label=3, labels=20)
    with daemon.client() as c:
        wrong = c.deploy(data=models["b"].read_bytes(), name="b.onnx")["model_id"]
    serve(daemon, 12, label=3, labels=12)  # b predicts 7 each time
    rolled = event(daemon, "auto-rollback")
    assert rolled["message"].startswith(f"{old} serves again (was {wrong}): auto-rollback: accuracy 0.0% on 12 labels")
    assert "vs baseline 100.0% on 20 (threshold 98.0%" in rolled["message"]
    with daemon.client() as c:
        text = format_status(c.status())
    assert f"model:    {old}" in text and "auto-rollback    " in text
    assert "profile:  none at " in text and "`lifelong profile` measures this device" in text


def test_a_canary_left_by_a_stop_is_watched_again_at_start(daemon, models) -> None:
    old = serve(daemon, 5)
    with daemon.client() as c:
        new = c.deploy(data=models["a2"].read_bytes(), name="a2.onnx")["model_id"]
    assert daemon.stop() == 0
    again = DaemonProcess(daemon.state_dir, daemon.run_dir).start()
    try:
        with again.client() as c:
            watch = c.status()["canary"]
        assert watch["model"] == new and watch["resumed"] is True and watch["previous"] == old
        assert any(e["kind"] == "canary" and "watching" in e["message"] for e in c.status()["events"])
        serve(again, WINDOW)
        assert event(again, "canary-promoted")["message"].startswith(f"{new} is active")
    finally:
        again.close()


def test_a_replaced_model_without_live_figures_is_timed_beside_the_new_one_not_taken_from_an_idle_probe(
    tmp_path,
) -> None:
    """The idle probe said 0.2 ms; under load both models are slower: the paired timing is the baseline."""
    from service.serving.ort_runtime import OrtRuntime
    from service.state.registry import Registry

    registry = Registry(tmp_path)
    slow = registry.add(write_classifier(tmp_path / "slow.onnx", slow_matmuls=4, slow_size=128)).id
    fast = registry.add(write_classifier(tmp_path / "fast.onnx")).id
    runtime = OrtRuntime(RuntimeSettings(warmup_runs=0, intra_op_threads=1))
    runtime.swap(fast, registry.path(fast))
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    old_ms, new_ms = runtime.paired_latency(registry.path(slow), x, rounds=60)
    assert len(old_ms) == len(new_ms) == 60 and np.median(old_ms) > np.median(new_ms), (
        np.median(old_ms),
        np.median(new_ms),
    )
    probe_only = make_baseline(slow, probes={1: 0.2})
    assert probe_only.latency[1].source == "probe"
    paired = paired_baseline(probe_only, 1, old_ms)
    assert paired.latency[1].source == "paired" and paired.latency[1].requests == 60
    assert paired.latency[1].p95_ms == pytest.approx(float(np.percentile(old_ms, 95)))
    assert paired_baseline(probe_only, 1, old_ms[:10]) is probe_only, "too few rounds to bound a p95"
    live = make_baseline(slow, LiveFigures(slow, 0.0, 80, 0, None, {1: tuple([0.5] * 80)}))
    assert paired_baseline(live, 1, old_ms) is live, "a live figure of its own traffic is kept"

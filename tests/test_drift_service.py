"""Drift in the daemon: the feed from serving, the drift check job, preference drift from the cached front.

The parts in-process first (a real SQLite store, real reference files, a numpy runtime), then
the real daemon as a subprocess with tiny ONNX models: a contrast-reduced Fashion-MNIST stream
raises data drift where a clean one does not; a policy edit swaps to the model the cached
front chooses within 2 s while clients predict; a choice never exported is recorded and the
serving model stays.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, commit_model, remove, short_dir, wait_until
from tiny_models import write_classifier

from lifelong.drift.signals import preference_drift
from lifelong.search.front import Front, FrontPoint
from policies import Policy
from policies.schema import Budgets, DriftSettings, Objective
from service.api.app import FeedbackLabel, MemoryFeedback
from service.daemon.documents import format_status
from service.drift.check import DriftCheck
from service.drift.feed import DriftFeed, TappedFeedback
from service.drift.preference import FrontCache, answer_preference, slowed_policy
from service.serving.runtime import MemoryRuntime, RuntimeSettings
from service.state.registry import Registry
from service.state.store import Store

DRIFT = DriftSettings(window=50, reference_window=50, false_alarm_samples=200_000, check_interval_s=0.2)
POLICY = Policy(drift=DRIFT, budgets=Budgets(latency_ms_p95=5.0))
DIMS = 8


def _model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((len(x), 10), np.float32), x.reshape(len(x), -1)[:, :DIMS].copy()


@pytest.fixture
def parts(tmp_path: Path):
    """A DriftCheck over a real store, a numpy runtime serving m1, and a feed."""
    store = Store(tmp_path / "state.db")
    rt = MemoryRuntime({"m1": _model, "m2": _model}, RuntimeSettings(warmup_runs=0))
    rt.swap("m1", None)
    feed, detected = DriftFeed(), []
    check = DriftCheck(
        store, rt, lambda: POLICY, feed=feed, reference_dir=tmp_path / "drift", on_detected=detected.append
    )
    yield check, feed, rt, store, detected
    store.close()


def normal(n: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return (r.standard_normal((n, DIMS)) + shift).astype(np.float32), r.integers(0, 10, n)


def feed_rows(feed: DriftFeed, model: str, emb: np.ndarray, classes: np.ndarray, batch: int = 10) -> None:
    for i in range(0, len(emb), batch):
        feed.add_prediction(model, emb[i : i + batch], classes[i : i + batch])


# -- the feed ----------------------------------------------------------------------------------------


def test_the_feed_is_bounded_keeps_models_apart_and_asks_for_a_check_once() -> None:
    calls = []
    feed = DriftFeed(capacity=100, on_due=lambda: calls.append(1))
    emb, cls = normal(300)
    feed_rows(feed, "a", emb, cls)
    feed.add_latency("a", 1, 0.5)
    feed.add_latency("a", 1, 9.0, error="NaN outputs")  # a failed request says nothing of latency
    feed.add_outcomes([("a", 3, 3), ("b", 1, 2)])
    stats = feed.stats()
    assert stats["waiting"] == {"samples": 100, "latencies": 1, "outcomes": 2}
    assert stats["dropped_samples"] == 200 and stats["samples"] == 300 and calls == [1]
    drained = feed.drain()
    a_emb, a_cls, lat, out = drained.for_model("a")
    np.testing.assert_array_equal(a_emb, emb[-100:])  # the newest kept, in arrival order
    assert lat == [(1, 0.5)] and out == [True] and drained.for_model("b")[3] == [False]
    assert feed.stats()["waiting"]["samples"] == 0
    feed_rows(feed, "a", *normal(50))
    assert calls == [1, 1], "after a drain it may ask again"
    with pytest.raises(ValueError, match="capacity=1; expected an integer >= 2"):
        DriftFeed(capacity=1)


def test_the_tapped_feedback_passes_every_prediction_on_without_copying() -> None:
    rt = MemoryRuntime({"m": _model}, RuntimeSettings(warmup_runs=0))
    rt.swap("m", None)
    inner, feed = MemoryFeedback(), DriftFeed()
    sink = TappedFeedback(inner, feed)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    pred = rt.predict(x)
    sink.record("r1", x, pred)
    drained = feed.drain()
    ((model, emb, classes, (probs, offset)),) = drained.predictions
    assert model == "m" and emb is pred.embedding and classes is pred.classes and probs is pred.probabilities
    assert offset is None and drained.probabilities_for("other") is None
    # a batch served with a class-mix correction reaches the drift check as the model's own probabilities
    assert rt.set_logit_offset("m", np.log(np.array([5.0] + [1.0] * 9)))
    corrected = rt.predict(x)
    assert corrected.probabilities[:, 0].min() > pred.probabilities[:, 0].max()
    sink.record("r2", x, corrected)
    np.testing.assert_allclose(feed.drain().probabilities_for("m"), pred.probabilities, rtol=1e-5)
    with pytest.raises(ValueError, match="must be 10 finite numbers"):
        rt.set_logit_offset("m", np.zeros(3))
    assert not rt.set_logit_offset("other", None), "only the serving model takes an offset"
    assert sink.label([FeedbackLabel("r1", 0, 4)]) == 1
    assert inner.labelled[0][1:] == (4, 0, "m")


# -- the drift check, in-process ---------------------------------------------------------------------


def test_a_data_drift_episode_is_stored_once_announced_and_counted(parts) -> None:
    check, feed, _, store, detected = parts
    feed_rows(feed, "m1", *normal(250, seed=1))
    decisions = check.run()
    assert decisions and all(d.kind in ("data", "label") and not d.drifted for d in decisions)
    assert store.recent_drift() == [], "checks that find nothing are only summed, not stored one by one"
    assert check.status()["watching"]["reference"] == {"source": "collected", "samples": 50, "target": 50}
    for seed in (2, 3):  # the shift lasts over two runs: one episode
        feed_rows(feed, "m1", *normal(100, shift=1.5, seed=seed))
        check.run()
    (event,) = store.recent_drift(detector="data")
    assert event.decision and event.p_value <= event.threshold == pytest.approx(10 / 800_000)
    assert event.window == 50 and event.detail["reference"] == 50 and event.detail["model"] == "m1"
    assert event.detail["method"] == "ks" and event.detail["action"] == "re-search needed"
    assert [(e.model_id, [d.kind for d in e.decisions]) for e in detected] == [("m1", ["data"])]
    status = check.status()
    assert status["counts"]["data"]["drifted"] > 1 and status["counts"]["data"]["events"] == 1
    assert status["drifting"] == ["data"] and status["latest"]["data"]["drifted"]
    text = check.metrics_text()
    assert 'lifelong_drift_events_total{kind="data"} 1' in text
    assert 'lifelong_drift_drifting{kind="data"} 1' in text and 'lifelong_drift_checks_total{kind="accuracy"} 0' in text
    assert "# TYPE lifelong_drift_p_value gauge" in text
    since = check.episode_since()  # status figures from before it are stale
    assert since is not None and since == store.recent_drift(detector="data")[0].detail["episode"]["since"]
    for seed in (4, 5, 6):  # the data goes back: the episode ends
        feed_rows(feed, "m1", *normal(100, seed=seed))
        check.run()
    assert check.status()["drifting"] == [] and check.episode_since() is None


def test_the_reference_is_kept_on_disk_and_used_again_after_a_restart(parts, tmp_path: Path) -> None:
    check, feed, rt, store, _ = parts
    feed_rows(feed, "m1", *normal(60, seed=1))
    check.run()
    kept = tmp_path / "drift" / "m1.npz"
    assert kept.is_file()
    with np.load(kept) as z:
        np.testing.assert_array_equal(z["embeddings"], normal(60, seed=1)[0][:50])
    again = DriftCheck(store, rt, lambda: POLICY, feed=feed, reference_dir=tmp_path / "drift")
    feed_rows(feed, "m1", *normal(50, shift=1.5, seed=4))  # shifted data right after the "restart"
    decisions = again.run()
    assert again.status()["watching"]["reference"]["source"] == "kept"
    assert any(d.kind == "data" and d.drifted for d in decisions), "compared with the kept reference, not the shift"


def test_a_run_checks_at_most_its_share_and_counts_the_rest(parts) -> None:
    check, feed, _, _, _ = parts
    check.cpu_share = 0.001  # an early run must wait 999 times as long as this run took
    feed_rows(feed, "m1", *normal(1000, seed=1))
    for _ in range(500):
        feed.add_latency("m1", 1, 0.5)
    check.run()
    last = check.status()["last_run"]
    assert last["samples"] == 300 and last["latencies"] == 300, "30 checks of 10 samples at most"
    assert last["skipped"] == 700 + 200 and check.status()["skipped"] == 900
    assert "lifelong_drift_dropped_samples_total 900" in check.metrics_text()
    assert not check.may_run_early(), "right after a run, an early one would exceed the CPU share"


def test_a_kept_reference_of_another_width_is_dropped_and_bad_settings_turn_checks_off(parts, tmp_path: Path) -> None:
    check, feed, rt, store, _ = parts
    (tmp_path / "drift").mkdir()
    np.savez(tmp_path / "drift" / "m1.npz", format=np.array(1), embeddings=np.zeros((60, 3)), classes=np.zeros(60, int))
    feed_rows(feed, "m1", *normal(60, seed=1))
    check.run()
    assert "monitor of m1 reset: embeddings: embeddings must be a (N, 3) float array" in check.status()["error"]
    assert not (tmp_path / "drift" / "m1.npz").exists()
    feed_rows(feed, "m1", *normal(60, seed=1))
    check.run()
    assert check.status()["watching"]["reference"]["source"] == "collected" and check.status()["error"] is None
    wide = Policy(drift=DriftSettings(window=10_000, reference_window=10_000, false_alarm_samples=1000))
    off = DriftCheck(store, rt, lambda: wide, feed=feed, reference_dir=tmp_path / "drift")
    off.run()
    assert off.status()["error"].startswith("drift checks are off for m1 until the policy or the model changes:")
    assert "false_alarm_samples (1000) must exceed checks' spacing 2000" in off.status()["error"]
    assert off.run() == [] and off.status()["watching"] is None


def test_a_swap_builds_a_new_monitor_and_ignores_the_old_models_late_samples(parts) -> None:
    check, feed, rt, _, _ = parts
    feed_rows(feed, "m1", *normal(80, seed=1))
    check.run()
    assert check.status()["watching"]["model"] == "m1"
    rt.swap("m2", None)
    feed_rows(feed, "m1", *normal(30, seed=2))  # requests that were in flight on m1
    feed_rows(feed, "m2", *normal(20, seed=3))
    check.run()
    watching = check.status()["watching"]
    assert watching["model"] == "m2" and watching["monitor"]["data"] == {"reference": 0, "seen": 20}
    assert watching["reference"]["source"] == "collecting" and check.status()["latest"] == {}, "m1's decisions"


def test_environment_and_accuracy_drift_are_stored_with_their_figures(parts) -> None:
    check, feed, _, store, detected = parts
    for _ in range(150):
        feed.add_latency("m1", 1, 20.0)  # budget 5 ms
        feed.add_latency("m1", 32, 1.0)  # another batch size: not comparable with the budget
    r = np.random.default_rng(0)
    right = [("m1", 1, 1 if r.random() < 0.95 else 2) for _ in range(400)]
    wrong = [("m1", 1, 1 if r.random() < 0.4 else 2) for _ in range(400)]
    feed.add_outcomes(right[:250])
    check.run()
    feed.add_outcomes(right[250:] + wrong[:100])
    check.run()
    feed.add_outcomes(wrong[100:])
    check.run()
    (env,) = store.recent_drift(detector="environment")
    assert env.decision and env.statistic == pytest.approx(20.0) and env.threshold == 5.0
    assert env.detail["over"] == ["budget"] and env.window == 50
    (acc,) = store.recent_drift(detector="accuracy")
    assert acc.decision and acc.statistic >= 0.3 and acc.threshold == pytest.approx(0.05)
    assert acc.detail["detector"] == "adwin" and acc.detail["error_now"] > acc.detail["error_before"]
    assert {d.kind for e in detected for d in e.decisions} == {"environment", "accuracy"}


def test_contention_under_the_budget_is_environment_drift_against_the_models_own_latency(parts) -> None:
    """The first reference_window latencies are the model's own reference: a slowdown from
    0.9 ms to 3 ms is drift though it stays under the 5 ms budget."""
    check, feed, _, store, detected = parts
    r = np.random.default_rng(1)
    for v in r.uniform(0.7, 0.9, 50):
        feed.add_latency("m1", 1, float(v))
    check.run()
    watching = check.status()["watching"]
    assert (
        watching["profiled_latency_ms"] == pytest.approx(0.9, abs=0.02) and "first 50" in watching["latency_reference"]
    )
    for v in r.uniform(0.7, 0.9, 100):
        feed.add_latency("m1", 1, float(v))
    check.run()
    assert store.recent_drift(detector="environment", decision=True) == [], "the same latency is no drift"
    for v in r.uniform(2.8, 3.2, 150):
        feed.add_latency("m1", 1, float(v))
    check.run()
    (env,) = store.recent_drift(detector="environment", decision=True)
    assert env.detail["over"] == ["profile"] and env.threshold == pytest.approx(1.3 * env.detail["profiled_ms"])
    assert any(d.kind == "environment" for e in detected for d in e.decisions)


def test_lifelong_status_shows_the_drift_section(parts) -> None:
    check, feed, _, store, _ = parts
    feed_rows(feed, "m1", *normal(100, seed=1))
    check.run()
    feed_rows(feed, "m1", *normal(60, shift=2.0, seed=2))
    check.run()
    check.note_needed("data", "re-search", "data drift on m1")
    new = Policy(name="fast", drift=DRIFT, budgets=Budgets(latency_ms_p95=1.0))
    check.record_preference(preference_drift(POLICY, new), None)
    doc = {"model": "m1", "drift": check.status(), "store": store.status_summary(), "runtime": {}}
    text = format_status(doc)
    assert "drift:    watching m1 since" in text and "reference 50/50 (collected), a check every 10 samples" in text
    assert "          data        p " in text and ": DRIFT (window 50 vs 50)" in text
    assert "          preference  1 keys changed (budgets)" in text
    assert "NEEDED:     re-search (data," in text and "drift events stored in 24 h, 2 detections" in text


# -- preference drift answered from the front, in-process ---------------------------------------------

POINTS = {  # subnet: (accuracy, latency ms at batch 1)
    "tiny_fast": (0.80, 1.0),
    "tiny_accurate": (0.90, 3.0),
    "tiny_huge": (0.95, 30.0),
}
FAVOUR = {"tiny_fast": 3, "tiny_accurate": 7}
BUDGET_FOR = {"tiny_fast": 2.0, "tiny_accurate": 10.0, "tiny_huge": 100.0}  # latency budget that chooses it


def write_front(path: Path) -> Path:
    pts = [FrontPoint(s, a, {1: ms}, 10_000, 100_000) for s, (a, ms) in POINTS.items()]
    return Front(tuple(pts), {"policy": "test"}).save(path)


def policy_text(subnet: str, drift: str = "window = 50\nreference_window = 50\ncheck_interval_s = 0.5\n") -> str:
    return (
        f'format_version = 1\nname = "{subnet}"\n[budgets]\nlatency_ms_p95 = {BUDGET_FOR[subnet]}\n'
        f'[objective]\nkind = "max-accuracy"\n[drift]\n{drift}'
    )


def policy_for(subnet: str) -> Policy:
    return Policy(name=subnet, budgets=Budgets(latency_ms_p95=BUDGET_FOR[subnet]), objective=Objective("max-accuracy"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("drift-models")
    return {s: write_classifier(d / f"{s}.onnx", favour_class=f, seed=f, subnet=s) for s, f in FAVOUR.items()}


def register(state: Path, model: Path) -> str:
    """Add a model to the registry and the store without deploying it (an earlier export)."""
    store = Store.open(state)
    try:
        record = Registry(state).add(model, {"source": "test export"})
        store.record_model(record)
        return record.id
    finally:
        store.close()


def test_environment_drift_is_answered_from_the_front_with_the_budget_tightened_by_the_slowdown(
    models, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    accurate = commit_model(state, models["tiny_accurate"])
    fast = register(state, models["tiny_fast"])
    front = Front.load(write_front(state / "front" / "front.json"))
    policy = policy_for("tiny_accurate")  # 10 ms: the 3 ms accurate model fits
    assert slowed_policy(policy, None, 5.0) is None and slowed_policy(policy, 3.0, 2.0) is None
    assert slowed_policy(Policy(), 1.0, 2.0) is None, "no budget, nothing to tighten"
    tight, factor = slowed_policy(policy, 3.0, 15.0)  # five times slower: 10 ms now means 2 ms as profiled
    assert factor == pytest.approx(5.0) and tight.budgets.latency_ms_p95 == pytest.approx(2.0)
    assert tight.objective == policy.objective and tight.name == policy.name
    store, registry = Store.open(state), Registry(state)
    try:
        same = answer_preference(
            front, slowed_policy(policy, 3.0, 4.0)[0], store=store, registry=registry, serving=accurate
        )
        assert same.action == "serving", "a slowdown the budget absorbs changes nothing"
        answer = answer_preference(front, tight, store=store, registry=registry, serving=accurate)
        assert (answer.action, answer.model_id) == ("deploy", fast)
        # after a label-free answer kept the served data's images, an older export lacks their statistics
        later = answer_preference(front, tight, store=store, registry=registry, serving=accurate, domain_since=time.time())  # fmt: skip
        assert later.action == "export-needed" and "BN statistics of the data served now" in later.reason
    finally:
        store.close()


def test_the_answer_to_a_new_policy_comes_from_the_cached_front(models, tmp_path: Path) -> None:
    state = tmp_path / "state"
    fast = commit_model(state, models["tiny_fast"])
    accurate = register(state, models["tiny_accurate"])
    cache = FrontCache(state / "front" / "front.json")
    store, registry = Store.open(state), Registry(state)
    try:

        def answer(subnet: str, serving: str | None = fast):
            front = cache.get()
            return answer_preference(
                front, policy_for(subnet), store=store, registry=registry, serving=serving, front_error=cache.error
            )

        missing = answer("tiny_accurate")
        assert (
            missing.action == "no-front"
            and "no cached front at" in missing.reason
            and "run `lifelong search`" in missing.reason
        )
        write_front(state / "front" / "front.json")
        assert answer("tiny_fast").action == "serving" and answer("tiny_fast").model_id == fast
        deploy = answer("tiny_accurate")
        assert (deploy.action, deploy.subnet, deploy.model_id) == ("deploy", "tiny_accurate", accurate)
        assert "chooses tiny_accurate for policy 'tiny_accurate' (accuracy 90.0%, 3.00 ms at batch 1)" in deploy.reason
        adapted = answer_preference(
            cache.get(), policy_for("tiny_accurate"), store=store, registry=registry, serving=fast,
            adapted_sha="f" * 64,
        )  # fmt: skip
        assert adapted.action == "export-needed" and "never exported from the adapted supernet" in adapted.reason
        huge = answer("tiny_huge")
        assert huge.action == "export-needed" and huge.model_id is None and "never exported" in huge.reason
        tight = answer_preference(
            cache.get(), Policy(budgets=Budgets(latency_ms_p95=0.1)), store=store, registry=registry, serving=fast
        )
        assert tight.action == "no-point" and "none of the 3 points" in tight.reason
    finally:
        store.close()


# -- the real daemon ----------------------------------------------------------------------------------


def _contrast(images: np.ndarray, factor: float = 0.3) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    return (0.5 + (x - 0.5) * factor).astype(np.float32)  # (N, 28, 28) in [0, 1]


def test_a_shifted_stream_raises_data_drift_in_store_status_and_metrics_and_a_clean_one_does_not(
    models, fashion_test
) -> None:
    run = short_dir("lldr")
    state = run / "state"
    try:
        model = commit_model(state, models["tiny_accurate"])
        (state / "policy.toml").write_text(
            policy_text("tiny_accurate", "window = 50\nreference_window = 50\nfalse_alarm_samples = 200_000\n"
                        "check_interval_s = 0.2\n")
        )  # fmt: skip
        order = np.random.default_rng(0).permutation(len(fashion_test.x))
        clean, shifted = fashion_test.x[order[:250]], _contrast(fashion_test.x[order[250:400]])
        labels = fashion_test.y[order[:20]]
        with DaemonProcess(state, run).start() as d, d.client() as c:
            np.savez(state / "inbox" / "first.npz", x=clean[:20], y=labels)  # local data arrives in the inbox too
            wait_until(lambda: c.status()["drift"]["feed"]["samples"] >= 20, what="the inbox batch fed to drift")
            assert c.status()["drift"]["feed"]["outcomes"] == 20, "its labels are accuracy feedback"
            for i in range(20, len(clean), 10):
                c.predict(clean[i : i + 10])

            def data_checks() -> bool:  # the first when 50 live samples follow the reference, then one per 10
                return c.status()["drift"]["counts"]["data"]["checks"] >= (250 - 100) // 10 + 1

            wait_until(data_checks, timeout=30, what="16 data drift checks of the clean stream")
            doc = c.status()["drift"]
            assert doc["watching"]["model"] == model and doc["watching"]["reference"]["source"] == "collected"
            assert doc["counts"]["data"]["drifted"] == 0 and doc["counts"]["label"]["drifted"] == 0
            assert not doc["latest"]["data"]["drifted"]
            for i in range(0, len(shifted), 10):
                c.predict(shifted[i : i + 10])
            # the detection (drift thread) and the daemon's answer to it (its loop) land a moment apart
            wait_until(
                lambda: any(e["kind"] == "drift" and "no supernet at" in e["message"] for e in c.status()["events"]),
                timeout=30,
                what="data drift and the daemon's answer",
            )
            status = c.status()
            metrics = c.metrics()
        drift = status["drift"]
        assert drift["latest"]["data"]["drifted"] and "data" in drift["drifting"]
        assert any(n["kind"] == "data" and n["action"] == "adapt" for n in drift["needs"])
        assert any(e["kind"] == "drift" and "no supernet at" in e["message"] for e in status["events"])
        assert status["store"]["drift_24h"]["detections"] >= 1
        assert 'lifelong_drift_events_total{kind="data"} 1' in metrics
        store = Store.open(state)
        try:
            (event,) = store.recent_drift(detector="data", decision=True)
            assert event.p_value <= event.threshold and event.window == 50 and event.detail["model"] == model
            assert store.recent_drift(decision=True, detector="label") == []
        finally:
            store.close()
        assert (state / "drift" / f"{model}.npz").is_file(), "the reference is kept for a restart"
    finally:
        remove(run)


@pytest.fixture(scope="module")
def preference_daemon(models):
    run = short_dir("llpf")
    state = run / "state"
    fast = commit_model(state, models["tiny_fast"])
    accurate = register(state, models["tiny_accurate"])
    write_front(state / "front" / "front.json")
    (state / "policy.toml").write_text(policy_text("tiny_fast"))
    d = DaemonProcess(state, run).start()
    yield d, {"tiny_fast": fast, "tiny_accurate": accurate}
    d.close()
    remove(run)


class Hammer:
    """Client threads predicting continuously; every answer and failure kept with its arrival time."""

    def __init__(self, d: DaemonProcess, favour: dict[str, int], threads: int = 3) -> None:
        self.d, self.favour = d, favour
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        r = np.random.default_rng(seed)
        with self.d.client(timeout=30) as c:
            while not self._stop.is_set():
                try:
                    ans = c.predict(r.integers(0, 256, (2, 28, 28), dtype=np.uint8))
                except Exception as exc:  # any failure counts
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.answers.append((time.monotonic(), ans.model))
                    if ans.model not in self.favour or not (ans.classes == self.favour[ans.model]).all():
                        self.failures.append(f"{ans.model} answered {ans.classes.tolist()}")

    def first(self, model: str, after: float) -> float | None:
        with self._lock:
            return next((t for t, m in self.answers if m == model and t >= after), None)

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        wait_until(lambda: len(self.answers) >= 10, what="clients answered")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_a_policy_edit_swaps_to_the_registered_choice_within_2_s_with_no_failed_request(preference_daemon) -> None:
    d, ids = preference_daemon
    favour = {ids[s]: f for s, f in FAVOUR.items()}
    with d.client() as c:
        assert c.health()["model"] == ids["tiny_fast"]
    with Hammer(d, favour) as hammer:
        d.policy.write_text(policy_text("tiny_accurate"))
        saved = time.monotonic()
        served = wait_until(lambda: hammer.first(ids["tiny_accurate"], saved), timeout=20, what="the new model serves")
        wait_until(lambda: len([1 for t, _ in hammer.answers if t > served]) >= 20, what="answers after the swap")
    seconds = served - saved
    print(f"\npolicy file saved -> {ids['tiny_accurate']} serving: {seconds * 1e3:.0f} ms")
    assert hammer.failures == [], hammer.failures[:5]
    assert seconds < 2.0, f"the new model served {seconds:.2f} s after the policy file was saved"
    with d.client() as c:  # it serves before its deployment is committed (swap, then commit): wait for both

        def answered() -> dict | None:
            pref = c.status()["drift"]["latest"].get("preference") or {}
            return pref if pref.get("answer", {}).get("subnet") == "tiny_accurate" else None

        pref = wait_until(answered, timeout=20, what="the preference drift recorded")
        dep = c.history(5)["deployments"][0]
    assert dep["model_id"] == ids["tiny_accurate"] and dep["reason"].startswith(
        "preference drift: policy 'tiny_accurate' changed budgets"
    )
    assert (
        "the cached front chooses tiny_accurate" in dep["reason"]
        and f"exported as {ids['tiny_accurate']}" in dep["reason"]
    )
    assert dep["state"] in ("canary", "active")
    assert pref["drifted"] and pref["answer"]["action"] == "deploy" and "budgets" in pref["detail"]["sections"]
    store = Store.open(d.state_dir)
    try:
        event = store.recent_drift(detector="preference")[0]
        assert event.decision and event.detail["answer"]["model_id"] == ids["tiny_accurate"]
    finally:
        store.close()


def test_a_policy_edit_whose_choice_was_never_exported_is_recorded_and_serving_goes_on(preference_daemon) -> None:
    d, ids = preference_daemon
    favour = {ids[s]: f for s, f in FAVOUR.items()}
    with d.client() as c:
        before = c.health()["model"]
        deployments = len(c.history(50)["deployments"])
    with Hammer(d, favour) as hammer:
        d.policy.write_text(policy_text("tiny_huge", "window = 50\nreference_window = 50\ncheck_interval_s = 0.7\n"))

        def answered() -> dict | None:
            with d.client() as c:
                pref = c.status()["drift"]["latest"].get("preference") or {}
            return (
                pref
                if pref.get("detail", {}).get("digest_after") and pref.get("answer", {}).get("subnet") == "tiny_huge"
                else None
            )

        try:
            pref = wait_until(answered, timeout=20, what="the preference answer")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the daemon's log:\n{d.log()}") from None
        time.sleep(0.3)
    assert hammer.failures == [], hammer.failures[:5]
    assert pref["answer"]["action"] == "export-needed" and "never exported" in pref["answer"]["reason"]
    with d.client() as c:
        status = c.status()
        assert c.health()["model"] == before and len(c.history(50)["deployments"]) == deployments
    assert {m for _, m in hammer.answers} == {before}
    assert status["jobs"]["drift-check"]["interval_s"] == 0.7, "the drift check follows drift.check_interval_s"
    assert any(n["kind"] == "preference" and n["action"] == "export" for n in status["drift"]["needs"])
    assert any(e["kind"] == "preference" and f"{before} serves on" in e["message"] for e in status["events"])
    store = Store.open(d.state_dir)
    try:
        event = store.recent_drift(detector="preference")[0]
        assert event.decision and event.detail["answer"]["action"] == "export-needed"
        assert event.detail["sections"] == ["budgets", "drift"] and event.statistic == 2.0
    finally:
        store.close()


def test_lifelong_front_marks_the_points_in_the_registry_and_the_one_serving(models, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from service.cli.main import cli
    from service.state.store import registered_subnets

    state = tmp_path / "state"
    assert registered_subnets(state) == {}, "no store: nothing registered, nothing created"
    assert not state.exists()
    accurate = commit_model(state, models["tiny_accurate"])
    fast = register(state, models["tiny_fast"])
    write_front(state / "front" / "front.json")
    assert registered_subnets(state) == {"tiny_accurate": [accurate], "tiny_fast": [fast]}
    pruned = Store.open(state)
    try:  # a model pruned from the registry is no longer deployable: not listed
        pruned.mark_models_removed([fast])
        assert registered_subnets(state) == {"tiny_accurate": [accurate]}
    finally:
        pruned.close()
    fast = register(state, models["tiny_fast"])  # registered again
    out = CliRunner().invoke(cli, ["front", "--state-dir", str(state), "--policy", "balanced"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[-1]: line[:2] for line in out.output.splitlines() if line.rstrip().endswith(tuple(POINTS))}
    assert rows["tiny_accurate"][1] == "s" and rows["tiny_fast"][1] == "e" and rows["tiny_huge"][1] == " ", rows
    assert "e = exported (in the registry), s = serving" in out.output
    doc = CliRunner().invoke(cli, ["front", "--state-dir", str(state), "--policy", "balanced", "--json"])
    points = {p["subnet"]: p for p in json.loads(doc.output)["points"]}
    assert points["tiny_accurate"]["models"] == [accurate] and points["tiny_accurate"]["serving"]
    assert points["tiny_huge"]["models"] == [] and not points["tiny_fast"]["serving"]


# -- class-mix correction, in-process ------------------------------------------------------------------

_MU = np.random.default_rng(42).normal(0, 1.6, (10, DIMS)).astype(np.float32)


def _gaussian_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Bayes classifier of unit-variance Gaussian classes around ``_MU`` (uniform priors)."""
    emb = x.reshape(len(x), -1)[:, :DIMS] * 16 - 8  # pixels in [0, 1] carry embeddings in [-8, 8]
    logits = -0.5 * ((emb[:, None, :] - _MU[None]) ** 2).sum(axis=2)
    return logits.astype(np.float32), emb


def _images(priors: np.ndarray, n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    y = r.choice(10, n, p=priors)
    x = np.zeros((n, 1, 28, 28), np.float32)
    x.reshape(n, -1)[:, :DIMS] = np.clip((_MU[y] + r.standard_normal((n, DIMS)) + shift + 8) / 16, 0, 1)
    return x, y


def _serve(rt: MemoryRuntime, feed: DriftFeed, x: np.ndarray, batch: int = 20) -> np.ndarray:
    classes = []
    for i in range(0, len(x), batch):
        pred = rt.predict(x[i : i + batch])
        feed.add_prediction(pred.model_id, pred.embedding, pred.classes, pred.probabilities, pred.logit_offset)
        classes.append(pred.classes)
    return np.concatenate(classes)


def _class_mix_check(tmp_path: Path) -> tuple[Store, MemoryRuntime, DriftFeed, list, DriftCheck]:
    """A drift check on the Gaussian model ``m1`` with a short window, and the drifts it detects."""
    drift = DriftSettings(window=300, reference_window=600, false_alarm_samples=200_000, check_interval_s=0.2)
    store = Store(tmp_path / "state.db")
    rt = MemoryRuntime({"m1": _gaussian_model}, RuntimeSettings(warmup_runs=0))
    rt.swap("m1", None)
    feed, detected = DriftFeed(), []
    check = DriftCheck(store, rt, lambda: Policy(drift=drift), feed=feed, reference_dir=tmp_path / "d", on_detected=detected.append)  # fmt: skip
    return store, rt, feed, detected, check


@pytest.mark.parametrize("scenario", ["class-mix", "noise"])
def test_a_class_mix_drift_is_corrected_on_the_logits_and_a_covariate_one_is_not(tmp_path: Path, scenario) -> None:
    store, rt, feed, detected, check = _class_mix_check(tmp_path)
    uniform = np.full(10, 0.1)
    _serve(rt, feed, _images(uniform, 900, seed=1)[0])
    check.run()
    skew = np.array([0.45, 0.35] + [0.025] * 8)
    x, y = _images(skew, 600, seed=2) if scenario == "class-mix" else _images(uniform, 600, seed=2, shift=1.0)
    served = _serve(rt, feed, x)
    check.run()
    assert detected and {d.kind for d in detected[0].decisions} & {"data", "label"}
    found = detected[0].class_mix
    if scenario == "noise":
        assert found is not None and not found["answered"] and "does not explain" in found["reason"]
        assert rt.logit_offset("m1") is None and not check.status()["class_mix"]["in_force"]
        return
    assert found is not None and found["answered"], found
    assert found["priors"][0] == pytest.approx(0.45, abs=0.08) and found["priors"][1] == pytest.approx(0.35, abs=0.08)
    offset = rt.logit_offset("m1")
    assert offset is not None and offset[0] > 1 and offset[2] < -1
    assert check.status()["class_mix"]["in_force"]
    text = format_status({"drift": check.status()})
    assert "class mix:  corrected on the logits since" in text and "class 0 4" in text, text
    x2, y2 = _images(skew, 2000, seed=3)
    plain = _gaussian_model(x2)[0].argmax(1)
    corrected = _serve(rt, feed, x2)
    assert (corrected == y2).mean() >= (plain == y2).mean() + 0.03, ((corrected == y2).mean(), (plain == y2).mean())
    assert (served == y).mean() < (corrected == y2).mean()
    check.run()
    # the mix goes back to training: the correction follows and is removed
    _serve(rt, feed, _images(uniform, 900, seed=4)[0])
    check.run()
    assert rt.logit_offset("m1") is None, check.status()["class_mix"]
    assert "back to training" in check.status()["class_mix"]["removed_because"]
    store.close()


def test_answers_collapsed_onto_one_class_get_no_class_mix_correction(tmp_path: Path) -> None:
    """Nine in ten answers on one class read as new-looking inputs: no correction, so the drift
    gets the other answers (BN statistics, adaptation)."""
    store, rt, feed, detected, check = _class_mix_check(tmp_path)
    _serve(rt, feed, _images(np.full(10, 0.1), 900, seed=1)[0])
    check.run()
    one = np.full(10, 0.004)
    one[3] = 0.964
    _serve(rt, feed, _images(one, 600, seed=2)[0])
    check.run()
    assert detected and {d.kind for d in detected[0].decisions} & {"data", "label"}
    found = detected[0].class_mix
    assert found is not None and not found["answered"] and "collapsed onto class 3" in found["reason"], found
    assert found["priors"][3] >= 0.9
    assert rt.logit_offset("m1") is None and not check.status()["class_mix"]["in_force"]
    store.close()


@pytest.mark.parametrize("labels_say", ["the correction is wrong", "the correction is right"])
def test_feedback_overrules_a_class_mix_correction_that_serves_worse(tmp_path: Path, labels_say: str) -> None:
    from service.api.feedback import StoreFeedback

    store, rt, feed, detected, check = _class_mix_check(tmp_path)
    sink = StoreFeedback(store, tmp_path / "fb", on_corrected=check.class_mix.add_verdicts)
    _serve(rt, feed, _images(np.full(10, 0.1), 900, seed=1)[0])
    check.run()
    skew = np.array([0.45, 0.35] + [0.025] * 8)
    _serve(rt, feed, _images(skew, 600, seed=2)[0])
    check.run()
    assert detected and detected[0].class_mix["answered"] and rt.logit_offset("m1") is not None
    # predictions served under the correction, then labelled through the feedback sink
    x, y = _images(skew, 600, seed=3)
    labels = []
    for i in range(0, len(x), 20):
        pred = rt.predict(x[i : i + 20])
        own = pred.uncorrected_classes()
        assert own is not None and (own == _gaussian_model(x[i : i + 20])[0].argmax(1)).all()
        sink.record(f"r{i}", x[i : i + 20], pred)
        truth = own if labels_say == "the correction is wrong" else y[i : i + 20]
        labels += [FeedbackLabel(f"r{i}", j, int(t)) for j, t in enumerate(truth)]
    sink.label(labels)
    verdicts = check.status()["class_mix"]["feedback"]
    assert verdicts["labels"] == 600 and verdicts["own_only"] + verdicts["served_only"] > 0, verdicts
    check.run()
    mix = check.status()["class_mix"]
    if labels_say == "the correction is right":
        assert mix["in_force"] and rt.logit_offset("m1") is not None and len(detected) == 1, mix
        store.close()
        return
    assert not mix["in_force"] and rt.logit_offset("m1") is None, mix
    assert "overruled by feedback" in mix["removed_because"] and "sign test p" in mix["removed_because"]
    # the drift the correction answered is sent again, to be adapted to
    assert len(detected) == 2 and detected[1].class_mix["overruled"] and not detected[1].class_mix["answered"]
    assert {d.kind for d in detected[1].decisions} == {d.kind for d in detected[0].decisions} & {"data", "label"}
    # and the correction is not made again on this model
    assert "overruled" in check.class_mix.judge()["reason"]
    store.close()


def test_the_sign_test_is_exact_and_one_sided() -> None:
    from service.serving.class_mix import sign_test

    assert sign_test(0, 0) == 1.0 and sign_test(3, 0) == pytest.approx(1 / 8)
    assert sign_test(10, 0) == pytest.approx(1 / 1024) and sign_test(0, 10) == pytest.approx(1.0)
    assert sign_test(30, 10) < 0.01 < sign_test(14, 6)


def test_the_status_shows_how_feedback_judges_the_correction_in_force() -> None:
    mix = {"in_force": True, "since": time.time() - 5, "priors": [0.5, 0.3] + [0.025] * 8}
    mix["feedback"] = {"labels": 200, "served": 120, "own": 150, "own_only": 40, "served_only": 10}
    text = format_status({"drift": {"class_mix": mix}})
    assert "judged by 200 feedback labels: right 60.0% corrected, 75.0% without" in text, text

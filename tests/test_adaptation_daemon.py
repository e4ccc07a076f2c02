"""The lifelong loop end to end in the real daemon: drift, adaptation in a worker, swap.

A tiny supernet is trained for a few seconds on Fashion-MNIST; the model serving is a poor
one (random weights). A stream of inverted images raises data drift; its feedback labels are
the local samples the worker adapts the supernet on. The daemon must swap to the adapted
candidate through its validated deploy, make the adapted supernet current without touching
the original, record the job in the store, and answer every request meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from daemon_harness import DaemonProcess, commit_model, remove, short_dir, wait_until
from tiny_space import TINY_SPACE, train_tiny_supernet

from lifelong.data.calibration import calibration_path, load_calibration
from lifelong.deploy.export import export_subnet
from lifelong.nn.checkpoint import load_checkpoint
from lifelong.nn.supernet import Supernet, recalibrate_bn
from lifelong.persist.supernet_versions import adapted_in_use, current_supernet
from lifelong.search.front import Front
from lifelong.space.config import Precision, SearchSpace
from service.daemon.documents import format_status
from service.state.store import Store

pytestmark = pytest.mark.slow  # daemons that run real adaptation workers (about 50 s): `pytest -m slow`, run by CI

# Latencies of a model this small are a few tens of microseconds, noise on a busy machine: the
# latency rule of the swap decision is tested apart (test_adaptation.py).
POLICY = """format_version = 1
name = "adapt-test"
[target]
threads = 1
[objective]
kind = "max-accuracy"
[drift]
window = 50
reference_window = 100
false_alarm_samples = 1000
check_interval_s = 0.3
[adaptation]
max_seconds = 60
priority = 0
replay_buffer = 300
finetune_steps = 25
min_samples = 80
max_samples = 400
label_free = "off"
[swap]
min_improvement = 0.02
canary_window = 20
rollback_latency_factor = 10.0
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _search_inputs(state: Path, checkpoint_sha: str) -> None:
    """A predictor (on made-up accuracies), a device profile and a front for the tiny space,
    so that the worker re-searches and the daemon installs the adapted supernet's front."""
    from search_helpers import structured_profile

    from lifelong.predictor.build import BuildSettings, build_predictor
    from lifelong.predictor.mlp import PredictorConfig
    from lifelong.predictor.samples import PredictorData, Provenance, Sample, planned_subnets
    from lifelong.search.front_search import SearchSettings, search_front
    from policies import Policy
    from service.state.paths import default_front, default_predictor, default_profile

    space = SearchSpace(TINY_SPACE)
    rng = np.random.default_rng(0)
    samples = []
    for kind, n in (("fp", 30), ("quant", 30)):
        for i, cfg in enumerate(planned_subnets(space, kind, n, seed=1)):
            a = float(0.6 + 0.2 * rng.random())
            samples.append(Sample(kind, i, str(cfg), a, 1.0, 1.0, (a, a)))
    data = PredictorData(TINY_SPACE, Provenance(checkpoint_sha, "made up", 0.1, 0, 100, 100, 0), tuple(samples))
    settings = BuildSettings(holdout=5, compare_at=(), config=PredictorConfig(max_epochs=20, patience=5))
    predictor, _ = build_predictor(data, settings)
    predictor.save(default_predictor(state))
    profile = structured_profile(space)
    profile.save(default_profile(state))
    found = search_front(
        predictor, profile, Policy(), space=space, settings=SearchSettings(evaluations=400, population=40)
    )
    found.front.save(default_front(state))


@pytest.fixture(scope="module")
def adapt_state(fashion_train, fashion_test, tmp_path_factory: pytest.TempPathFactory):
    """A state dir with a briefly trained tiny supernet, and a random-weights model serving."""
    run = short_dir("llad")
    state = run / "state"
    train_tiny_supernet(fashion_train, state / "supernet" / "supernet.pt")
    _search_inputs(state, _sha(state / "supernet" / "supernet.pt"))
    untrained = Supernet(SearchSpace(TINY_SPACE))
    sub = untrained.get_subnet(SearchSpace(TINY_SPACE).largest(Precision(32, 32)))
    images = fashion_test.as_float()[:200]
    recalibrate_bn(sub, torch.from_numpy(images))
    sub.eval()
    tmp = tmp_path_factory.mktemp("serving")
    # named as exported from the original supernet (it stands in for a poor export of it), so
    # that rolling the adapted model back brings the original supernet and its front back
    export_subnet(sub, tmp / "serving.onnx", images, fashion_test.y[:200], checkpoint_sha256=_sha(state / "supernet" / "supernet.pt"))  # fmt: skip
    model_id = commit_model(state, tmp / "serving.onnx")
    (state / "policy.toml").write_text(POLICY)
    yield run, state, model_id
    remove(run)


def test_data_drift_adapts_the_supernet_in_a_worker_and_swaps_with_no_failed_request(adapt_state, fashion_test):
    run, state, serving = adapt_state
    original_path = state / "supernet" / "supernet.pt"
    original_sha = _sha(original_path)
    order = np.random.default_rng(0).permutation(len(fashion_test.x))
    clean = fashion_test.x[order[:200]]
    stream_x, stream_y = 255 - fashion_test.x[order[200:]], fashion_test.y[order[200:]]
    failures: list[str] = []
    models_seen: list[str] = []
    with DaemonProcess(state, run).start() as d, d.client(timeout=60) as c:
        for i in range(0, len(clean), 10):
            c.predict(clean[i : i + 10])

        def reference() -> bool:
            watching = c.status()["drift"]["watching"] or {}
            return (watching.get("reference") or {}).get("source") == "collected"

        wait_until(reference, timeout=30, what="a drift reference of clean images")
        i, deadline = 0, time.monotonic() + 240
        while time.monotonic() < deadline:
            batch = slice(i % len(stream_x), i % len(stream_x) + 10)
            try:
                ans = c.predict(stream_x[batch])
                c.feedback(labels=[(ans.request_id, k, int(y)) for k, y in enumerate(stream_y[batch])])
                models_seen.append(ans.model)
            except Exception as exc:  # every failure counts
                failures.append(f"{type(exc).__name__}: {exc}")
            i += 10
            if i % 100 == 0:
                last = c.status()["adaptation"]["last"]
                if last is not None:
                    break
            time.sleep(0.01)
        status = c.status()
        models_seen.append(c.predict(stream_x[:10]).model)  # the loop may end between the swap and a request
        history = c.history()["deployments"]
        metrics = c.metrics()
        pointer = (state / "supernet" / "current.json").read_text()
        front = Front.load(state / "front" / "front.json")
        rolled = None
        if (status["adaptation"]["last"] or {}).get("outcome") == "swapped":  # undo it: the supernet follows
            c.rollback("test: undo the adaptation")
            rolled = c.status()
    adaptation = status["adaptation"]
    print(f"\nadaptation: {adaptation['last']}")
    assert adaptation["last"] is not None, f"no adaptation ended within 240 s: {status['events'][:5]}"
    last = adaptation["last"]
    assert last["outcome"] == "swapped", last
    assert last["candidate"]["local_accuracy"] > last["serving"]["local_accuracy"] + 0.02
    assert history[0]["reason"].startswith("adaptation: candidate "), history[0]
    new_model = history[0]["model_id"]
    assert new_model != serving and status["model"] == new_model
    assert models_seen[0] == serving and models_seen[-1] == new_model
    assert failures == [], failures[:5]
    assert "adapt:    last swapped" in format_status(status)
    assert 'lifelong_worker_jobs_total{kind="adapt",outcome="swapped"} 1' in metrics
    events = [e["message"] for e in status["events"]]
    assert any("adaptation started" in m for m in events) and any("adaptation swapped" in m for m in events), events
    # the adapted supernet is a new version in use; the original is untouched
    assert _sha(original_path) == original_sha
    adapted = sorted((state / "supernet" / "adapted").glob("*.pt"))
    assert len(adapted) == 1 and adapted[0].name in pointer
    calib = load_calibration(calibration_path(adapted[0]))  # what a later export from it re-calibrates on
    assert calib.shape[1:] == (1, 28, 28) and len(calib) >= 80
    # the cached front was the adapted supernet's, searched on its local measurements; each version's is kept
    original = Front.load(state / "front" / "versions" / f"{original_sha}.json")
    assert front.info["checkpoint_sha256"] == _sha(adapted[0]) and front.info["adapted_from"] == original_sha
    assert "adapted_from" not in original.info
    assert Front.load(state / "front" / "versions" / f"{_sha(adapted[0])}.json") == front
    result = json.loads(result_path(state).read_text())
    # measured, not predicted: each subnet with the calibration the version keeps (the winner's)
    kept = next(m["calibration"] for m in result["measurements"] if m["subnet"] == result["candidate"]["subnet"])
    local = {m["subnet"]: m["local_accuracy"] for m in result["search"]["calibrations"] if m["calibration"] == kept}
    assert {p.subnet for p in front.points} == set(local) == set(front.info["validation_measured"])
    assert all(p.accuracy == pytest.approx(local[p.subnet]) for p in front.points), "measured, not predicted"
    assert any("the cached front is now the adapted supernet's" in m for m in events), events
    # the rollback brought the model, the original supernet and its front back
    assert rolled is not None and rolled["model"] == serving
    assert adapted_in_use(state / "supernet") is None and current_supernet(state / "supernet") == original_path
    assert Front.load(state / "front" / "front.json") == original
    assert any("the supernet in use is again supernet.pt with its front" in e["message"] for e in rolled["events"])
    store = Store.open(state)
    try:
        (search,) = store.recent_searches(1)
        assert re.match(r"adaptation: (data|label|accuracy) drift on ", search.trigger), search.trigger
        assert search.state == "done" and search.progress == 1.0
        assert search.result["candidate"]["subnet"] == last["candidate"]["subnet"]
    finally:
        store.close()


def result_path(state: Path) -> Path:
    (path,) = sorted((state / "adapt").glob("adapt-*/result.json"))
    return path


# -- the label-free first answer -----------------------------------------------------------------


def _contrast(images: np.ndarray) -> np.ndarray:
    """Half the contrast, same mean grey (the drift benchmark's contrast shift), uint8."""
    return np.rint(images.astype(np.float32) * 0.5 + 64).astype(np.uint8)


@pytest.fixture
def label_free_state(fashion_train, fashion_test):
    """The tiny supernet trained briefly; its largest subnet (clean BN) serves."""
    run = short_dir("llbn")
    state = run / "state"
    ckpt = train_tiny_supernet(fashion_train, state / "supernet" / "supernet.pt", epochs=2, samples=3000)
    model = load_checkpoint(ckpt).build()
    space = SearchSpace(TINY_SPACE)
    sub = model.get_subnet(space.largest(Precision(32, 32)))
    recalibrate_bn(sub, torch.from_numpy(fashion_train.as_float()[:500]))
    sub.eval()
    images = fashion_test.as_float()[:200]
    out = export_subnet(sub, run / "serving.onnx", images, fashion_test.y[:200], checkpoint_sha256=_sha(ckpt))
    model_id = commit_model(state, out.path)
    (state / "policy.toml").write_text(POLICY.replace('label_free = "off"', 'label_free = "bn"'))
    yield run, state, model_id, out.path
    remove(run)


def test_data_drift_gets_a_label_free_answer_from_unlabelled_samples_within_seconds(label_free_state, fashion_test):
    """No label is ever sent: BN statistics re-estimated on the shifted samples served answer the drift."""
    import onnxruntime as ort

    run, state, serving, serving_path = label_free_state
    order = np.random.default_rng(1).permutation(len(fashion_test.x))
    clean = fashion_test.x[order[:200]]
    shifted_x = _contrast(fashion_test.x[order[200:1200]])
    eval_x, eval_y = _contrast(fashion_test.x[order[1200:3200]]), fashion_test.y[order[1200:3200]]
    failures: list[str] = []
    with DaemonProcess(state, run).start() as d, d.client(timeout=60) as c:
        for i in range(0, len(clean), 10):
            c.predict(clean[i : i + 10])
        wait_until(lambda: ((c.status()["drift"]["watching"] or {}).get("reference") or {}).get("source") == "collected",
                   timeout=30, what="a drift reference of clean images")  # fmt: skip
        detected_at = swapped_at = None
        i, deadline = 0, time.monotonic() + 120
        while time.monotonic() < deadline and swapped_at is None:
            try:
                c.predict(shifted_x[i % len(shifted_x) : i % len(shifted_x) + 10])
            except Exception as exc:  # every failure counts
                failures.append(f"{type(exc).__name__}: {exc}")
            i += 10
            if i % 50 == 0:
                status = c.status()
                if detected_at is None and status["drift"]["counts"]["data"]["drifted"]:
                    detected_at = time.monotonic()
                if (status["adaptation"]["last"] or {}).get("outcome") is not None:
                    swapped_at = time.monotonic()
            time.sleep(0.005)
        status = c.status()
        adapted = status["model"]
        first = status["adaptation"]["last"] or {}  # said before the file is read: a refusal names its reason
        assert first.get("outcome") == "swapped", (first, [e["message"] for e in status["events"]][-12:])
        domain = load_calibration(state / "supernet" / "domain.calib.npz")  # what later exports calibrate on
        assert domain.shape == (200, 1, 28, 28) and abs(float(domain.mean()) - float(shifted_x.mean()) / 255) < 0.05
        # the data goes back: the adapted model's own reference is shifted data, so clean data
        # is a drift too, and the same answer brings clean statistics back
        back_x = fashion_test.x[order[3200:4400]]

        def adapted_reference() -> bool:
            watching = c.status()["drift"]["watching"] or {}
            return watching.get("model") == adapted and (watching.get("reference") or {}).get("source") == "collected"

        k = 0
        while not adapted_reference():  # the adapted model's reference: shifted data
            c.predict(shifted_x[k % len(shifted_x) : k % len(shifted_x) + 10])
            k += 10
            assert k < 2000, "the adapted model's drift reference was never collected"
        k, deadline = 0, time.monotonic() + 90
        while time.monotonic() < deadline and c.status()["model"] == adapted:
            for _ in range(5):
                c.predict(back_x[k % len(back_x) : k % len(back_x) + 10])
                k += 10
            time.sleep(0.01)
        # the swap shows in the status a moment before the loop records its events: wait for them
        wait_until(lambda: any("domain memory" in e["message"] for e in c.status()["events"]), timeout=10,
                   what="the domain memory's event")  # fmt: skip
        back = c.status()
    last = status["adaptation"]["last"]
    events = [e["message"] for e in status["events"]]
    print(f"\nlabel-free: {last}")
    assert last is not None, f"no label-free answer within 120 s: {events[:8]}"
    assert any("label-free answer pending" in m for m in events), events
    assert any(re.search(r"adaptation started \(adapt-bn-\S+\) on \d+ unlabelled local images", m) for m in events), events  # fmt: skip
    assert last["outcome"] == "swapped", last
    assert last["reason"].startswith("label-free: BN statistics re-estimated on"), last
    assert status["model"] != serving and failures == [], failures[:5]
    assert detected_at is not None and swapped_at - detected_at < 60, "detection to swap"
    # the label-free model is right more often on the shifted data, though no label was used
    (bn_dir,) = sorted((state / "adapt").glob("adapt-bn-*"))  # the answer to the shift; the way back needs none
    acc = {}
    for name, path in (("serving", serving_path), ("candidate", bn_dir / "candidate.onnx")):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"image": eval_x[:, None].astype(np.float32) / 255})[0]
        acc[name] = float((logits.argmax(1) == eval_y).mean())
    assert acc["candidate"] >= acc["serving"] + 0.05, acc
    assert status["adaptation"]["pending"] is not None, "the labelled answer still waits for labels"
    assert "labelled local samples" in status["adaptation"]["pending"]["waiting_for"]
    # the way back: the domain memory finds that the clean data looks like what the original
    # model served (its kept drift reference) and deploys it again, without a worker
    back_events = [e["message"] for e in back["events"]]
    assert back["model"] == serving, back_events[:12]
    assert any("domain memory: the last 200 samples served look like the data" in m for m in back_events), "\n".join(back_events[:20])  # fmt: skip
    assert not (state / "supernet" / "domain.calib.npz").exists(), "exports calibrate on the training data again"
    clean_x, clean_y = fashion_test.x[order[4400:6400]], fashion_test.y[order[4400:6400]]
    for name, path in (("original", serving_path), ("shifted", bn_dir / "candidate.onnx")):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"image": clean_x[:, None].astype(np.float32) / 255})[0]
        acc[f"clean_{name}"] = float((logits.argmax(1) == clean_y).mean())
    print(f"label-free accuracies: {acc}")
    assert acc["clean_original"] > acc["clean_shifted"] + 0.2, acc
    text = format_status(status)
    assert "adapt:    pending since" in text and "waiting for labelled local samples" in text, text
    assert "last swapped" in text and "label-free: BN statistics re-estimated" in text, text


def test_the_label_free_job_measures_both_models_on_labels_that_already_arrived(label_free_state, fashion_test):
    """The BN job with labelled local samples in its request: both models' top-1 on them, for the
    decision; with too few, none (the class mix judges)."""
    from lifelong.jobs.adapt_request import AdaptRequest
    from lifelong.jobs.bn_adapt import MIN_LABELLED_CHECK, run_bn_adaptation
    from policies import Policy, policy_to_dict

    run, state, _, serving_path = label_free_state
    x = _contrast(fashion_test.x[:600])
    np.savez(run / "unlabelled.npz", x=x[:300])
    np.savez(run / "labelled.npz", x=x[300:], y=fashion_test.y[300:600])
    refs = tuple((f"{run / 'labelled.npz'}#{i}", int(fashion_test.y[300 + i])) for i in range(300))
    subnet = str(SearchSpace(TINY_SPACE).largest(Precision(32, 32)))

    def job(samples: tuple, out: str) -> dict:
        req = AdaptRequest(
            samples=samples, checkpoint=str(state / "supernet" / "supernet.pt"), supernet_dir=str(state / "supernet"),
            out_dir=str(run / out), policy=policy_to_dict(Policy()), replay=str(run / "none.npz"), mode="bn",
            serving={"model_id": "m", "subnet": subnet, "path": str(serving_path)},
            unlabelled=str(run / "unlabelled.npz"), threads=1,
        )  # fmt: skip
        return run_bn_adaptation(req, Policy())

    got = job(refs, "with-labels")
    assert got["samples"] == {"unlabelled": 300, "labelled": 300}
    cand, serving = got["candidate"]["local_accuracy"], got["serving"]["local_accuracy"]
    assert cand > serving + 0.2, (cand, serving)  # contrast halved: the new statistics help a lot
    few = job(refs[: MIN_LABELLED_CHECK - 1], "few-labels")
    assert few["samples"]["labelled"] == 0 and "local_accuracy" not in few["candidate"]

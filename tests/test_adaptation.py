"""Adaptation parts: the replay buffer, local samples by reference, supernet versions, the
request file, the swap decision, and fine-tuning a tiny supernet on shifted local data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_space import TINY_SPACE

from lifelong.data.datasets import ArrayDataset
from lifelong.data.local import load_refs
from lifelong.data.replay import build_replay, load_replay, save_replay
from lifelong.errors import CheckpointError, DataError, FormatVersionError, TrainingError
from lifelong.jobs.adapt import AdaptRequest
from lifelong.nn.supernet import Supernet, init_quantizers
from lifelong.persist.supernet_versions import (
    adapted_in_use,
    adapted_path,
    current_supernet,
    list_versions,
    set_current,
)
from lifelong.space.config import Precision, SearchSpace
from lifelong.train.adapt import AdaptSettings, calibration_mix, finetune, measure_subnets
from policies import Policy
from policies.schema import Budgets, SwapRules
from service.workers.adaptation import decide_swap


def _data(n: int, seed: int = 0) -> ArrayDataset:
    r = np.random.default_rng(seed)
    return ArrayDataset(r.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10, tuple("abcdefghij"), "t")


# -- replay buffer ------------------------------------------------------------------------------


def test_replay_buffer_is_class_balanced_and_round_trips(tmp_path: Path) -> None:
    data = ArrayDataset(np.zeros((300, 28, 28), np.uint8), np.r_[np.zeros(200, int), np.arange(100) % 5 + 1], (), "d")
    buf = build_replay(data, 60, seed=1)
    assert len(buf) == 60
    assert np.bincount(buf.y, minlength=6).tolist() == [10] * 6, "each class gives the same share"
    back = load_replay(save_replay(tmp_path / "r.npz", buf))
    assert np.array_equal(back.x, buf.x) and np.array_equal(back.y, buf.y)


def test_replay_buffer_rejects_foreign_and_future_files(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable replay buffer"):
        load_replay(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError, match="not a lifelong replay buffer"):
        load_replay(tmp_path / "other.npz")
    np.savez(tmp_path / "v9.npz", kind=np.array("lifelong-replay"), format_version=np.array(9))
    with pytest.raises(FormatVersionError, match="version 9"):
        load_replay(tmp_path / "v9.npz")
    with pytest.raises(DataError, match="no replay buffer"):
        load_replay(tmp_path / "missing.npz")


# -- local samples ------------------------------------------------------------------------------


def test_local_samples_are_read_by_reference_and_missing_ones_are_named(tmp_path: Path) -> None:
    x = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    np.savez(tmp_path / "b.npz", x=x, y=np.array([1, 2, 3]))
    items = [(f"{tmp_path}/b.npz#2", 7), (f"{tmp_path}/b.npz#0", 5), (f"{tmp_path}/gone.npz#0", 1)]
    data, problems = load_refs(items)
    assert np.array_equal(data.x, x[[2, 0]]) and data.y.tolist() == [7, 5], "the stored label wins, in order"
    assert len(problems) == 1 and "gone.npz" in problems[0]
    with pytest.raises(DataError, match="none of the 1 local samples"):
        load_refs([(f"{tmp_path}/gone.npz#0", 1)])
    with pytest.raises(DataError, match="past its end"):
        load_refs([(f"{tmp_path}/b.npz#3", 1)], skip_missing=False)


# -- supernet versions ---------------------------------------------------------------------------


def test_supernet_versions_fall_back_to_the_original_and_move_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "supernet"
    folder.mkdir()
    (folder / "supernet.pt").write_bytes(b"original")
    assert current_supernet(folder) == folder / "supernet.pt"
    v1 = adapted_path(folder, "ab" * 32, at=0)
    assert v1.parent == folder / "adapted" and v1.name == "19700101T000000-abababababab.pt"
    v1.parent.mkdir()
    v1.write_bytes(b"adapted")
    version = set_current(folder, v1, reason="test")
    assert current_supernet(folder) == v1 and version.path == "adapted/19700101T000000-abababababab.pt"
    assert list_versions(folder) == [folder / "supernet.pt", v1]
    v1.unlink()  # a dangling pointer means the original
    assert current_supernet(folder) == folder / "supernet.pt"
    with pytest.raises(CheckpointError, match="not under"):
        (tmp_path / "elsewhere.pt").write_bytes(b"x")
        set_current(folder, tmp_path / "elsewhere.pt")
    (folder / "current.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="delete it"):
        current_supernet(folder)


def test_a_version_is_found_by_its_content_hash(tmp_path: Path) -> None:
    import hashlib

    from lifelong.persist.supernet_versions import find_version, sha_in_use

    folder = tmp_path / "supernet"
    assert sha_in_use(folder) is None, "no supernet, no version in use"
    folder.mkdir()
    (folder / "supernet.pt").write_bytes(b"original")
    sha0, sha1 = hashlib.sha256(b"original").hexdigest(), hashlib.sha256(b"adapted").hexdigest()
    v1 = adapted_path(folder, sha1, at=0)
    v1.parent.mkdir()
    v1.write_bytes(b"adapted")
    assert sha_in_use(folder) == sha0
    set_current(folder, v1)
    assert sha_in_use(folder) == sha1
    assert find_version(folder, sha1) == v1 and find_version(folder, sha0) == folder / "supernet.pt"
    assert find_version(folder, "0" * 64) is None
    set_current(folder, folder / "supernet.pt")  # back to the original: no adapted version in use
    assert adapted_in_use(folder) is None and sha_in_use(folder) == sha0


# -- request and decision ------------------------------------------------------------------------


def test_adapt_request_round_trips_and_rejects_malformed_files(tmp_path: Path) -> None:
    req = AdaptRequest(samples=(("a.npz#0", 3),), checkpoint="c", supernet_dir="s", out_dir="o", policy={}, replay="r")
    assert AdaptRequest.load(req.save(tmp_path / "req.json")) == req
    doc = json.loads((tmp_path / "req.json").read_text())
    (tmp_path / "v2.json").write_text(json.dumps({**doc, "format_version": 2}))
    with pytest.raises(DataError, match="request format 2, expected 1"):
        AdaptRequest.load(tmp_path / "v2.json")
    (tmp_path / "extra.json").write_text(json.dumps({**doc, "surprise": 1}))
    with pytest.raises(DataError, match="malformed adaptation request"):
        AdaptRequest.load(tmp_path / "extra.json")


def _result(cand_acc: float, serving_acc: float | None, **cand: object) -> dict[str, object]:
    candidate = {"subnet": "s", "local_accuracy": cand_acc, "replay_accuracy": 0.9, "bytes": 1000,
                 "latency_ms": {"1": 0.5}, **cand}  # fmt: skip
    serving = None if serving_acc is None else {"local_accuracy": serving_acc, "replay_accuracy": 0.9}
    return {"candidate": candidate, "serving": serving}


def test_the_swap_decision_follows_the_policy() -> None:
    swap = SwapRules(min_improvement=0.01, max_forgetting=0.03)
    policy = Policy(budgets=Budgets(latency_ms_p95=1.0, model_bytes=5000), swap=swap)
    assert decide_swap(_result(0.80, 0.70), policy).swap
    kept = decide_swap(_result(0.705, 0.70), policy)
    assert not kept.swap and "below the minimum improvement of 1.00 pt" in kept.reason and "+0.50 pt" in kept.reason
    slow = decide_swap(_result(0.9, 0.5, latency_ms={"1": 2.0}), policy)
    assert not slow.swap and "over the budget of 1.0 ms" in slow.reason
    big = decide_swap(_result(0.9, 0.5, bytes=9000), policy)
    assert not big.swap and "over the budget of 5000" in big.reason
    forgets = decide_swap(_result(0.9, 0.5, replay_accuracy=0.85), policy)
    assert not forgets.swap and "loses 5.00 pt on the original data" in forgets.reason
    assert "3.00 pt allowed by swap.max_forgetting" in forgets.reason
    assert decide_swap(_result(0.9, 0.5, replay_accuracy=0.875), policy).swap, "2.5 pt is within 3"
    slower = {"candidate": _result(0.9, 0.5)["candidate"] | {"latency_ms": {"1": 0.9}},
              "serving": {"local_accuracy": 0.5, "latency_ms": {"1": 0.4}}}  # fmt: skip
    assert decide_swap(slower, policy).swap, "slower than the serving model but within the budget: chosen"
    assert decide_swap(_result(0.5, None), policy).swap, "nothing measured to beat"
    assert not decide_swap({"candidate": None}, policy).swap


def test_forgetting_is_measured_against_the_model_before_the_drift_not_the_label_free_answer() -> None:
    policy = Policy(swap=SwapRules(min_improvement=0.005, max_forgetting=0.02))

    def after_label_free(cand_local: float, cand_replay: float, serving_replay: float = 0.45) -> dict:
        r = _result(cand_local, 0.88, replay_accuracy=cand_replay)
        r["serving"]["replay_accuracy"] = serving_replay  # the BN answer: good on the new data, lost the old
        return r | {"original": {"model_id": "m0", "replay_accuracy": 0.91}}

    # 10 pt under the model before the drift, and no better there than the interim answer
    forgets = decide_swap(after_label_free(0.92, 0.45), policy)
    assert not forgets.swap and "loses 46.00 pt on the original data" in forgets.reason
    assert "vs 91.00% before the drift" in forgets.reason
    # 10 pt under the model before, but 36 pt over the interim answer there and as good on the new data
    restores = decide_swap(after_label_free(0.88, 0.81), policy)
    assert restores.swap and "original data -10.00 pt against the model before the drift" in restores.reason
    assert "lost 46.00 pt there, this one 10.00" in restores.reason
    # keeps the original data: it replaces the interim answer even 0.3 pt below it on the new data
    keeps = decide_swap(after_label_free(0.877, 0.90), policy)
    assert keeps.swap and "against the model before the drift" in keeps.reason
    assert "the label-free answer serving lost 46.00 pt there" in keeps.reason
    # ... but not when it is worse there by more than the minimum improvement
    worse = decide_swap(after_label_free(0.87, 0.90), policy)
    assert not worse.swap and "more than 0.50 pt below the label-free answer serving" in worse.reason
    # an interim answer within the budget itself: the candidate must beat it as usual
    usual = decide_swap(after_label_free(0.877, 0.90, serving_replay=0.90), policy)
    assert not usual.swap and "below the minimum improvement of 0.50 pt" in usual.reason
    # without an original (no label-free answer in between) the serving model is the reference
    plain = _result(0.92, 0.88, replay_accuracy=0.81)
    plain["serving"]["replay_accuracy"] = 0.45
    assert decide_swap(plain, policy).swap


def test_the_labelled_job_is_told_the_model_a_label_free_answer_replaced(tmp_path: Path) -> None:
    from service.state.store import ModelRecord, Sample, Store
    from service.workers.adaptation import Adaptation, LabelFree

    (tmp_path / "supernet").mkdir()
    (tmp_path / "supernet" / "supernet.pt").write_bytes(b"x")
    store = Store.open(tmp_path)
    started: list[dict] = []
    try:
        a = Adaptation(tmp_path, store, supervisor=None, post=lambda event: None)  # type: ignore[arg-type]
        a._start = lambda *args, **kw: started.append(kw) or "started"  # type: ignore[method-assign]
        a.request("data drift", at=1000.0, label_free=LabelFree("m0", 0, 10, None))
        assert a.pending is not None and a.pending.original == "m0"
        a.pending.label_free = None  # the label-free answer ran and swapped in m1
        a.pending.since = 0.0
        store.add_samples([Sample(f"ref{i}", "feedback", label=i % 10) for i in range(Policy().adaptation.min_samples)])
        m1 = ModelRecord(id="m1", sha256="1" * 64, bytes=1, created=1.0, source="adaptation", subnet="s")
        paths = {"m0": tmp_path / "m0.onnx"}
        assert a.tick(Policy(), m1, tmp_path / "m1.onnx", model_path=paths.get) == "started"
        assert started[-1]["extra"] == {"original": {"model_id": "m0", "path": str(tmp_path / "m0.onnx")}}
    finally:
        store.close()


def test_the_labelled_job_measures_the_model_before_the_drift_as_its_forgetting_reference(tmp_path: Path) -> None:
    from tiny_models import write_classifier

    from lifelong.jobs.adapt import _original_figures

    model = write_classifier(tmp_path / "m0.onnx", favour_class=3, seed=3)  # answers 3 whatever the image
    local, replay = _data(40, seed=1), _data(50, seed=2)  # labels 0..9 in turn: a tenth are 3s
    req = AdaptRequest(samples=(), checkpoint="c", supernet_dir="s", out_dir="o", policy={}, replay="r",
                       original={"model_id": "m0", "path": str(model)}, threads=1)  # fmt: skip
    notes: list[str] = []
    got = _original_figures(req, local, replay, notes)
    assert got == {"model_id": "m0", "path": str(model), "local_accuracy": 0.1, "replay_accuracy": 0.1}
    assert _original_figures(req, local, None, notes) is None  # no replay: nothing to measure forgetting on
    gone = _original_figures(replace(req, original={"model_id": "m0", "path": str(tmp_path / "gone.onnx")}), local, replay, notes)  # fmt: skip
    assert gone is None and "the model before the drift could not be measured" in notes[-1]
    assert _original_figures(replace(req, original=None), local, replay, notes) is None


def _label_free(cand_mix: list[float], serving_mix: list[float], cand_ms: float = 0.5, serving_ms: float = 0.5) -> dict:
    def figures(mix: list[float], ms: float) -> dict:
        return {"subnet": "s", "mix": mix, "largest_share": max(mix), "bytes": 1000, "latency_ms": {"1": ms}}

    ref = [0.1] * 10
    return {"mode": "bn", "samples": {"unlabelled": 500}, "reference_mix": ref,
            "candidate": figures(cand_mix, cand_ms), "serving": figures(serving_mix, serving_ms)}  # fmt: skip


def test_the_label_free_decision_wants_answers_spread_like_the_reference_and_no_slower_than_serving() -> None:
    policy = Policy(budgets=Budgets(latency_ms_p95=0.1, model_bytes=5000))
    collapsed = [0.55] + [0.05] * 9
    spread = [0.12, 0.08] * 5
    good = decide_swap(_label_free(spread, collapsed, cand_ms=0.2, serving_ms=0.19), policy)
    assert good.swap and good.reason.startswith("label-free: BN statistics re-estimated on 500 local images"), good
    assert "class mix 0.10 from the reference vs 0.45 serving" in good.reason
    # over the 0.1 ms budget as timed on a busy device, like the serving model beside it: not the candidate's fault
    slow = decide_swap(_label_free(spread, collapsed, cand_ms=0.3, serving_ms=0.19), policy)
    assert not slow.swap and "over 1.25x the serving model's 0.190 ms" in slow.reason
    worse = decide_swap(_label_free(collapsed, spread), Policy())
    assert not worse.swap and "collapsed" in worse.reason
    same = decide_swap(_label_free(spread, [0.08, 0.12] * 5), Policy())
    assert not same.swap and "not closer by 0.05" in same.reason
    big = decide_swap(_label_free(spread, collapsed) | {"candidate": _label_free(spread, collapsed)["candidate"] | {"bytes": 9000}}, policy)  # fmt: skip
    assert not big.swap and "over the budget of 5000" in big.reason


def test_labels_that_already_arrived_judge_the_label_free_answer_instead_of_its_class_mix() -> None:
    policy = Policy()  # swap.min_improvement 0.5 pt
    collapsed, spread = [0.55] + [0.05] * 9, [0.12, 0.08] * 5

    def measured(result: dict, cand: float, serving: float, n: int = 120) -> dict:
        result["samples"]["labelled"] = n
        result["candidate"]["local_accuracy"], result["serving"]["local_accuracy"] = cand, serving
        return result

    # its class mix is no closer (the mix rule refuses), but the labels say it is right more often
    better = decide_swap(measured(_label_free(spread, [0.08, 0.12] * 5), 0.74, 0.62), policy)
    assert better.swap and "74.00% vs 62.00% serving on 120 labelled local samples (+12.00 pt)" in better.reason
    # its class mix is closer (the mix rule swaps), but the labels say it is no better
    worse = decide_swap(measured(_label_free(spread, collapsed), 0.60, 0.62), policy)
    assert not worse.swap and "below the minimum improvement" in worse.reason
    # without labels the class mix judges, as before
    assert decide_swap(_label_free(spread, collapsed), policy).swap


# -- fine-tuning ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_finetuning_on_shifted_samples_raises_their_accuracy_and_keeps_the_replay(fashion_train, tmp_path) -> None:
    """From random weights, so that the figures can only rise by learning (full precision: a
    random network's quantizer steps are not meaningful; the trained supernet's are)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    space = SearchSpace(TINY_SPACE)
    model = Supernet(space)
    clean = fashion_train.head(1200)
    init_quantizers(model, torch.from_numpy(clean.as_float()[:64]))
    inverted = ArrayDataset(255 - clean.x[:600], clean.y[:600], clean.classes, "inverted")
    tune, holdout = inverted.split(0.3, seed=0)
    replay, replay_holdout = clean.subset(np.arange(600, 1200)).split(0.3, seed=0)
    focus = [space.largest(Precision(32, 32))]
    calib = calibration_mix(tune, replay, 200)
    before = measure_subnets(model, focus, calib, holdout, replay_holdout)[0]
    settings = AdaptSettings(steps=30, batch_size=64, lr=0.05, calib_images=200, random_subnets=0)
    report = finetune(model, tune, replay, settings, focus)
    after = measure_subnets(model, focus, calib, holdout, replay_holdout)[0]
    assert report.steps == 30 and not report.stopped_by_deadline and report.loss_last < report.loss_first
    assert after.local_accuracy > before.local_accuracy + 0.1, (before, after)
    assert after.replay_accuracy > before.replay_accuracy + 0.1, "the replay half of each batch is learnt too"
    with pytest.raises(TrainingError, match="labelled local samples"):
        finetune(model, ArrayDataset(tune.x, None), replay, settings)
    stopped = finetune(model, tune, replay, settings, focus, deadline=0.0)
    assert stopped.steps == 0 and stopped.stopped_by_deadline


def test_the_worker_picks_among_candidates_the_daemon_would_accept() -> None:
    from lifelong.jobs.adapt import _pick
    from lifelong.train.adapt import SubnetMeasurement

    space = SearchSpace(TINY_SPACE)
    names = [str(space.largest()), str(space.smallest())]
    measured = [SubnetMeasurement(names[0], 0.86, 0.82, 1.0), SubnetMeasurement(names[1], 0.77, 0.84, 1.0)]
    policy = Policy(swap=SwapRules(max_forgetting=0.02))
    best, note = _pick(measured, policy, None, space, serving_replay=0.85)
    assert best.subnet == names[1] and "1 of 2 candidates forget more" in note
    best, note = _pick(measured, policy, None, space, serving_replay=None)
    assert best.subnet == names[0] and note == "", "without a serving figure: the most accurate"
    best, note = _pick(measured, policy, None, space, serving_replay=0.95)
    assert best.subnet == names[0] and "every candidate forgets" in note


def test_each_candidate_keeps_the_bn_calibration_that_serves_the_new_data_within_the_forgetting_floor() -> None:
    from lifelong.train.adapt import SubnetMeasurement, best_calibrations

    m = [
        SubnetMeasurement("a", 0.66, 0.89, 1.0, "mix"),
        SubnetMeasurement("a", 0.85, 0.74, 1.0, "local"),
        SubnetMeasurement("b", 0.70, 0.88, 1.0, "mix"),
        SubnetMeasurement("b", 0.80, 0.60, 1.0, "local"),
        SubnetMeasurement("c", 0.50, 0.65, 1.0, "mix"),
        SubnetMeasurement("c", 0.60, 0.55, 1.0, "local"),
    ]
    kept = {x.subnet: x.calibration for x in best_calibrations(m, replay_floor=0.70)}
    # a: local images serve the new data better and forget within the floor; b: local forgets
    # too much; c: neither is within the floor, the one that forgets least
    assert kept == {"a": "local", "b": "mix", "c": "mix"}
    assert {x.subnet: x.calibration for x in best_calibrations(m, None)} == {"a": "local", "b": "local", "c": "local"}


def test_adaptation_requests_wait_out_a_cooldown_after_the_last_one(tmp_path: Path) -> None:
    from service.state.store import Store
    from service.workers.adaptation import Adaptation

    (tmp_path / "supernet").mkdir()
    (tmp_path / "supernet" / "supernet.pt").write_bytes(b"x")
    store = Store.open(tmp_path)
    try:
        a = Adaptation(tmp_path, store, supervisor=None, post=lambda event: None)  # type: ignore[arg-type]
        a.last = {"outcome": "kept", "finished": 1000.0}
        assert "no adaptation for 200 s more" in a.request("data drift", at=1100.0, cooldown_s=300)
        assert a.pending is None
        assert a.request("data drift", at=1400.0, cooldown_s=300).startswith("adaptation pending")
        assert a.pending is not None and a.pending.since == 1400.0
        assert "already pending" in a.request("label drift", at=1401.0, cooldown_s=300)
    finally:
        store.close()


def test_the_last_adaptation_outlives_a_restart_of_the_daemon(tmp_path: Path) -> None:
    from service.state.store import Store
    from service.workers.adaptation import Adaptation

    store = Store.open(tmp_path)
    try:
        assert Adaptation(tmp_path, store, supervisor=None, post=print).last is None  # type: ignore[arg-type]
        old = store.start_search("adaptation: data drift on m1", at=100.0)
        store.finish_search(old.id, state="done", result={"outcome": "kept", "reason": "below the minimum"})
        store.start_search("policy")  # not an adaptation
        row = store.start_search("adaptation: label drift on m2", at=200.0)
        cand = {"subnet": "s", "local_accuracy": 0.8, "replay_accuracy": 0.9, "latency_ms": {"1": 0.3}, "path": "p"}
        store.finish_search(row.id, state="done", result={"candidate": cand, "serving": None, "seconds": 42.0,
                                                          "outcome": "swapped", "reason": "+20 pt"})  # fmt: skip
        last = Adaptation(tmp_path, store, supervisor=None, post=print).last  # type: ignore[arg-type]
        assert last is not None and (last["outcome"], last["reason"], last["trigger"]) == ("swapped", "+20 pt", "label drift on m2")  # fmt: skip
        assert last["candidate"] == cand and last["seconds"] == 42.0 and last["started"] == 200.0
        running = store.start_search("adaptation: accuracy drift on m3")
        store.recover_after_restart()  # the daemon died while it ran
        last = Adaptation(tmp_path, store, supervisor=None, post=print).last  # type: ignore[arg-type]
        assert last is not None and last["outcome"] == "interrupted" and last["trigger"] == "accuracy drift on m3"
        assert running.id != row.id
    finally:
        store.close()


def test_the_adapted_front_holds_the_measured_subnets_with_their_local_accuracy() -> None:
    from lifelong.jobs.adapt import adapted_front
    from lifelong.search.front import Front, FrontPoint
    from lifelong.space.config import SearchSpace
    from lifelong.train.adapt import SubnetMeasurement

    space = SearchSpace()
    big, small = str(space.largest()), str(space.smallest())

    class Figures:  # latency and size as the evaluator gives them; its accuracy is a prediction
        def front(self, cfgs):  # noqa: ANN001, ANN202
            return Front(tuple(FrontPoint(str(c), 0.99, {1: 1.0 if str(c) == big else 0.1}, 100, 200) for c in cfgs))

    measured = [SubnetMeasurement(big, 0.65, 0.8, 1.0), SubnetMeasurement(small, 0.55, None, 1.0)]
    got = adapted_front(Figures(), space, measured, {"seed": 3}, "c" * 64, "p" * 64)
    assert {p.subnet: p.accuracy for p in got.points} == {big: 0.65, small: 0.55}, "measured, never predicted"
    assert got[big].latency_at(1) == 1.0 and got[small].model_bytes == 100
    assert got.info["checkpoint_sha256"] == "c" * 64 and got.info["adapted_from"] == "p" * 64
    assert got.info["validation_measured"] == sorted([big, small]) and got.info["seed"] == 3


def test_an_adaptation_candidate_is_checked_on_its_held_out_local_samples(tmp_path: Path) -> None:
    from lifelong.jobs.adapt_request import save_task_data
    from service.daemon.adaptations import _task_data

    none = _task_data({"mode": "bn", "task_data": None})
    assert none is not None and none.images is None and "class mix" in none.source
    path = save_task_data(tmp_path / "task.npz", np.full((60, 28, 28), 255, np.uint8), np.arange(60) % 10)
    got = _task_data({"mode": "finetune", "task_data": str(path)})
    assert got is not None and got.images.shape == (60, 1, 28, 28) and float(got.images.max()) == 1.0
    assert got.labels.tolist()[:3] == [0, 1, 2] and str(path) in got.source
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert _task_data({"mode": "finetune", "task_data": str(tmp_path / "bad.npz")}) is None  # the task images then
    with pytest.raises(DataError, match="task data must be uint8"):
        save_task_data(tmp_path / "x.npz", np.zeros((3, 28, 28), np.float32), np.zeros(3))

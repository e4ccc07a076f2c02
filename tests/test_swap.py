"""The swap path in-process, on a real registry, a real SQLite store and real onnxruntime sessions;
and the inbox and feedback pieces the daemon is built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import write_classifier

from lifelong.errors import DataError
from service.api.app import FeedbackLabel
from service.api.feedback import StoreFeedback
from service.daemon.swap import Swapper
from service.errors import ModelLoadError, RecordNotFound, RegistryError
from service.serving.ingest import RecentInputs, class_label, ingest_file
from service.serving.ort_runtime import OrtRuntime
from service.serving.runtime import Prediction, RuntimeSettings
from service.state.registry import Registry
from service.state.store import Store

FAVOUR = {"a": 3, "b": 7, "c": 5}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("swap-models")
    out = {k: write_classifier(d / f"{k}.onnx", favour_class=v, seed=v) for k, v in FAVOUR.items()}
    out["nan"] = write_classifier(d / "nan.onnx", broken="nan")
    return out


@pytest.fixture
def parts(tmp_path: Path):
    store = Store.open(tmp_path)
    registry = Registry(tmp_path)
    runtime = OrtRuntime(RuntimeSettings(warmup_runs=1))
    yield store, registry, runtime, Swapper(store, registry, runtime)
    store.close()


def serving(runtime: OrtRuntime) -> int:
    return int(runtime.predict(np.zeros((1, 28, 28), np.uint8)).classes[0])


def test_deploy_serves_and_commits_and_a_refused_model_is_recorded(parts, models) -> None:
    store, registry, runtime, swapper = parts
    a = swapper.deploy_file(models["a"], reason="first", meta={"source": "test"})
    assert a.changed and a.previous_id is None and a.deployment.state == "active"
    assert registry.current_id() == store.current_deployment().model_id == runtime.current_id == a.model_id
    assert serving(runtime) == FAVOUR["a"]
    with pytest.raises(ModelLoadError, match="NaN"):
        swapper.deploy_file(models["nan"], reason="bad one")
    assert serving(runtime) == FAVOUR["a"] and registry.current_id() == a.model_id
    failed = store.deployment_history(1)[0]
    assert (failed.state, failed.reason) == ("failed", "bad one") and "NaN" in failed.detail
    again = swapper.deploy_model(a.model_id, reason="again")
    assert not again.changed


def test_a_failed_commit_puts_the_committed_model_back(parts, models, monkeypatch) -> None:
    store, registry, runtime, swapper = parts
    a = swapper.deploy_file(models["a"], reason="a")

    def disk_full(*args, **kwargs):
        raise RegistryError("cannot switch the current model: No space left on device")

    monkeypatch.setattr(registry, "deploy", disk_full)
    with pytest.raises(RegistryError, match="No space left"):
        swapper.deploy_file(models["b"], reason="b")
    assert runtime.current_id == registry.current_id() == a.model_id, "what serves is what is committed"
    assert serving(runtime) == FAVOUR["a"]


def test_rollback_walks_back_one_model_at_a_time(parts, models) -> None:
    store, registry, runtime, swapper = parts
    ids = {k: swapper.deploy_file(models[k], reason=k).model_id for k in ("a", "b", "c")}
    assert swapper.rollback(reason="c is worse").model_id == ids["b"]
    assert serving(runtime) == FAVOUR["b"]
    assert swapper.rollback().model_id == ids["a"]
    assert registry.current_id() == store.current_deployment().model_id == ids["a"]
    states = {d.model_id: d.state for d in reversed(store.deployment_history(10))}
    assert states == {ids["a"]: "active", ids["b"]: "rolled-back", ids["c"]: "rolled-back"}
    with pytest.raises(RecordNotFound, match="no earlier model to roll back to"):
        swapper.rollback()


def test_start_falls_back_when_the_current_model_is_damaged(parts, models) -> None:
    store, registry, runtime, swapper = parts
    a = swapper.deploy_file(models["a"], reason="a").model_id
    b = swapper.deploy_file(models["b"], reason="b").model_id
    path = registry.path(b)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:100])  # the disk lost it
    fresh = Swapper(store, registry, OrtRuntime(RuntimeSettings(warmup_runs=1)))
    assert fresh.serve_current() == a
    assert registry.current_id() == a == fresh.runtime.current_id
    assert store.deployment_history(1)[0].reason == f"start: the current model {b} failed to load"


def test_a_parity_sample_must_be_reproduced(parts, models, tmp_path: Path) -> None:
    _, _, runtime, swapper = parts
    model = tmp_path / "m.onnx"
    model.write_bytes(models["c"].read_bytes())
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    logits, embedding = ort.InferenceSession(str(model)).run(["logits", "embedding"], {"image": x})
    np.savez(tmp_path / "m.parity.npz", x=x, logits=logits, embedding=embedding)
    assert swapper.deploy_file(model, reason="with parity").changed
    other = tmp_path / "n.onnx"
    other.write_bytes(models["b"].read_bytes())
    (b_logits,) = ort.InferenceSession(str(other)).run(["logits"], {"image": x})
    np.savez(tmp_path / "n.parity.npz", x=x, logits=b_logits + 0.5)
    with pytest.raises(ModelLoadError, match=r"logits differs from the expected outputs by up to 0\.5"):
        swapper.deploy_file(other, reason="parity broken")
    np.savez(tmp_path / "bad.parity.npz", y=x)
    (tmp_path / "bad.onnx").write_bytes(models["a"].read_bytes())
    with pytest.raises(ModelLoadError, match=r"holds \['y'\]; expected 'x' and 'logits'"):
        swapper.deploy_file(tmp_path / "bad.onnx", reason="x")
    assert serving(runtime) == FAVOUR["c"]


def test_inbox_labels_come_from_class_folders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    assert class_label(inbox, inbox / "x.png") is None
    assert class_label(inbox, inbox / "4" / "x.png") == 4
    assert class_label(inbox, inbox / "ankle boot" / "x.png") == 9
    assert class_label(inbox, inbox / "T-shirt_top" / "a" / "x.png") == 0
    assert class_label(inbox, inbox / "cats" / "x.png") is None


def test_an_unreadable_inbox_file_is_moved_aside(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    with Store.open(tmp_path) as store, pytest.raises(DataError, match="bad.npz: not a readable .npz"):
        ingest_file(inbox, inbox / "bad.npz", store)
    assert not (inbox / "bad.npz").exists()
    assert [p.name.endswith("-bad.npz") for p in (inbox / ".rejected").iterdir()] == [True]


def test_recent_inputs_keep_the_newest(tmp_path: Path) -> None:
    keep = RecentInputs(3)
    assert keep.array() is None
    keep.add(np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 28, 28), np.uint8))
    x = keep.array()
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32
    assert np.allclose(x[:, 0, 0, 0] * 255, [2, 3, 4])


def test_feedback_forgets_the_oldest_predictions_beyond_its_capacity(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        sink = StoreFeedback(store, tmp_path / "fb", capacity=4)
        pred = Prediction(np.array([1, 2]), np.zeros((2, 10), np.float32), np.zeros((2, 4)), "m", 1.0)
        for rid in ("r1", "r2", "r3"):
            sink.record(rid, np.zeros((2, 1, 28, 28), np.float32), pred)
        with pytest.raises(RecordNotFound, match="no prediction 'r1' sample 0 among the last 4 images"):
            sink.label([FeedbackLabel("r1", 0, 5)])
        assert sink.label([FeedbackLabel("r3", 1, 5), FeedbackLabel("r2", 0, 6)]) == 2
        rows = store.labelled_samples(5, source="feedback")
        assert sorted((s.request_id, s.label, s.predicted) for s in rows) == [("r2", 6, 1), ("r3", 5, 2)]


# -- the task check ------------------------------------------------------------------------------


def test_a_model_that_does_not_fit_the_task_is_refused_with_the_figure_and_removed(
    parts, tmp_path: Path, fashion_train, fashion_test
) -> None:
    """Three classes, a one-class model (zeroed weights answer alike), a good model: only the
    last serves; the refused files leave the registry at once."""
    import onnx
    from onnx import numpy_helper
    from tiny_models import write_linear_fashion

    from service.serving.task_check import TaskCheck

    store, registry, runtime, swapper = parts
    held = fashion_test.head(1000)
    floor = {"value": 0.2}
    runtime.task = TaskCheck(10, held.as_float(), held.y, lambda: floor["value"], lambda: 0.02, "1000 test images")
    with pytest.raises(ModelLoadError, match=r"below the floor of 20% \(swap.min_task_accuracy\)$"):
        swapper.deploy_file(write_classifier(tmp_path / "one.onnx", favour_class=3), reason="nothing serves yet")
    good = write_linear_fashion(tmp_path / "good.onnx", fashion_train.x[:20_000], fashion_train.y[:20_000])
    served = swapper.deploy_file(good, reason="a real classifier")
    assert runtime.current_id == served.model_id
    three = write_classifier(tmp_path / "three.onnx", num_classes=3)
    with pytest.raises(ModelLoadError, match="it has 3 classes; the task has 10"):
        swapper.deploy_file(three, reason="another task")
    zeroed = onnx.load(str(good))
    for init in zeroed.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(zeroed, str(tmp_path / "zeroed.onnx"))
    with pytest.raises(ModelLoadError, match=r"accuracy on 1000 held-out task images \(1000 test images\) is 10\.7%, below the floor of 20% .* below the model serving"):  # fmt: skip
        swapper.deploy_file(tmp_path / "zeroed.onnx", reason="zeroed weights")
    assert runtime.current_id == served.model_id == registry.current_id(), "the good model serves on"
    assert [r.id for r in registry.list()] == [served.model_id], "refused models are removed at once"
    assert [d.state for d in store.deployment_history(4)] == ["failed", "failed", "active", "failed"]
    floor["value"] = 0.0  # the policy turns the check off: the class count is still checked
    with pytest.raises(ModelLoadError, match="3 classes"):
        swapper.deploy_file(three, reason="another task again")
    zero = swapper.deploy_file(tmp_path / "zeroed.onnx", reason="no floor")
    floor["value"] = 0.2  # a model no worse than the one serving passes whatever the floor
    swapper.deploy_file(tmp_path / "one.onnx", reason="as poor as what serves")
    assert runtime.current_id not in (served.model_id, zero.model_id)


def test_an_adapted_model_is_checked_on_the_data_it_was_adapted_to(
    parts, tmp_path: Path, fashion_train, fashion_test
) -> None:
    """A model of inverted images fails the clean task images but passes on the images it
    serves; without labels of them (a label-free answer) the class count alone is checked."""
    from tiny_models import write_linear_fashion

    from lifelong.jobs.adapt_request import load_task_data, save_task_data
    from service.serving.task_check import TaskCheck, TaskData

    store, registry, runtime, swapper = parts
    held = fashion_test.head(1000)
    runtime.task = TaskCheck(10, held.as_float(), held.y, lambda: 0.5, lambda: 0.02, "1000 test images")
    clean = write_linear_fashion(tmp_path / "clean.onnx", fashion_train.x[:20_000], fashion_train.y[:20_000])
    served = swapper.deploy_file(clean, reason="a real classifier")
    inverted = write_linear_fashion(tmp_path / "inv.onnx", 255 - fashion_train.x[:20_000], fashion_train.y[:20_000])
    with pytest.raises(ModelLoadError, match=r"held-out task images \(1000 test images\)"):
        swapper.deploy_file(inverted, reason="adapted, checked on clean images")
    local = save_task_data(tmp_path / "task.npz", 255 - fashion_test.x[1000:1500], fashion_test.y[1000:1500])
    x, y = load_task_data(local)
    assert x.shape == (500, 1, 28, 28) and x.dtype == np.float32 and float(x.max()) <= 1.0
    adapted = swapper.deploy_file(inverted, reason="adapted", task=TaskData(x, y, "held-out local samples"))
    assert runtime.current_id == adapted.model_id != served.model_id
    three = write_classifier(tmp_path / "three.onnx", num_classes=3)
    with pytest.raises(ModelLoadError, match="it has 3 classes"):  # still checked without labels
        swapper.deploy_file(three, reason="label-free", task=TaskData(None, None, "no labels"))
    with pytest.raises(ModelLoadError, match=r"held-out images \(held-out local samples\) is .*below the floor"):
        swapper.deploy_file(write_classifier(tmp_path / "one.onnx", favour_class=3), reason="broken",
                            task=TaskData(x, y, "held-out local samples"))  # fmt: skip

"""The model registry: content addressing, atomic switches, crashes (real SIGKILLs), pruning,
and agreement with the store."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import service.state.registry as registry_module
from lifelong.deploy.model_format import META_CHECKPOINT, META_FORMAT, META_SUBNET, MODEL_FORMAT
from service.errors import RegistryError
from service.state.registry import REGISTRY_FORMAT, Registry
from service.state.store import ModelRecord, Store

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0


def onnx_bytes(seed: int, hidden: int = 16, subnet: str = "s16w8a8_hw8a8") -> bytes:
    """A real model that follows lifelong.deploy.model_format: image -> Flatten -> MatMul -> Relu -> MatMul."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((784, hidden)) * 0.05).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, 10)) * 0.1).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", hidden]),
        ],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = {META_SUBNET: subnet, META_CHECKPOINT: "ab" * 32, META_FORMAT: str(MODEL_FORMAT)}
    helper.set_model_props(model, props)
    return model.SerializeToString()


def leftovers(reg: Registry) -> list[str]:
    names = [p.name for p in reg.models_dir.iterdir()] + [p.name for p in reg.root.iterdir()]
    return sorted(n for n in names if n.startswith("."))


CHILD = """
import sys
from pathlib import Path
from service.state.registry import Registry
from service.state.store import Store
op, state, arg = sys.argv[1:4]
reg = Registry(state)
if op == "add":
    reg.add(Path(arg), {"source": "search 7"})
elif op == "set_current":
    reg.set_current(arg)
elif op == "flip":  # switch between two models forever, until killed
    ids = arg.split(",")
    i = 0
    while True:
        reg.set_current(ids[i % 2])
        i += 1
elif op == "deploy":
    reg.deploy(Store.open(state), arg, reason="search 7", state="active")
"""


def child(args: list[str], pause: str | None, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    if pause:
        env |= {"LIFELONG_REGISTRY_PAUSE": pause, "LIFELONG_REGISTRY_PAUSE_MARKER": str(tmp_path / "paused")}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)


def kill_when_paused(proc: subprocess.Popen, tmp_path: Path) -> None:
    marker = tmp_path / "paused"
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before pausing: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the child never reached its pause point"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    marker.unlink()


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "state")


def test_all_is_the_public_api() -> None:
    assert sorted(registry_module.__all__) == registry_module.__all__
    assert all(hasattr(registry_module, n) for n in registry_module.__all__)


def test_the_serving_side_modules_do_not_import_torch() -> None:
    code = "import service.state.registry, service.state.store, service.state.migrations, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_add_is_content_addressed_and_idempotent(reg: Registry, tmp_path: Path) -> None:
    data = onnx_bytes(1)
    rec = reg.add(data, {"source": "search 3", "accuracy": 0.9, "precision_map": {"stem": "int8"}})
    sha = hashlib.sha256(data).hexdigest()
    assert (rec.id, rec.sha256, rec.bytes) == (sha[:16], sha, len(data))
    assert (rec.subnet, rec.checkpoint_sha, rec.format_version) == ("s16w8a8_hw8a8", "ab" * 32, MODEL_FORMAT)
    assert reg.path(rec.id).read_bytes() == data
    meta = json.loads((reg.models_dir / rec.id / "meta.json").read_text())
    assert meta["format"] == REGISTRY_FORMAT and meta["source"] == "search 3"
    (tmp_path / "m.onnx").write_bytes(data)
    assert reg.add(tmp_path / "m.onnx", {"source": "import"}) == rec  # same content: the first record
    assert [r.id for r in reg.list()] == [rec.id] and rec.id in reg
    assert leftovers(reg) == []


def test_add_refuses_garbage_and_bad_meta(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="not a readable ONNX model"):
        reg.add(b"\x00garbage" * 100)
    with pytest.raises(RegistryError, match="empty model"):
        reg.add(b"")
    with pytest.raises(RegistryError, match=r"unknown model meta keys \['colour', 'id'\]; expected some of"):
        reg.add(onnx_bytes(1), {"colour": "red", "id": "x"})
    with pytest.raises(RegistryError, match="subnet='other' contradicts the model's ONNX metadata"):
        reg.add(onnx_bytes(1), {"subnet": "other"})
    assert list(reg.models_dir.iterdir()) == []
    with pytest.raises(RegistryError, match="no model 'nope'"):
        reg.path("nope")
    with pytest.raises(RegistryError, match="no model '../x'"):
        reg.path("../x")


def test_current_switches_and_the_link_serves(reg: Registry) -> None:
    a, b = reg.add(onnx_bytes(1)), reg.add(onnx_bytes(2, hidden=8))
    assert reg.current_id() is None and not os.path.lexists(reg.link)
    reg.set_current(a.id)
    assert reg.current_id() == a.id and os.readlink(reg.link) == f"models/{a.id}/model.onnx"
    reg.set_current(b.id)
    session = ort.InferenceSession(str(reg.link), providers=["CPUExecutionProvider"])
    logits, embedding = session.run(["logits", "embedding"], {"image": np.zeros((2, 1, 28, 28), np.float32)})
    assert logits.shape == (2, 10) and embedding.shape == (2, 8)  # b's width: the link moved
    with pytest.raises(RegistryError, match="no model 'ffff'"):
        reg.set_current("ffff")
    assert reg.current_id() == b.id
    assert leftovers(reg) == []


def test_verify_detects_a_corrupt_file(reg: Registry) -> None:
    rec = reg.add(onnx_bytes(1))
    assert reg.verify(rec.id) == rec
    raw = bytearray(reg.path(rec.id).read_bytes())
    raw[-1] ^= 0xFF
    reg.path(rec.id).write_bytes(bytes(raw))
    with pytest.raises(RegistryError, match=f"model {rec.id} is corrupt: .* expected {rec.sha256}"):
        reg.verify(rec.id)


@pytest.mark.parametrize("point", ["add:writing", "add:before-rename"])
def test_sigkill_during_add_leaves_no_partial_model(point: str, reg: Registry, tmp_path: Path) -> None:
    a = reg.add(onnx_bytes(1))
    reg.set_current(a.id)
    big = tmp_path / "big.onnx"
    big.write_bytes(onnx_bytes(2, hidden=1024))  # 3 MiB: several chunks, so "writing" is mid-file
    b_id = hashlib.sha256(big.read_bytes()).hexdigest()[:16]
    kill_when_paused(child(["add", str(reg.root), str(big)], point, tmp_path), tmp_path)

    assert [p.name for p in reg.models_dir.iterdir() if p.name.startswith(".tmp-")], "the kill was not mid-add"
    assert [r.id for r in reg.list()] == [a.id] and b_id not in reg
    reopened = Registry(reg.root)
    assert reopened.recovered and leftovers(reopened) == []
    assert reopened.current_id() == a.id and reopened.verify(a.id) == a
    assert os.path.realpath(reopened.link) == str(reopened.path(a.id).resolve())
    assert reopened.add(big).id == b_id  # and the interrupted add can simply be done again


@pytest.mark.parametrize("point", ["set_current:pointer", "set_current:link-tmp"])
def test_sigkill_between_set_current_steps(point: str, reg: Registry, tmp_path: Path) -> None:
    a, b = reg.add(onnx_bytes(1)), reg.add(onnx_bytes(2))
    reg.set_current(a.id)
    kill_when_paused(child(["set_current", str(reg.root), b.id], point, tmp_path), tmp_path)

    assert reg.current_id() in (a.id, b.id)
    assert Path(os.path.realpath(reg.link)).is_file(), "the link is broken"
    assert Path(os.path.realpath(reg.link)).parent.name in (a.id, b.id)
    reopened = Registry(reg.root)
    assert reopened.current_id() == b.id  # the pointer was renamed before the pause
    assert os.readlink(reopened.link) == f"models/{b.id}/model.onnx"
    assert leftovers(reopened) == []


def test_sigkill_at_random_moments_of_switching(reg: Registry, tmp_path: Path) -> None:
    a, b = reg.add(onnx_bytes(1)), reg.add(onnx_bytes(2))
    reg.set_current(a.id)
    rnd = random.Random(0)
    for _ in range(4):
        before = reg.pointer.read_text()
        proc = child(["flip", str(reg.root), f"{a.id},{b.id}"], None, tmp_path)
        deadline = time.monotonic() + 30
        while reg.pointer.read_text() == before:  # wait until it is switching, then kill at random
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.005)
        time.sleep(rnd.random() * 0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        assert reg.current_id() in (a.id, b.id)
        assert Path(os.path.realpath(reg.link)).is_file()
        reopened = Registry(reg.root)
        assert Path(os.readlink(reopened.link)).parent.name == reopened.current_id()
        assert leftovers(reopened) == []


def test_recover_spares_the_temp_files_of_live_processes(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    (reg.models_dir / f".tmp-{os.getpid()}-live").mkdir()
    (reg.models_dir / f".tmp-{dead}-dead").mkdir()
    (reg.root / f".current.onnx.tmp-{dead}-x").symlink_to("models/nowhere/model.onnx")
    Registry(reg.root)
    assert leftovers(reg) == [f".tmp-{os.getpid()}-live"]


def test_an_unreadable_pointer_is_rebuilt_from_the_link(reg: Registry) -> None:
    a = reg.add(onnx_bytes(1))
    reg.set_current(a.id)
    reg.pointer.write_bytes(b"\x00\x17")  # a failing disk
    with pytest.raises(RegistryError, match="unreadable pointer"):
        reg.current_id()
    assert Registry(reg.root).current_id() == a.id
    reg.pointer.write_text(json.dumps({"format": REGISTRY_FORMAT + 1, "id": a.id}))
    with pytest.raises(RegistryError, match="has format 2, expected 1"):
        Registry(reg.root)  # a newer lifelong's pointer is not overwritten


def add_aged(reg: Registry, seed: int, days: float, now: float) -> ModelRecord:
    return reg.add(onnx_bytes(seed), {"created": now - days * DAY, "source": f"search {seed}"})


def test_prune_respects_protection_and_retention(reg: Registry) -> None:
    now = time.time()
    recs = [add_aged(reg, k, days=k, now=now) for k in range(6)]  # recs[k] is k days old
    reg.set_current(recs[5].id)
    with pytest.raises(ValueError, match="must be >= 0"):
        reg.prune(-1, 1)
    removed = reg.prune(keep_models=1, keep_days=1.5, protect={recs[3].id}, now=now)
    # kept: newest (0), younger than 1.5 days (0, 1), protected (3), current (5)
    assert sorted(removed) == sorted([recs[2].id, recs[4].id])
    assert {r.id for r in reg.list()} == {recs[k].id for k in (0, 1, 3, 5)}
    assert leftovers(reg) == [] and reg.prune(keep_models=1, keep_days=1.5, protect={recs[3].id}, now=now) == []
    assert reg.verify(recs[5].id)


def test_prune_with_store_protects_the_rollback_target(reg: Registry, tmp_path: Path) -> None:
    now = time.time()
    recs = [add_aged(reg, k, days=10 + k, now=now) for k in range(4)]  # all older than keep_days
    with Store.open(reg.root) as store:
        reg.deploy(store, recs[3].id, reason="first")
        reg.deploy(store, recs[2].id, reason="search 1")
        reg.deploy(store, recs[0].id, reason="search 2", state="canary")
        assert store.previous_model() == recs[2].id
        removed = reg.prune(keep_models=0, keep_days=1, store=store, now=now)
        assert sorted(removed) == sorted([recs[1].id, recs[3].id])
        assert {m.id for m in store.list_models()} == {recs[0].id, recs[2].id}
        assert store.get_model(recs[3].id).removed is not None
        assert reg.reconcile(store).clean


def test_reconcile_settles_disagreements(reg: Registry) -> None:
    a, b = reg.add(onnx_bytes(1)), reg.add(onnx_bytes(2))
    with Store.open(reg.root) as store:
        reg.deploy(store, a.id, reason="first")
        ghost = ModelRecord(id="0" * 16, sha256="0" * 64, bytes=1, created=1.0, source="import")
        store.record_model(ghost)  # a row whose folder does not exist
        reg.set_current(b.id)  # b: never recorded, and made current behind the store's back
        report = reg.reconcile(store)
        assert report.adopted == [b.id] and report.missing == [ghost.id] and report.pending == []
        assert "recorded" in report.current[0]
        live = store.current_deployment()
        assert (live.model_id, live.reason, live.previous_model_id) == (b.id, "reconcile", a.id)
        assert store.get_model(ghost.id).removed is not None and store.get_model(b.id).subnet == b.subnet
        assert reg.reconcile(store).clean

        reg.pointer.unlink()  # the pointer lost (say, a restored backup): the store's live model returns
        report = reg.reconcile(store)
        assert report.current == [f"pointer was missing; restored {b.id} from the store"]
        assert reg.current_id() == b.id and os.readlink(reg.link) == f"models/{b.id}/model.onnx"


@pytest.mark.parametrize(
    ("point", "winner", "settled"),
    [
        ("deploy:pending", "a", "failed"),
        ("set_current:pointer", "b", "canary"),
        ("set_current:link-tmp", "b", "canary"),
    ],
)
def test_registry_and_store_agree_after_a_crash_during_deploy(
    point: str, winner: str, settled: str, reg: Registry, tmp_path: Path
) -> None:
    ids = {"a": reg.add(onnx_bytes(1)).id, "b": reg.add(onnx_bytes(2)).id}
    with Store.open(reg.root) as store:
        reg.deploy(store, ids["a"], reason="first")
    kill_when_paused(child(["deploy", str(reg.root), ids["b"]], point, tmp_path), tmp_path)

    reg2 = Registry(reg.root)
    with Store.open(reg.root) as store:
        assert len(store.pending_deployments()) == 1  # the crash was mid-protocol
        report = reg2.reconcile(store)
        assert [state for _, state in report.pending] == [settled]
        assert store.pending_deployments() == []
        assert reg2.current_id() == store.current_deployment().model_id == ids[winner]
        assert Path(os.readlink(reg2.link)).parent.name == ids[winner]
        assert reg2.reconcile(store).clean
        if winner == "b":  # promoted after watching it, the rollback target is still a
            store.update_deployment(store.current_deployment().id, "active")
            assert store.previous_model() == ids["a"]

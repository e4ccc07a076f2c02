"""The hand-built baselines of the search benchmark (benchmarks/baselines.py).

No trained supernet needed: the networks are built with random weights and non-trivial BN
statistics, so that folding BN into the convolutions is actually exercised.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from benchmark_modules import load

from lifelong.data.datasets import ArrayDataset
from lifelong.deploy.export import onnx_session, run_onnx
from lifelong.deploy.model_format import EMBEDDING_OUTPUT, INPUT_NAME, LOGITS_OUTPUT, META_SUBNET
from lifelong.errors import FormatVersionError, TrainingError
from lifelong.train.trainer import TrainConfig

B = load("baselines")
NAMES = sorted(B.BASELINES)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these networks are tiny, and on a busy machine a second thread's
    barrier waits made a 12-step training 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomised(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = B.build_baseline(name)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_baseline_forward_shapes(name: str) -> None:
    model = _randomised(name)
    logits, emb = model.forward_with_embedding(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert emb.shape == (3, {"mbv2": 256, "cnn": 128, "tutorial": 128, "wide": 128}[name])
    assert torch.equal(model(torch.zeros(2, 1, 28, 28)), model.forward_with_embedding(torch.zeros(2, 1, 28, 28))[0])


@pytest.mark.parametrize("name", NAMES)
def test_macs_and_params_are_the_documented_ones(name: str) -> None:
    model = B.build_baseline(name)
    macs, params = B.count_macs_params(model)
    folded = B.folded_params(model)
    assert (macs, params, folded) == B.DOCUMENTED[name]
    stated = f"{macs:,} MACs, {params:,} parameters ({folded:,} after BN folding)"
    assert stated in B.__doc__, "the module docstring states other figures"


def test_tutorial_cnn_is_the_tutorials_network() -> None:
    model = B.build_baseline("tutorial")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.bias) for c in convs] == [
        (1, 32, (3, 3), (1, 1), None),
        (32, 64, (3, 3), (1, 1), None),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2
    assert [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)] == [
        (64 * 7 * 7, 128),
        (128, 10),
    ]
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]
    # counted by hand: conv 28x28 and 14x14 outputs, then the two linears
    assert B.count_macs_params(model)[0] == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 10
    conv1, conv2, fc1, fc2 = 32 * 9, 64 * 32 * 9, 3136 * 128 + 128, 128 * 10 + 10
    assert B.count_macs_params(model)[1] == conv1 + conv2 + fc1 + fc2 + 2 * (32 + 64) == 421_738  # + BN scale, shift
    assert B.folded_params(model) == conv1 + conv2 + fc1 + fc2 + (32 + 64) == 421_642  # + conv biases


def test_wide_cnn_pools_round_up_to_a_4x4_map() -> None:
    model = B.build_baseline("wide")
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.ceil_mode for p in pools)
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, 128, 4, 4)
    assert (
        B.count_macs_params(model)[0] == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 288 + 7 * 7 * 128 * 576 + 2048 * 128 + 1280
    )


def test_mbv2_is_the_documented_architecture() -> None:
    model = B.build_baseline("mbv2")
    blocks = [m for m in model.modules() if isinstance(m, B.InvertedResidual)]
    assert len(blocks) == 8 and sum(b.residual for b in blocks) == 5
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert all(m.kernel_size == (3, 3) for m in depthwise)
    assert [m.out_channels for m in depthwise] == [16, 96, 144, 144, 192, 192, 192, 384]  # expand 1, then 6
    with pytest.raises(
        ValueError, match=r"unknown baseline 'resnet'; expected one of \['cnn', 'mbv2', 'tutorial', 'wide'\]"
    ):
        B.build_baseline("resnet")


@pytest.mark.parametrize("name", NAMES)
def test_bn_folding_preserves_outputs(name: str) -> None:
    model = _randomised(name)
    folded = B.fold_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        for a, b in zip(model.forward_with_embedding(x), folded.forward_with_embedding(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_folds_bn_and_matches_torch(name: str, tmp_path: Path) -> None:
    model = _randomised(name)
    data = B.export_onnx(model, tmp_path / f"{name}.onnx", name)
    assert (tmp_path / f"{name}.onnx").read_bytes() == data
    proto = onnx.load_from_string(data)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops, ops
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [LOGITS_OUTPUT, EMBEDDING_OUTPUT]
    assert {p.key: p.value for p in proto.metadata_props}[META_SUBNET] == f"baseline:{name}"
    session = onnx_session(data)
    for batch in (1, 4):  # the batch axis is dynamic
        x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
        logits, emb = run_onnx(session, x)
        with torch.no_grad():
            ref_logits, ref_emb = model.forward_with_embedding(torch.from_numpy(x))
        np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(emb, ref_emb.numpy(), rtol=1e-4, atol=1e-4)


def _tiny_data(n: int = 96) -> ArrayDataset:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    x = (rng.random((n, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)  # learnable: brightness
    return ArrayDataset(x, y.astype(np.int64), source="tiny")


def test_training_checkpoints_resume_and_load_with_weights_only(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=16, val_fraction=0.0, checkpoint_every=2, lr_warmup_steps=2)
    data, out = _tiny_data(), tmp_path / "cnn.pt"
    first = B.train_baseline("cnn", data, out, cfg, progress=False, stop_after_steps=3)
    assert not first.complete
    payload = torch.load(out, map_location="cpu", weights_only=True)  # no pickled code
    assert (payload["format_version"], payload["kind"], payload["step"]) == (B.BASELINE_FORMAT, B.KIND, 3)
    done = B.train_baseline("cnn", data, out, cfg, progress=False)  # resumes at step 3
    assert done.complete and [r["epoch"] for r in done.record] == [1, 2]
    loaded = B.load_baseline(out)
    assert loaded.complete and loaded.name == "cnn"
    for k, v in done.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    # a finished checkpoint is returned as it is, a different recipe is refused
    assert B.train_baseline("cnn", data, out, cfg, progress=False).record == done.record
    with pytest.raises(TrainingError, match=r"cnn\.pt holds a training of cnn with other settings"):
        B.train_baseline("cnn", data, out, TrainConfig(**{**cfg.to_dict(), "lr": 0.01}), progress=False)


def test_checkpoint_of_another_format_version_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "old.pt"
    torch.save({"format_version": 99, "kind": B.KIND, "arch": "cnn"}, out)
    with pytest.raises(FormatVersionError, match=r"format version 99; this version of lifelong reads version 1"):
        B.load_baseline(out)
    with pytest.raises(Exception, match=re.escape(f"no baseline checkpoint at {tmp_path / 'none.pt'}")):
        B.load_baseline(tmp_path / "none.pt")


def test_recipe_is_read_from_the_supernet_checkpoint(tmp_path: Path) -> None:
    from lifelong.errors import CheckpointError
    from lifelong.nn.checkpoint import Checkpoint, save_checkpoint
    from lifelong.space.config import SpaceConfig

    trained = TrainConfig(epochs=7, lr=0.05, batch_size=64)
    path = save_checkpoint(
        tmp_path / "s.pt", Checkpoint(SpaceConfig(), {}, train={"config": json.dumps(trained.to_dict())})
    )
    assert B.recipe_from_checkpoint(path) == trained
    bare = save_checkpoint(tmp_path / "bare.pt", Checkpoint(SpaceConfig(), {}))
    with pytest.raises(CheckpointError, match="records no training config"):
        B.recipe_from_checkpoint(bare)


def test_calibration_images_come_from_the_training_part_of_the_split() -> None:
    data = _tiny_data(200)
    cfg = TrainConfig(val_fraction=0.25)
    train_part, val_part = data.split(cfg.val_fraction, seed=cfg.seed)
    images = B.calibration_images(data, cfg, n=40)
    assert images.shape == (40, 1, 28, 28) and images.dtype == np.float32
    train_rows = {r.tobytes() for r in train_part.as_float()}
    assert all(im.tobytes() in train_rows for im in images)
    assert not {im.tobytes() for im in images} & {r.tobytes() for r in val_part.as_float()}
    np.testing.assert_array_equal(B.calibration_images(data, cfg, n=40), images)  # seeded


def test_ptq_sweep_gives_one_row_per_configuration(tmp_path: Path) -> None:
    ptq = load("ptq")

    fp32 = B.export_onnx(_randomised("tutorial"), None, "tutorial")
    rng = np.random.default_rng(0)
    calib = rng.random((32, 1, 28, 28), dtype=np.float32)
    x, y = rng.random((50, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 50)
    configs = tuple(ptq.PtqConfig(c.method, c.activations, 16) for c in ptq.CONFIGS)
    result = ptq.sweep(fp32, calib, x, y, configs, threads=(1, 2), rounds=2, runs=2)
    assert [r.config.name for r in result.rows] == [
        "minmax-u8", "minmax-s8", "percentile-u8", "percentile-s8", "entropy-u8", "entropy-s8",
    ]  # fmt: skip
    for r in result.rows:
        assert 0 <= r.top1 <= 1 and np.isfinite(r.top1)
        assert set(r.latency_ms) == {"1", "2"} and all(0 < v < 1e3 for v in r.latency_ms.values())
        assert r.quantize_seconds > 0 and r.bytes > 0
    assert result.chosen.top1 == max(r.top1 for r in result.rows)
    assert result.chosen.top1 == ptq.onnx_top1(result.int8, x, y)
    assert set(result.fp32_latency_ms) == {"1", "2"} and 0 <= result.fp32_top1 <= 1
    doc = json.loads(json.dumps(result.to_dict()))  # JSON-ready
    assert len(doc["configs"]) == 6 and doc["chosen"] == result.chosen.config.name
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load_from_string(result.int8).graph.node}


def test_ptq_choice_prefers_accuracy_then_speed() -> None:
    import ptq

    def row(method: str, top1: float, ms: float) -> ptq.PtqRow:
        return ptq.PtqRow(ptq.PtqConfig(method), top1, 1.0, 1, {"1": 9.0, "2": ms})

    rows = [row("minmax", 0.90, 0.1), row("percentile", 0.91, 0.3), row("entropy", 0.91, 0.2)]
    assert ptq.choose(rows).config.method == "entropy"
    with pytest.raises(ValueError, match="no PTQ configuration"):
        ptq.choose([])
    with pytest.raises(ValueError, match=r"method must be one of .*got 'kl'; activations must be one of"):
        ptq.PtqConfig("kl", "fp16")

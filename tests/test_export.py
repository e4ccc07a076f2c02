from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from tiny_space import SMALL_SPACE

import lifelong.deploy.export as export_mod
from lifelong.deploy.export import (
    calibrate_gap_step,
    check_parity,
    export_subnet,
    kernel_counts,
    onnx_session,
    run_onnx,
    subnet_to_onnx,
)
from lifelong.deploy.model_format import EMBEDDING_OUTPUT, INPUT_NAME, LOGITS_OUTPUT, META_CHECKPOINT, META_SUBNET
from lifelong.errors import ParityError
from lifelong.nn.checkpoint import Checkpoint, save_checkpoint
from lifelong.nn.supernet import Supernet, init_quantizers, recalibrate_bn
from lifelong.space.config import Precision, SearchSpace
from lifelong.space.cost import subnet_cost
from service.cli.main import cli


@pytest.fixture(scope="module")
def supernet(fashion_train) -> Supernet:
    """A supernet whose weights and BN statistics are off their initial values (no training needed)."""
    torch.manual_seed(0)
    model = Supernet(SearchSpace(SMALL_SPACE))
    images = torch.from_numpy(fashion_train.head(64).as_float())
    init_quantizers(model, images)
    model.train()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(3):
            model.sample_active_subnet(rng)
            model(images)
    model.eval()
    return model


@pytest.fixture(scope="module")
def images(fashion_train, fashion_test):
    return fashion_train.head(256).as_float(), fashion_test.as_float()[:400], fashion_test.y[:400]


def _static(supernet: Supernet, cfg, calib: np.ndarray):
    sub = supernet.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(calib))
    sub.eval()
    return sub


@pytest.mark.parametrize("prec", SearchSpace(SMALL_SPACE).precisions, ids=str)
def test_export_matches_the_torch_subnet_at_every_precision(supernet: Supernet, images, prec: Precision) -> None:
    calib, x, y = images
    rng = np.random.default_rng([prec.w, prec.a])
    for _ in range(3):
        sub = _static(supernet, supernet.space.sample(rng, (prec,)), calib)
        report = check_parity(sub, subnet_to_onnx(sub).SerializeToString(), x, y)
        assert report.agreement >= 0.995, report
        if prec.is_full:
            assert report.max_logit_diff < 1e-3, report


def test_export_matches_at_mixed_precision(supernet: Supernet, images) -> None:
    calib, x, y = images
    rng = np.random.default_rng(11)
    for _ in range(3):
        sub = _static(supernet, supernet.space.sample(rng), calib)
        report = check_parity(sub, subnet_to_onnx(sub).SerializeToString(), x, y)
        assert report.agreement >= 0.995, (str(sub.cfg), report)


def test_model_follows_the_contract(supernet: Supernet, images) -> None:
    calib, x, _ = images
    cfg = supernet.space.sample(np.random.default_rng(3))
    model = subnet_to_onnx(_static(supernet, cfg, calib), checkpoint_sha256="ab" * 32)
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props[META_SUBNET] == str(cfg) and props[META_CHECKPOINT] == "ab" * 32
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [LOGITS_OUTPUT, EMBEDDING_OUTPUT]
    session = onnx_session(model)
    for batch in (1, 7):  # dynamic batch
        logits, emb = run_onnx(session, x[:batch])
        emb_width = cfg.head.hidden or subnet_cost(supernet.space, cfg).layers[-1].params // 10 - 1
        assert logits.shape == (batch, 10) and emb.shape == (batch, emb_width)


def test_quantized_weights_are_stored_on_their_integer_grid(supernet: Supernet, images) -> None:
    calib = images[0]
    sizes = {}
    for prec in supernet.space.precisions:
        model = subnet_to_onnx(_static(supernet, supernet.space.largest(prec), calib))
        sizes[prec.w] = len(model.SerializeToString())
        kinds = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer}
        assert ("int8" in kinds) == (prec.w == 8)
    assert sizes[8] < sizes[32] / 3, sizes


def test_failed_gate_raises_and_writes_nothing(supernet: Supernet, images, tmp_path: Path, monkeypatch) -> None:
    calib, x, y = images
    sub = _static(supernet, supernet.space.largest(Precision(8, 8)), calib)
    good = subnet_to_onnx

    def broken(sub, checkpoint_sha256="", gap_step=None):
        model = good(sub, checkpoint_sha256, gap_step)
        for t in model.graph.initializer:  # the output layer's rows shifted by one class: a wrong export
            if (
                t.name.split("_")[0] in ("fc.w", "fc.w_q", "fc.b", "fc.b_q", "fc.w_scale", "fc.b_scale")
                and len(t.dims) >= 1
            ):
                arr = onnx.numpy_helper.to_array(t)
                t.CopyFrom(onnx.numpy_helper.from_array(np.roll(arr, 1, axis=0), t.name))
        return model

    monkeypatch.setattr(export_mod, "subnet_to_onnx", broken)
    out = tmp_path / "models" / "m.onnx"
    with pytest.raises(ParityError, match="failed the parity gate"):
        export_subnet(sub, out, x, y)
    assert not out.exists()
    assert not list(tmp_path.rglob("*tmp*"))
    monkeypatch.setattr(export_mod, "subnet_to_onnx", good)
    report = export_subnet(sub, out, x, y)
    assert out.is_file() and report.parity.agreement >= 0.995 and report.bytes == out.stat().st_size


def test_export_command(supernet: Supernet, tmp_path: Path) -> None:
    ckpt = save_checkpoint(
        tmp_path / "supernet.pt",
        Checkpoint(supernet.space.config, supernet.state_dict(), train={"complete": True}),
    )
    out = tmp_path / "small.onnx"
    args = ["export", "smallest:w8a8", "--checkpoint", str(ckpt), "--out", str(out), "--calib", "200"]
    result = CliRunner().invoke(cli, [*args, "--parity-images", "300"])
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and out.is_file()
    bad = CliRunner().invoke(cli, ["export", "nonsense", "--checkpoint", str(ckpt)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


GAP_W8A8 = "c32.k3w8a8.s_c64.k3w8a8.k5w8a8.p_c64.k3w8a8.p_hg.d64w8a8.ow8a8"


@pytest.mark.parametrize(
    "name",
    ["c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8", "c16.k5w8a8.k3w8a8.s_c32.k3w8a8.s_hf.ow8a8", "largest:w8a8"],
)
def test_every_w8a8_layer_of_a_flatten_head_runs_as_an_integer_kernel(supernet: Supernet, images, name: str) -> None:
    """Pools and flattens are quantized with their reader's quantizer (exact), so the export of a
    W8A8 subnet with a flatten head needs no requantization to run as integer kernels only."""
    calib = images[0]
    cfg = supernet.space.resolve(name)
    sub = _static(supernet, cfg, calib)
    assert calibrate_gap_step(sub, calib) is None
    counts = kernel_counts(subnet_to_onnx(sub))
    n_convs = sum(s.depth for s in cfg.stages)
    assert counts["integer_convs"] == n_convs and counts["float_convs"] == 0, counts
    assert counts["integer_gemms"] == 1 + bool(cfg.head.hidden) and counts["float_gemms"] == 0, counts


def test_requantized_global_pool_runs_every_w8a8_layer_as_an_integer_kernel(supernet: Supernet, images) -> None:
    calib = images[0]
    rng = np.random.default_rng(21)
    gap = [c for c in (supernet.space.sample(rng, (Precision(8, 8),)) for _ in range(50)) if c.head.pool == "gap"]
    for cfg in (supernet.space.parse(GAP_W8A8), gap[0]):
        sub = _static(supernet, cfg, calib)
        exact = kernel_counts(subnet_to_onnx(sub))
        fused = kernel_counts(subnet_to_onnx(sub, gap_step=calibrate_gap_step(sub, calib)))
        assert exact["float_convs"] == 1, exact  # the last conv, whose output the global pool reads in float
        assert fused["float_convs"] == 0 and fused["float_gemms"] == 0, fused
        assert fused["integer_convs"] == exact["integer_convs"] + 1, (exact, fused)


def test_export_keeps_the_requantized_form_only_when_it_passes_the_gate(
    supernet: Supernet, images, tmp_path: Path, monkeypatch
) -> None:
    calib, x, y = images
    sub = _static(supernet, supernet.space.parse(GAP_W8A8), calib)
    ok = export_subnet(sub, tmp_path / "a.onnx", x, y, calibration=calib, min_agreement=0.5, max_accuracy_gap=1.0)
    assert ok.requantized and ok.requant_parity is ok.parity
    assert kernel_counts((tmp_path / "a.onnx").read_bytes())["float_convs"] == 0

    real_check = export_mod.check_parity

    def strict_on_requantized(sub, model, images, labels, gap_step=None):  # the requantized form fails the gate
        report = real_check(sub, model, images, labels, gap_step)
        if gap_step is not None:
            return dataclasses.replace(report, agreement=0.9)
        return report

    monkeypatch.setattr(export_mod, "check_parity", strict_on_requantized)
    fallback = export_subnet(sub, tmp_path / "b.onnx", x, y, calibration=calib)
    assert not fallback.requantized
    assert fallback.requant_parity is not None and fallback.requant_parity.agreement == 0.9
    assert fallback.parity.agreement >= 0.995
    assert kernel_counts((tmp_path / "b.onnx").read_bytes())["float_convs"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_simulation_of_the_requantized_form_matches_onnx(supernet: Supernet, images, seed: int) -> None:
    calib, x, y = images
    rng = np.random.default_rng(100 + seed)
    candidates = (supernet.space.sample(rng, (Precision(8, 8),)) for _ in range(100))
    cfg = supernet.space.parse(GAP_W8A8) if seed == 0 else next(c for c in candidates if c.head.pool == "gap")
    sub = _static(supernet, cfg, calib)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the untrained fixture is nearly constant: give its units a spread
        for bn in (m for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=gen))
    step = calibrate_gap_step(sub, calib)
    data = subnet_to_onnx(sub, gap_step=step).SerializeToString()
    simulated = check_parity(sub, data, x, y, step)
    plain = check_parity(sub, data, x, y)
    assert simulated.agreement >= 0.995 and simulated.max_logit_diff <= plain.max_logit_diff + 1e-6, (simulated, plain)
    from lifelong.train.evaluate import predict_logits

    before = predict_logits(sub, x)
    with export_mod.simulate_requant(sub, step):
        changed = predict_logits(sub, x)
    assert np.abs(changed - before).max() > 0, "the simulation must change the function"
    np.testing.assert_array_equal(predict_logits(sub, x), before, err_msg="simulation must be undone")

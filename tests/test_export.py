from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import lifelong.export as export_mod
from lifelong.checkpoint import Checkpoint, save_checkpoint
from lifelong.errors import ParityError
from lifelong.export import (
    calibrate_requant,
    check_parity,
    export_subnet,
    kernel_counts,
    onnx_session,
    run_onnx,
    subnet_to_onnx,
)
from lifelong.model_format import EMBEDDING_OUTPUT, INPUT_NAME, LOGITS_OUTPUT, META_CHECKPOINT, META_SUBNET
from lifelong.space import Precision, SearchSpace
from lifelong.supernet import Supernet, init_quantizers, recalibrate_bn
from service.cli import cli


@pytest.fixture(scope="module")
def supernet(fashion_train) -> Supernet:
    """A supernet whose weights and BN statistics are off their initial values (no training needed)."""
    torch.manual_seed(0)
    model = Supernet(SearchSpace())
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


@pytest.mark.parametrize("prec", SearchSpace().precisions, ids=str)
def test_export_matches_the_torch_subnet_at_every_precision(supernet: Supernet, images, prec: Precision) -> None:
    calib, x, y = images
    rng = np.random.default_rng(hash(str(prec)) % 2**32)
    for _ in range(2):
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
        assert logits.shape == (batch, 10) and emb.shape == (batch, supernet.space.config.head_width)


def test_quantized_weights_are_stored_on_their_integer_grid(supernet: Supernet, images) -> None:
    calib = images[0]
    sizes = {}
    for bits in (32, 8, 4):
        model = subnet_to_onnx(_static(supernet, supernet.space.largest(Precision(bits, 8)), calib))
        sizes[bits] = len(model.SerializeToString())
        kinds = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer}
        if bits == 8:
            assert "int8" in kinds
        if bits == 4:
            assert "int4" in kinds
    assert sizes[8] < sizes[32] / 3, sizes
    assert sizes[4] < sizes[8] * 0.65, sizes


def test_failed_gate_raises_and_writes_nothing(supernet: Supernet, images, tmp_path: Path, monkeypatch) -> None:
    calib, x, y = images
    sub = _static(supernet, supernet.space.largest(Precision(8, 8)), calib)
    good = subnet_to_onnx

    def broken(sub, checkpoint_sha256="", requant=None):
        model = good(sub, checkpoint_sha256, requant)
        for t in model.graph.initializer:  # the classifier's rows shifted by one class: a wrong export
            if t.name.split("_")[0] in ("fc.w", "fc.b") and len(t.dims) >= 1:
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


def test_requantized_export_runs_every_w8a8_conv_as_an_integer_kernel(supernet: Supernet, images) -> None:
    calib, x, y = images
    rng = np.random.default_rng(21)
    for cfg in (supernet.space.largest(Precision(8, 8)), supernet.space.sample(rng, (Precision(8, 8),))):
        sub = _static(supernet, cfg, calib)
        exact = kernel_counts(subnet_to_onnx(sub))
        fused = kernel_counts(subnet_to_onnx(sub, requant=calibrate_requant(sub, calib)))
        assert exact["float_convs"] > 0, exact  # residual projections, ReLU before a signed quantizer
        assert fused["float_convs"] == 0, fused
        assert fused["integer_convs"] == exact["integer_convs"] + exact["float_convs"], (exact, fused)
        assert fused["dequantize_nodes"] < exact["dequantize_nodes"], (exact, fused)


def test_export_keeps_the_requantized_form_only_when_it_passes_the_gate(
    supernet: Supernet, images, tmp_path: Path, monkeypatch
) -> None:
    calib, x, y = images
    sub = _static(supernet, supernet.space.largest(Precision(8, 8)), calib)
    ok = export_subnet(sub, tmp_path / "a.onnx", x, y, calibration=calib, min_agreement=0.5, max_accuracy_gap=1.0)
    assert ok.requantized and ok.requant_parity is ok.parity
    assert kernel_counts((tmp_path / "a.onnx").read_bytes())["float_convs"] == 0

    real_check = export_mod.check_parity

    def strict_on_requantized(sub, model, images, labels, requant=None):  # the requantized form fails the gate
        report = real_check(sub, model, images, labels, requant)
        if b"head.out" in model:
            return dataclasses.replace(report, agreement=0.9)
        return report

    monkeypatch.setattr(export_mod, "check_parity", strict_on_requantized)
    fallback = export_subnet(sub, tmp_path / "b.onnx", x, y, calibration=calib)
    assert not fallback.requantized
    assert fallback.requant_parity is not None and fallback.requant_parity.agreement == 0.9
    assert fallback.parity.agreement >= 0.995
    assert kernel_counts((tmp_path / "b.onnx").read_bytes())["float_convs"] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_simulation_of_the_requantized_form_matches_onnx(supernet: Supernet, images, seed: int) -> None:
    calib, x, y = images
    rng = np.random.default_rng(100 + seed)
    cfg = supernet.space.largest(Precision(8, 8)) if seed == 0 else supernet.space.sample(rng, (Precision(8, 8),))
    sub = _static(supernet, cfg, calib)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the untrained fixture is nearly constant: give its units a spread
        for bn in (m for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=gen))
    requant = calibrate_requant(sub, calib)
    data = subnet_to_onnx(sub, requant=requant).SerializeToString()
    simulated = check_parity(sub, data, x, y, requant)
    plain = check_parity(sub, data, x, y)
    assert simulated.agreement >= 0.995 and simulated.max_logit_diff <= plain.max_logit_diff + 1e-6, (simulated, plain)
    from lifelong.evaluate import predict_logits

    signs = [m.signed for m in sub.modules() if hasattr(m, "signed")]
    with export_mod.simulate_requant(sub, requant):
        changed = predict_logits(sub, x)
    assert np.abs(changed - predict_logits(sub, x)).max() > 0, "the simulation must change the function"
    assert [m.signed for m in sub.modules() if hasattr(m, "signed")] == signs, "simulation must be undone"

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.nn.quant import ActQuantizer, WeightQuantizer, fake_quant, qrange, transfer_precision
from lifelong.nn.supernet import Supernet, init_quantizers, recalibrate_bn
from lifelong.space.config import Precision, SearchSpace
from lifelong.space.cost import subnet_cost


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    torch.manual_seed(0)
    model = Supernet(SearchSpace())
    init_quantizers(model, torch.rand(32, 1, 28, 28))
    # move BN statistics and weights off their initial values so that slicing errors show
    model.train()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(3):
            model.sample_active_subnet(rng)
            model(torch.rand(16, 1, 28, 28))
    model.eval()
    return model


@pytest.mark.parametrize("prec", SearchSpace().precisions, ids=str)
def test_get_subnet_equals_supernet_at_every_precision(supernet: Supernet, prec: Precision) -> None:
    rng = np.random.default_rng([7, prec.w, prec.a])
    x = torch.rand(8, 1, 28, 28)
    for _ in range(6):
        cfg = supernet.space.sample(rng, (prec,))
        supernet.set_active_subnet(cfg)
        expected, emb = supernet.forward_with_embedding(x)
        sub = supernet.get_subnet()
        sub.eval()
        got, sub_emb = sub.forward_with_embedding(x)
        assert got.shape == (8, 10) and emb.shape[0] == 8
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sub_emb, emb, rtol=1e-4, atol=1e-4)


def test_get_subnet_mixed_precision_and_only_active_weights(supernet: Supernet) -> None:
    rng = np.random.default_rng(7)
    x = torch.rand(4, 1, 28, 28)
    for _ in range(8):
        cfg = supernet.space.sample(rng)
        supernet.set_active_subnet(cfg)
        sub = supernet.get_subnet(cfg)
        sub.eval()
        torch.testing.assert_close(sub(x), supernet(x), rtol=1e-4, atol=1e-4)
        conv_w = sum(c.weight.numel() for c in sub.convs)
        fc = sum(f.weight.numel() + f.bias.numel() for f in sub.fcs)
        bn_bias = sum(c.bn.bias.numel() for c in sub.convs)  # BN folds into one bias per channel
        assert conv_w + fc + bn_bias == subnet_cost(supernet.space, cfg).params
        assert sub.name == str(cfg)


def _tutorial_cnn() -> nn.Sequential:
    """The small CNN a tutorial writes, built by hand."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
    )  # fmt: skip


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def count(m: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    model.eval()
    model(x)
    for h in hooks:
        h.remove()
    return total


def test_the_tutorial_cnn_built_from_its_name_is_the_hand_built_net(supernet: Supernet) -> None:
    hand = _tutorial_cnn()
    # BN folded: each conv keeps its weight and gains one bias per channel (BN's two become one)
    hand_params = sum(p.numel() for n, p in hand.named_parameters() if not n.startswith(("1.", "5.")))
    cfg = supernet.space.parse("c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8")
    cost = subnet_cost(supernet.space, cfg)
    assert cost.params == hand_params == 421_642
    assert cost.macs == _macs(hand, torch.rand(1, 1, 28, 28)) == 4_241_152
    sub = supernet.get_subnet(cfg)
    sub.eval()
    assert sub(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert [tuple(c.weight.shape) for c in sub.convs] == [(32, 1, 3, 3), (64, 32, 3, 3)]
    assert [tuple(f.weight.shape) for f in sub.fcs] == [(128, 3136), (10, 128)]


def test_quantization_changes_outputs_and_grid(supernet: Supernet) -> None:
    x = torch.rand(8, 1, 28, 28)
    full = supernet.space.largest()
    outs = {}
    for p in supernet.space.precisions:
        supernet.set_active_subnet(full.with_precision(p))
        outs[str(p)] = supernet(x)
    assert not torch.allclose(outs["w32a32"], outs["w8a8"])
    sub = supernet.get_subnet(full.with_precision(Precision(8, 8)))
    conv = sub.convs[0]
    step = conv.wq.step(8).view(-1, 1, 1, 1)
    q = conv.wq(conv.weight, 8) / step
    assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 127


def test_lsq_gradients_match_reference() -> None:
    def ref(x, s, qmin, qmax, g):
        sg = (s - s * g).detach() + s * g
        xs = torch.clamp(x / sg, qmin, qmax)
        return ((xs.round() - xs).detach() + xs) * sg

    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    for s0 in (torch.tensor(0.1, dtype=torch.float64), torch.rand(4, 1, 1, 1, dtype=torch.float64) * 0.2 + 0.05):
        gy = torch.randn(4, 3, 5, 5, dtype=torch.float64)
        s1, s2 = s0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
        a = torch.autograd.grad(fake_quant(x, s1, -8, 7, 0.3), (x, s1), gy)
        b = torch.autograd.grad(ref(x, s2, -8, 7, 0.3), (x, s2), gy)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def test_quantizers_identity_at_full_precision_and_transfer() -> None:
    wq = WeightQuantizer((4, 8, 32), 6)
    aq = ActQuantizer((8, 32), signed=False)
    w = torch.randn(6, 3, 3, 3)
    assert torch.equal(wq(w, 32), w) and torch.equal(aq(w.abs(), 32), w.abs())
    wq(w, 8)
    assert wq.is_initialized(8) and not wq.is_initialized(4)
    assert transfer_precision(wq, 8, 4) == 1
    _, q8 = qrange(8, True, narrow=True)
    _, q4 = qrange(4, True, narrow=True)
    torch.testing.assert_close(wq.step(4) * q4, wq.step(8) * q8)  # same clipping range
    assert qrange(8, signed=False) == (0, 255) and qrange(8, signed=True) == (-128, 127)


def test_recalibrate_bn_gives_exact_batch_statistics() -> None:
    torch.manual_seed(1)
    model = Supernet(SearchSpace())
    cfg = model.space.smallest(Precision())
    model.set_active_subnet(cfg)
    sub = model.get_subnet()
    sub.eval()
    images = torch.rand(64, 1, 28, 28)
    recalibrate_bn(sub, images, batch_size=64)
    # one batch, cumulative average: the first conv's running mean is the batch mean of its output
    first = sub.convs[0]
    with torch.no_grad():
        z = torch.nn.functional.conv2d((images - 0.2860) / 0.3530, first.weight, None, first.stride, 1)
    torch.testing.assert_close(first.bn.running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert first.bn.momentum == 0.1 and not sub.training


def test_stride_and_pool_downsample_to_the_same_shapes() -> None:
    model = Supernet(SearchSpace())
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    shapes = set()
    for down in ("pool", "stride"):
        cfg = model.space.parse(
            f"c16.k3w32a32.k3w32a32.{down[0]}_c32.k3w32a32.{down[0]}_c64.k5w32a32.{down[0]}_hf.ow32a32"
        )
        model.set_active_subnet(cfg)
        logits, emb = model.forward_with_embedding(x)
        shapes.add((tuple(logits.shape), tuple(emb.shape)))
    assert shapes == {((2, 10), (2, 64 * 4 * 4))}


def test_supernet_trains_every_active_parameter_only() -> None:
    torch.manual_seed(2)
    model = Supernet(SearchSpace())
    model.train()
    cfg = model.space.smallest(Precision())
    model.set_active_subnet(cfg)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    second = model.stages[1][0]
    g = second.weight.grad
    w0, w1 = cfg.stages[0].width, cfg.stages[1].width
    assert g[:w1, :w0].abs().sum() > 0
    assert g[:, w0:].abs().sum() == 0 and g[w1:].abs().sum() == 0, "inactive channels got gradient"
    assert model.stages[1][1].weight.grad is None, "a conv past the active depth got gradient"
    assert model.stages[2][0].weight.grad is None, "an absent stage got gradient"
    assert model.heads["gap2"].direct.weight.grad is not None and model.heads["flat2"].direct.weight.grad is None


def test_a_step_carried_below_zero_by_the_optimiser_still_quantizes() -> None:
    """LSQ's update can carry a step across zero; the grid uses its magnitude (a negative step
    once sent every input to 0 and a whole family of subnets to 10% top-1)."""
    aq = ActQuantizer((8,), signed=False)
    x = torch.rand(4, 16) * 3
    aq(x, 8)
    good = aq(x, 8)
    with torch.no_grad():
        aq.step(8).mul_(-1)
    torch.testing.assert_close(aq(x, 8), good)
    assert aq(x, 8).abs().sum() > 0
    with torch.no_grad():
        aq.step(8).zero_()
    assert torch.isfinite(aq(x, 8)).all()

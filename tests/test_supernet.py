from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.cost import subnet_cost
from lifelong.quant import ActQuantizer, WeightQuantizer, fake_quant, qrange, transfer_precision
from lifelong.space import Precision, SearchSpace
from lifelong.supernet import Supernet, init_quantizers, recalibrate_bn


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
    rng = np.random.default_rng(hash(str(prec)) % 2**32)
    x = torch.rand(8, 1, 28, 28)
    for _ in range(4):
        cfg = supernet.space.sample(rng, (prec,))
        supernet.set_active_subnet(cfg)
        expected, emb = supernet.forward_with_embedding(x)
        sub = supernet.get_subnet()
        sub.eval()
        got, sub_emb = sub.forward_with_embedding(x)
        assert got.shape == (8, 10) and emb.shape == (8, supernet.space.config.head_width)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sub_emb, emb, rtol=1e-4, atol=1e-4)


def test_get_subnet_mixed_precision_and_only_active_weights(supernet: Supernet) -> None:
    rng = np.random.default_rng(7)
    x = torch.rand(4, 1, 28, 28)
    for _ in range(6):
        cfg = supernet.space.sample(rng)
        supernet.set_active_subnet(cfg)
        sub = supernet.get_subnet(cfg)
        sub.eval()
        torch.testing.assert_close(sub(x), supernet(x), rtol=1e-4, atol=1e-4)
        n_weights = sum(p.numel() for n, p in sub.named_parameters() if n.endswith("weight") and ".bn." not in n)
        n_bias = sub.classifier.linear.bias.numel()
        bn = sum(m.weight.numel() for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert n_weights + n_bias + bn == subnet_cost(supernet.space, cfg).params
        assert sub.name == str(cfg)


def test_quantization_changes_outputs_and_grid(supernet: Supernet) -> None:
    x = torch.rand(8, 1, 28, 28)
    full = supernet.space.largest()
    outs = {}
    for p in (Precision(32, 32), Precision(8, 8), Precision(4, 8)):
        supernet.set_active_subnet(full.with_precision(p))
        outs[str(p)] = supernet(x)
    assert not torch.allclose(outs["w32a32"], outs["w8a8"])
    assert (outs["w32a32"] - outs["w8a8"]).abs().mean() < (outs["w32a32"] - outs["w4a8"]).abs().mean()
    sub = supernet.get_subnet(full.with_precision(Precision(4, 8)))
    w = sub.stem.weight
    step = sub.stem.wq.step(4).view(-1, 1, 1, 1)
    q = sub.stem.wq(w, 4) / step
    assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 7


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
    # one batch, cumulative average: the stem's running mean is the batch mean of its conv output
    with torch.no_grad():
        z = torch.nn.functional.conv2d((images - 0.2860) / 0.3530, sub.stem.weight, None, 2, 1)
    torch.testing.assert_close(sub.stem.bn.running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert sub.stem.bn.momentum == 0.1 and not sub.training


def test_supernet_trains_every_active_parameter_only() -> None:
    torch.manual_seed(2)
    model = Supernet(SearchSpace())
    model.train()
    cfg = model.space.smallest(Precision())
    model.set_active_subnet(cfg)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    stage0 = model.stages[0][0]["ir"]
    assert stage0.expand.weight.grad is not None
    g = stage0.expand.weight.grad
    assert g[: cfg.stages[0].width * 2, : cfg.stem_width].abs().sum() > 0
    assert g[:, cfg.stem_width :].abs().sum() == 0, "inactive input channels got gradient"
    assert model.stages[0][0]["conv"].conv.weight.grad is None

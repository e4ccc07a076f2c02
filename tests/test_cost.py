from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lifelong.deploy.onnx_graph import build_model
from lifelong.device.latency_table import CostTable
from lifelong.device.profile import random_net
from lifelong.space.codec import SubnetCodec
from lifelong.space.config import Precision, SearchSpace
from lifelong.space.cost import conv_resolution, feature_count, subnet_cost

SPACE = SearchSpace()
TUTORIAL = "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8"


def _hand_built() -> torch.nn.Module:
    """The tutorial CNN as written by hand (batch norm folded into the convolutions' biases)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def _torch_macs(net: torch.nn.Module) -> int:
    macs = 0

    def hook(module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d):
            macs += out[0].numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, torch.nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return macs


def test_the_tutorial_cnn_costs_what_the_hand_built_net_costs() -> None:
    cfg = SPACE.parse(TUTORIAL)
    net = _hand_built()
    params = sum(p.numel() for p in net.parameters())
    assert params == 320 + 18_496 + 401_536 + 1_290 == 421_642
    assert _torch_macs(net) == 225_792 + 3_612_672 + 401_408 + 1_280 == 4_241_152
    cost = subnet_cost(SPACE, cfg)
    assert (cost.params, cost.macs) == (params, _torch_macs(net))
    assert [layer.name for layer in cost.layers] == ["stage0.conv0", "stage1.conv0", "hidden", "out"]
    assert cost.weight_bytes == params  # every layer at 8 bits
    table = CostTable(SPACE, SubnetCodec(SPACE))
    assert table.params([cfg])[0] == params and table.macs([cfg])[0] == cost.macs
    assert feature_count(SPACE, cfg) == 64 * 7 * 7


def test_conv_resolution_follows_the_downsampling() -> None:
    assert conv_resolution(SPACE, 0, 0, "pool") == (28, 28)
    assert conv_resolution(SPACE, 0, 1, "pool") == (28, 28)
    assert conv_resolution(SPACE, 0, 0, "stride") == (28, 14)
    assert conv_resolution(SPACE, 0, 1, "stride") == (14, 14)
    assert conv_resolution(SPACE, 2, 0, "stride") == (7, 4)


def _onnx_macs(model: onnx.ModelProto) -> int:
    """MACs of the float graph's convolutions and Gemms, from onnx's own shape inference."""
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            cout, cin, kh, kw = weights[node.input[1]]
            _, _, h, w = shapes[node.output[0]]
            macs += cout * h * w * cin * kh * kw
        elif node.op_type == "Gemm":
            cout, cin = weights[node.input[1]]
            macs += cout * cin
    return macs


def test_subnet_cost_counts_the_macs_of_the_graph_that_runs() -> None:
    rng = np.random.default_rng(0)
    cfgs = [SPACE.sample(rng).with_precision(Precision(32, 32)) for _ in range(12)]
    cfgs += [SPACE.largest(Precision(32, 32)), SPACE.smallest(Precision(32, 32))]
    cfgs += [SPACE.parse("c16.k3w32a32.k5w32a32.s_c32.k3w32a32.k3w32a32.k3w32a32.s_c64.k5w32a32.p_hg.ow32a32")]
    for cfg in cfgs:
        assert subnet_cost(SPACE, cfg).macs == _onnx_macs(build_model(random_net(SPACE, cfg))), str(cfg)

"""Elastic quantized layers shared by the supernet and its extracted static subnets.

Each layer slices its largest weight to the active shape (OFA's elastic width, kernel and
expand ratio), fake-quantizes the sliced weight per output channel and its input per tensor
with the quantizer of the active precision, then applies conv, batch norm and ReLU. A static
subnet uses the same classes built at exactly the active size, so the two compute the same
function by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.quant import ActQuantizer, WeightQuantizer
from lifelong.space import Precision

__all__ = ["Classifier", "ConvBlock", "IRBlock", "QConvBN"]

INT32_MAX = 2**31 - 1


class QConvBN(nn.Module):
    """Conv (dense or depthwise) + BN + optional ReLU with bit-shared quantizers."""

    def __init__(
        self,
        in_max: int,
        out_max: int,
        k_max: int,
        stride: int,
        *,
        depthwise: bool,
        act_signed: bool,
        relu: bool,
        weight_bits: tuple[int, ...],
        act_bits: tuple[int, ...],
    ) -> None:
        super().__init__()
        assert not depthwise or in_max == out_max, "a depthwise conv keeps its channel count"
        self.in_max, self.out_max, self.k_max = in_max, out_max, k_max
        self.stride, self.depthwise, self.relu = stride, depthwise, relu
        self.weight = nn.Parameter(torch.empty(out_max, 1 if depthwise else in_max, k_max, k_max))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bn = nn.BatchNorm2d(out_max)
        self.wq = WeightQuantizer(weight_bits, out_max)
        self.aq = ActQuantizer(act_bits, signed=act_signed)

    def active_weight(self, cin: int, cout: int, k: int) -> torch.Tensor:
        lo = (self.k_max - k) // 2  # the centre of the largest kernel
        if self.depthwise:
            return self.weight[:cin, :, lo : lo + k, lo : lo + k]
        return self.weight[:cout, :cin, lo : lo + k, lo : lo + k]

    def forward(self, x: torch.Tensor, cout: int | None, k: int, prec: Precision) -> torch.Tensor:
        cin = x.shape[1]  # (B, Cin, H, W)
        cout = cin if self.depthwise else cout
        assert cout is not None and cout <= self.out_max and cin <= self.in_max and k <= self.k_max, (
            f"active shape ({cin}->{cout}, k{k}) exceeds ({self.in_max}->{self.out_max}, k{self.k_max})"
        )
        x = self.aq(x, prec.a)
        w = self.wq(self.active_weight(cin, cout, k), prec.w)
        if x.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)  # keeps oneDNN on its fast path
        y = F.conv2d(x, w, None, self.stride, k // 2, 1, cin if self.depthwise else 1)  # (B, Cout, H', W')
        bn = self.bn
        if not self.training and prec.w == 8 and prec.a == 8:
            return self._integer_bias_bn(y, cout, float(self.aq.step(8).detach()))
        if self.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        else:
            factor = 0.0
        y = F.batch_norm(
            y,
            bn.running_mean[:cout],
            bn.running_var[:cout],
            bn.weight[:cout],
            bn.bias[:cout],
            self.training,
            factor,
            bn.eps,
        )
        return F.relu(y) if self.relu else y

    def _integer_bias_bn(self, y: torch.Tensor, cout: int, x_step: float) -> torch.Tensor:
        """Inference BN as an integer kernel computes it: folded, bias on the accumulator grid.

        An 8-bit conv runs in onnxruntime as ``QLinearConv``, which adds the folded BN bias as an
        int32 on the grid ``s_x * s_w * |gamma / sigma|``. Rounding the bias here too makes every
        evaluation of a W8A8 layer the number the device will get (see lifelong.onnx_graph).
        """
        bn = self.bn
        gain = bn.weight[:cout] / torch.sqrt(bn.running_var[:cout] + bn.eps)  # (Cout,)
        bias = bn.bias[:cout] - gain * bn.running_mean[:cout]
        grid = x_step * self.wq.step(8)[:cout] * gain.abs().clamp_min(1e-30)
        q = torch.round(bias / grid)
        if bool((q.abs() <= INT32_MAX).all()):
            bias = q * grid
        y = y * gain.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        return F.relu(y) if self.relu else y

    @torch.no_grad()
    def extract(self, cin: int, cout: int | None, k: int, prec: Precision) -> QConvBN:
        """A layer of exactly the active size holding copies of the active weights."""
        cout = cin if self.depthwise else cout
        assert cout is not None
        out = QConvBN(
            cin,
            cout,
            k,
            self.stride,
            depthwise=self.depthwise,
            act_signed=self.aq.signed,
            relu=self.relu,
            weight_bits=(prec.w,),
            act_bits=(prec.a,),
        )
        out.weight.copy_(self.active_weight(cin, cout, k))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out.bn, name).copy_(getattr(self.bn, name)[:cout])
        out.bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
        out.bn.momentum, out.bn.eps = self.bn.momentum, self.bn.eps
        _copy_step(self.wq, out.wq, prec.w, cout)
        _copy_step(self.aq, out.aq, prec.a, None)
        return out


def _copy_step(src: nn.Module, dst: nn.Module, bits: int, channels: int | None) -> None:
    if bits >= 32:
        return
    step = src.step(bits).data
    dst.step(bits).data.copy_(step if channels is None else step[:channels])
    getattr(dst, f"initialized_{bits}").copy_(getattr(src, f"initialized_{bits}"))


class IRBlock(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise (stride), 1x1 linear project (+ skip)."""

    def __init__(self, in_max: int, out_max: int, k_max: int, e_max: int, stride: int, wb: tuple, ab: tuple) -> None:
        super().__init__()
        hid = in_max * e_max
        self.stride = stride
        self.expand = QConvBN(
            in_max, hid, 1, 1, depthwise=False, act_signed=True, relu=True, weight_bits=wb, act_bits=ab
        )
        self.dw = QConvBN(
            hid, hid, k_max, stride, depthwise=True, act_signed=False, relu=True, weight_bits=wb, act_bits=ab
        )
        self.project = QConvBN(
            hid, out_max, 1, 1, depthwise=False, act_signed=False, relu=False, weight_bits=wb, act_bits=ab
        )

    def forward(self, x: torch.Tensor, cout: int, k: int, e: int, prec: Precision) -> torch.Tensor:
        cin = x.shape[1]
        h = self.expand(x, cin * e, 1, prec)  # (B, cin*e, H, W)
        h = self.dw(h, None, k, prec)  # (B, cin*e, H/s, W/s)
        h = self.project(h, cout, 1, prec)  # (B, cout, H/s, W/s)
        return h + x if self.stride == 1 and cin == cout else h

    def extract(self, cin: int, cout: int, k: int, e: int, prec: Precision) -> IRBlock:
        out = IRBlock.__new__(IRBlock)
        nn.Module.__init__(out)
        out.stride = self.stride
        out.expand = self.expand.extract(cin, cin * e, 1, prec)
        out.dw = self.dw.extract(cin * e, None, k, prec)
        out.project = self.project.extract(cin * e, cout, 1, prec)
        return out


class ConvBlock(nn.Module):
    """Plain kxk convolution + BN + ReLU, no skip: the dense layer small CPUs run fast."""

    def __init__(self, in_max: int, out_max: int, k_max: int, stride: int, wb: tuple, ab: tuple) -> None:
        super().__init__()
        self.conv = QConvBN(
            in_max, out_max, k_max, stride, depthwise=False, act_signed=True, relu=True, weight_bits=wb, act_bits=ab
        )

    def forward(self, x: torch.Tensor, cout: int, k: int, e: int | None, prec: Precision) -> torch.Tensor:
        return self.conv(x, cout, k, prec)

    def extract(self, cin: int, cout: int, k: int, e: int | None, prec: Precision) -> ConvBlock:
        out = ConvBlock.__new__(ConvBlock)
        nn.Module.__init__(out)
        out.conv = self.conv.extract(cin, cout, k, prec)
        return out


class Classifier(nn.Module):
    """Global average pool, then a quantized linear layer. Returns (logits, embedding)."""

    def __init__(self, in_features: int, num_classes: int, wb: tuple, ab: tuple) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.wq = WeightQuantizer(wb, num_classes)
        self.aq = ActQuantizer(ab, signed=False)

    def forward(self, x: torch.Tensor, prec: Precision) -> tuple[torch.Tensor, torch.Tensor]:
        emb = x.mean((2, 3))  # (B, C)
        logits = F.linear(self.aq(emb, prec.a), self.wq(self.linear.weight, prec.w), self.linear.bias)
        return logits, emb

    @torch.no_grad()
    def extract(self, prec: Precision) -> Classifier:
        out = Classifier(self.linear.in_features, self.linear.out_features, (prec.w,), (prec.a,))
        out.linear.load_state_dict(self.linear.state_dict())
        _copy_step(self.wq, out.wq, prec.w, None)
        _copy_step(self.aq, out.aq, prec.a, None)
        return out

"""Elastic quantized layers shared by the supernet and its extracted static subnets.

Each layer slices its largest weight to the active shape (OFA's elastic width and kernel),
fake-quantizes the sliced weight per output channel and its input per tensor with the
quantizer of the active precision, then applies conv, batch norm and ReLU (:class:`QConvBN`)
or a fully connected layer (:class:`QLinear`). A static
subnet uses the same classes built at exactly the active size, so the two compute the same
function by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.nn.quant import ActQuantizer, WeightQuantizer
from lifelong.space.config import Precision

__all__ = ["QConvBN", "QLinear"]

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

    def forward(
        self, x: torch.Tensor, cout: int | None, k: int, prec: Precision, stride: int | None = None
    ) -> torch.Tensor:
        """``stride`` overrides the layer's own: the elastic first conv of a stage strides only
        when the subnet downsamples by stride."""
        cin = x.shape[1]  # (B, Cin, H, W)
        cout = cin if self.depthwise else cout
        assert cout is not None and cout <= self.out_max and cin <= self.in_max and k <= self.k_max, (
            f"active shape ({cin}->{cout}, k{k}) exceeds ({self.in_max}->{self.out_max}, k{self.k_max})"
        )
        x = self.aq(x, prec.a)
        w = self.wq(self.active_weight(cin, cout, k), prec.w)
        if x.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)  # keeps oneDNN on its fast path
        stride = self.stride if stride is None else stride
        y = F.conv2d(x, w, None, stride, k // 2, 1, cin if self.depthwise else 1)  # (B, Cout, H', W')
        bn = self.bn
        if not self.training and prec.w == 8 and prec.a == 8:
            return self._integer_bias_bn(y, cout, float(self.aq.scale(8).detach()))
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
        evaluation of a W8A8 layer the number the device will get (see lifelong.deploy.onnx_graph).
        """
        bn = self.bn
        gain = bn.weight[:cout] / torch.sqrt(bn.running_var[:cout] + bn.eps)  # (Cout,)
        bias = bn.bias[:cout] - gain * bn.running_mean[:cout]
        grid = x_step * self.wq.scale(8)[:cout] * gain.abs().clamp_min(1e-30)
        q = torch.round(bias / grid)
        if bool((q.abs() <= INT32_MAX).all()):
            bias = q * grid
        y = y * gain.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        return F.relu(y) if self.relu else y

    @torch.no_grad()
    def extract(self, cin: int, cout: int | None, k: int, prec: Precision, stride: int | None = None) -> QConvBN:
        """A layer of exactly the active size holding copies of the active weights."""
        cout = cin if self.depthwise else cout
        assert cout is not None
        out = QConvBN(
            cin,
            cout,
            k,
            self.stride if stride is None else stride,
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


class QLinear(nn.Module):
    """A fully connected layer with elastic input and output size and bit-shared quantizers.

    The input is quantized per tensor, unsigned (it always follows a ReLU, a max-pool of one
    or an average of one), the weight per output channel. The bias stays float, as in the
    exported ``Gemm``. Input features are sliced from the front: a flattened ``(C, H, W)``
    map is channel-major, so the first ``c * H * W`` features are those of the first ``c``
    channels, and a narrower stage uses a slice of the same weight.
    """

    def __init__(
        self, in_max: int, out_max: int, *, relu: bool, weight_bits: tuple[int, ...], act_bits: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.in_max, self.out_max, self.relu = in_max, out_max, relu
        self.weight = nn.Parameter(torch.empty(out_max, in_max))
        self.bias = nn.Parameter(torch.zeros(out_max))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        bound = 1 / in_max**0.5
        nn.init.uniform_(self.bias, -bound, bound)
        self.wq = WeightQuantizer(weight_bits, out_max)
        self.aq = ActQuantizer(act_bits, signed=False)

    def forward(self, x: torch.Tensor, out: int, prec: Precision) -> torch.Tensor:
        cin = x.shape[1]  # (B, In)
        assert cin <= self.in_max and out <= self.out_max, (
            f"active ({cin}->{out}) exceeds ({self.in_max}->{self.out_max})"
        )
        w = self.wq(self.weight[:out, :cin], prec.w)
        bias = self.bias[:out]
        if not self.training and prec.w == 8 and prec.a == 8:
            # as the integer Gemm adds it: an int32 on the grid s_x * s_w (see lifelong.deploy.onnx_graph)
            grid = float(self.aq.scale(8).detach()) * self.wq.scale(8)[:out].detach()
            q = torch.round(bias / grid)
            if bool((q.abs() <= INT32_MAX).all()):
                bias = q * grid
        y = F.linear(self.aq(x, prec.a), w, bias)  # (B, Out)
        return F.relu(y) if self.relu else y

    @torch.no_grad()
    def extract(self, cin: int, out: int, prec: Precision) -> QLinear:
        layer = QLinear(cin, out, relu=self.relu, weight_bits=(prec.w,), act_bits=(prec.a,))
        layer.weight.copy_(self.weight[:out, :cin])
        layer.bias.copy_(self.bias[:out])
        _copy_step(self.wq, layer.wq, prec.w, out)
        _copy_step(self.aq, layer.aq, prec.a, None)
        return layer

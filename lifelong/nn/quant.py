"""Bit-sharing quantizers with learned step sizes (LSQ, Esser et al. 2020).

One full-precision tensor is shared by every precision; each precision owns its learned step
size (per output channel for weights, per tensor for activations). This is the bit-sharing of
HQNAS: every (architecture, bit map) is a subnet of one checkpoint. ``bits == 32`` is the
identity. Integer grids match what ONNX QuantizeLinear/DequantizeLinear can carry:
weights are symmetric and narrow (``[-(2^(b-1)-1), 2^(b-1)-1]``, zero point 0), activations
are signed ``[-2^(b-1), 2^(b-1)-1]`` or, after a ReLU, unsigned ``[0, 2^b-1]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ActQuantizer", "WeightQuantizer", "fake_quant", "qrange", "transfer_precision"]

FULL_BITS = 32
MIN_STEP = 1e-8


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer range of a ``bits``-wide grid."""
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if narrow else -hi - 1), hi
    return 0, 2**bits - 1


class _LsqFakeQuant(torch.autograd.Function):
    """Quantize-dequantize with the LSQ gradients, fused into one autograd node.

    Forward: ``clamp(round(x / s), qmin, qmax) * s``. Backward: straight-through for ``x``
    inside the grid, and LSQ's step gradient ``(q - x/s)`` inside / ``qmin|qmax`` outside,
    scaled by ``grad_scale``. One node instead of autograd's eight keeps CPU training fast.
    """

    @staticmethod
    def forward(ctx, x, step, qmin, qmax, grad_scale):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, step)
        ctx.q = (qmin, qmax, grad_scale)
        return torch.clamp(torch.round(x / step), qmin, qmax) * step

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, step = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.q
        xs = x / step
        inside = (xs >= qmin) & (xs <= qmax)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            q = torch.clamp(torch.round(xs), qmin, qmax)
            ds = torch.where(inside, q - xs, q) * grad
            if step.dim() == 0:
                grad_step = ds.sum() * grad_scale
            else:
                dims = [d for d in range(ds.dim()) if step.shape[d] == 1]
                grad_step = ds.sum(dims, keepdim=True) * grad_scale
        return grad_x, grad_step, None, None, None


def fake_quant(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float = 1.0) -> torch.Tensor:
    """Quantize-dequantize ``x`` on the grid ``step * [qmin, qmax]`` with the LSQ gradient."""
    return _LsqFakeQuant.apply(x, step, qmin, qmax, grad_scale)


class _BitSharedSteps(nn.Module):
    """Learned step sizes, one tensor per precision below 32 bits, over a shared tensor."""

    def __init__(self, bits_choices: tuple[int, ...], shape: tuple[int, ...]) -> None:
        super().__init__()
        self.bits_choices = tuple(b for b in bits_choices if b < FULL_BITS)
        self.steps = nn.ParameterDict({str(b): nn.Parameter(torch.ones(shape)) for b in self.bits_choices})
        for b in self.bits_choices:
            self.register_buffer(f"initialized_{b}", torch.zeros((), dtype=torch.bool))

    def is_initialized(self, bits: int) -> bool:
        return bool(getattr(self, f"initialized_{bits}"))

    def _mark(self, bits: int) -> None:
        getattr(self, f"initialized_{bits}").fill_(True)

    def step(self, bits: int) -> torch.Tensor:
        """The learned parameter itself (what the optimiser updates and checkpoints hold)."""
        assert str(bits) in self.steps, f"no quantizer for {bits} bits (have {self.bits_choices})"
        return self.steps[str(bits)]

    def scale(self, bits: int) -> torch.Tensor:
        """The step size every computation uses: the parameter's magnitude, at least ``MIN_STEP``.

        LSQ's step gradient grows as the step shrinks, and one large update can carry a step
        across zero: a negative step quantizes every non-negative input to 0. In the first
        full v2 run one output layer's input step went to -0.093, which left every subnet with
        a global pool and a hidden layer at 10% at W8A8 (80.9% in FP32). The magnitude keeps
        the grid valid whatever the optimiser does (and reads such a checkpoint as it meant)."""
        return self.step(bits).abs().clamp_min(MIN_STEP)


class WeightQuantizer(_BitSharedSteps):
    """Per-output-channel symmetric quantizer of a (possibly sliced) weight tensor."""

    def __init__(self, bits_choices: tuple[int, ...], out_channels: int) -> None:
        super().__init__(bits_choices, (out_channels,))

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:  # w: (O, I, k, k) or (O, I)
        if bits >= FULL_BITS:
            return w
        if not self.is_initialized(bits):
            self.init_from(w, bits)
        qmin, qmax = qrange(bits, signed=True, narrow=True)
        step = self.scale(bits)[: w.shape[0]].view(-1, *([1] * (w.dim() - 1)))
        g = 1.0 / math.sqrt(w[0].numel() * qmax)
        return fake_quant(w, step, qmin, qmax, g)

    @torch.no_grad()
    def init_from(self, w: torch.Tensor, bits: int) -> None:
        """LSQ initialisation, 2 E|w| / sqrt(Qp), per channel."""
        _, qmax = qrange(bits, signed=True, narrow=True)
        init = 2 * w.abs().flatten(1).mean(1) / math.sqrt(qmax)
        self.step(bits).data[: w.shape[0]] = init.clamp_min(1e-8)
        self._mark(bits)


class ActQuantizer(_BitSharedSteps):
    """Per-tensor activation quantizer; ``signed=False`` after a ReLU."""

    def __init__(self, bits_choices: tuple[int, ...], signed: bool) -> None:
        super().__init__(bits_choices, ())
        self.signed = signed

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= FULL_BITS:
            return x
        if not self.is_initialized(bits):
            self.init_from(x, bits)
        qmin, qmax = qrange(bits, signed=self.signed)
        g = 1.0 / math.sqrt(x[0].numel() * qmax)
        return fake_quant(x, self.scale(bits), qmin, qmax, g)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, bits: int) -> None:
        _, qmax = qrange(bits, signed=self.signed)
        self.step(bits).data.fill_(float(2 * x.abs().mean() / math.sqrt(qmax)) + 1e-8)
        self._mark(bits)


@torch.no_grad()
def transfer_precision(module: nn.Module, src_bits: int, dst_bits: int) -> int:
    """Precision transfer (DAQU): start ``dst_bits`` from the range learned at ``src_bits``.

    Every quantizer that has learned ``src_bits`` gets a ``dst_bits`` step covering the same
    clipping range, ``s_dst = s_src * Qp_src / Qp_dst``. Returns how many quantizers changed.
    """
    n = 0
    for q in module.modules():
        if not isinstance(q, _BitSharedSteps) or src_bits not in q.bits_choices or dst_bits not in q.bits_choices:
            continue
        if not q.is_initialized(src_bits):
            continue
        signed = q.signed if isinstance(q, ActQuantizer) else True
        narrow = isinstance(q, WeightQuantizer)
        _, qs = qrange(src_bits, signed, narrow)
        _, qd = qrange(dst_bits, signed, narrow)
        q.step(dst_bits).data.copy_(q.step(src_bits).data * (qs / qd))
        q._mark(dst_bits)
        n += 1
    return n

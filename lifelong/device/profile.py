"""The device profile: measured onnxruntime latency of every part a subnet can hold, on this machine.

A *part* is one convolution in its place (stage, first-or-later position, input and output
width, input resolution, kernel, downsampling mode, precision) or one head (pool, number of
stages, last width, hidden layer and precisions); :class:`lifelong.space.codec.SubnetCodec` numbers
every part of the space, and :func:`part_key` names each as a row of the table. Each part is
built as a small ONNX graph with the builder the exporter uses
(:func:`lifelong.deploy.onnx_graph.build_part_model`), with random weights of the right shapes and
scales, and timed with onnxruntime at each profiled batch size: threads from the settings,
spinning off, warm-up runs, the median of repeats. The cost of running an empty graph is
measured once and subtracted, so that a subnet's table sum counts each run's fixed cost once.

A convolution part ends with the quantize-dequantize of a reader at its own precision, so an
8-bit convolution fuses into an integer kernel as it does inside a subnet; what a reader of
another precision changes is the latency model's border term (:mod:`lifelong.device.latency`).

The profile is stored as JSON with a format version and the device's fingerprint (CPU model,
cores, onnxruntime version, threads); a profile taken elsewhere or with other settings is
reported as stale. Needs numpy, onnx and onnxruntime, not torch.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.deploy.model_format import INPUT_NAME, INPUT_SHAPE, ort_session
from lifelong.deploy.net_spec import ConvSpec, LinearSpec, NetSpec
from lifelong.device.timing import measure_model, repeats_for, time_session
from lifelong.errors import LifelongError
from lifelong.persist.versioned import read_versioned_json, write_json_atomic
from lifelong.progress import Progress
from lifelong.space.codec import Part, SubnetCodec
from lifelong.space.config import ConvConfig, HeadConfig, Precision, SearchSpace, StageConfig, SubnetConfig, stage_sizes
from lifelong.space.cost import feature_count

__all__ = [
    "CORRECTION_TERMS",
    "PROFILE_FORMAT",
    "DeviceProfile",
    "PairedTimer",
    "ProfileError",
    "conv_key",
    "cpu_model",
    "device_fingerprint",
    "head_key",
    "integer_borders",
    "part_key",
    "part_work",
    "profile_device",
    "random_net",
    "reference_subnet",
    "runs_integer",
    "subnet_keys",
    "subnet_parts",
    "table_keys",
]

logger = logging.getLogger(__name__)

PROFILE_FORMAT = 3  # 3: search space v2 (conv and head parts); 2: v1 blocks with the four-term correction
# the latency model: predicted ms = c . (1, integer-kernel rows, other rows, integer/float borders)
CORRECTION_TERMS = (
    "intercept",
    "integer_rows_ms",
    "float_rows_ms",
    "integer_float_borders",
    *(f"{family}_{what}" for family in ("integer", "float") for what in ("mmacs", "outputs_10k", "layers")),
    "pooled_10k",
)
"""The latency model's terms: the table rows in two families, the integer/float borders, and
the work of the parts the rows time alone (:func:`part_work`): a row timed alone is dearer
than the same part inside a fused graph by an amount that grows with its arithmetic and its
output, which the row sums alone cannot tell apart. Fitted on the 146 subnets of
``latency.json`` (5-fold cross-validation), the work terms took the share within +-10% from
39% to 45% at batch 1 and from 29% to 47% at batch 32. A profile fitted with the first four
terms alone reads as before (the others weigh 0)."""
BASE_TERMS = 4
WORK_TERMS = len(CORRECTION_TERMS) - BASE_TERMS
FULL = 32
REFERENCE_EVERY = 25  # rows between two timings of the reference graph
ACT_STEP = 0.05  # any step times the same
REQUANT_STEP = 0.05  # the global pool's requantization, as a fusing export has it
PIXEL_MEAN, PIXEL_STD = 0.286, 0.353  # Fashion-MNIST's (lifelong.nn.supernet has them, with torch)


class ProfileError(LifelongError, ValueError):
    """A profile file that cannot be read, or one that does not cover the space asked about."""


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (what ``platform`` says where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(threads: int) -> dict[str, Any]:
    """What makes latency measured here valid: the CPU, its cores, onnxruntime, the threads."""
    import onnxruntime as ort

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "threads": threads,
    }


# -- random specs of the right shapes -----------------------------------------------------------
def _w_step(w: np.ndarray, bits: int) -> np.ndarray | None:
    """Per-output-channel steps of a trained LSQ quantizer's scale (2 mean|w| / sqrt(qmax))."""
    if bits >= FULL:
        return None
    qmax = 2 ** (bits - 1) - 1
    return (2 * np.abs(w).reshape(len(w), -1).mean(1) / np.sqrt(qmax) + 1e-8).astype(np.float32)


def _conv(
    rng: np.random.Generator, cin: int, cout: int, k: int, stride: int, prec: Precision, *, signed: bool
) -> ConvSpec:
    """A kxk convolution + BN + ReLU with He-initialised weights; ``signed``: it reads the image."""
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    ones, zeros = np.ones(cout, np.float32), np.zeros(cout, np.float32)
    return ConvSpec(
        weight=w, gamma=ones, beta=zeros + 0.1, mean=zeros, var=ones, eps=1e-5, stride=stride, groups=1, relu=True,
        w_bits=prec.w, w_step=_w_step(w, prec.w), a_bits=prec.a, a_step=ACT_STEP if prec.a < FULL else None,
        a_signed=signed,
    )  # fmt: skip


def _fc(rng: np.random.Generator, cin: int, cout: int, prec: Precision, *, relu: bool) -> LinearSpec:
    """A fully connected layer reading ReLU outputs (its 8-bit input grid is unsigned)."""
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    return LinearSpec(
        w, np.zeros(cout, np.float32), relu, prec.w, _w_step(w, prec.w), prec.a, ACT_STEP if prec.a < FULL else None
    )


def _fcs(rng: np.random.Generator, features: int, head: HeadConfig, classes: int) -> tuple[LinearSpec, ...]:
    out_in = features
    layers = []
    if head.hidden:
        assert head.hidden_prec is not None, "a hidden layer has a precision"
        layers.append(_fc(rng, features, head.hidden, head.hidden_prec, relu=True))
        out_in = head.hidden
    return (*layers, _fc(rng, out_in, classes, head.out_prec, relu=False))


def _reader(prec: Precision) -> ConvSpec:
    """A stand-in for the layer that reads a part's output: only its input quantizer is used."""
    one = np.ones(1, np.float32)
    return ConvSpec(
        np.ones((1, 1, 1, 1), np.float32), one, one * 0, one * 0, one, 1e-5, 1, 1, True,
        a_bits=prec.a, a_step=ACT_STEP if prec.a < FULL else None, a_signed=False,
    )  # fmt: skip


def _conv_layout(space: SearchSpace, cfg: SubnetConfig) -> Iterator[tuple[int, int, int, int, str, ConvConfig]]:
    """Each convolution of ``cfg`` in graph order: ``(stage, position, cin, input side, mode, conv)``."""
    sizes = stage_sizes(space.config.image_size, len(cfg.stages))
    cin = space.config.in_channels
    for i, st in enumerate(cfg.stages):
        for j, conv in enumerate(st.convs):
            if st.down == "stride":
                mode, side = ("strided", sizes[i]) if j == 0 else ("plain", sizes[i + 1])
            else:
                mode, side = ("pooled" if j == st.depth - 1 else "plain"), sizes[i]
            yield i, j, cin, side, mode, conv
            cin = st.width


def random_net(space: SearchSpace, cfg: SubnetConfig, seed: int = 0) -> NetSpec:
    """The graph of ``cfg`` with random weights: its latency is the trained model's latency.

    A global pool read by an 8-bit layer is requantized, as a fusing export has it.
    """
    rng = np.random.default_rng(seed)
    convs, pool_after = [], []
    for i, j, cin, _side, mode, conv in _conv_layout(space, cfg):
        width = cfg.stages[i].width
        convs.append(_conv(rng, cin, width, conv.kernel, 2 if mode == "strided" else 1, conv.prec, signed=i == j == 0))
        pool_after.append(mode == "pooled")
    fcs = _fcs(rng, feature_count(space, cfg), cfg.head, space.config.num_classes)
    gap_step = REQUANT_STEP if cfg.head.pool == "gap" else None
    return NetSpec(tuple(convs), tuple(pool_after), cfg.head.pool, fcs, PIXEL_MEAN, PIXEL_STD, gap_step=gap_step)


def runs_integer(prec: Precision) -> bool:
    """Whether onnxruntime runs a layer at ``prec`` as integer kernels (8-bit weights and inputs).

    Every other precision runs float kernels (sub-8-bit weights are dequantized, 32-bit
    activations are float), so the table's rows fall in two families that compose differently.
    """
    return prec.w == 8 and prec.a == 8


def integer_borders(precisions: list[Precision]) -> int:
    """How often consecutive layers switch between integer and float kernels.

    A chain of fused integer layers stays in uint8 NHWC; each border pays a layout transpose
    and a (de)quantization that rows timed alone count on both sides of every part instead.
    Pass ``cfg.layer_precisions()``: the head's hidden and output layers count as two.
    """
    flags = [runs_integer(p) for p in precisions]
    return sum(1 for a, b in zip(flags, flags[1:], strict=False) if a != b)


# -- keys -------------------------------------------------------------------------------------
def conv_key(stage: int, first: bool, cin: int, cout: int, side: int, kernel: int, mode: str, prec: Precision) -> str:
    """``s1.first:32>64@14:k3:strided:w8a8``: one convolution row of the latency table.

    ``@14`` is the input's side: a later convolution of a stage runs at the stage's input
    resolution, or at half of it after a strided first one.
    """
    return f"s{stage}.{'first' if first else 'rest'}:{cin}>{cout}@{side}:k{kernel}:{mode}:{prec}"


def head_key(pool: str, stages: int, cin: int, hidden: int, hidden_prec: Precision | None, out_prec: Precision) -> str:
    """``head:flat2:64:d128w8a8:ow8a8`` (``head:gap3:128:ow32a32`` without a hidden layer): one head row."""
    mid = f":d{hidden}{hidden_prec}" if hidden else ""
    return f"head:{pool}{stages}:{cin}{mid}:o{out_prec}"


def part_key(part: Part) -> str:
    """The table row of a part of :class:`~lifelong.space.codec.SubnetCodec` (as :func:`subnet_keys` spells it)."""
    if part.kind == "head":
        assert part.pool and part.stages and part.hidden is not None and part.out_prec, f"malformed part {part}"
        return head_key(part.pool, part.stages, part.cin, part.hidden, part.hidden_prec, part.out_prec)
    assert part.stage is not None and part.first is not None and part.cout and part.kernel and part.mode, part
    return conv_key(part.stage, part.first, part.cin, part.cout, part.side, part.kernel, part.mode, part.prec)


def part_work(part: Part, classes: int) -> tuple[float, ...]:
    """The work terms of one part (:data:`CORRECTION_TERMS` after the first four): its MACs in
    millions, its output in ten thousands of values and its layer count, in the family its
    kernels run in, then the values a max-pool or a global pool reads (ten thousands)."""
    if part.kind == "head":
        assert part.pool is not None and part.hidden is not None
        feats = part.cin * part.side * part.side if part.pool == "flat" else part.cin
        macs = feats * part.hidden + part.hidden * classes if part.hidden else feats * classes
        out, layers = part.hidden + classes, 2 if part.hidden else 1
        pooled = part.cin * part.side * part.side if part.pool == "gap" else 0
    else:
        assert part.cout is not None and part.kernel is not None
        side = -(-part.side // 2) if part.mode == "strided" else part.side  # ceil, as stage_sizes
        macs = side * side * part.cin * part.cout * part.kernel * part.kernel
        out, layers = side * side * part.cout, 1
        pooled = out if part.mode == "pooled" else 0
    work = (macs / 1e6, out / 1e4, float(layers))
    zero = (0.0, 0.0, 0.0)
    return (*work, *zero, pooled / 1e4) if runs_integer(part.prec) else (*zero, *work, pooled / 1e4)


def subnet_parts(space: SearchSpace, cfg: SubnetConfig) -> list[Part]:
    """The parts of ``cfg`` in graph order (its convolutions, then its head), as the codec numbers them."""
    parts = [
        Part(
            "conv", conv.prec, cin, side, stage=i, first=j == 0, cout=cfg.stages[i].width, kernel=conv.kernel, mode=mode
        )  # fmt: skip
        for i, j, cin, side, mode, conv in _conv_layout(space, cfg)
    ]
    h, n = cfg.head, len(cfg.stages)
    first = h.hidden_prec if h.hidden and h.hidden_prec is not None else h.out_prec
    side = stage_sizes(space.config.image_size, n)[n]
    parts.append(
        Part("head", first, cfg.stages[-1].width, side, pool=h.pool, stages=n, hidden=h.hidden,
             hidden_prec=h.hidden_prec, out_prec=h.out_prec)
    )  # fmt: skip
    return parts


def subnet_keys(space: SearchSpace, cfg: SubnetConfig) -> list[str]:
    """The table rows whose sum is the latency of ``cfg`` (before the fitted correction)."""
    return [part_key(p) for p in subnet_parts(space, cfg)]


@dataclass(frozen=True)
class _Entry:
    key: str
    shape: tuple[int, int, int]
    build: Any  # () -> onnx.ModelProto


def _part_model(space: SearchSpace, part: Part, seed: int) -> Any:
    """The ONNX graph that times ``part``; weights drawn from ``seed`` when it is built."""
    from lifelong.deploy.onnx_graph import build_part_model  # onnx loads only where a graph is built

    rng = np.random.default_rng(seed)
    shape = (part.cin, part.side, part.side)
    if part.kind == "head":
        assert part.pool is not None and part.hidden is not None and part.out_prec is not None
        features = part.cin * (1 if part.pool == "gap" else part.side * part.side)
        head = HeadConfig(part.pool, part.hidden, part.hidden_prec, part.out_prec)
        return build_part_model(shape, head=(part.pool, _fcs(rng, features, head, space.config.num_classes)))
    assert part.cout is not None and part.kernel is not None
    conv = _conv(rng, part.cin, part.cout, part.kernel, 2 if part.mode == "strided" else 1, part.prec,
                 signed=part.stage == 0 and bool(part.first))  # fmt: skip
    return build_part_model(shape, (conv,), (part.mode == "pooled",), after=_reader(part.prec))


def _entries(space: SearchSpace, seed: int = 0) -> Iterator[_Entry]:
    for n, part in enumerate(SubnetCodec(space).part_list):
        yield _Entry(
            part_key(part),
            (part.cin, part.side, part.side),
            lambda p=part, n=n: _part_model(space, p, seed * 100_003 + n),
        )


def table_keys(space: SearchSpace) -> list[str]:
    """Every row a full profile of ``space`` measures, in order."""
    return [e.key for e in _entries(space)]


def reference_subnet(space: SearchSpace) -> SubnetConfig:
    """The middle of the space at FP32: the fewest stages, each of its median width, shallowest,
    smallest kernel, max-pooled, then flatten and the median hidden width. In the default space
    this is the tutorial CNN, ``c32.k3w32a32.p_c64.k3w32a32.p_hf.d128w32a32.ow32a32``: a typical
    subnet (the largest one has 76 times its MACs and would dominate the profile's time)."""
    c, fp = space.config, Precision(FULL, FULL)
    down = "pool" if "pool" in c.downs else "stride"
    stages = tuple(
        StageConfig(s.widths[len(s.widths) // 2], (ConvConfig(min(c.kernels), fp),) * min(s.depths), down)
        for s in c.stages[: c.min_stages]
    )
    hidden = c.hiddens[len(c.hiddens) // 2]
    pool = "flat" if "flat" in c.pools else "gap"
    return SubnetConfig(stages, HeadConfig(pool, hidden, fp if hidden else None, fp))


class _Reference:
    """A fixed graph timed beside the measured ones: the machine's speed right now.

    On a shared or throttled CPU the same graph's latency drifts by tens of percent between
    minutes. Every profiled row and every end-to-end check is scaled by how fast this
    reference (:func:`reference_subnet`) ran at that moment, so all figures are in
    milliseconds at the speed the reference had when the profile began
    (``DeviceProfile.reference_ms``).
    """

    def __init__(self, space: SearchSpace, batches: tuple[int, ...], threads: int) -> None:
        from lifelong.deploy.onnx_graph import build_model  # onnx loads only where a graph is built

        model = build_model(random_net(space, reference_subnet(space), seed=99))
        self.session = ort_session(model.SerializeToString(), threads)
        rng = np.random.default_rng(2)
        self.inputs = {b: rng.random((b, *INPUT_SHAPE), dtype=np.float32) for b in batches}

    def time(self, batch: int) -> float:
        warmup, repeats = repeats_for(batch)
        return time_session(self.session, self.inputs[batch], warmup // 2, repeats)

    def paired(self, session: Any, x: np.ndarray, batch: int) -> tuple[float, float]:
        """Medians (ms) of ``session`` and the reference, run alternately so both see the same load."""
        name = session.get_inputs()[0].name
        warmup, repeats = repeats_for(batch)
        ref = self.inputs[batch]
        for _ in range(warmup):
            session.run(None, {name: x})
            self.session.run(None, {INPUT_NAME: ref})
        ts, tr = np.empty(repeats * 2), np.empty(repeats * 2)
        for r in range(repeats * 2):
            t0 = time.perf_counter()
            session.run(None, {name: x})
            t1 = time.perf_counter()
            self.session.run(None, {INPUT_NAME: ref})
            tr[r], ts[r] = time.perf_counter() - t1, t1 - t0
        return float(np.median(ts) * 1e3), float(np.median(tr) * 1e3)


@dataclass
class DeviceProfile:
    """The latency table of one device: ``entries[key] = [ms at batches[0], ms at batches[1], ...]``."""

    fingerprint: dict[str, Any]
    batches: tuple[int, ...]
    entries: dict[str, list[float]]
    overhead_ms: list[float]
    seconds: float
    created: float = field(default_factory=time.time)
    correction: dict[str, list[float]] = field(default_factory=dict)  # batch -> CORRECTION_TERMS coefficients
    reference_ms: list[float] = field(default_factory=list)  # the reference graph at profile start

    def table_sum(self, space: SearchSpace, cfg: SubnetConfig, batch: int) -> float:
        """Sum of the table rows of ``cfg`` at ``batch`` (ms), each row without the empty-run cost."""
        _, integer, other, *_ = self.terms(space, cfg, batch)
        return integer + other

    def terms(self, space: SearchSpace, cfg: SubnetConfig, batch: int) -> tuple[float, ...]:
        """The latency model's inputs for ``cfg`` at ``batch``, in :data:`CORRECTION_TERMS` order.

        ``(1, integer-kernel rows in ms, other rows in ms, borders between the two, *work)``,
        the work terms summed over the parts in graph order (:func:`part_work`).
        """
        i = self._batch_index(batch)
        integer = other = 0.0
        work = [0.0] * WORK_TERMS
        classes = space.config.num_classes
        try:
            for part in subnet_parts(space, cfg):  # a head runs in its first layer's family
                row = self.entries[part_key(part)][i]
                if runs_integer(part.prec):
                    integer += row
                else:
                    other += row
                for n, v in enumerate(part_work(part, classes)):
                    work[n] += v
        except KeyError as exc:
            raise ProfileError(
                f"the profile has no row {exc}: re-run `lifelong profile` for this search space"
            ) from exc
        return (1.0, integer, other, float(integer_borders(cfg.layer_precisions())), *work)

    def coefficients(self, batch: int) -> tuple[float, ...]:
        """The fitted correction at ``batch`` (:data:`CORRECTION_TERMS` order; a fit of the first
        four terms alone gives the others 0).

        Without a fit: the empty-run cost once plus the plain table sum.
        """
        c = self.correction.get(str(batch))
        if c is None:
            c = [self.overhead_ms[self._batch_index(batch)], 1.0, 1.0, 0.0]
        return (*c, *[0.0] * (len(CORRECTION_TERMS) - len(c)))

    def predict(self, space: SearchSpace, cfg: SubnetConfig, batch: int) -> float:
        """Predicted end-to-end latency (ms): the table rows and work through the fitted correction."""
        t = self.terms(space, cfg, batch)
        c = self.coefficients(batch)
        out = c[0] + c[1] * t[1] + c[2] * t[2] + c[3] * t[3]
        for k in range(BASE_TERMS, len(CORRECTION_TERMS)):
            out += c[k] * t[k]
        return out

    def _batch_index(self, batch: int) -> int:
        if batch not in self.batches:
            raise ProfileError(f"batch {batch} was not profiled (profiled: {list(self.batches)})")
        return self.batches.index(batch)

    def stale_reasons(self, fingerprint: dict[str, Any]) -> list[str]:
        """Why this profile does not describe the device ``fingerprint`` (empty if it does)."""
        return [
            f"{k}: profiled {self.fingerprint.get(k)!r}, now {v!r}"
            for k, v in fingerprint.items()
            if self.fingerprint.get(k) != v
        ]

    def int8_slower(self, batch: int) -> list[tuple[str, float, float]]:
        """Rows where a part all at W8A8 is slower than the same part all at FP32:
        ``(key without its precisions, fp32 ms, int8 ms)``."""
        i = self._batch_index(batch)
        int8, fp32 = str(Precision(8, 8)), str(Precision(FULL, FULL))
        out = []
        for key, row in self.entries.items():
            if key.endswith(int8) and fp32 not in key:  # a head with both layers at W8A8 too
                fp = self.entries.get(key.replace(int8, fp32))
                if fp is not None and row[i] > fp[i]:
                    name = key[: -len(":" + int8)] if key.endswith(":" + int8) else key.replace(int8, "")
                    out.append((name, fp[i], row[i]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": PROFILE_FORMAT,
            "kind": "lifelong-device-profile",
            "fingerprint": self.fingerprint,
            "batches": list(self.batches),
            "overhead_ms": self.overhead_ms,
            "seconds": self.seconds,
            "created": self.created,
            "correction": self.correction,
            "reference_ms": self.reference_ms,
            "entries": self.entries,
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict(), durable=False, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        path = Path(path)
        d = read_versioned_json(
            path,
            kind="lifelong-device-profile",
            version=PROFILE_FORMAT,
            what="device profile",
            missing_hint="run `lifelong profile`",
            unreadable_hint="run `lifelong profile` again",
            redo_hint="Profiles before format 3 time the blocks of search space v1; run `lifelong profile` again.",
            error=ProfileError,
        )
        try:
            prof = cls(
                fingerprint=dict(d["fingerprint"]),
                batches=tuple(int(b) for b in d["batches"]),
                entries={str(k): [float(x) for x in v] for k, v in d["entries"].items()},
                overhead_ms=[float(x) for x in d["overhead_ms"]],
                seconds=float(d["seconds"]),
                created=float(d["created"]),
                correction={str(k): [float(x) for x in v] for k, v in d.get("correction", {}).items()},
                reference_ms=[float(x) for x in d["reference_ms"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"device profile {path} has a missing or malformed field: {exc}") from exc
        bad = {b: c for b, c in prof.correction.items() if len(c) not in (BASE_TERMS, len(CORRECTION_TERMS))}
        if bad:
            raise ProfileError(
                f"device profile {path}: correction {bad} should have {len(CORRECTION_TERMS)} coefficients "
                f"({', '.join(CORRECTION_TERMS)}) or the first {BASE_TERMS}; run `lifelong profile` again"
            )
        return prof


def _empty_overhead(batches: tuple[int, ...], threads: int) -> list[float]:
    """The cost of one run of a graph that does nothing on a (batch, 1, 28, 28) input."""
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    m = measure_model(model, batches, threads)
    return [m[b] for b in batches]


def profile_device(
    space: SearchSpace | None = None,
    *,
    threads: int = 2,
    batches: tuple[int, ...] = (1, 32),
    progress: bool = True,
    only: int | None = None,
) -> DeviceProfile:
    """Measure every part of ``space`` on this device (``only``: the first N rows, for tests)."""
    space = space or SearchSpace()
    t0 = time.monotonic()
    entries = list(_entries(space))
    if only is not None:
        entries = entries[:only]
    overhead = _empty_overhead(batches, threads)
    reference = _Reference(space, batches, threads)
    ref_start = [reference.time(b) for b in batches]
    scale = [1.0] * len(batches)
    bar = Progress(len(entries), phase="profile", enabled=progress)
    rng = np.random.default_rng(1)
    table: dict[str, list[float]] = {}
    for n, e in enumerate(entries):
        if n % REFERENCE_EVERY == REFERENCE_EVERY - 1:  # how fast is the machine now?
            scale = [ref_start[i] / reference.time(b) for i, b in enumerate(batches)]
        session = ort_session(e.build().SerializeToString(), threads)
        row = []
        for bi, b in enumerate(batches):
            warmup, repeats = repeats_for(b)
            ms = time_session(session, rng.random((b, *e.shape), dtype=np.float32), warmup, repeats) * scale[bi]
            row.append(max(0.0, ms - overhead[bi]))
        table[e.key] = row
        bar.update(1)
    bar.close()
    prof = DeviceProfile(
        device_fingerprint(threads), batches, table, overhead, time.monotonic() - t0, reference_ms=ref_start
    )
    logger.info("profiled %d parts in %.0f s", len(table), prof.seconds)
    return prof


def measure_subnet(
    space: SearchSpace, cfg: SubnetConfig, batches: tuple[int, ...] = (1, 32), threads: int = 2
) -> dict[int, float]:
    """End-to-end latency (ms) of ``cfg``'s graph, with random weights, at each batch size."""
    from lifelong.deploy.onnx_graph import build_model  # onnx loads only where a graph is built

    return measure_model(build_model(random_net(space, cfg)), batches, threads)


class PairedTimer:
    """End-to-end latency at the profile's reference speed (see :class:`_Reference`)."""

    def __init__(self, profile: DeviceProfile, space: SearchSpace) -> None:
        self.profile, self.space = profile, space
        self.threads = int(profile.fingerprint.get("threads", 2))
        self.reference = _Reference(space, profile.batches, self.threads)

    def measure(self, model: Any) -> dict[int, float]:
        """Latency (ms) of an ONNX model (proto or bytes) at each profiled batch size."""
        data = model if isinstance(model, bytes) else model.SerializeToString()
        session = ort_session(data, self.threads)
        rng = np.random.default_rng(0)
        out = {}
        for i, b in enumerate(self.profile.batches):
            ms, ref = self.reference.paired(session, rng.random((b, *INPUT_SHAPE), dtype=np.float32), b)
            out[b] = ms * self.profile.reference_ms[i] / ref
        return out

    def measure_subnet(self, cfg: SubnetConfig) -> dict[int, float]:
        from lifelong.deploy.onnx_graph import build_model  # onnx loads only where a graph is built

        return self.measure(build_model(random_net(self.space, cfg)))

"""The device profile: measured onnxruntime latency of every block choice on this machine.

Every block the search space can place (stage, first-or-later position, input and output
width, kind, kernel, expand ratio, precision) is built as a small ONNX graph with the same
builder the exporter uses (:mod:`lifelong.onnx_graph`), with random weights of the right
shapes and scales, and timed with onnxruntime at each profiled batch size: threads from the
settings, spinning off, warm-up runs, the median of repeats. The fixed parts (stem, head and
classifier) are timed the same way, and the cost of running an empty graph is measured once
and subtracted, so that a subnet's table sum counts each run's fixed cost once.

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

from lifelong.errors import LifelongError
from lifelong.model_format import INPUT_NAME, INPUT_SHAPE, ort_session
from lifelong.onnx_graph import (
    BlockSpec,
    ConvSpec,
    LinearSpec,
    NetSpec,
    build_block_model,
    build_head_model,
    build_model,
)
from lifelong.progress import Progress
from lifelong.space import Precision, SearchSpace, SubnetConfig
from lifelong.versioned import read_versioned_json, write_json_atomic

__all__ = [
    "CORRECTION_TERMS",
    "PROFILE_FORMAT",
    "DeviceProfile",
    "PairedTimer",
    "ProfileError",
    "block_key",
    "cpu_model",
    "device_fingerprint",
    "measure_model",
    "profile_device",
    "integer_borders",
    "random_net",
    "runs_integer",
    "subnet_keys",
    "table_keys",
]

logger = logging.getLogger(__name__)

PROFILE_FORMAT = 2  # 2: plain-conv W8A8 rows timed fused, and the four-term correction
# the latency model: predicted ms = c . (1, integer-kernel rows, other rows, integer/float borders)
CORRECTION_TERMS = ("intercept", "integer_rows_ms", "float_rows_ms", "integer_float_borders")
FULL = 32
REFERENCE_EVERY = 25  # rows between two timings of the reference graph
STEM_KERNEL = 3
REQUANT_STEP = 0.05  # any step times the same: the profile measures the requantized (fused) export


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
def _conv(
    rng: np.random.Generator,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    prec: Precision,
    *,
    dw: bool,
    relu: bool,
    signed: bool,
) -> ConvSpec:
    fan_in = (1 if dw else cin) * k * k
    w = (rng.standard_normal((cout, 1 if dw else cin, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    w_step = None
    if prec.w < FULL:
        qmax = 2 ** (prec.w - 1) - 1
        w_step = (2 * np.abs(w).reshape(cout, -1).mean(1) / np.sqrt(qmax) + 1e-8).astype(np.float32)
    ones, zeros = np.ones(cout, np.float32), np.zeros(cout, np.float32)
    return ConvSpec(
        weight=w, gamma=ones, beta=zeros + 0.1, mean=zeros, var=ones, eps=1e-5,
        stride=stride, groups=cout if dw else 1, relu=relu,
        w_bits=prec.w, w_step=w_step, a_bits=prec.a, a_step=0.05 if prec.a < FULL else None, a_signed=signed,
    )  # fmt: skip


def _block(
    rng: np.random.Generator, kind: str, cin: int, cout: int, k: int, e: int | None, stride: int, prec: Precision
) -> BlockSpec:
    if kind == "conv":
        return BlockSpec((_conv(rng, cin, cout, k, stride, prec, dw=False, relu=True, signed=True),))
    assert e is not None
    hid = cin * e
    convs = (
        _conv(rng, cin, hid, 1, 1, prec, dw=False, relu=True, signed=True),
        _conv(rng, hid, hid, k, stride, prec, dw=True, relu=True, signed=False),
        _conv(rng, hid, cout, 1, 1, prec, dw=False, relu=False, signed=False),
    )
    return BlockSpec(convs, residual=stride == 1 and cin == cout, out_step=REQUANT_STEP)


def _classifier(rng: np.random.Generator, width: int, classes: int, prec: Precision) -> LinearSpec:
    w = (rng.standard_normal((classes, width)) / np.sqrt(width)).astype(np.float32)
    w_step = None
    if prec.w < FULL:
        w_step = (2 * np.abs(w).mean(1) / np.sqrt(2 ** (prec.w - 1) - 1) + 1e-8).astype(np.float32)
    return LinearSpec(
        w, np.zeros(classes, np.float32), prec.w, w_step, prec.a, 0.05 if prec.a < FULL else None, a_signed=False
    )


def random_net(space: SearchSpace, cfg: SubnetConfig, seed: int = 0) -> NetSpec:
    """The graph of ``cfg`` with random weights: its latency is the trained model's latency."""
    rng = np.random.default_rng(seed)
    c = space.config
    stem = _conv(
        rng, c.in_channels, cfg.stem_width, STEM_KERNEL, c.stem_stride, cfg.stem_prec, dw=False, relu=True, signed=True
    )
    blocks = []
    cin = cfg.stem_width
    for st, spec in zip(cfg.stages, c.stages, strict=True):
        for j, b in enumerate(st.blocks):
            stride = spec.stride if j == 0 else 1
            blocks.append(_block(rng, b.kind, cin, st.width, b.kernel, b.expand, stride, b.prec))
            cin = st.width
    head = _conv(rng, cin, c.head_width, 1, 1, cfg.head_prec, dw=False, relu=True, signed=True)
    fc = _classifier(rng, c.head_width, c.num_classes, cfg.head_prec)
    return NetSpec(stem, tuple(blocks), head, fc, 0.286, 0.353, head_out_step=REQUANT_STEP)


def runs_integer(prec: Precision) -> bool:
    """Whether onnxruntime runs a layer at ``prec`` as integer kernels (8-bit weights and inputs).

    Every other precision runs float kernels (sub-8-bit weights are dequantized, 32-bit
    activations are float), so the table's rows fall in two families that compose differently.
    """
    return prec.w == 8 and prec.a == 8


def integer_borders(precisions: list[Precision]) -> int:
    """How often consecutive layers switch between integer and float kernels.

    A chain of fused integer layers stays in uint8 NHWC; each border pays a layout transpose
    and a (de)quantization that rows timed alone count on both sides of every block instead.
    """
    flags = [runs_integer(p) for p in precisions]
    return sum(1 for a, b in zip(flags, flags[1:], strict=False) if a != b)


# -- keys -------------------------------------------------------------------------------------
def block_key(stage: int, first: bool, cin: int, cout: int, kind: str, k: int, e: int | None, prec: Precision) -> str:
    """``b1.first:24>32:ik3e4:w8a8``: one row of the latency table."""
    op = f"ik{k}e{e}" if kind == "ir" else f"ck{k}"
    return f"b{stage}.{'first' if first else 'rest'}:{cin}>{cout}:{op}:{prec}"


def subnet_keys(space: SearchSpace, cfg: SubnetConfig) -> list[str]:
    """The table rows whose sum is the latency of ``cfg`` (before the fitted correction)."""
    keys = [f"stem:{cfg.stem_width}:{cfg.stem_prec}"]
    cin = cfg.stem_width
    for i, st in enumerate(cfg.stages):
        for j, b in enumerate(st.blocks):
            keys.append(block_key(i, j == 0, cin, st.width, b.kind, b.kernel, b.expand, b.prec))
            cin = st.width
    keys.append(f"head:{cin}:{cfg.head_prec}")
    return keys


@dataclass(frozen=True)
class _Entry:
    key: str
    shape: tuple[int, int, int]
    build: Any  # () -> onnx.ModelProto


def _entries(space: SearchSpace, seed: int = 0) -> Iterator[_Entry]:
    c = space.config
    rng = np.random.default_rng(seed)
    hw = -(-c.image_size // c.stem_stride)
    for width in c.stem_widths:
        for p in space.precisions:
            spec = BlockSpec(
                (_conv(rng, c.in_channels, width, STEM_KERNEL, c.stem_stride, p, dw=False, relu=True, signed=True),)
            )
            yield _Entry(
                f"stem:{width}:{p}", INPUT_SHAPE, lambda s=spec, p=p: build_block_model((s,), INPUT_SHAPE, p.a)
            )
    prev_widths = tuple(c.stem_widths)
    for i, st in enumerate(c.stages):
        hw_out = -(-hw // st.stride)
        for first in (True, False):
            pairs = [(a, b) for a in prev_widths for b in st.widths] if first else [(w, w) for w in st.widths]
            stride = st.stride if first else 1
            for cin, cout in pairs:
                shape = (cin, hw, hw) if first else (cin, hw_out, hw_out)
                for kind in c.block_kinds:
                    ops = (
                        [(k, e) for k in c.kernels for e in c.expands]
                        if kind == "ir"
                        else [(k, None) for k in c.kernels]
                    )
                    for k, e in ops:
                        for p in space.precisions:
                            spec = _block(rng, kind, cin, cout, k, e, stride, p)
                            key = block_key(i, first, cin, cout, kind, k, e, p)
                            yield _Entry(key, shape, lambda s=spec, sh=shape, p=p: build_block_model((s,), sh, p.a))
        prev_widths, hw = tuple(st.widths), hw_out
    for cin in prev_widths:
        for p in space.precisions:
            head = _conv(rng, cin, c.head_width, 1, 1, p, dw=False, relu=True, signed=True)
            fc = _classifier(rng, c.head_width, c.num_classes, p)
            yield _Entry(
                f"head:{cin}:{p}",
                (cin, hw, hw),
                lambda h=head, f=fc, sh=(cin, hw, hw): build_head_model(h, f, sh, REQUANT_STEP),
            )


def table_keys(space: SearchSpace) -> list[str]:
    """Every row a full profile of ``space`` measures, in order."""
    return [e.key for e in _entries(space)]


# -- measuring ----------------------------------------------------------------------------------
def _session(model_bytes: bytes, threads: int) -> Any:
    return ort_session(model_bytes, threads)


def _time(session: Any, x: np.ndarray, warmup: int, repeats: int) -> float:
    name = session.get_inputs()[0].name
    feed = {name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times[r] = time.perf_counter() - t0
    return float(np.median(times) * 1e3)


def _repeats(batch: int) -> tuple[int, int]:
    """Warm-up runs and timed repeats: fewer for big batches, whose runs are long and steady."""
    return (10, 30) if batch == 1 else (3, 9)


def measure_model(
    model: Any, batches: tuple[int, ...] = (1, 32), threads: int = 2, shape: tuple[int, ...] = INPUT_SHAPE
) -> dict[int, float]:
    """Median latency in ms of an ONNX model (proto or bytes) at each batch size."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = _session(data, threads)
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        warmup, repeats = _repeats(b)
        out[b] = _time(session, rng.random((b, *shape), dtype=np.float32), warmup, repeats * 2)
    return out


class _Reference:
    """A fixed graph timed beside the measured ones: the machine's speed right now.

    On a shared or throttled CPU the same graph's latency drifts by tens of percent between
    minutes. Every profiled row and every end-to-end check is scaled by how fast this
    reference ran at that moment, so all figures are in milliseconds at the speed the
    reference had when the profile began (``DeviceProfile.reference_ms``).
    """

    def __init__(self, space: SearchSpace, batches: tuple[int, ...], threads: int) -> None:
        model = build_model(random_net(space, space.largest(Precision(FULL, FULL)), seed=99))
        self.session = _session(model.SerializeToString(), threads)
        rng = np.random.default_rng(2)
        self.inputs = {b: rng.random((b, *INPUT_SHAPE), dtype=np.float32) for b in batches}

    def time(self, batch: int) -> float:
        warmup, repeats = _repeats(batch)
        return _time(self.session, self.inputs[batch], warmup // 2, repeats)

    def paired(self, session: Any, x: np.ndarray, batch: int) -> tuple[float, float]:
        """Medians (ms) of ``session`` and the reference, run alternately so both see the same load."""
        name = session.get_inputs()[0].name
        warmup, repeats = _repeats(batch)
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
        _, integer, other, _ = self.terms(space, cfg, batch)
        return integer + other

    def terms(self, space: SearchSpace, cfg: SubnetConfig, batch: int) -> tuple[float, float, float, float]:
        """The latency model's inputs for ``cfg`` at ``batch``, in :data:`CORRECTION_TERMS` order.

        ``(1, integer-kernel rows in ms, other rows in ms, borders between the two)``.
        """
        i = self._batch_index(batch)
        keys = subnet_keys(space, cfg)
        integer = other = 0.0
        try:
            for k, prec in zip(keys, cfg.layer_precisions(), strict=True):
                if runs_integer(prec):
                    integer += self.entries[k][i]
                else:
                    other += self.entries[k][i]
        except KeyError as exc:
            raise ProfileError(
                f"the profile has no row {exc}: re-run `lifelong profile` for this search space"
            ) from exc
        return 1.0, integer, other, float(integer_borders(cfg.layer_precisions()))

    def coefficients(self, batch: int) -> tuple[float, float, float, float]:
        """The fitted correction at ``batch`` (:data:`CORRECTION_TERMS` order).

        Without a fit: the empty-run cost once plus the plain table sum.
        """
        c = self.correction.get(str(batch))
        if c is None:
            return self.overhead_ms[self._batch_index(batch)], 1.0, 1.0, 0.0
        a, bi, bo, t = c
        return a, bi, bo, t

    def predict(self, space: SearchSpace, cfg: SubnetConfig, batch: int) -> float:
        """Predicted end-to-end latency (ms): the table rows through the fitted correction."""
        _, integer, other, borders = self.terms(space, cfg, batch)
        a, bi, bo, t = self.coefficients(batch)
        return a + bi * integer + bo * other + t * borders

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
        """Rows where a W8A8 block is slower than the same block in FP32: ``(key, fp32, int8)``."""
        i = self._batch_index(batch)
        out = []
        for key, row in self.entries.items():
            if key.endswith(":w8a8"):
                fp = self.entries.get(key[: -len("w8a8")] + "w32a32")
                if fp is not None and row[i] > fp[i]:
                    out.append((key[: -len(":w8a8")], fp[i], row[i]))
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
            redo_hint="Run `lifelong profile` again.",
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
        bad = {b: c for b, c in prof.correction.items() if len(c) != len(CORRECTION_TERMS)}
        if bad:
            raise ProfileError(
                f"device profile {path}: correction {bad} should have {len(CORRECTION_TERMS)} coefficients "
                f"({', '.join(CORRECTION_TERMS)}); run `lifelong profile` again"
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
    """Measure every block choice of ``space`` on this device (``only``: the first N rows, for tests)."""
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
        session = _session(e.build().SerializeToString(), threads)
        row = []
        for bi, b in enumerate(batches):
            warmup, repeats = _repeats(b)
            ms = _time(session, rng.random((b, *e.shape), dtype=np.float32), warmup, repeats) * scale[bi]
            row.append(max(0.0, ms - overhead[bi]))
        table[e.key] = row
        bar.update(1)
    bar.close()
    prof = DeviceProfile(
        device_fingerprint(threads), batches, table, overhead, time.monotonic() - t0, reference_ms=ref_start
    )
    logger.info("profiled %d block choices in %.0f s", len(table), prof.seconds)
    return prof


def measure_subnet(
    space: SearchSpace, cfg: SubnetConfig, batches: tuple[int, ...] = (1, 32), threads: int = 2
) -> dict[int, float]:
    """End-to-end latency (ms) of ``cfg``'s graph, with random weights, at each batch size."""
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
        session = _session(data, self.threads)
        rng = np.random.default_rng(0)
        out = {}
        for i, b in enumerate(self.profile.batches):
            ms, ref = self.reference.paired(session, rng.random((b, *INPUT_SHAPE), dtype=np.float32), b)
            out[b] = ms * self.profile.reference_ms[i] / ref
        return out

    def measure_subnet(self, cfg: SubnetConfig) -> dict[int, float]:
        return self.measure(build_model(random_net(self.space, cfg)))

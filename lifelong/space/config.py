"""The search space (version 2): dense conv stages, a head choice, per-layer precision.

Why this shape: on the small CPUs of a gateway onnxruntime pays a fixed cost per graph node
and runs depthwise convolutions slowly, while dense INT8 convolutions run on VNNI at a high
rate. Version 1 (MobileNet-shaped inverted residuals) lost to a tutorial 2-conv CNN: 92.4% at
0.52 ms against 92.6% at 0.085 ms. So a subnet here is a plain CNN: two or three stages of
dense kxk convolutions, each stage halving the resolution by a 2x2 max-pool after its
convolutions or by a stride-2 first convolution, then either a global average pool or a
flatten, an optional hidden fully connected layer, and the output layer. The tutorial CNN
(conv3x3 32, pool, conv3x3 64, pool, flatten, FC 128, FC 10) is a member by construction.

A subnet is a frozen :class:`SubnetConfig`. Its canonical string is the store key, the log
field and the model file name. Grammar (parts joined by ``_``)::

    subnet := stage ("_" stage)+ "_" head
    stage  := "c" WIDTH ("." conv)+ "." DOWN        c32.k3w8a8.p
    conv   := "k" KERNEL PREC                       k5w32a32: a 5x5 conv + BN + ReLU
    DOWN   := "p"                                   2x2 max-pool after the convolutions
            | "s"                                   the first convolution has stride 2
    head   := "h" POOL ("." "d" WIDTH PREC)? "." "o" PREC
    POOL   := "f" | "g"                             flatten | global average pool
    PREC   := "w" WEIGHT_BITS "a" ACT_BITS          w8a8 runs as integer kernels; w32a32 is float

``d`` is the hidden fully connected layer (+ ReLU), ``o`` the output layer. The tutorial CNN
at W8A8 is ``c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8``.

A *layer* in the precision sense is one searchable unit: each convolution, the hidden layer
and the output layer. Every persisted description of a space carries :data:`SPACE_VERSION`;
one of another version is refused with a message that says what to rebuild.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from lifelong.errors import SpaceError

__all__ = [
    "FULL_BITS",
    "SPACE_VERSION",
    "ConvConfig",
    "HeadConfig",
    "Precision",
    "SearchSpace",
    "SpaceConfig",
    "StageConfig",
    "StageSpec",
    "SubnetConfig",
    "stage_sizes",
]

FULL_BITS = 32
SPACE_VERSION = 2
DOWNS = ("pool", "stride")
POOLS = ("flat", "gap")
_DOWN_CODE = {"pool": "p", "stride": "s"}
_POOL_CODE = {"flat": "f", "gap": "g"}


@dataclass(frozen=True, order=True)
class Precision:
    """Weight and activation bit widths of one layer; 32 means float."""

    w: int = FULL_BITS
    a: int = FULL_BITS

    def __str__(self) -> str:
        return f"w{self.w}a{self.a}"

    @property
    def is_full(self) -> bool:
        return self.w == FULL_BITS and self.a == FULL_BITS

    @classmethod
    def parse(cls, text: str) -> Precision:
        m = re.fullmatch(_PREC, text.strip().lower())
        if not m:
            raise SpaceError(f"bad precision {text!r}: expected wXaY, e.g. w8a8 or w32a32")
        return cls(int(m[1]), int(m[2]))


@dataclass(frozen=True)
class ConvConfig:
    """One kxk convolution + BN + ReLU."""

    kernel: int
    prec: Precision

    def __str__(self) -> str:
        return f"k{self.kernel}{self.prec}"


@dataclass(frozen=True)
class StageConfig:
    """``len(convs)`` convolutions of ``width`` channels; ``down`` halves the resolution."""

    width: int
    convs: tuple[ConvConfig, ...]
    down: str

    @property
    def depth(self) -> int:
        return len(self.convs)

    def __str__(self) -> str:
        return "c" + str(self.width) + "".join("." + str(c) for c in self.convs) + "." + _DOWN_CODE[self.down]


@dataclass(frozen=True)
class HeadConfig:
    """``pool`` then an optional hidden layer (``hidden == 0``: none) and the output layer."""

    pool: str
    hidden: int
    hidden_prec: Precision | None
    out_prec: Precision

    def __str__(self) -> str:
        mid = f".d{self.hidden}{self.hidden_prec}" if self.hidden else ""
        return f"h{_POOL_CODE[self.pool]}{mid}.o{self.out_prec}"


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet of the space. ``str(cfg)`` is its canonical name."""

    stages: tuple[StageConfig, ...]
    head: HeadConfig

    def __str__(self) -> str:
        return "_".join([*(str(s) for s in self.stages), str(self.head)])

    @property
    def name(self) -> str:
        return str(self)

    def layer_precisions(self) -> list[Precision]:
        """Precisions in layer order: every convolution, the hidden layer if any, the output."""
        out = [c.prec for s in self.stages for c in s.convs]
        if self.head.hidden:
            assert self.head.hidden_prec is not None, "a hidden layer has a precision"
            out.append(self.head.hidden_prec)
        return out + [self.head.out_prec]

    def with_precision(self, prec: Precision) -> SubnetConfig:
        """The same architecture with every layer at ``prec``."""
        return self.with_precisions(lambda: prec)

    def with_precisions(self, pick: Callable[[], Precision]) -> SubnetConfig:
        """The same architecture with each layer's precision drawn from ``pick()``, in layer order."""
        stages = tuple(replace(s, convs=tuple(ConvConfig(c.kernel, pick()) for c in s.convs)) for s in self.stages)
        hidden_prec = pick() if self.head.hidden else None
        return SubnetConfig(stages, replace(self.head, hidden_prec=hidden_prec, out_prec=pick()))

    def to_json(self) -> str:
        return json.dumps({"subnet": str(self)})

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            obj = json.loads(text)
            name = obj["subnet"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SpaceError(f'expected JSON of the form {{"subnet": "<name>"}}, got {text[:80]!r}') from exc
        return cls.parse(name)

    @classmethod
    def parse(cls, text: str) -> SubnetConfig:
        """Parse a canonical subnet string (see the module docstring for the grammar)."""
        example = "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8"
        if not isinstance(text, str) or not text:
            raise SpaceError(f"expected a subnet string such as {example!r}, got {text!r}")
        parts = text.split("_")
        if len(parts) < 2:
            raise SpaceError(f"subnet {text!r}: expected stages and a head joined by '_', like {example!r}")
        stages = tuple(_parse_stage(text, p) for p in parts[:-1])
        return cls(stages, _parse_head(text, parts[-1]))


_PREC = r"w(\d+)a(\d+)"
_CONV_RE = re.compile(r"k(\d+)" + _PREC)
_WIDTH_RE = re.compile(r"c(\d+)")
_HIDDEN_RE = re.compile(r"d(\d+)" + _PREC)
_OUT_RE = re.compile(r"o" + _PREC)


def _parse_stage(text: str, part: str) -> StageConfig:
    items = part.split(".")
    m = _WIDTH_RE.fullmatch(items[0])
    down = {v: k for k, v in _DOWN_CODE.items()}.get(items[-1])
    if not m or len(items) < 3 or down is None:
        hint = "a v1 name (stem 's..', inverted-residual blocks)? " if part.startswith("s") else ""
        raise SpaceError(
            f"subnet {text!r}: bad stage {part!r}; {hint}expected 'c<WIDTH>.k<K>w<W>a<A>[.k...].<p|s>', like 'c32.k3w8a8.p'"
        )
    convs = []
    for item in items[1:-1]:
        mc = _CONV_RE.fullmatch(item)
        if not mc:
            raise SpaceError(f"subnet {text!r}: bad convolution {item!r} in stage {part!r}, expected 'k<K>w<W>a<A>'")
        convs.append(ConvConfig(int(mc[1]), Precision(int(mc[2]), int(mc[3]))))
    return StageConfig(int(m[1]), tuple(convs), down)


def _parse_head(text: str, part: str) -> HeadConfig:
    items = part.split(".")
    pool = {v: k for k, v in _POOL_CODE.items()}.get(items[0][1:]) if items[0].startswith("h") else None
    out = _OUT_RE.fullmatch(items[-1]) if len(items) >= 2 else None
    hidden = _HIDDEN_RE.fullmatch(items[1]) if len(items) == 3 else None
    if pool is None or out is None or len(items) > 3 or (len(items) == 3 and hidden is None):
        raise SpaceError(
            f"subnet {text!r}: bad head {part!r}, expected 'h<f|g>[.d<WIDTH>w<W>a<A>].o<W>a<A>', like 'hf.d128w8a8.ow8a8'"
        )
    out_prec = Precision(int(out[1]), int(out[2]))
    if hidden is None:
        return HeadConfig(pool, 0, None, out_prec)
    if int(hidden[1]) == 0:
        raise SpaceError(f"subnet {text!r}: a hidden layer of width 0 is written by leaving '.d..' out")
    return HeadConfig(pool, int(hidden[1]), Precision(int(hidden[2]), int(hidden[3])), out_prec)


def stage_sizes(image_size: int, n_stages: int) -> list[int]:
    """Spatial size at the input of each stage and after the last: 28 -> [28, 14, 7, 4]."""
    sizes = [image_size]
    for _ in range(n_stages):
        sizes.append(-(-sizes[-1] // 2))  # ceil: a 2x2 max-pool with ceil_mode and a stride-2 conv agree
    return sizes


@dataclass(frozen=True)
class StageSpec:
    """The choices of one stage: output widths and depths (number of convolutions)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.widths or any(w <= 0 for w in self.widths) or list(self.widths) != sorted(set(self.widths)):
            raise SpaceError(f"stage widths must be distinct positive ascending ints, got {self.widths!r}")
        if not self.depths or any(d <= 0 for d in self.depths) or list(self.depths) != sorted(set(self.depths)):
            raise SpaceError(f"stage depths must be distinct positive ascending ints, got {self.depths!r}")


def _default_stages() -> tuple[StageSpec, ...]:
    return (
        StageSpec(widths=(16, 24, 32, 48, 64), depths=(1, 2)),  # 28x28 -> 14x14
        StageSpec(widths=(32, 48, 64, 96, 128), depths=(1, 2, 3)),  # 14x14 -> 7x7
        StageSpec(widths=(64, 96, 128), depths=(1, 2)),  # 7x7 -> 4x4, optional (min_stages)
    )


@dataclass(frozen=True)
class SpaceConfig:
    """The shape of the search space. The defaults are the Fashion-MNIST space."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stages: tuple[StageSpec, ...] = field(default_factory=_default_stages)
    min_stages: int = 2
    kernels: tuple[int, ...] = (3, 5)
    downs: tuple[str, ...] = DOWNS
    pools: tuple[str, ...] = POOLS
    hiddens: tuple[int, ...] = (0, 64, 128, 256)  # 0: no hidden layer
    precisions: tuple[Precision, ...] = (Precision(8, 8), Precision(FULL_BITS, FULL_BITS))

    def __post_init__(self) -> None:
        problems = []
        if self.in_channels <= 0 or self.image_size <= 0 or self.num_classes < 2:
            problems.append("in_channels and image_size must be positive and num_classes at least 2")
        if not self.stages:
            problems.append("at least one stage is required")
        if not 1 <= self.min_stages <= len(self.stages):
            problems.append(f"min_stages must be in 1..{len(self.stages)}, got {self.min_stages!r}")
        if not self.kernels or any(k % 2 == 0 or k <= 0 for k in self.kernels):
            problems.append(f"kernels must be odd positive ints, got {self.kernels!r}")
        if not self.downs or not set(self.downs) <= set(DOWNS):
            problems.append(f"downs must be chosen from {DOWNS}, got {self.downs!r}")
        if not self.pools or not set(self.pools) <= set(POOLS):
            problems.append(f"pools must be chosen from {POOLS}, got {self.pools!r}")
        if not self.hiddens or any(h < 0 for h in self.hiddens):
            problems.append(f"hiddens must be non-negative ints (0: no hidden layer), got {self.hiddens!r}")
        if not self.precisions or any(
            p.w not in (4, 8, FULL_BITS) or p.a not in (8, FULL_BITS) for p in self.precisions
        ):
            problems.append(
                f"precisions must have weights of 4, 8 or 32 bits and activations of 8 or 32, got {self.precisions!r}"
            )
        for name in ("kernels", "hiddens", "precisions"):
            values = getattr(self, name)
            if list(values) != sorted(set(values)):
                problems.append(f"{name} must be distinct and ascending, got {values!r}")
        if problems:
            raise SpaceError("invalid search space: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precisions"] = [str(p) for p in self.precisions]
        return {"version": SPACE_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpaceConfig:
        if not isinstance(d, dict):
            raise SpaceError(f"invalid search space description: expected a mapping, got {type(d).__name__}")
        version = d.get("version", 1)
        if version != SPACE_VERSION:
            raise SpaceError(
                f"this artefact was made for search space version {version}; this lifelong uses version "
                f"{SPACE_VERSION} (dense conv stages). Rebuild it: `lifelong train` for a supernet, then "
                "`lifelong profile`, `lifelong predictor collect/build` and `lifelong search`"
            )
        try:
            d = {k: v for k, v in d.items() if k != "version"}
            d["stages"] = tuple(StageSpec(tuple(s["widths"]), tuple(s["depths"])) for s in d["stages"])
            d["precisions"] = tuple(Precision.parse(p) for p in d["precisions"])
            for k in ("kernels", "downs", "pools", "hiddens"):
                d[k] = tuple(d[k])
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise SpaceError(f"invalid search space description: {exc}") from exc


class SearchSpace:
    """Sampling, validation, variation and encoding of subnets of one :class:`SpaceConfig`."""

    def __init__(self, config: SpaceConfig | None = None) -> None:
        self.config = config or SpaceConfig()
        self.precisions = self.config.precisions

    # -- properties of the space -------------------------------------------------------------
    @property
    def stage_counts(self) -> tuple[int, ...]:
        return tuple(range(self.config.min_stages, len(self.config.stages) + 1))

    def head_choices(self) -> int:
        c = self.config
        hidden = sum(len(self.precisions) if h else 1 for h in c.hiddens)
        return len(c.pools) * hidden * len(self.precisions)

    def size(self) -> int:
        """The exact number of distinct subnets in the space."""
        c = self.config
        conv = len(c.kernels) * len(self.precisions)
        total, prefix = 0, 1
        for i, spec in enumerate(c.stages):
            prefix *= len(spec.widths) * len(c.downs) * sum(conv**d for d in spec.depths)
            if i + 1 >= c.min_stages:
                total += prefix
        return total * self.head_choices()

    def describe(self) -> str:
        n = self.size()
        return f"{n} subnets (about 10^{math.log10(n):.1f}), space v{SPACE_VERSION}"

    # -- validation ---------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Return ``cfg`` if it belongs to this space, else raise :class:`SpaceError`."""
        c = self.config
        problems = []

        def check_prec(where: str, p: Precision | None) -> None:
            if p not in self.precisions:
                problems.append(f"{where}: precision {p} not in {tuple(str(q) for q in self.precisions)}")

        if len(cfg.stages) not in self.stage_counts:
            problems.append(
                f"{len(cfg.stages)} stages, the space has {self.stage_counts[0]} to {self.stage_counts[-1]}"
            )
        for i, (st, spec) in enumerate(zip(cfg.stages, c.stages, strict=False)):
            if st.width not in spec.widths:
                problems.append(f"stage {i}: width {st.width} not in {spec.widths}")
            if st.depth not in spec.depths:
                problems.append(f"stage {i}: depth {st.depth} not in {spec.depths}")
            if st.down not in c.downs:
                problems.append(f"stage {i}: downsampling {st.down!r} not in {c.downs}")
            for j, conv in enumerate(st.convs):
                if conv.kernel not in c.kernels:
                    problems.append(f"stage {i} conv {j}: kernel {conv.kernel} not in {c.kernels}")
                check_prec(f"stage {i} conv {j}", conv.prec)
        h = cfg.head
        if h.pool not in c.pools:
            problems.append(f"head: pool {h.pool!r} not in {c.pools}")
        if h.hidden not in c.hiddens:
            problems.append(f"head: hidden width {h.hidden} not in {c.hiddens}")
        if h.hidden:
            check_prec("hidden layer", h.hidden_prec)
        elif h.hidden_prec is not None:
            problems.append("head: no hidden layer, so no hidden precision")
        check_prec("output layer", h.out_prec)
        if problems:
            raise SpaceError(f"subnet {cfg} is not in the space: " + "; ".join(problems))
        return cfg

    def parse(self, text: str) -> SubnetConfig:
        """Parse a canonical string and check that the subnet belongs to this space."""
        return self.validate(SubnetConfig.parse(text))

    def resolve(self, name: str) -> SubnetConfig:
        """A canonical name, or ``largest[:wXaY]`` / ``smallest[:wXaY]``, as a subnet of this space."""
        base, _, prec = name.partition(":")
        if base not in ("largest", "smallest"):
            return self.parse(name)
        p = None
        if prec:
            try:
                p = Precision.parse(prec)
            except SpaceError:
                raise SpaceError(f"{name!r}: expected {base}:wXaY (e.g. {base}:w8a8), got precision {prec!r}") from None
        return getattr(self, base)(p)

    # -- named points -------------------------------------------------------------------------
    def largest(self, prec: Precision | None = None) -> SubnetConfig:
        """Every stage, widest, deepest, largest kernel, max-pool downsampling (the convolutions
        run at the higher resolution), flatten and the widest hidden layer; at ``prec`` or the
        highest precision."""
        c = self.config
        p = prec or max(self.precisions)
        stages = tuple(
            StageConfig(
                max(s.widths),
                (ConvConfig(max(c.kernels), p),) * max(s.depths),
                "pool" if "pool" in c.downs else "stride",
            )
            for s in c.stages
        )
        hidden = max(c.hiddens)
        pool = "flat" if "flat" in c.pools else "gap"
        return SubnetConfig(stages, HeadConfig(pool, hidden, p if hidden else None, p))

    def smallest(self, prec: Precision | None = None) -> SubnetConfig:
        """The fewest stages, narrowest, shallowest, smallest kernel, stride-2 downsampling,
        global pooling and no hidden layer; at ``prec`` or the lowest precision."""
        c = self.config
        p = prec or min(self.precisions)
        stages = tuple(
            StageConfig(
                min(s.widths),
                (ConvConfig(min(c.kernels), p),) * min(s.depths),
                "stride" if "stride" in c.downs else "pool",
            )
            for s in c.stages[: c.min_stages]
        )
        hidden = min(c.hiddens)
        pool = "gap" if "gap" in c.pools else "flat"
        return SubnetConfig(stages, HeadConfig(pool, hidden, p if hidden else None, p))

    def corners(self) -> list[SubnetConfig]:
        """The largest and the smallest subnet at every precision: the sandwich rule's corners,
        which uniform draws and mutations at a tenth per gene almost never reach."""
        out: list[SubnetConfig] = []
        for p in self.precisions:
            for cfg in (self.largest(p), self.smallest(p)):
                if cfg not in out:
                    out.append(cfg)
        return out

    # -- sampling and variation, on a fixed-length genome --------------------------------------
    # The genome holds every gene, including those of convolutions and stages past the active
    # depth and stage count, so that mutation and crossover work position by position (as in
    # OFA's evolution finder) and always give a valid subnet.
    def _random_conv(self, rng: np.random.Generator, precisions: tuple[Precision, ...]) -> ConvConfig:
        return ConvConfig(int(_pick(rng, self.config.kernels)), _pick(rng, precisions))

    def _random_stage(self, spec: StageSpec, rng: np.random.Generator, precs: tuple[Precision, ...]) -> dict[str, Any]:
        return {
            "width": int(_pick(rng, spec.widths)),
            "depth": int(_pick(rng, spec.depths)),
            "down": _pick(rng, self.config.downs),
            "convs": [self._random_conv(rng, precs) for _ in range(max(spec.depths))],
        }

    def _genome(self, cfg: SubnetConfig, rng: np.random.Generator) -> dict[str, Any]:
        stages = []
        for i, spec in enumerate(self.config.stages):
            if i < len(cfg.stages):
                st = cfg.stages[i]
                convs = list(st.convs) + [
                    self._random_conv(rng, self.precisions) for _ in range(max(spec.depths) - st.depth)
                ]
                stages.append({"width": st.width, "depth": st.depth, "down": st.down, "convs": convs})
            else:
                stages.append(self._random_stage(spec, rng, self.precisions))
        h = cfg.head
        return {
            "n_stages": len(cfg.stages),
            "stages": stages,
            "pool": h.pool,
            "hidden": h.hidden,
            "hidden_prec": h.hidden_prec or _pick(rng, self.precisions),
            "out_prec": h.out_prec,
        }

    @staticmethod
    def _from_genome(g: dict[str, Any]) -> SubnetConfig:
        stages = tuple(
            StageConfig(s["width"], tuple(s["convs"][: s["depth"]]), s["down"]) for s in g["stages"][: g["n_stages"]]
        )
        hidden = g["hidden"]
        return SubnetConfig(stages, HeadConfig(g["pool"], hidden, g["hidden_prec"] if hidden else None, g["out_prec"]))

    def sample(self, rng: np.random.Generator, precisions: tuple[Precision, ...] | None = None) -> SubnetConfig:
        """A subnet drawn uniformly per gene; ``precisions`` restricts the precisions drawn."""
        c = self.config
        precs = precisions or self.precisions
        g = {
            "n_stages": int(_pick(rng, self.stage_counts)),
            "stages": [self._random_stage(spec, rng, precs) for spec in c.stages],
            "pool": _pick(rng, c.pools),
            "hidden": int(_pick(rng, c.hiddens)),
            "hidden_prec": _pick(rng, precs),
            "out_prec": _pick(rng, precs),
        }
        return self._from_genome(g)

    def mutate(self, cfg: SubnetConfig, rng: np.random.Generator, prob: float = 0.1) -> SubnetConfig:
        """Resample each gene of ``cfg`` with probability ``prob``."""
        c = self.config
        g = self._genome(cfg, rng)
        fresh = self.sample(rng)
        fg = self._genome(fresh, rng)
        for key in ("n_stages", "pool", "hidden", "hidden_prec", "out_prec"):
            if rng.random() < prob:
                g[key] = fg[key]
        for st, new in zip(g["stages"], fg["stages"], strict=True):
            for key in ("width", "depth", "down"):
                if rng.random() < prob:
                    st[key] = new[key]
            for j, (conv, other) in enumerate(zip(st["convs"], new["convs"], strict=True)):
                kernel = other.kernel if rng.random() < prob else conv.kernel
                prec = other.prec if rng.random() < prob else conv.prec
                st["convs"][j] = ConvConfig(kernel, prec)
        assert len(g["stages"]) == len(c.stages), "the genome holds every stage"
        return self._from_genome(g)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        """Uniform crossover: each gene from ``a`` or ``b`` with equal chance."""
        ga, gb = self._genome(a, rng), self._genome(b, rng)
        coin = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        stages = []
        for sa, sb in zip(ga["stages"], gb["stages"], strict=True):
            stage = {k: coin(sa[k], sb[k]) for k in ("width", "depth", "down")}
            stage["convs"] = [coin(x, y) for x, y in zip(sa["convs"], sb["convs"], strict=True)]
            stages.append(stage)
        g = {k: coin(ga[k], gb[k]) for k in ("n_stages", "pool", "hidden", "hidden_prec", "out_prec")}
        g["stages"] = stages
        return self._from_genome(g)

    # -- encoding for the accuracy predictor --------------------------------------------------
    def encoding_length(self) -> int:
        c = self.config
        np_ = len(self.precisions)
        conv = 1 + len(c.kernels) + np_
        n = len(self.stage_counts) + len(c.pools) + len(c.hiddens) + 2 * np_
        for s in c.stages:
            n += len(s.widths) + len(s.depths) + len(c.downs) + max(s.depths) * conv
        return n

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """A fixed-length one-hot encoding; stages and convolutions not present are all zeros."""
        c = self.config
        out: list[float] = []

        def onehot(value: Any, choices: tuple[Any, ...]) -> None:
            out.extend(1.0 if value == ch else 0.0 for ch in choices)

        onehot(len(cfg.stages), self.stage_counts)
        conv_len = 1 + len(c.kernels) + len(self.precisions)
        for i, spec in enumerate(c.stages):
            st = cfg.stages[i] if i < len(cfg.stages) else None
            onehot(st.width if st else None, spec.widths)
            onehot(st.depth if st else None, spec.depths)
            onehot(st.down if st else None, c.downs)
            for j in range(max(spec.depths)):
                if st is not None and j < st.depth:
                    out.append(1.0)
                    onehot(st.convs[j].kernel, c.kernels)
                    onehot(st.convs[j].prec, self.precisions)
                else:
                    out.extend([0.0] * conv_len)
        h = cfg.head
        onehot(h.pool, c.pools)
        onehot(h.hidden, c.hiddens)
        onehot(h.hidden_prec, self.precisions)
        onehot(h.out_prec, self.precisions)
        vec = np.asarray(out, dtype=np.float32)
        assert vec.shape == (self.encoding_length(),), "encoding length drifted from encoding_length()"
        return vec


def _pick(rng: np.random.Generator, choices: tuple[Any, ...]) -> Any:
    return choices[int(rng.integers(len(choices)))]

"""The search space: elastic inverted-residual / plain-conv stages with per-layer precision.

A subnet is a frozen :class:`SubnetConfig`. Its canonical string is the store key, the log
field and the model file name. Grammar (all parts joined by ``_``)::

    subnet := stem "_" stage ("_" stage)* "_" head
    stem   := "s" WIDTH PREC                        s16w8a8
    stage  := "c" WIDTH ("." block)+               c32.ik3e4w8a8.ck5w32a32
    block  := "i" "k" K "e" E PREC                  inverted residual: 1x1 expand, kxk depthwise, 1x1 project
            | "c" "k" K PREC                        plain kxk convolution
    head   := "h" PREC                              the classifier
    PREC   := "w" WEIGHT_BITS "a" ACT_BITS          w32a32 is full precision

Example: ``s16w8a8_c32.ik3e4w8a8_c64.ck3w8a8.ik5e6w4a8_c128.ik3e2w8a8_hw8a8``.

A *layer* in the precision sense is one searchable unit: the stem, a block (its convolutions
share one precision, so that a quantized block stays one fused integer region in the
exported graph) or the classifier. The number of blocks in a stage is its depth.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lifelong.errors import SpaceError

__all__ = [
    "BlockConfig",
    "Precision",
    "SearchSpace",
    "SpaceConfig",
    "StageConfig",
    "StageSpec",
    "SubnetConfig",
]

FULL_BITS = 32
BLOCK_KINDS = ("ir", "conv")


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


@dataclass(frozen=True)
class BlockConfig:
    """One block: ``kind`` is ``"ir"`` (inverted residual) or ``"conv"`` (plain kxk conv)."""

    kind: str
    kernel: int
    expand: int | None
    prec: Precision

    def __str__(self) -> str:
        if self.kind == "ir":
            return f"ik{self.kernel}e{self.expand}{self.prec}"
        return f"ck{self.kernel}{self.prec}"


@dataclass(frozen=True)
class StageConfig:
    width: int
    blocks: tuple[BlockConfig, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def __str__(self) -> str:
        return "c" + str(self.width) + "".join("." + str(b) for b in self.blocks)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet of the space. ``str(cfg)`` is its canonical name."""

    stem_width: int
    stem_prec: Precision
    stages: tuple[StageConfig, ...]
    head_prec: Precision

    def __str__(self) -> str:
        parts = [f"s{self.stem_width}{self.stem_prec}"]
        parts += [str(s) for s in self.stages]
        parts.append(f"h{self.head_prec}")
        return "_".join(parts)

    @property
    def name(self) -> str:
        return str(self)

    def layer_precisions(self) -> list[Precision]:
        """Precisions in layer order: stem, every block, head."""
        return [self.stem_prec] + [b.prec for s in self.stages for b in s.blocks] + [self.head_prec]

    def with_precision(self, prec: Precision) -> SubnetConfig:
        """The same architecture with every layer at ``prec``."""
        stages = tuple(
            StageConfig(s.width, tuple(BlockConfig(b.kind, b.kernel, b.expand, prec) for b in s.blocks))
            for s in self.stages
        )
        return SubnetConfig(self.stem_width, prec, stages, prec)

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
        if not isinstance(text, str) or not text:
            raise SpaceError(f"expected a subnet string such as 's16w8a8_c32.ik3e4w8a8_hw8a8', got {text!r}")
        parts = text.split("_")
        if len(parts) < 3:
            raise SpaceError(f"subnet {text!r}: expected stem, at least one stage and head joined by '_'")
        m = _STEM_RE.fullmatch(parts[0])
        if not m:
            raise SpaceError(f"subnet {text!r}: bad stem {parts[0]!r}, expected like 's16w8a8'")
        stem_width, stem_prec = int(m[1]), Precision(int(m[2]), int(m[3]))
        m = _HEAD_RE.fullmatch(parts[-1])
        if not m:
            raise SpaceError(f"subnet {text!r}: bad head {parts[-1]!r}, expected like 'hw8a8'")
        head_prec = Precision(int(m[1]), int(m[2]))
        stages = []
        for stage_text in parts[1:-1]:
            items = stage_text.split(".")
            m = _WIDTH_RE.fullmatch(items[0])
            if not m or len(items) < 2:
                raise SpaceError(f"subnet {text!r}: bad stage {stage_text!r}, expected like 'c32.ik3e4w8a8.ck3w8a8'")
            blocks = []
            for item in items[1:]:
                if mi := _IR_RE.fullmatch(item):
                    blocks.append(BlockConfig("ir", int(mi[1]), int(mi[2]), Precision(int(mi[3]), int(mi[4]))))
                elif mc := _CONV_RE.fullmatch(item):
                    blocks.append(BlockConfig("conv", int(mc[1]), None, Precision(int(mc[2]), int(mc[3]))))
                else:
                    raise SpaceError(
                        f"subnet {text!r}: bad block {item!r}, expected 'ik<K>e<E>w<W>a<A>' or 'ck<K>w<W>a<A>'"
                    )
            stages.append(StageConfig(int(m[1]), tuple(blocks)))
        return cls(stem_width, stem_prec, tuple(stages), head_prec)


_PREC = r"w(\d+)a(\d+)"
_STEM_RE = re.compile(r"s(\d+)" + _PREC)
_HEAD_RE = re.compile(r"h" + _PREC)
_WIDTH_RE = re.compile(r"c(\d+)")
_IR_RE = re.compile(r"ik(\d+)e(\d+)" + _PREC)
_CONV_RE = re.compile(r"ck(\d+)" + _PREC)


@dataclass(frozen=True)
class StageSpec:
    """The choices of one stage: output widths, depths and the stride of its first block."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stride: int

    def __post_init__(self) -> None:
        if not self.widths or any(w <= 0 for w in self.widths) or list(self.widths) != sorted(set(self.widths)):
            raise SpaceError(f"stage widths must be distinct positive ascending ints, got {self.widths!r}")
        if not self.depths or any(d <= 0 for d in self.depths) or list(self.depths) != sorted(set(self.depths)):
            raise SpaceError(f"stage depths must be distinct positive ascending ints, got {self.depths!r}")
        if self.stride not in (1, 2):
            raise SpaceError(f"stage stride must be 1 or 2, got {self.stride!r}")


def _default_stages() -> tuple[StageSpec, ...]:
    return (
        StageSpec(widths=(16, 24, 32), depths=(1, 2), stride=1),  # 14x14
        StageSpec(widths=(32, 48, 64), depths=(1, 2, 3), stride=2),  # 7x7
        StageSpec(widths=(64, 96, 128), depths=(1, 2, 3), stride=2),  # 4x4
    )


@dataclass(frozen=True)
class SpaceConfig:
    """The shape of the search space. The defaults are the Fashion-MNIST space."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stem_widths: tuple[int, ...] = (8, 16, 24)
    stem_stride: int = 2  # early downsampling keeps CPU training affordable
    stages: tuple[StageSpec, ...] = field(default_factory=_default_stages)
    kernels: tuple[int, ...] = (3, 5)
    expands: tuple[int, ...] = (2, 3, 4)
    block_kinds: tuple[str, ...] = BLOCK_KINDS
    weight_bits: tuple[int, ...] = (4, 8, 32)
    act_bits: tuple[int, ...] = (8, 32)
    head_width: int = 128  # fixed 1x1 feature conv before pooling; its output is the embedding

    def __post_init__(self) -> None:
        problems = []
        if self.head_width <= 0:
            problems.append(f"head_width must be positive, got {self.head_width!r}")
        if self.in_channels <= 0 or self.image_size <= 0 or self.num_classes < 2:
            problems.append("in_channels and image_size must be positive and num_classes at least 2")
        if not self.stages:
            problems.append("at least one stage is required")
        if any(k % 2 == 0 or k <= 0 for k in self.kernels) or not self.kernels:
            problems.append(f"kernels must be odd positive ints, got {self.kernels!r}")
        if not self.expands or any(e <= 0 for e in self.expands):
            problems.append(f"expands must be positive ints, got {self.expands!r}")
        if not set(self.block_kinds) <= set(BLOCK_KINDS) or not self.block_kinds:
            problems.append(f"block_kinds must be a subset of {BLOCK_KINDS}, got {self.block_kinds!r}")
        for name, bits in (("weight_bits", self.weight_bits), ("act_bits", self.act_bits)):
            if not bits or any(b not in (2, 3, 4, 5, 6, 7, 8, FULL_BITS) for b in bits):
                problems.append(f"{name} must be chosen from 2..8 and 32, got {bits!r}")
        for name in ("stem_widths", "kernels", "expands", "weight_bits", "act_bits"):
            values = getattr(self, name)
            if list(values) != sorted(set(values)):
                problems.append(f"{name} must be distinct and ascending, got {values!r}")
        if problems:
            raise SpaceError("invalid search space: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpaceConfig:
        try:
            d = dict(d)
            d["stages"] = tuple(
                StageSpec(tuple(s["widths"]), tuple(s["depths"]), int(s["stride"])) for s in d["stages"]
            )
            for k in ("stem_widths", "kernels", "expands", "block_kinds", "weight_bits", "act_bits"):
                d[k] = tuple(d[k])
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise SpaceError(f"invalid search space description: {exc}") from exc


class SearchSpace:
    """Sampling, validation, variation and encoding of subnets of one :class:`SpaceConfig`."""

    def __init__(self, config: SpaceConfig | None = None) -> None:
        self.config = config or SpaceConfig()
        c = self.config
        self.precisions = tuple(Precision(w, a) for w in c.weight_bits for a in c.act_bits)

    # -- properties of the space -------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        return max(max(s.depths) for s in self.config.stages)

    def block_choices(self) -> int:
        """Distinct configurations of one block (a plain conv has no expand ratio)."""
        c = self.config
        per_kind = {"ir": len(c.kernels) * len(c.expands), "conv": len(c.kernels)}
        return sum(per_kind[k] for k in c.block_kinds) * len(self.precisions)

    def size(self) -> int:
        """The exact number of distinct subnets in the space."""
        c = self.config
        b = self.block_choices()
        n = len(c.stem_widths) * len(self.precisions) * len(self.precisions)  # stem and head
        for s in c.stages:
            n *= len(s.widths) * sum(b**d for d in s.depths)
        return n

    def describe(self) -> str:
        n = self.size()
        return f"{n} subnets (about 10^{math.log10(n):.1f})"

    # -- validation ---------------------------------------------------------------------------
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Return ``cfg`` if it belongs to this space, else raise :class:`SpaceError`."""
        c = self.config
        problems = []

        def check_prec(where: str, p: Precision) -> None:
            if p.w not in c.weight_bits or p.a not in c.act_bits:
                problems.append(f"{where}: precision {p} not in weights {c.weight_bits} x activations {c.act_bits}")

        if cfg.stem_width not in c.stem_widths:
            problems.append(f"stem width {cfg.stem_width} not in {c.stem_widths}")
        check_prec("stem", cfg.stem_prec)
        check_prec("head", cfg.head_prec)
        if len(cfg.stages) != len(c.stages):
            problems.append(f"{len(cfg.stages)} stages, the space has {len(c.stages)}")
        for i, (st, spec) in enumerate(zip(cfg.stages, c.stages, strict=False)):
            if st.width not in spec.widths:
                problems.append(f"stage {i}: width {st.width} not in {spec.widths}")
            if st.depth not in spec.depths:
                problems.append(f"stage {i}: depth {st.depth} not in {spec.depths}")
            for j, b in enumerate(st.blocks):
                where = f"stage {i} block {j}"
                if b.kind not in c.block_kinds:
                    problems.append(f"{where}: kind {b.kind!r} not in {c.block_kinds}")
                if b.kernel not in c.kernels:
                    problems.append(f"{where}: kernel {b.kernel} not in {c.kernels}")
                if b.kind == "ir" and b.expand not in c.expands:
                    problems.append(f"{where}: expand {b.expand} not in {c.expands}")
                if b.kind == "conv" and b.expand is not None:
                    problems.append(f"{where}: a plain conv block has no expand ratio")
                check_prec(where, b.prec)
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
                w, a = prec.lower().removeprefix("w").split("a")
                p = Precision(int(w), int(a))
            except ValueError:
                raise SpaceError(f"{name!r}: expected {base}:wXaY (e.g. {base}:w8a8), got precision {prec!r}") from None
        return getattr(self, base)(p)

    # -- named points -------------------------------------------------------------------------
    def largest(self, prec: Precision | None = None, kind: str | None = None) -> SubnetConfig:
        """Widest, deepest subnet with the largest kernel and expand ratio (inverted residual
        unless ``kind`` says otherwise), at ``prec`` or the highest precision."""
        c = self.config
        return self._extreme(max, prec or Precision(max(c.weight_bits), max(c.act_bits)), kind)

    def smallest(self, prec: Precision | None = None, kind: str | None = None) -> SubnetConfig:
        """Narrowest, shallowest subnet with the smallest kernel and expand ratio, at ``prec``
        or the lowest precision."""
        c = self.config
        return self._extreme(min, prec or Precision(min(c.weight_bits), min(c.act_bits)), kind)

    def _extreme(self, pick: Any, prec: Precision, kind: str | None) -> SubnetConfig:
        c = self.config
        kind = kind or ("ir" if "ir" in c.block_kinds else "conv")
        if kind not in c.block_kinds:
            raise SpaceError(f"block kind {kind!r} not in {c.block_kinds}")
        block = BlockConfig(kind, pick(c.kernels), pick(c.expands) if kind == "ir" else None, prec)
        stages = tuple(StageConfig(pick(s.widths), (block,) * pick(s.depths)) for s in c.stages)
        return SubnetConfig(pick(c.stem_widths), prec, stages, prec)

    # -- sampling and variation, on a fixed-length genome --------------------------------------
    # The genome holds every gene, including those of blocks past the active depth, so that
    # mutation and crossover work position by position (as in OFA's evolution finder) and
    # always give a valid subnet.
    def _random_block(self, rng: np.random.Generator, precisions: tuple[Precision, ...]) -> BlockConfig:
        c = self.config
        kind = c.block_kinds[rng.integers(len(c.block_kinds))]
        kernel = c.kernels[rng.integers(len(c.kernels))]
        expand = c.expands[rng.integers(len(c.expands))] if kind == "ir" else None
        return BlockConfig(kind, int(kernel), None if expand is None else int(expand), _pick(rng, precisions))

    def _genome(self, cfg: SubnetConfig, rng: np.random.Generator) -> dict[str, Any]:
        stages = []
        for st, spec in zip(cfg.stages, self.config.stages, strict=True):
            blocks = list(st.blocks) + [
                self._random_block(rng, self.precisions) for _ in range(max(spec.depths) - st.depth)
            ]
            stages.append({"width": st.width, "depth": st.depth, "blocks": blocks})
        return {"stem_width": cfg.stem_width, "stem_prec": cfg.stem_prec, "head_prec": cfg.head_prec, "stages": stages}

    @staticmethod
    def _from_genome(g: dict[str, Any]) -> SubnetConfig:
        stages = tuple(StageConfig(s["width"], tuple(s["blocks"][: s["depth"]])) for s in g["stages"])
        return SubnetConfig(g["stem_width"], g["stem_prec"], stages, g["head_prec"])

    def sample(self, rng: np.random.Generator, precisions: tuple[Precision, ...] | None = None) -> SubnetConfig:
        """A subnet drawn uniformly per gene; ``precisions`` restricts the precisions drawn."""
        c = self.config
        precs = precisions or self.precisions
        stages = []
        for spec in c.stages:
            width = int(_pick(rng, spec.widths))
            depth = int(_pick(rng, spec.depths))
            stages.append(StageConfig(width, tuple(self._random_block(rng, precs) for _ in range(depth))))
        return SubnetConfig(int(_pick(rng, c.stem_widths)), _pick(rng, precs), tuple(stages), _pick(rng, precs))

    def mutate(self, cfg: SubnetConfig, rng: np.random.Generator, prob: float = 0.1) -> SubnetConfig:
        """Resample each gene of ``cfg`` with probability ``prob``."""
        c = self.config
        g = self._genome(cfg, rng)
        if rng.random() < prob:
            g["stem_width"] = int(_pick(rng, c.stem_widths))
        if rng.random() < prob:
            g["stem_prec"] = _pick(rng, self.precisions)
        if rng.random() < prob:
            g["head_prec"] = _pick(rng, self.precisions)
        for st, spec in zip(g["stages"], c.stages, strict=True):
            if rng.random() < prob:
                st["width"] = int(_pick(rng, spec.widths))
            if rng.random() < prob:
                st["depth"] = int(_pick(rng, spec.depths))
            for j, b in enumerate(st["blocks"]):
                fresh = self._random_block(rng, self.precisions)
                kind = fresh.kind if rng.random() < prob else b.kind
                kernel = fresh.kernel if rng.random() < prob else b.kernel
                if kind == "ir":
                    old = b.expand if b.expand is not None else int(_pick(rng, c.expands))
                    expand = int(_pick(rng, c.expands)) if rng.random() < prob else old
                else:
                    expand = None
                prec = fresh.prec if rng.random() < prob else b.prec
                st["blocks"][j] = BlockConfig(kind, kernel, expand, prec)
        return self._from_genome(g)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        """Uniform crossover: each gene from ``a`` or ``b`` with equal chance."""
        ga, gb = self._genome(a, rng), self._genome(b, rng)
        coin = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        stages = []
        for sa, sb in zip(ga["stages"], gb["stages"], strict=True):
            blocks = [coin(x, y) for x, y in zip(sa["blocks"], sb["blocks"], strict=True)]
            stages.append(
                {"width": coin(sa["width"], sb["width"]), "depth": coin(sa["depth"], sb["depth"]), "blocks": blocks}
            )
        g = {
            "stem_width": coin(ga["stem_width"], gb["stem_width"]),
            "stem_prec": coin(ga["stem_prec"], gb["stem_prec"]),
            "head_prec": coin(ga["head_prec"], gb["head_prec"]),
            "stages": stages,
        }
        return self._from_genome(g)

    # -- encoding for the accuracy predictor --------------------------------------------------
    def encoding_length(self) -> int:
        c = self.config
        np_ = len(self.precisions)
        block = 1 + len(c.block_kinds) + len(c.kernels) + len(c.expands) + np_
        n = len(c.stem_widths) + 2 * np_
        for s in c.stages:
            n += len(s.widths) + len(s.depths) + max(s.depths) * block
        return n

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """A fixed-length one-hot encoding; blocks past the active depth are all zeros."""
        c = self.config
        out: list[float] = []

        def onehot(value: Any, choices: tuple[Any, ...]) -> None:
            out.extend(1.0 if value == ch else 0.0 for ch in choices)

        onehot(cfg.stem_width, c.stem_widths)
        onehot(cfg.stem_prec, self.precisions)
        for st, spec in zip(cfg.stages, c.stages, strict=True):
            onehot(st.width, spec.widths)
            onehot(st.depth, spec.depths)
            for j in range(max(spec.depths)):
                if j < st.depth:
                    b = st.blocks[j]
                    out.append(1.0)
                    onehot(b.kind, c.block_kinds)
                    onehot(b.kernel, c.kernels)
                    onehot(b.expand, c.expands)
                    onehot(b.prec, self.precisions)
                else:
                    out.extend(
                        [0.0] * (1 + len(c.block_kinds) + len(c.kernels) + len(c.expands) + len(self.precisions))
                    )
        onehot(cfg.head_prec, self.precisions)
        vec = np.asarray(out, dtype=np.float32)
        assert vec.shape == (self.encoding_length(),), "encoding length drifted from encoding_length()"
        return vec


def _pick(rng: np.random.Generator, choices: tuple[Any, ...]) -> Any:
    return choices[int(rng.integers(len(choices)))]

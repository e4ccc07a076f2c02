from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from lifelong.errors import SpaceError
from lifelong.space.config import (
    SPACE_VERSION,
    ConvConfig,
    HeadConfig,
    Precision,
    SearchSpace,
    SpaceConfig,
    StageConfig,
    StageSpec,
    SubnetConfig,
)

TUTORIAL = "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8"
W8A8, FP = Precision(8, 8), Precision(32, 32)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def _enumerate(space: SearchSpace) -> set[str]:
    """Every subnet of a (small) space, built gene by gene."""
    c = space.config
    convs = [ConvConfig(k, p) for k in c.kernels for p in space.precisions]
    stage_choices = []
    for spec in c.stages:
        stage_choices.append(
            [
                StageConfig(w, seq, down)
                for w in spec.widths
                for d in spec.depths
                for seq in itertools.product(convs, repeat=d)
                for down in c.downs
            ]
        )
    heads = [
        HeadConfig(pool, h, hp if h else None, op)
        for pool in c.pools
        for h in c.hiddens
        for hp in (space.precisions if h else (None,))
        for op in space.precisions
    ]
    out = set()
    for n in space.stage_counts:
        for stages in itertools.product(*stage_choices[:n]):
            for head in heads:
                out.add(str(space.validate(SubnetConfig(tuple(stages), head))))
    return out


SMALL = SpaceConfig(
    stages=(StageSpec((8, 16), (1, 2)), StageSpec((16,), (1,))),
    min_stages=1,
    kernels=(3,),
    hiddens=(0, 32),
)


@pytest.mark.slow
def test_size_matches_enumeration_and_sampling_on_a_small_space() -> None:
    small = SearchSpace(SMALL)
    every = _enumerate(small)
    assert small.size() == len(every)
    rng = np.random.default_rng(0)
    seen = {str(small.sample(rng)) for _ in range(100_000)}
    assert seen == every


def test_default_space_reports_its_size(space: SearchSpace) -> None:
    assert space.size() > 10**8
    assert "subnets" in space.describe() and f"v{SPACE_VERSION}" in space.describe()


def test_the_tutorial_cnn_is_a_member(space: SearchSpace) -> None:
    cfg = space.parse(TUTORIAL)
    assert [s.width for s in cfg.stages] == [32, 64] and all(s.down == "pool" for s in cfg.stages)
    assert cfg.head == HeadConfig("flat", 128, W8A8, W8A8)


def test_string_round_trip_and_grammar(space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        cfg = space.sample(rng)
        name = str(cfg)
        assert SubnetConfig.parse(name) == cfg
        assert space.parse(name) == cfg
        assert SubnetConfig.from_json(cfg.to_json()) == cfg
        assert json.loads(cfg.to_json()) == {"subnet": name}
        assert all(ch.isalnum() or ch in "._" for ch in name), "names are used as file names"


def test_named_points(space: SearchSpace) -> None:
    big, small = space.largest(), space.smallest()
    assert len(big.stages) == 3 and big.head.pool == "flat" and big.head.hidden == 256
    assert all(s.down == "pool" and s.convs[0].kernel == 5 for s in big.stages)
    assert len(small.stages) == 2 and small.head == HeadConfig("gap", 0, None, W8A8)
    assert space.largest(W8A8).layer_precisions() == [W8A8] * len(big.layer_precisions())
    assert space.resolve("largest:w8a8") == space.largest(W8A8)
    assert big in space.corners() and small in space.corners() and len(space.corners()) == 4
    with pytest.raises(SpaceError, match="largest:wXaY"):
        space.resolve("largest:int8")


@pytest.mark.parametrize(
    "bad, match",
    [
        ("", "expected a subnet string"),
        ("hf.ow8a8", "expected stages and a head"),
        ("s16w8a8_c32.ik3e4w8a8_hw8a8", "a v1 name"),
        ("c32.k3w8a8_hf.ow8a8", "bad stage"),
        ("c32.z3w8a8.p_hf.ow8a8", "bad convolution"),
        ("c32.k3w8a8.p_hx.ow8a8", "bad head"),
        ("c32.k3w8a8.p_hf.d0w8a8.ow8a8", "width 0"),
    ],
)
def test_parse_rejects_malformed(bad: str, match: str) -> None:
    with pytest.raises(SpaceError, match=match):
        SubnetConfig.parse(bad)


def test_validate_reports_every_problem(space: SearchSpace) -> None:
    name = "c20.k7w8a8.k3w6a8.k3w8a8.p_c64.k3w8a8.p_c96.k3w8a8.p_c64.k3w8a8.p_hf.d100w8a8.ow4a8"
    with pytest.raises(SpaceError) as err:
        space.parse(name)
    msg = str(err.value)
    for part in (
        "4 stages",
        "width 20",
        "depth 3 not in (1, 2)",
        "kernel 7",
        "precision w6a8",
        "hidden width 100",
        "w4a8",
    ):
        assert part in msg, part
    with pytest.raises(SpaceError, match="expected JSON"):
        SubnetConfig.from_json("not json")


def test_mutation_and_crossover_stay_valid_and_vary(space: SearchSpace) -> None:
    rng = np.random.default_rng(2)
    a, b = space.sample(rng), space.sample(rng)
    changed = 0
    for _ in range(300):
        m = space.validate(space.mutate(a, rng, prob=0.2))
        changed += m != a
        c = space.validate(space.crossover(a, b, rng))
        assert c.stages[0].width in (a.stages[0].width, b.stages[0].width)
        assert len(c.stages) in (len(a.stages), len(b.stages))
    assert changed > 250
    assert space.mutate(a, rng, prob=0.0) == a


def test_encoding_is_fixed_length_and_distinguishes(space: SearchSpace) -> None:
    rng = np.random.default_rng(3)
    encs = {}
    for _ in range(300):
        cfg = space.sample(rng)
        v = space.encode(cfg)
        assert v.shape == (space.encoding_length(),) and v.dtype == np.float32
        assert set(np.unique(v)) <= {0.0, 1.0}
        encs.setdefault(v.tobytes(), str(cfg))
        assert encs[v.tobytes()] == str(cfg), "two subnets share one encoding"


def test_sample_respects_precision_restriction(space: SearchSpace) -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        assert set(space.sample(rng, (W8A8,)).layer_precisions()) == {W8A8}


def test_with_precisions_sets_every_layer_in_order(space: SearchSpace) -> None:
    cfg = space.parse(TUTORIAL)
    picks = iter([FP, W8A8, FP, W8A8])
    assert cfg.with_precisions(lambda: next(picks)).layer_precisions() == [FP, W8A8, FP, W8A8]


def test_space_config_validation_and_round_trip() -> None:
    with pytest.raises(SpaceError, match="kernels must be odd") as err:
        SpaceConfig(kernels=(2, 3), downs=("zoom",))
    assert "downs must be chosen" in str(err.value), "every problem is reported at once"
    with pytest.raises(SpaceError, match="precisions"):
        SpaceConfig(precisions=(Precision(2, 8),))
    with pytest.raises(SpaceError, match="depths"):
        StageSpec((8,), (0, 1))
    c = SpaceConfig()
    d = json.loads(json.dumps(c.to_dict()))
    assert d["version"] == SPACE_VERSION
    assert SpaceConfig.from_dict(d) == c


def test_an_artefact_of_the_v1_space_gets_a_clear_error() -> None:
    v1 = {"stem_widths": [8, 16], "stages": [], "expands": [2, 3], "weight_bits": [4, 8, 32]}
    with pytest.raises(SpaceError, match="search space version 1.*Rebuild it"):
        SpaceConfig.from_dict(v1)

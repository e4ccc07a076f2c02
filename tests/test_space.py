from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from lifelong.errors import SpaceError
from lifelong.space import (
    BlockConfig,
    Precision,
    SearchSpace,
    SpaceConfig,
    StageSpec,
    SubnetConfig,
)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace()


def _brute_force_size(space: SearchSpace) -> int:
    c = space.config
    blocks = []
    for kind in c.block_kinds:
        for k in c.kernels:
            for e in c.expands if kind == "ir" else (None,):
                for p in space.precisions:
                    blocks.append(BlockConfig(kind, k, e, p))
    n = 0
    stage_options = []
    for spec in c.stages:
        opts = 0
        for _w in spec.widths:
            for d in spec.depths:
                opts += sum(1 for _ in itertools.product(blocks, repeat=d))
        stage_options.append(opts)
    n = len(c.stem_widths) * len(space.precisions) ** 2
    for o in stage_options:
        n *= o
    return n


def test_size_matches_brute_force_on_a_small_space() -> None:
    small = SearchSpace(
        SpaceConfig(
            stem_widths=(8,),
            stages=(StageSpec((8, 16), (1, 2), 1), StageSpec((16,), (1,), 2)),
            kernels=(3,),
            expands=(2, 3),
            weight_bits=(8, 32),
            act_bits=(8,),
        )
    )
    assert small.size() == _brute_force_size(small)
    # enumerate every subnet of an even smaller space through sampling and compare
    tiny = SearchSpace(
        SpaceConfig(
            stem_widths=(8,),
            stages=(StageSpec((8,), (1, 2), 1),),
            kernels=(3,),
            expands=(2,),
            weight_bits=(8, 32),
            act_bits=(8,),
        )
    )
    rng = np.random.default_rng(0)
    seen = {str(tiny.sample(rng)) for _ in range(5000)}
    assert len(seen) == tiny.size()


def test_default_space_size_is_exact_and_large(space: SearchSpace) -> None:
    assert space.size() == _brute_force_size(space)
    assert space.size() > 10**15
    assert "subnets" in space.describe()


def test_string_round_trip_and_grammar(space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        cfg = space.sample(rng)
        name = str(cfg)
        assert SubnetConfig.parse(name) == cfg
        assert space.parse(name) == cfg
        assert SubnetConfig.from_json(cfg.to_json()) == cfg
        assert json.loads(cfg.to_json()) == {"subnet": name}
        assert all(ch.isalnum() or ch in "._" for ch in name), "names are used as file names"


def test_named_points(space: SearchSpace) -> None:
    big, small = space.largest(), space.smallest()
    assert str(big).startswith("s24w32a32_c32.ik5e4w32a32")
    assert small.stem_prec == Precision(4, 8)
    assert space.largest(Precision(8, 8)).layer_precisions() == [Precision(8, 8)] * len(big.layer_precisions())


@pytest.mark.parametrize(
    "bad, match",
    [
        ("", "expected a subnet string"),
        ("s16w8a8_hw8a8", "at least one stage"),
        ("x16w8a8_c32.ik3e4w8a8_hw8a8", "bad stem"),
        ("s16w8a8_c32_hw8a8", "bad stage"),
        ("s16w8a8_c32.zk3w8a8_hw8a8", "bad block"),
        ("s16w8a8_c32.ik3e4w8a8_h8", "bad head"),
    ],
)
def test_parse_rejects_malformed(bad: str, match: str) -> None:
    with pytest.raises(SpaceError, match=match):
        SubnetConfig.parse(bad)


def test_validate_reports_every_problem(space: SearchSpace) -> None:
    name = "s20w8a8_c32.ik7e4w8a8.ik3e9w6a8.ik3e2w8a8_c64.ik3e2w8a8_c128.ik3e2w8a8_hw8a8"
    with pytest.raises(SpaceError) as err:
        space.parse(name)
    msg = str(err.value)
    for part in ("stem width 20", "depth 3 not in (1, 2)", "kernel 7", "expand 9", "precision w6a8"):
        assert part in msg
    with pytest.raises(SpaceError, match="from_json|expected JSON"):
        SubnetConfig.from_json("not json")


def test_mutation_and_crossover_stay_valid_and_vary(space: SearchSpace) -> None:
    rng = np.random.default_rng(2)
    a, b = space.sample(rng), space.sample(rng)
    changed = 0
    for _ in range(300):
        m = space.validate(space.mutate(a, rng, prob=0.2))
        changed += m != a
        c = space.validate(space.crossover(a, b, rng))
        assert c.stem_width in (a.stem_width, b.stem_width)
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
    only = (Precision(8, 8),)
    for _ in range(50):
        assert set(space.sample(rng, only).layer_precisions()) == {Precision(8, 8)}


def test_space_config_validation_and_round_trip() -> None:
    with pytest.raises(SpaceError, match="kernels must be odd"):
        SpaceConfig(kernels=(2, 3))
    with pytest.raises(SpaceError, match="weight_bits"):
        SpaceConfig(weight_bits=(1, 8))
    with pytest.raises(SpaceError, match="stage stride"):
        StageSpec((8,), (1,), 3)
    c = SpaceConfig()
    assert SpaceConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c

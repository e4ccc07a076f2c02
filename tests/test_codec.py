from __future__ import annotations

import numpy as np
import pytest

from lifelong.codec import SubnetCodec
from lifelong.errors import SpaceError
from lifelong.latency_table import part_key
from lifelong.profile import subnet_keys, table_keys
from lifelong.space import BlockConfig, Precision, SearchSpace, SpaceConfig, StageConfig, StageSpec, SubnetConfig

SPACE = SearchSpace()
CODEC = SubnetCodec(SPACE)


def _cfgs(n: int = 400, seed: int = 0) -> list[SubnetConfig]:
    rng = np.random.default_rng(seed)
    cfgs = [SPACE.sample(rng) for _ in range(n)]
    cfgs += [SPACE.largest(p) for p in SPACE.precisions] + [SPACE.smallest(p) for p in SPACE.precisions]
    return cfgs + [SPACE.largest(kind="conv"), SPACE.smallest(kind="conv")]


def test_onehot_equals_space_encode_row_by_row() -> None:
    cfgs = _cfgs()
    batch = CODEC.encode(cfgs)
    assert batch.dtype == np.float32 and batch.shape == (len(cfgs), SPACE.encoding_length())
    assert np.array_equal(batch, np.stack([SPACE.encode(c) for c in cfgs]))


def test_codes_decode_back_and_are_equal_exactly_for_equal_subnets() -> None:
    cfgs = _cfgs()
    codes = CODEC.codes(cfgs)
    assert codes.shape == (len(cfgs), CODEC.length)
    for cfg, code in zip(cfgs, codes, strict=True):
        assert CODEC.decode(code) == cfg
    names = [str(c) for c in cfgs]
    rows = [c.tobytes() for c in codes]
    assert len(set(names)) == len(set(rows))
    assert CODEC.codes([]).shape == (0, CODEC.length)


def test_parts_follow_the_profile_rows_and_subnet_keys() -> None:
    assert [part_key(p) for p in CODEC.part_list] == table_keys(SPACE)
    cfgs = _cfgs(200)
    parts = CODEC.parts(CODEC.codes(cfgs))
    for cfg, row in zip(cfgs, parts, strict=True):
        assert [part_key(CODEC.part_list[i]) for i in row if i != CODEC.pad_part] == subnet_keys(SPACE, cfg)


def test_readers_are_the_next_layers_precision() -> None:
    cfgs = _cfgs(200)
    readers = CODEC.readers(CODEC.codes(cfgs))
    for cfg, row in zip(cfgs, readers, strict=True):
        blocks = [b.prec for st in cfg.stages for b in st.blocks]
        assert [CODEC.precisions[r] for r in row if r >= 0] == blocks + [cfg.head_prec]


def test_a_subnet_outside_the_space_is_rejected_by_name() -> None:
    good = SPACE.largest()
    bad_width = SubnetConfig(12, good.stem_prec, good.stages, good.head_prec)
    with pytest.raises(SpaceError, match="stem width 12 not in"):
        CODEC.codes([good, bad_width])
    odd_prec = BlockConfig("ir", 3, 2, Precision(6, 8))
    bad_block = SubnetConfig(16, good.stem_prec, (StageConfig(16, (odd_prec,)),) + good.stages[1:], good.head_prec)
    with pytest.raises(SpaceError, match="precision w6a8 not in"):
        CODEC.codes([bad_block])
    with pytest.raises(SpaceError, match="expected a SubnetConfig"):
        CODEC.codes(["s16w8a8"])  # type: ignore[list-item]
    with pytest.raises(SpaceError, match="has 25 entries"):
        CODEC.decode(np.zeros(3, np.int64))


def test_other_spaces_are_coded_too() -> None:
    space = SearchSpace(
        SpaceConfig(
            stem_widths=(8,),
            stages=(StageSpec((8, 16), (1, 3), 2),),
            kernels=(3,),
            expands=(4,),
            block_kinds=("conv",),
            weight_bits=(8,),
            act_bits=(8, 32),
        )
    )
    codec = SubnetCodec(space)
    rng = np.random.default_rng(1)
    cfgs = [space.sample(rng) for _ in range(50)]
    assert np.array_equal(codec.encode(cfgs), np.stack([space.encode(c) for c in cfgs]))
    assert [part_key(p) for p in codec.part_list] == table_keys(space)

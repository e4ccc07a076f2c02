from __future__ import annotations

import numpy as np
import pytest

from lifelong.device.latency_table import part_key
from lifelong.device.profile import subnet_keys, table_keys
from lifelong.errors import SpaceError
from lifelong.space.codec import MODES, SubnetCodec
from lifelong.space.config import (
    ConvConfig,
    HeadConfig,
    Precision,
    SearchSpace,
    SpaceConfig,
    StageConfig,
    StageSpec,
    SubnetConfig,
)

SPACE = SearchSpace()
CODEC = SubnetCodec(SPACE)
A8, F32 = Precision(8, 8), Precision(32, 32)

CORNERS = [
    "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8",  # the tutorial CNN
    "c16.k3w8a8.s_c32.k3w8a8.s_hg.ow8a8",  # all strided, no hidden layer
    "c64.k5w32a32.k5w8a8.s_c128.k5w8a8.k5w32a32.k3w8a8.s_c128.k3w8a8.k3w8a8.s_hf.d256w32a32.ow8a8",
    "c64.k5w8a8.k5w8a8.p_c128.k5w8a8.k5w8a8.k5w8a8.p_c128.k5w8a8.k5w8a8.p_hf.d256w8a8.ow8a8",
    "c16.k3w32a32.p_c32.k5w8a8.k3w32a32.k3w32a32.p_c64.k3w8a8.s_hg.d64w8a8.ow32a32",
    "c48.k3w8a8.k3w32a32.s_c96.k3w8a8.p_hg.d128w32a32.ow32a32",
]


def _cfgs(n: int = 400, seed: int = 0) -> list[SubnetConfig]:
    rng = np.random.default_rng(seed)
    cfgs = [SPACE.sample(rng) for _ in range(n)]
    cfgs += [SPACE.largest(p) for p in SPACE.precisions] + [SPACE.smallest(p) for p in SPACE.precisions]
    return cfgs + [SPACE.parse(name) for name in CORNERS]


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
    assert len({(n, r) for n, r in zip(names, rows, strict=True)}) == len(set(names))
    assert CODEC.codes([]).shape == (0, CODEC.length)


def test_what_a_subnet_lacks_is_coded_as_minus_one() -> None:
    two = SPACE.parse("c16.k3w8a8.s_c32.k3w8a8.s_hg.ow8a8")
    code = CODEC.codes([two])[0]
    assert code[3] == -1, "no hidden layer, no hidden precision"
    third = CODEC._stage_at[2]
    assert (code[third:] == -1).all(), "the absent third stage"
    assert (code[CODEC._stage_at[1] + 5 : third] == -1).all(), "the empty convolution slots of stage 1"


def test_parts_follow_the_profile_rows_and_subnet_keys() -> None:
    assert [part_key(p) for p in CODEC.part_list] == table_keys(SPACE)
    cfgs = _cfgs(200)
    parts = CODEC.parts(CODEC.codes(cfgs))
    assert parts.shape == (len(cfgs), len(CODEC.slots) + 1)
    for cfg, row in zip(cfgs, parts, strict=True):
        n_convs = sum(st.depth for st in cfg.stages)
        assert (row != CODEC.pad_part).sum() == n_convs + 1
        assert CODEC.part_list[row[-1]].kind == "head"
        assert [part_key(CODEC.part_list[i]) for i in row if i != CODEC.pad_part] == subnet_keys(SPACE, cfg)


def test_every_part_of_the_space_occurs_and_modes_follow_the_downsampling() -> None:
    rng = np.random.default_rng(5)
    seen = set(CODEC.parts(CODEC.codes([SPACE.sample(rng) for _ in range(20000)])).ravel())
    assert seen - {CODEC.pad_part} == set(range(len(CODEC.part_list))), "a part no subnet holds is profiled for nothing"
    tutorial = CODEC.parts(CODEC.codes([SPACE.parse(CORNERS[0])]))[0]
    conv0, conv1, head = (CODEC.part_list[i] for i in tutorial if i != CODEC.pad_part)
    assert (conv0.mode, conv0.side, conv0.cin, conv0.cout) == ("pooled", 28, 1, 32)
    assert (conv1.mode, conv1.side, conv1.cin, conv1.cout) == ("pooled", 14, 32, 64)
    assert (head.pool, head.stages, head.cin, head.side, head.hidden) == ("flat", 2, 64, 7, 128)
    strided = SPACE.parse("c48.k3w8a8.k3w32a32.s_c96.k3w8a8.p_hg.d128w32a32.ow32a32")
    a, b, c, h = (CODEC.part_list[i] for i in CODEC.parts(CODEC.codes([strided]))[0] if i != CODEC.pad_part)
    assert (a.mode, a.side, a.first) == ("strided", 28, True)
    assert (b.mode, b.side, b.first, b.prec) == ("plain", 14, False, F32), "later convolutions run at the half"
    assert (c.mode, c.side, c.cin) == ("pooled", 14, 48)
    assert (h.prec, h.out_prec) == (F32, F32) and {p.mode for p in CODEC.part_list if p.kind == "conv"} == set(MODES)


def test_readers_are_the_next_layers_precision() -> None:
    cfgs = _cfgs(200)
    readers = CODEC.readers(CODEC.codes(cfgs))
    assert readers.shape == (len(cfgs), len(CODEC.slots) + 1) and (readers[:, -1] == -1).all()
    for cfg, row in zip(cfgs, readers, strict=True):
        convs = [c.prec for st in cfg.stages for c in st.convs]
        first_fc = cfg.head.hidden_prec if cfg.head.hidden else cfg.head.out_prec
        assert [CODEC.precisions[r] for r in row if r >= 0] == convs[1:] + [first_fc]


def test_a_subnet_outside_the_space_is_rejected_by_name() -> None:
    good = SPACE.parse(CORNERS[0])
    wide = SubnetConfig((StageConfig(12, good.stages[0].convs, "pool"), good.stages[1]), good.head)
    with pytest.raises(SpaceError, match="stage 0: width 12 not in"):
        CODEC.codes([good, wide])
    odd = SubnetConfig((StageConfig(32, (ConvConfig(3, Precision(4, 8)),), "pool"), good.stages[1]), good.head)
    with pytest.raises(SpaceError, match="precision w4a8 not in"):
        CODEC.codes([odd])
    stray = SubnetConfig(good.stages, HeadConfig("flat", 0, A8, A8))
    with pytest.raises(SpaceError, match="no hidden layer, so no hidden precision"):
        CODEC.codes([stray])
    deep = SubnetConfig((StageConfig(32, (ConvConfig(3, A8),) * 3, "pool"), good.stages[1]), good.head)
    with pytest.raises(SpaceError, match="stage 0: depth 3 not in"):
        CODEC.codes([deep])
    one = SubnetConfig(good.stages[:1], good.head)
    with pytest.raises(SpaceError, match="1 stages, the space has 2 to 3"):
        CODEC.codes([one])
    with pytest.raises(SpaceError, match="expected a SubnetConfig"):
        CODEC.codes(["c32.k3w8a8.p"])  # type: ignore[list-item]
    with pytest.raises(SpaceError, match=f"has {CODEC.length} entries"):
        CODEC.decode(np.zeros(3, np.int64))
    code = CODEC.codes([good])[0]
    code[CODEC._stage_at[0] + 3] = -1  # the first convolution's kernel
    with pytest.raises(SpaceError, match="index outside the space's choices"):
        CODEC.decode(code)


def test_other_spaces_are_coded_too() -> None:
    space = SearchSpace(
        SpaceConfig(
            stages=(StageSpec((8, 16), (1, 3)), StageSpec((16,), (2,))),
            min_stages=1,
            kernels=(3,),
            downs=("pool",),
            pools=("gap",),
            hiddens=(0, 32),
            precisions=(A8,),
        )
    )
    codec = SubnetCodec(space)
    rng = np.random.default_rng(1)
    cfgs = [space.sample(rng) for _ in range(100)]
    codes = codec.codes(cfgs)
    assert np.array_equal(codec.onehot(codes), np.stack([space.encode(c) for c in cfgs]))
    assert all(codec.decode(code) == cfg for code, cfg in zip(codes, cfgs, strict=True))
    assert [part_key(p) for p in codec.part_list] == table_keys(space)
    assert {p.mode for p in codec.part_list if p.kind == "conv"} == {"plain", "pooled"}
    parts = codec.parts(codes)
    for cfg, row in zip(cfgs, parts, strict=True):
        assert [part_key(codec.part_list[i]) for i in row if i != codec.pad_part] == subnet_keys(space, cfg)

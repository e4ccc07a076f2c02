from __future__ import annotations

import numpy as np
import pytest
from search_helpers import CODEC, COSTS, SPACE, samples, structured_profile

from lifelong.cost import activation_trace, peak_activation_bytes, subnet_cost
from lifelong.latency_table import CostTable, LatencyTable
from lifelong.profile import ProfileError, subnet_keys
from lifelong.space import BlockConfig, Precision, SearchSpace, SpaceConfig, StageConfig, StageSpec, SubnetConfig

A8, F32 = Precision(8, 8), Precision(32, 32)


def _cfgs() -> list[SubnetConfig]:
    extremes = [SPACE.largest(p) for p in SPACE.precisions] + [SPACE.smallest(p) for p in SPACE.precisions]
    return samples(1500, seed=3) + extremes


@pytest.mark.parametrize("corrected", [True, False])
def test_latency_table_equals_device_profile_predict_exactly(corrected: bool) -> None:
    profile = structured_profile(correction=corrected)
    table = LatencyTable(profile, SPACE, CODEC)
    cfgs = _cfgs()
    for batch in (1, 32):
        want = np.array([profile.predict(SPACE, c, batch) for c in cfgs])
        got = table.predict(cfgs, batch)
        assert np.array_equal(got, want), f"batch {batch}: max diff {np.abs(got - want).max()}"
        assert np.array_equal(table.table_sums(cfgs, batch), [profile.table_sum(SPACE, c, batch) for c in cfgs])
    both = table.predict_all(cfgs[:5])
    assert set(both) == {1, 32} and both[1][0] == profile.predict(SPACE, cfgs[0], 1)


def test_latency_table_names_a_missing_row_and_an_unprofiled_batch() -> None:
    profile = structured_profile()
    key = next(k for k in profile.entries if k.startswith("b2.first"))
    del profile.entries[key]
    table = LatencyTable(profile, SPACE)
    assert table.coverage < 1.0
    cfgs = [c for c in samples(3000, seed=4) if key in subnet_keys(SPACE, c)]
    assert cfgs, "the sample should hit the removed row"
    with pytest.raises(ProfileError, match="no row .*b2.first.*re-run `lifelong profile`"):
        table.predict(cfgs[:1], 1)
    with pytest.raises(ProfileError, match=r"batch 8 was not profiled \(profiled: \[1, 32\]\)"):
        table.predict(samples(2, seed=0), 8)


def test_cost_table_equals_subnet_cost_and_peak_activation_bytes() -> None:
    cfgs = _cfgs()
    codes = CODEC.codes(cfgs)
    cost = [subnet_cost(SPACE, c) for c in cfgs]
    assert np.array_equal(COSTS.params(codes), [c.params for c in cost])
    assert np.array_equal(COSTS.macs(codes), [c.macs for c in cost])
    assert np.array_equal(COSTS.weight_bytes(codes), [c.weight_bytes for c in cost])
    assert np.array_equal(COSTS.bitops(codes), [c.bitops for c in cost])
    assert np.array_equal(COSTS.peak_activation_bytes(codes), [peak_activation_bytes(SPACE, c) for c in cfgs])
    assert np.array_equal(COSTS.weight_bytes(cfgs[:10]), COSTS.weight_bytes(codes[:10]))  # subnets or codes


# A space small enough to count by hand: 4x4 input, stem stride 2 -> 2x2 maps, one stage.
TINY = SearchSpace(
    SpaceConfig(
        image_size=4, num_classes=2, stem_widths=(4,), stages=(StageSpec((4, 6), (1, 2), 1),),
        kernels=(3,), expands=(2,), weight_bits=(8, 32), act_bits=(8, 32), head_width=8,
    )
)  # fmt: skip


def test_peak_activation_bytes_by_hand_residual_blocks() -> None:
    ir = lambda p: BlockConfig("ir", 3, 2, p)  # noqa: E731
    cfg = SubnetConfig(4, A8, (StageConfig(4, (ir(A8), ir(F32))),), F32)
    trace = dict(activation_trace(TINY, cfg))
    # stem: float input 1x4x4 (64 B) + its output 4x2x2 read by block 0 at 8 bits (16 B)
    assert trace["stem"] == 64 + 16
    # block 0 (8-bit, residual 4->4, hidden 8): x 16, h1 32, h2 32, projection 16, output read
    # by the float block 1: 4x2x2x4 = 64
    assert trace["stage0.block0.expand"] == 16 + 32
    assert trace["stage0.block0.dw"] == 16 + 32 + 32
    assert trace["stage0.block0.project"] == 16 + 32 + 16
    assert trace["stage0.block0.add"] == 16 + 16 + 64
    # block 1 (float): x 64, h1 128, h2 128, projection 64, output 64
    assert trace["stage0.block1.dw"] == 64 + 128 + 128
    assert trace["stage0.block1.add"] == 64 + 64 + 64
    # head (float): input 64 + features 8x2x2x4 = 128; pooling 128 + 32; classifier 32 + 2 logits x 4
    assert trace["head"] == 64 + 128 and trace["pool"] == 128 + 32 and trace["classifier"] == 32 + 8
    assert peak_activation_bytes(TINY, cfg) == 320
    assert CostTable(TINY).peak_activation_bytes([cfg])[0] == 320


def test_peak_activation_bytes_by_hand_plain_and_widening_blocks() -> None:
    conv = BlockConfig("conv", 3, None, A8)
    widen = BlockConfig("ir", 3, 2, A8)
    cfg = SubnetConfig(4, A8, (StageConfig(6, (widen, conv)),), A8)
    trace = dict(activation_trace(TINY, cfg))
    # block 0 widens 4 -> 6: no skip, so the input dies after the expand conv
    assert trace["stage0.block0.expand"] == 16 + 32
    assert trace["stage0.block0.dw"] == 32 + 32
    assert trace["stage0.block0.project"] == 32 + 24
    assert "stage0.block0.add" not in trace
    # a plain conv block: input and output only; 6 -> 6 at 8 bits
    assert trace["stage0.block1"] == 24 + 24
    # all 8-bit: head input 24 + features 32; pooling 32 + 8; classifier 8 + 8
    assert trace["head"] == 24 + 32 and trace["classifier"] == 8 + 8
    assert peak_activation_bytes(TINY, cfg) == 80  # the float graph input and the stem output
    assert trace["stem"] == 64 + 16


def test_quantizing_activations_lowers_the_peak() -> None:
    for cfg in samples(50, seed=5):
        assert peak_activation_bytes(SPACE, cfg.with_precision(A8)) < peak_activation_bytes(
            SPACE, cfg.with_precision(F32)
        )

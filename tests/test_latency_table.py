from __future__ import annotations

import numpy as np
import pytest
from search_helpers import CODEC, COSTS, SPACE, samples, structured_profile

from lifelong.device.latency_table import CostTable, LatencyTable
from lifelong.device.profile import CORRECTION_TERMS, ProfileError, subnet_keys
from lifelong.space.codec import SubnetCodec
from lifelong.space.config import Precision, SearchSpace, SpaceConfig, StageSpec, SubnetConfig
from lifelong.space.cost import activation_trace, peak_activation_bytes, subnet_cost

A8, F32 = Precision(8, 8), Precision(32, 32)


def _cfgs(n: int = 200) -> list[SubnetConfig]:
    extremes = [SPACE.largest(p) for p in SPACE.precisions] + [SPACE.smallest(p) for p in SPACE.precisions]
    return samples(n, seed=3) + extremes


@pytest.mark.parametrize("corrected", [True, False, "with work terms"])
def test_latency_table_equals_device_profile_predict_exactly(corrected: bool | str) -> None:
    profile = structured_profile(correction=bool(corrected))
    if corrected == "with work terms":  # every term of the model weighs
        rng = np.random.default_rng(1)
        for b, c in profile.correction.items():
            profile.correction[b] = [*c, *rng.uniform(-0.01, 0.02, len(CORRECTION_TERMS) - len(c))]
    table = LatencyTable(profile, SPACE, CODEC)
    assert table.coverage == 1.0
    cfgs = _cfgs(400)
    for batch in (1, 32):
        want = np.array([profile.predict(SPACE, c, batch) for c in cfgs])
        got = table.predict(cfgs, batch)
        assert np.array_equal(got, want), f"batch {batch}: max diff {np.abs(got - want).max()}"
        assert np.array_equal(table.table_sums(cfgs, batch), [profile.table_sum(SPACE, c, batch) for c in cfgs])
    both = table.predict_all(cfgs[:5])
    assert set(both) == {1, 32} and both[1][0] == profile.predict(SPACE, cfgs[0], 1)


def test_borders_count_the_heads_two_layers_apart() -> None:
    profile = structured_profile()
    table = LatencyTable(profile, SPACE, CODEC)
    # integer convolutions, a float hidden layer, an integer output layer: two borders in one head part
    cfg = SPACE.parse("c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w32a32.ow8a8")
    assert profile.terms(SPACE, cfg, 1)[3] == 2.0
    assert table._borders(CODEC.codes([cfg]))[0] == 2.0
    assert table.predict([cfg], 1)[0] == profile.predict(SPACE, cfg, 1)


def test_latency_table_names_a_missing_row_and_an_unprofiled_batch() -> None:
    profile = structured_profile()
    key = next(k for k in profile.entries if k.startswith("s2.first"))
    del profile.entries[key]
    table = LatencyTable(profile, SPACE)
    assert table.coverage < 1.0
    cfgs = [c for c in samples(3000, seed=4) if key in subnet_keys(SPACE, c)]
    assert cfgs, "the sample should hit the removed row"
    with pytest.raises(ProfileError, match="no row .*s2.first.*re-run `lifelong profile`"):
        table.predict(cfgs[:1], 1)
    with pytest.raises(ProfileError, match=r"batch 8 was not profiled \(profiled: \[1, 32\]\)"):
        table.predict(samples(2, seed=0), 8)


def test_cost_table_equals_subnet_cost_and_peak_activation_bytes() -> None:
    cfgs = _cfgs(200)
    codes = CODEC.codes(cfgs)
    cost = [subnet_cost(SPACE, c) for c in cfgs]
    assert np.array_equal(COSTS.params(codes), [c.params for c in cost])
    assert np.array_equal(COSTS.macs(codes), [c.macs for c in cost])
    assert np.array_equal(COSTS.weight_bytes(codes), [c.weight_bytes for c in cost])
    assert np.array_equal(COSTS.bitops(codes), [c.bitops for c in cost])
    assert np.array_equal(COSTS.peak_activation_bytes(codes), [peak_activation_bytes(SPACE, c) for c in cfgs])
    assert np.array_equal(COSTS.weight_bytes(cfgs[:10]), COSTS.weight_bytes(codes[:10]))  # subnets or codes


# A space small enough to count by hand: a 4x4 image, stage sides 4 -> 2 -> 1.
TINY = SearchSpace(
    SpaceConfig(
        image_size=4, num_classes=2, stages=(StageSpec((4, 6), (1, 2)), StageSpec((8,), (1, 2))), min_stages=1,
        kernels=(3,), hiddens=(0, 5),
    )
)  # fmt: skip


def test_cost_table_equals_the_cost_model_on_a_tiny_space() -> None:
    rng = np.random.default_rng(0)
    cfgs = [TINY.sample(rng) for _ in range(300)]
    table = CostTable(TINY, SubnetCodec(TINY))
    assert np.array_equal(table.macs(cfgs), [subnet_cost(TINY, c).macs for c in cfgs])
    assert np.array_equal(table.peak_activation_bytes(cfgs), [peak_activation_bytes(TINY, c) for c in cfgs])


def test_peak_activation_bytes_by_hand_a_max_pool_holds_the_peak() -> None:
    cfg = TINY.parse("c6.k3w32a32.p_c8.k3w32a32.s_hg.d5w8a8.ow32a32")
    trace = dict(activation_trace(TINY, cfg))
    # conv 1->6 at 4x4 from the float image (64 B) into a float 6x4x4 map (384 B); the pool keeps
    # that map alive beside its float 6x2x2 output (96 B)
    assert trace["stage0.conv0"] == 64 + 384 and trace["stage0.pool"] == 384 + 96
    # a strided conv 6x2x2 -> 8x1x1, its output read by the 8-bit hidden layer through the global pool
    assert trace["stage1.conv0"] == 96 + 8 and trace["pool"] == 8 + 8
    # hidden 8 -> 5 read by the float output layer (20 B); logits 2 x 4 B
    assert trace["hidden"] == 8 + 20 and trace["out"] == 20 + 8
    assert peak_activation_bytes(TINY, cfg) == 480
    assert CostTable(TINY).peak_activation_bytes([cfg])[0] == 480


def test_peak_activation_bytes_by_hand_a_later_conv_after_a_stride_runs_at_the_half() -> None:
    cfg = TINY.parse("c6.k3w8a8.s_c8.k3w8a8.k3w8a8.s_hf.ow8a8")
    trace = dict(activation_trace(TINY, cfg))
    assert trace["stage0.conv0"] == 64 + 6 * 2 * 2  # float image, 8-bit 6x2x2 output
    assert trace["stage1.conv0"] == 24 + 8 and trace["stage1.conv1"] == 8 + 8  # both at 1x1
    assert trace["out"] == 8 + 8 and "pool" not in trace  # a flatten is no op
    assert peak_activation_bytes(TINY, cfg) == 88 == CostTable(TINY).peak_activation_bytes([cfg])[0]
    assert subnet_cost(TINY, cfg).macs == 6 * 9 * 4 + 8 * 6 * 9 + 8 * 8 * 9 + 8 * 2


def test_quantizing_activations_lowers_the_peak() -> None:
    for cfg in samples(50, seed=5):
        assert peak_activation_bytes(SPACE, cfg.with_precision(A8)) < peak_activation_bytes(
            SPACE, cfg.with_precision(F32)
        )

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lifelong.device.latency import LatencyCheck, calibrate, fit_correction
from lifelong.device.profile import (
    CORRECTION_TERMS,
    DeviceProfile,
    ProfileError,
    device_fingerprint,
    profile_device,
    subnet_keys,
    table_keys,
)
from lifelong.errors import FormatVersionError
from lifelong.space.config import Precision, SearchSpace
from service.cli.main import cli

SPACE = SearchSpace()


@functools.cache
def _keys() -> tuple[str, ...]:
    return tuple(table_keys(SPACE))


@pytest.fixture(scope="module")
def small_profile() -> DeviceProfile:
    """The first rows of a real profile (timed with onnxruntime), with batches 1 and 4."""
    return profile_device(SPACE, threads=1, batches=(1, 4), progress=False, only=12)


def _fake_profile(value: float = 0.01) -> DeviceProfile:
    """A profile of every row with made-up timings, for the arithmetic of the table."""
    entries = {k: [value, 4 * value] for k in _keys()}
    return DeviceProfile(device_fingerprint(2), (1, 4), entries, [0.05, 0.1], seconds=1.0, reference_ms=[1.0, 2.0])


def test_table_has_a_row_for_every_part_of_every_subnet() -> None:
    keys = list(_keys())
    assert len(keys) == len(set(keys)), "duplicate rows in the profile"
    rows = set(keys)
    rng = np.random.default_rng(0)
    cfgs = [SPACE.sample(rng) for _ in range(300)]
    cfgs += [SPACE.largest(p) for p in SPACE.precisions] + [SPACE.smallest(p) for p in SPACE.precisions]
    for cfg in cfgs:
        missing = [k for k in subnet_keys(SPACE, cfg) if k not in rows]
        assert not missing, f"{cfg}: no profile row for {missing}"


def test_small_profile_is_measured_and_round_trips(small_profile: DeviceProfile, tmp_path: Path) -> None:
    assert len(small_profile.entries) == 12
    assert list(small_profile.entries) == list(_keys()[:12])
    for key, row in small_profile.entries.items():
        assert len(row) == 2 and all(ms >= 0 for ms in row), (key, row)
    # a batch of 4 costs more than a batch of 1 for most rows (not all: noise on tiny rows)
    assert sum(r[1] > r[0] for r in small_profile.entries.values()) >= 8
    assert all(ms > 0 for ms in small_profile.reference_ms)
    assert small_profile.fingerprint["threads"] == 1 and small_profile.fingerprint["cpu"]
    path = small_profile.save(tmp_path / "p" / "device.json")
    loaded = DeviceProfile.load(path)
    assert loaded.entries == small_profile.entries
    assert loaded.batches == (1, 4) and loaded.fingerprint == small_profile.fingerprint


def test_load_rejects_missing_corrupt_foreign_and_future_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no device profile at .*run `lifelong profile`"):
        DeviceProfile.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "lifelong-device-profile", "entries": {')
    with pytest.raises(ProfileError, match="bad.json is not a readable device profile"):
        DeviceProfile.load(bad)
    bad.write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(ProfileError, match="expected kind 'lifelong-device-profile'"):
        DeviceProfile.load(bad)
    d = _fake_profile().to_dict()
    d["format_version"] = 99
    bad.write_text(json.dumps(d))
    with pytest.raises(FormatVersionError, match="99"):
        DeviceProfile.load(bad)
    d = _fake_profile().to_dict()
    d["format_version"] = 2  # a profile of search space v1
    bad.write_text(json.dumps(d))
    with pytest.raises(
        FormatVersionError, match="format version 2; .*reads version 3. .*search space v1; run `lifelong"
    ):
        DeviceProfile.load(bad)
    d = _fake_profile().to_dict()
    del d["overhead_ms"]
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="missing or malformed field"):
        DeviceProfile.load(bad)
    d = _fake_profile().to_dict()
    d["correction"] = {"1": [0.1, 1.0]}  # an intercept and one slope: not this model's four terms
    bad.write_text(json.dumps(d))
    with pytest.raises(
        ProfileError, match="should have 11 coefficients .*or the first 4; run `lifelong profile` again"
    ):
        DeviceProfile.load(bad)


def test_stale_fingerprint_names_what_changed() -> None:
    prof = _fake_profile()
    assert prof.stale_reasons(device_fingerprint(2)) == []
    reasons = prof.stale_reasons(device_fingerprint(1))
    assert reasons == ["threads: profiled 2, now 1"]
    other = dict(device_fingerprint(2), cpu="Some Other CPU", onnxruntime="0.1")
    assert {r.split(":")[0] for r in prof.stale_reasons(other)} == {"cpu", "onnxruntime"}


def test_table_sum_and_prediction() -> None:
    prof = _fake_profile(0.01)
    cfg = SPACE.sample(np.random.default_rng(3))
    n = len(subnet_keys(SPACE, cfg))
    assert prof.table_sum(SPACE, cfg, 1) == pytest.approx(0.01 * n)
    assert prof.table_sum(SPACE, cfg, 4) == pytest.approx(0.04 * n)
    assert prof.predict(SPACE, cfg, 1) == pytest.approx(0.05 + 0.01 * n)  # uncorrected: overhead + sum
    prof.correction["1"] = [0.2, 1.5, 1.5, 0.0]
    assert prof.predict(SPACE, cfg, 1) == pytest.approx(0.2 + 1.5 * 0.01 * n)
    # integer-kernel rows, float rows and the borders between them each get their coefficient
    cfg = SPACE.parse("c16.k3w8a8.p_c32.k3w32a32.p_c64.k3w8a8.s_hg.ow8a8")
    assert prof.terms(SPACE, cfg, 1)[:4] == pytest.approx((1.0, 0.03, 0.01, 2.0))
    prof.correction["1"] = [0.2, 0.5, 2.0, 0.1]
    assert prof.predict(SPACE, cfg, 1) == pytest.approx(0.2 + 0.5 * 0.03 + 2.0 * 0.01 + 0.1 * 2)
    # the parts' work, by hand: 16 ch 3x3 on 28x28 from 1 (integer), pooled; 32 ch from 16 on 14x14
    # (float), pooled; 64 ch from 32 on 7x7 strided to 4x4 (integer); a global pool of 64 x 4 x 4
    # into 10 outputs (integer)
    work = dict(zip(CORRECTION_TERMS[4:], prof.terms(SPACE, cfg, 1)[4:], strict=True))
    i_macs = 28 * 28 * 1 * 16 * 9 + 4 * 4 * 32 * 64 * 9 + 64 * 10
    assert work["integer_mmacs"] == pytest.approx(i_macs / 1e6)
    assert work["float_mmacs"] == pytest.approx(14 * 14 * 16 * 32 * 9 / 1e6)
    assert work["integer_outputs_10k"] == pytest.approx((28 * 28 * 16 + 4 * 4 * 64 + 10) / 1e4)
    assert work["integer_layers"] == 3 and work["float_layers"] == 1
    assert work["pooled_10k"] == pytest.approx((28 * 28 * 16 + 14 * 14 * 32 + 64 * 4 * 4) / 1e4)
    prof.correction["1"] = [0.2, 0.5, 2.0, 0.1, 0.01, 0, 0, 0, 0, 0, 0]
    assert prof.predict(SPACE, cfg, 1) == pytest.approx(0.2 + 0.5 * 0.03 + 2.0 * 0.01 + 0.1 * 2 + 0.01 * i_macs / 1e6)
    # the head is one row, of its first layer's family; its two layers count apart for the borders
    cfg = SPACE.parse("c16.k3w8a8.p_c32.k3w8a8.p_hf.d64w32a32.ow8a8")
    assert subnet_keys(SPACE, cfg)[-1] == "head:flat2:32:d64w32a32:ow8a8"
    assert prof.terms(SPACE, cfg, 1)[:4] == pytest.approx((1.0, 0.02, 0.01, 2.0))
    with pytest.raises(ProfileError, match=r"batch 32 was not profiled \(profiled: \[1, 4\]\)"):
        prof.predict(SPACE, cfg, 32)
    del prof.entries[subnet_keys(SPACE, cfg)[0]]
    with pytest.raises(ProfileError, match="has no row .*re-run `lifelong profile`"):
        prof.table_sum(SPACE, cfg, 1)


def test_int8_slower_lists_exactly_the_rows_where_int8_loses() -> None:
    prof = _fake_profile(0.01)
    w8 = [k for k in prof.entries if k.endswith(":w8a8")]
    slow, fast = w8[0], w8[1]
    prof.entries[slow] = [0.02, 0.01]  # slower than fp32 at batch 1 only
    prof.entries[fast] = [0.005, 0.05]  # faster at batch 1, slower at batch 4
    at1 = {k for k, _, _ in prof.int8_slower(1)}
    at4 = {k for k, _, _ in prof.int8_slower(4)}
    assert at1 == {slow[: -len(":w8a8")]}
    assert at4 == {fast[: -len(":w8a8")]}
    (key, fp, q8), *_ = prof.int8_slower(1)
    assert (fp, q8) == (0.01, 0.02)
    head = "head:flat2:64:d128w8a8:ow8a8"  # both layers at W8A8: compared with both at FP32
    prof.entries[head] = [0.03, 0.01]
    assert ("head:flat2:64:d128:o", 0.01, 0.03) in prof.int8_slower(1)
    prof.entries["head:flat2:64:d128w32a32:ow8a8"] = [0.5, 0.5]  # a mixed head has no FP32 twin
    assert not any(k.startswith("head:flat2:64:d128w32a32") for k, _, _ in prof.int8_slower(1))


def test_fit_correction_recovers_the_terms_and_weighs_relative_error() -> None:
    rng = np.random.default_rng(0)
    terms = np.column_stack([np.ones(12), rng.uniform(0, 3, 12), rng.uniform(0, 3, 12), rng.integers(0, 4, 12)])
    truth = np.array([0.3, 0.7, 1.2, 0.05])
    assert fit_correction(terms, terms @ truth) == pytest.approx(truth.tolist())
    with pytest.raises(ValueError, match=r"expected terms of shape \(N, 11\) \(or \(N, 4\)"):
        fit_correction(terms[:, :2], terms @ truth)
    check = LatencyCheck(1, ["a", "b"], [1.0, 2.0], [1.05, 2.5])
    assert check.within_10pct == 0.5
    assert check.to_dict()["max_abs_rel_error"] == pytest.approx(0.25)


def test_calibrate_fits_on_some_subnets_and_checks_on_others(small_profile: DeviceProfile) -> None:
    prof = _fake_profile(0.01)
    prof.fingerprint = dict(prof.fingerprint, threads=1)
    checks = calibrate(prof, SPACE, fit_subnets=3, check_subnets=2, progress=False)
    assert [c.batch for c in checks] == [1, 4]
    # three fit subnets: the four row terms only (the work terms need MIN_WORK_FIT)
    assert set(prof.correction) == {"1", "4"} and all(len(c) == 4 for c in prof.correction.values())
    assert len(prof.coefficients(1)) == len(CORRECTION_TERMS) and not any(prof.coefficients(1)[4:])
    for c in checks:
        assert len(c.subnets) == 2 and all(ms > 0 for ms in c.measured_ms)
        assert np.all(np.isfinite(c.rel_errors))


def test_profile_check_command_reports_stale_profiles(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "device.json"
    _fake_profile().save(path)
    ok = runner.invoke(cli, ["profile", "--check", "--threads", "2", "--out", str(path)])
    assert ok.exit_code == 0 and "fits this device" in ok.output, ok.output
    stale = runner.invoke(cli, ["profile", "--check", "--threads", "1", "--out", str(path), "--json"])
    assert stale.exit_code == 1, stale.output
    assert json.loads(stale.output)["reasons"] == ["threads: profiled 2, now 1"]
    missing = runner.invoke(cli, ["profile", "--check", "--out", str(tmp_path / "none.json")])
    assert missing.exit_code != 0 and "no device profile" in missing.output


def test_w8a8_rows_exist_for_every_fp32_row() -> None:
    keys = set(_keys())
    fp = [k for k in keys if k.endswith(f":{Precision(32, 32)}")]
    assert fp and all(k[: -len("w32a32")] + "w8a8" in keys for k in fp)


def test_keys_name_the_part_in_place() -> None:
    cfg = SPACE.parse("c32.k3w8a8.p_c64.k5w32a32.k3w8a8.s_hg.ow8a8")
    assert subnet_keys(SPACE, cfg) == [
        "s0.first:1>32@28:k3:pooled:w8a8",
        "s1.first:32>64@14:k5:strided:w32a32",
        "s1.rest:64>64@7:k3:plain:w8a8",
        "head:gap2:64:ow8a8",
    ]


def test_every_kind_of_w8a8_row_is_timed_as_integer_kernels() -> None:
    """An isolated W8A8 row must fuse as it does inside a whole subnet, or the table overstates it.

    A convolution ends in a ReLU; inside a subnet the reader's quantizer folds that ReLU (uint8
    from 0), before the max-pool where there is one, and the convolution runs as QLinearConv.
    A head's fully connected layers run as integer Gemms behind the flatten or the requantized
    global pool.
    """
    from lifelong.deploy.export import kernel_counts
    from lifelong.device.profile import _entries

    def kind(key: str) -> str:
        if key.startswith("head:"):
            pool, _, rest = key.split(":", 3)[1:]
            return f"head:{pool[:-1]}:{'hidden' if rest.startswith('d') else 'direct'}"
        position, *_, mode, _ = key.split(":")
        return f"{position.split('.')[1]}:{mode}"

    wanted = {f"{p}:{m}" for p in ("first", "rest") for m in ("plain", "pooled")} | {"first:strided"}
    wanted |= {f"head:{p}:{h}" for p in ("flat", "gap") for h in ("hidden", "direct")}
    seen: dict[str, str] = {}
    for e in _entries(SPACE):
        if not e.key.endswith("w8a8") or "w32a32" in e.key or kind(e.key) in seen:
            continue
        counts = kernel_counts(e.build())
        if e.key.startswith("head:"):
            fcs = 2 if kind(e.key).endswith("hidden") else 1
            assert counts["float_gemms"] == 0 and counts["integer_gemms"] == fcs, f"{e.key}: {counts}"
        else:
            assert counts["float_convs"] == 0 and counts["integer_convs"] == 1, f"{e.key}: {counts}"
        seen[kind(e.key)] = e.key
    assert set(seen) == wanted, f"no row found for {wanted - set(seen)}"


def test_part_rows_and_random_nets_run() -> None:
    """Each kind of row and a few whole random subnets build and run in onnxruntime."""
    import onnxruntime as ort

    from lifelong.deploy.onnx_graph import build_model
    from lifelong.device.profile import _entries, random_net

    done: set[tuple[str, str]] = set()
    for e in _entries(SPACE):
        tag = (e.key.split(":")[0] if e.key.startswith("s") else e.key.split(":")[1], e.key.split(":")[-1])
        if tag in done:
            continue
        done.add(tag)
        sess = ort.InferenceSession(e.build().SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": np.random.default_rng(0).random((2, *e.shape), dtype=np.float32)})
        assert y.shape[0] == 2 and np.isfinite(y).all(), e.key
    rng = np.random.default_rng(2)
    for cfg in [SPACE.sample(rng) for _ in range(4)] + [SPACE.largest(), SPACE.smallest()]:
        net = random_net(SPACE, cfg)
        assert len(net.convs) == sum(st.depth for st in cfg.stages) and len(net.fcs) == 1 + bool(cfg.head.hidden)
        sess = ort.InferenceSession(build_model(net).SerializeToString(), providers=["CPUExecutionProvider"])
        logits, _ = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, 28, 28), np.float32)})
        assert logits.shape == (1, 10), str(cfg)


def test_two_models_timed_alternately_keep_their_order_of_speed() -> None:
    from lifelong.deploy.onnx_graph import build_model
    from lifelong.device.profile import random_net
    from lifelong.device.timing import measure_pair

    small = build_model(random_net(SPACE, SPACE.smallest(Precision(8, 8)))).SerializeToString()
    big = build_model(random_net(SPACE, SPACE.largest(Precision(32, 32)))).SerializeToString()
    a, b = measure_pair(small, big, batches=(1, 4), threads=1)
    assert set(a) == set(b) == {1, 4} and all(v > 0 for v in (*a.values(), *b.values()))
    assert b[1] > a[1] and b[4] > a[4], (a, b)

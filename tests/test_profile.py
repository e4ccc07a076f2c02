from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lifelong.errors import FormatVersionError
from lifelong.latency import LatencyCheck, calibrate, fit_correction
from lifelong.profile import (
    DeviceProfile,
    ProfileError,
    device_fingerprint,
    profile_device,
    subnet_keys,
    table_keys,
)
from lifelong.space import Precision, SearchSpace
from service.cli import cli

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
    del d["overhead_ms"]
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="missing or malformed field"):
        DeviceProfile.load(bad)
    d = _fake_profile().to_dict()
    d["correction"] = {"1": [0.1, 1.0]}  # an intercept and one slope: not this model's four terms
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="should have 4 coefficients .*run `lifelong profile` again"):
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
    cfg = SPACE.parse("s8w8a8_c16.ik3e2w8a8_c32.ik3e2w32a32_c64.ik3e2w8a8_hw8a8")
    assert prof.terms(SPACE, cfg, 1) == pytest.approx((1.0, 0.04, 0.01, 2.0))
    prof.correction["1"] = [0.2, 0.5, 2.0, 0.1]
    assert prof.predict(SPACE, cfg, 1) == pytest.approx(0.2 + 0.5 * 0.04 + 2.0 * 0.01 + 0.1 * 2)
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


def test_fit_correction_recovers_the_terms_and_weighs_relative_error() -> None:
    rng = np.random.default_rng(0)
    terms = np.column_stack([np.ones(12), rng.uniform(0, 3, 12), rng.uniform(0, 3, 12), rng.integers(0, 4, 12)])
    truth = np.array([0.3, 0.7, 1.2, 0.05])
    assert fit_correction(terms, terms @ truth) == pytest.approx(truth.tolist())
    with pytest.raises(ValueError, match=r"expected terms of shape \(N, 4\)"):
        fit_correction(terms[:, :2], terms @ truth)
    check = LatencyCheck(1, ["a", "b"], [1.0, 2.0], [1.05, 2.5])
    assert check.within_10pct == 0.5
    assert check.to_dict()["max_abs_rel_error"] == pytest.approx(0.25)


def test_calibrate_fits_on_some_subnets_and_checks_on_others(small_profile: DeviceProfile) -> None:
    prof = _fake_profile(0.01)
    prof.fingerprint = dict(prof.fingerprint, threads=1)
    checks = calibrate(prof, SPACE, fit_subnets=3, check_subnets=2, progress=False)
    assert [c.batch for c in checks] == [1, 4]
    assert set(prof.correction) == {"1", "4"} and all(len(c) == 4 for c in prof.correction.values())
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


def test_every_kind_of_w8a8_row_is_timed_as_integer_kernels() -> None:
    """An isolated W8A8 row must fuse as it does inside a whole subnet, or the table overstates it.

    A plain-conv block ends in a ReLU; inside a subnet the next quantizer folds that ReLU
    (uint8 from 0) and the convolution runs as QLinearConv. Timed alone with a signed next
    quantizer it ran as a float convolution, 2-3x slower than in the exported model.
    """
    from lifelong.export import kernel_counts
    from lifelong.profile import _entries

    wanted = ("stem:", "ck3:w8a8", "ck5:w8a8", "ik3e2:w8a8", "head:")
    seen: dict[str, str] = {}
    for e in _entries(SPACE):
        if not e.key.endswith(":w8a8"):
            continue
        kind = next((w for w in wanted if w in e.key), None)
        if kind is None or kind in seen:
            continue
        counts = kernel_counts(e.build())
        n_convs = 1 if kind.startswith(("stem", "ck", "head")) else 3
        assert counts["float_convs"] == 0 and counts["integer_convs"] == n_convs, f"{e.key}: {counts}"
        seen[kind] = e.key
    assert set(seen) == set(wanted), f"no row found for {set(wanted) - set(seen)}"

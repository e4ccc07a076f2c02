"""Exporting a front point the service needs: the cached front chose a model never exported.

In-process first (a real store, a real worker supervisor, real files): the calibration file
of an adapted supernet, the export request, and each reason the service refuses to start an
export. Then the real daemon with a briefly trained tiny supernet: a policy edit whose
choice was never exported makes the daemon export it in a worker process and swap to it,
while clients predict without one failed request.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, commit_model, remove, short_dir, wait_until
from tiny_space import TINY_SPACE, train_tiny_supernet

from lifelong.data.calibration import calibration_path, load_calibration, save_calibration
from lifelong.device.profile import DeviceProfile
from lifelong.errors import DataError, FormatVersionError, SpaceError
from lifelong.jobs.export import export_from_checkpoint
from lifelong.jobs.export_request import ExportRequest
from lifelong.persist.supernet_versions import adapted_path, set_current
from lifelong.search.front import Front, FrontPoint
from lifelong.space.config import Precision, SearchSpace
from policies import Policy
from service.daemon.documents import format_status
from service.state.paths import default_profile
from service.state.store import Store
from service.workers.front_export import FrontExport
from service.workers.supervisor import WorkerSupervisor

pytestmark = pytest.mark.slow  # daemons that run real export workers (about 30 s): `pytest -m slow`, run by CI

# -- in-process ----------------------------------------------------------------------------------


def test_calibration_images_round_trip_and_foreign_files_are_refused_by_name(tmp_path: Path) -> None:
    version = tmp_path / "adapted" / "20261202T000000-abcdef012345.pt"
    path = calibration_path(version)
    assert path == tmp_path / "adapted" / "20261202T000000-abcdef012345.calib.npz"
    images = np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32)
    save_calibration(path, images, source="test")
    assert np.array_equal(load_calibration(path), images)
    with pytest.raises(DataError, match="float32"):
        save_calibration(path, images.astype(np.float64))
    with pytest.raises(DataError, match="no calibration file at"):
        load_calibration(tmp_path / "missing.calib.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz is not a readable calibration file"):
        load_calibration(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=images)
    with pytest.raises(DataError, match="not a lifelong calibration file"):
        load_calibration(tmp_path / "other.npz")
    np.savez(tmp_path / "future.npz", kind=np.array("lifelong-calibration"), format_version=np.array(9), x=images)
    with pytest.raises(FormatVersionError, match="format version 9"):
        load_calibration(tmp_path / "future.npz")


def test_export_request_round_trip_and_malformed_requests(tmp_path: Path) -> None:
    req = ExportRequest(checkpoint="/s/supernet.pt", subnet="largest:w8a8", out="/s/export/j/model.onnx")
    assert ExportRequest.load(req.save(tmp_path / "r.json")) == req
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["kind"] == "lifelong-export-request" and doc["format_version"] == 1
    doc["colour"] = "blue"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="malformed export request.*colour"):
        ExportRequest.load(tmp_path / "bad.json")
    doc.pop("colour")
    doc["format_version"] = 2
    (tmp_path / "new.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="export request format 2, expected 1"):
        ExportRequest.load(tmp_path / "new.json")


def test_named_subnets_resolve_and_a_bad_precision_is_named() -> None:
    space = SearchSpace(TINY_SPACE)
    assert space.resolve("largest:w8a8") == space.largest(Precision(8, 8))
    assert space.resolve("smallest") == space.smallest()
    assert space.resolve(str(space.largest())) == space.largest()
    with pytest.raises(SpaceError, match="expected largest:wXaY.*'8bit'"):
        space.resolve("largest:8bit")


@pytest.fixture
def exporter(tmp_path: Path):
    store = Store(tmp_path / "state" / "state.db")
    posted: list[object] = []
    fe = FrontExport(tmp_path / "state", store, WorkerSupervisor(tmp_path / "logs"), posted.append)
    yield fe, tmp_path / "state"
    store.close()


def test_an_export_without_a_supernet_is_refused_with_the_reason(exporter) -> None:
    fe, _ = exporter
    assert fe.want("preference", "largest:w8a8", Policy(), "policy changed") == "its export is queued"
    assert fe.status()["state"] == "wanted"
    assert fe.tick(busy="an adaptation runs") is None and fe.status()["state"] == "wanted", "waits for the CPU"
    said = fe.tick()
    assert said is not None and "no export of largest:w8a8: no supernet at" in said and "lifelong train" in said
    st = fe.status()
    assert st["state"] == "idle" and st["last"]["outcome"] == "failed" and "no supernet" in st["last"]["reason"]
    assert "export:   last failed" in format_status({"export": st})
    fe.want("environment", "smallest", Policy(), "slower device")
    fe.drop("preference")
    assert fe.wish is not None, "a wish of another kind stays"
    fe.drop("environment")
    assert fe.wish is None and fe.tick() is None


def test_an_adapted_supernet_without_its_calibration_images_is_not_exported_from(exporter) -> None:
    fe, state = exporter
    folder = state / "supernet"
    folder.mkdir(parents=True)
    (folder / "supernet.pt").write_bytes(b"original")
    version = adapted_path(folder, "ab" * 32)
    version.parent.mkdir()
    version.write_bytes(b"adapted")
    set_current(folder, version, reason="test")
    fe.want("preference", "smallest", Policy(), "policy changed")
    said = fe.tick()
    assert said is not None and f"the adapted supernet {version.name} has no calibration images" in said
    assert fe.status()["last"]["outcome"] == "failed"


# -- the real daemon ------------------------------------------------------------------------------


def _policy(budget_ms: float) -> str:
    return (
        f'format_version = 1\nname = "budget-{budget_ms:g}"\n[target]\nthreads = 1\n[budgets]\n'
        f'latency_ms_p95 = {budget_ms}\n[objective]\nkind = "max-accuracy"\n'
        "[drift]\nwindow = 50\nreference_window = 50\ncheck_interval_s = 0.5\n"
    )


@pytest.fixture(scope="module")
def export_state(fashion_train, fashion_test):
    """A tiny supernet, a front of two of its subnets, the accurate one exported and serving."""
    run = short_dir("llfx")
    state = run / "state"
    ckpt = train_tiny_supernet(fashion_train, state / "supernet" / "supernet.pt")
    space = SearchSpace(TINY_SPACE)
    big, small = space.largest(Precision(8, 8)), space.smallest(Precision(8, 8))
    report = export_from_checkpoint(
        ckpt, str(big), run / "big.onnx", calibration=fashion_train.head(500).as_float(), test=fashion_test,
        parity_images=500,
    )  # fmt: skip
    serving = commit_model(state, report.path)
    points = (FrontPoint(str(big), 0.80, {1: 2.0}, 20_000, 200_000), FrontPoint(str(small), 0.70, {1: 0.5}, 5_000, 50_000))  # fmt: skip
    Front(points, {"policy": "test"}).save(state / "front" / "front.json")
    (state / "policy.toml").write_text(_policy(5.0))
    yield run, state, serving, str(small)
    remove(run)


def test_a_policy_whose_choice_was_never_exported_is_exported_in_a_worker_and_swapped_to(export_state) -> None:
    run, state, serving, small = export_state
    failures: list[str] = []
    seen: list[tuple[float, str]] = []
    stop = threading.Event()
    # a device profile: the worker times the file it exports at its batch sizes (real runs; the
    # reference graph it pairs with is the tiny space's middle, 0.05 ms when "profiled")
    profile = DeviceProfile({"threads": 1}, (1,), {}, [0.0], 1.0, reference_ms=[0.05]).save(default_profile(state))
    with DaemonProcess(state, run).start() as d:

        def client() -> None:
            r = np.random.default_rng(0)
            with d.client(timeout=60) as c:
                while not stop.is_set():
                    try:
                        seen.append(
                            (time.monotonic(), c.predict(r.integers(0, 256, (2, 28, 28), dtype=np.uint8)).model)
                        )
                    except Exception as exc:  # every failure counts
                        failures.append(f"{type(exc).__name__}: {exc}")

        t = threading.Thread(target=client)
        t.start()
        try:
            wait_until(lambda: len(seen) >= 10, what="answers from the serving model")
            d.policy.write_text(_policy(1.0))  # the 2 ms point no longer fits: the front chooses the small one
            saved = time.monotonic()
            with d.client() as c:
                try:
                    # the swap, the export's outcome and the need met land in turn on the loop
                    status = wait_until(
                        lambda: (s := c.status())["model"] != serving and s["export"]["last"]
                        and not any(n["kind"] == "preference" for n in s["drift"]["needs"]) and s,
                        timeout=180, what="the exported model serving",
                    )  # fmt: skip
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; the daemon's log:\n{d.log()}") from None
                # a status is read part by part while the loop goes on (its events may predate
                # its export figures): once all three are seen, a fresh one holds every event
                status = c.status()
                served = next(at for at, m in seen if m == status["model"])
                wait_until(lambda: len([1 for at, _ in seen if at > served]) >= 20, what="answers after the swap")
                history = c.history(5)["deployments"]
                metrics = c.metrics()
        finally:
            stop.set()
            t.join(60)
            profile.unlink()  # the other tests of the module run without one
    print(f"\npolicy saved -> exported model serving: {served - saved:.1f} s; {status['export']['last']}")
    assert failures == [], failures[:5]
    assert status["export"]["last"]["outcome"] == "deployed", status["export"]
    assert history[0]["model_id"] == status["model"]
    assert history[0]["reason"].startswith(
        f"preference drift: the cached front's choice {small} exported by the service ("
    )
    store = Store.open(state)
    try:
        assert store.get_model(status["model"]).subnet == small
        (job,) = [j for j in store.recent_jobs() if j.kind == "export"]
        assert job.state == "done" and job.progress == 1.0 and "parity agreement" in (job.message or "")
    finally:
        store.close()
    events = [e["message"] for e in status["events"]]
    assert any(f"export of {small} started" in m and "from the original supernet" in m for m in events), events
    assert not any(n["kind"] == "preference" for n in status["drift"]["needs"]), "the need is met"
    assert "export:   last deployed" in format_status(status)
    assert 'lifelong_worker_jobs_total{kind="export",outcome="deployed"} 1' in metrics
    assert 'lifelong_worker_jobs_running{kind="export"} 0' in metrics
    assert (state / "logs" / "workers").is_dir() and list((state / "export").glob("export-*/request.json"))
    # the export was timed here and the front now holds that timing, not the latency model's 0.5 ms
    timed = Front.load(state / "front" / "front.json")[small]
    assert timed.latency_source == "export" and 0 < timed.latency_at(1) < 0.5, timed
    assert any("timed here at" in m for m in events), events
    assert "lifelong.threads" in status["runtime"]["model_metadata"], "the export recorded its thread choice"


def test_an_export_from_an_adapted_supernet_uses_its_calibration_images(export_state, fashion_test, tmp_path) -> None:
    import shutil

    from lifelong.deploy.export import onnx_session
    from lifelong.deploy.model_format import META_CHECKPOINT
    from lifelong.persist.digest import file_sha256
    from service.workers.front_export import ExportDone

    run, source_state, _, small = export_state
    state = tmp_path / "state"
    folder = state / "supernet"
    folder.mkdir(parents=True)
    shutil.copy(source_state / "supernet" / "supernet.pt", folder / "supernet.pt")
    sha = file_sha256(folder / "supernet.pt")
    version = adapted_path(folder, sha)  # the same weights stand in for an adapted version
    version.parent.mkdir()
    shutil.copy(folder / "supernet.pt", version)
    inverted = (1.0 - fashion_test.head(300).as_float()).astype(np.float32)  # local data unlike the training data
    save_calibration(calibration_path(version), inverted, source="test")
    set_current(folder, version, reason="test")
    store = Store(state / "state.db")
    done: list[object] = []
    try:
        fe = FrontExport(state, store, WorkerSupervisor(state / "logs"), done.append, parity_images=300)
        fe.want("preference", small, Policy(), "policy changed")
        said = fe.tick()
        assert said is not None and f"from the adapted supernet {version.name}" in said, said
        assert fe.handle is not None and fe.handle.wait(120) is not None
        wait_until(lambda: done, what="the ExportDone event")
        (event,) = done
        assert isinstance(event, ExportDone)
        wish, report, why = fe.finish(event)
        assert report is not None, why
        assert wish is not None and wish.subnet == small and "parity agreement" in why
        request = json.loads((Path(report["path"]).parent / "request.json").read_text())
        assert request["calibration"] == str(calibration_path(version)) and request["checkpoint"] == str(version)
        model = onnx_session(report["path"])
        meta = model.get_modelmeta().custom_metadata_map
        assert meta[META_CHECKPOINT] == file_sha256(version), "the model names the adapted version it came from"
        assert store.recent_jobs()[0].state == "done"
    finally:
        store.close()


def test_retention_removes_old_worker_job_folders_but_not_running_or_recent_ones(tmp_path: Path) -> None:
    import os

    from service.workers.front_export import prune_job_folders

    old = time.time() - 40 * 86400
    for name in ("adapt/adapt-1", "adapt/adapt-2", "export/export-1", "export/export-2"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "request.json").write_text("{}")
    for name in ("adapt/adapt-1", "adapt/adapt-2", "export/export-1"):
        for p in (tmp_path / name / "request.json", tmp_path / name):
            os.utime(p, (old, old))
    roots = [tmp_path / "adapt", tmp_path / "export", tmp_path / "missing"]
    removed = prune_job_folders(roots, time.time() - 30 * 86400, busy={"adapt-2"})
    assert removed == ["adapt/adapt-1", "export/export-1"]
    assert (tmp_path / "adapt" / "adapt-2").is_dir() and (tmp_path / "export" / "export-2").is_dir()


def test_an_export_wish_is_kept_on_disk_while_wanted_and_read_back_once(exporter) -> None:
    from lifelong.errors import LifelongError
    from service.workers.front_export import ExportWish

    fe, state = exporter
    policy = Policy(name="tight")
    fe.want("environment", "smallest", policy, "the device is slower")
    kept = ExportWish.load(fe.wish_path)
    assert kept is not None and (kept.kind, kept.subnet, kept.policy, kept.reason) == (
        "environment", "smallest", policy, "the device is slower",
    )  # fmt: skip
    fe.drop("environment")
    assert not fe.wish_path.exists(), "nothing wanted, nothing kept"
    fe.want("preference", "largest", policy, "policy changed")
    wish, error = fe.resume()
    assert error is None and wish is not None and wish.subnet == "largest" and not fe.wish_path.exists()
    assert fe.resume() == (None, None)
    fe.wish_path.write_text('{"kind": "lifelong-export-wish", "format_version": 1, "wish": "preference"}')
    wish, error = fe.resume()
    assert wish is None and error is not None and "malformed export wish" in error and not fe.wish_path.exists()
    fe.wish_path.write_text("{not json")
    with pytest.raises(LifelongError, match="not a readable export wish"):
        ExportWish.load(fe.wish_path)


def _state_serving_big(export_state, state: Path) -> str:  # noqa: ANN001
    """A fresh state with the tiny supernet and its front, the largest W8A8 serving; its id."""
    import shutil

    run0, source, _, _ = export_state
    (state / "supernet").mkdir(parents=True)
    shutil.copy(source / "supernet" / "supernet.pt", state / "supernet" / "supernet.pt")
    shutil.copytree(source / "front", state / "front")
    return commit_model(state, run0 / "big.onnx")


def test_a_daemon_restarted_while_an_export_was_wanted_resumes_it_and_an_operator_exports_by_name(
    export_state, tmp_path
) -> None:
    from click.testing import CliRunner

    from service.cli.main import cli
    from service.workers.front_export import ExportWish

    small = export_state[3]
    run = short_dir("llfr")
    state = run / "state"
    try:
        serving = _state_serving_big(export_state, state)
        (state / "policy.toml").write_text(_policy(1.0))  # in force before the restart: the front chooses small
        ExportWish("preference", small, Policy(), "policy 'budget-1' changed budgets", time.time()).save(
            state / "export" / "wanted.json"
        )
        with DaemonProcess(state, run).start() as d, d.client() as c:
            status = wait_until(
                lambda: (s := c.status())["model"] != serving and s["export"]["last"] and s,
                timeout=120, what="the resumed export serving",
            )  # fmt: skip
            # the operator asks for a subnet by name: exported from the supernet in use, then deployed
            sock = ["--socket", str(d.socket)]
            by_name = CliRunner().invoke(
                cli, ["deploy", "largest:w8a8", "--export", "--reason", "operator test", *sock]
            )
            assert by_name.exit_code == 0, by_name.output
            assert "largest:w8a8: its export is queued" in by_name.output and "deployed: largest:w8a8 exported by the service" in by_name.output  # fmt: skip
            operator = c.status()
            not_in_space = CliRunner().invoke(cli, ["deploy", "smallest:w2a2", "--export", *sock])
            garbage = CliRunner().invoke(cli, ["deploy", "rm -rf /", "--export", *sock])
            after = c.status()
            history = c.history(3)["deployments"]
        events = [e["message"] for e in status["events"]]
        assert any(f"an export of {small} was wanted before the restart" in m for m in events), events
        assert status["export"]["last"]["outcome"] == "deployed"
        assert not (state / "export" / "wanted.json").exists()
        assert history[0]["reason"].startswith("operator test: largest:w8a8 exported by the service (")
        assert not_in_space.exit_code == 1 and "failed:" in not_in_space.output, not_in_space.output
        assert "smallest:w2a2" in after["export"]["last"]["reason"] and after["model"] == operator["model"]
        assert garbage.exit_code != 0 and "is not a subnet name" in garbage.output, garbage.output
        store = Store.open(state)
        try:
            assert store.get_model(status["model"]).subnet == small
            assert store.get_model(operator["model"]).subnet == str(SearchSpace(TINY_SPACE).largest(Precision(8, 8)))
        finally:
            store.close()
    finally:
        remove(run)


def test_a_model_over_its_budget_at_its_usual_speed_asks_for_a_new_profile_not_an_export(export_state) -> None:
    """Environment drift from a budget the model never met (the device is not slower than its
    own first latencies): the front's figures do not describe this device, so nothing is exported."""
    run = short_dir("llfe")
    state = run / "state"
    try:
        serving = _state_serving_big(export_state, state)
        (state / "policy.toml").write_text(_policy(0.001))  # 1 us: below any real latency
        images = np.random.default_rng(0).integers(0, 256, (1, 28, 28), dtype=np.uint8)
        with DaemonProcess(state, run).start() as d, d.client(timeout=60) as c:

            def answered() -> list[str] | None:
                for _ in range(20):
                    c.predict(images)
                found = [e["message"] for e in c.status()["events"] if e["kind"] == "drift"]
                return found if any("re-profile the device" in m for m in found) else None

            messages = wait_until(answered, timeout=60, what="the environment drift answer")
            status = c.status()
        assert any("environment drift" in m and "re-profile the device" in m for m in messages), messages
        assert not any("export of" in m for m in messages), messages
        assert status["model"] == serving and status["export"]["state"] == "idle" and not status["export"]["last"]
        assert any(n["kind"] == "environment" and n["action"] == "re-search" for n in status["drift"]["needs"])
    finally:
        remove(run)

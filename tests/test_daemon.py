"""The daemon as a real subprocess: a real Unix socket, a real SQLite file, real onnxruntime
sessions, real signals, a real sd_notify datagram socket, and real ``kill -9``s."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, commit_model, remove, short_dir, wait_until
from PIL import Image
from tiny_models import write_classifier, write_corrupt

from service.api.client import Client
from service.daemon.fault_injection import PAUSE_POINTS
from service.errors import DaemonUnreachable, Forbidden, ModelLoadError, PayloadTooLarge, RecordNotFound, RequestError
from service.state.registry import Registry
from service.state.store import Store

FAVOUR = {"a": 3, "b": 7}
VALID_POLICY = 'format_version = 1\nname = "{name}"\n[target]\nthreads = {threads}\n'
BAD_POLICY = 'format_version = 1\nname = "broken"\n[budgets]\nlatency_ms_p95 = -3\n[swap]\ncanary_windw = 5\n'
rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {k: write_classifier(d / f"{k}.onnx", favour_class=v, seed=v) for k, v in FAVOUR.items()}
    out["corrupt"] = write_corrupt(d / "corrupt.onnx")
    out["wrong_signature"] = write_classifier(d / "wrong.onnx", broken="wrong_input_shape")
    out["slow"] = write_classifier(
        d / "slow.onnx", favour_class=5, seed=5, slow_matmuls=100, slow_size=384
    )  # ~150 ms a run
    (d / "parity").mkdir()
    out["bad_parity"] = write_classifier(d / "parity" / "c.onnx", seed=11)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    np.savez(d / "parity" / "c.parity.npz", x=x, logits=np.zeros((4, 10), np.float32))  # not what c computes
    return out


@pytest.fixture
def dirs():
    run = short_dir()
    yield run / "state", run
    remove(run)


def images(n: int = 2) -> np.ndarray:
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def model_id(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def assert_consistent(state: Path, expect: str | None) -> None:
    """Store and registry agree on what serves, and nothing partial is visible."""
    registry = Registry(state)
    store = Store.open(state)
    try:
        live = store.current_deployment()
        assert registry.current_id() == expect
        assert (live.model_id if live else None) == expect
        if expect is not None:
            assert os.readlink(state / "current.onnx") == f"models/{expect}/model.onnx"
        on_disk = {r.id for r in registry.list()}
        assert on_disk == {m.id for m in store.list_models()}, "store and registry list different models"
        for mid in on_disk:
            registry.verify(mid)  # complete: hashes to its name
        assert not [p.name for p in (state / "models").iterdir() if p.name.startswith(".")], "leftover temp folders"
        assert not store.pending_deployments()
    finally:
        store.close()


# -- hot swaps under load ---------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_swaps_under_eight_predicting_threads_lose_no_request(models, dirs) -> None:
    state, run = dirs
    a_id = commit_model(state, models["a"])
    with DaemonProcess(state, run).start() as d:
        with d.client() as admin:
            b_id = admin.deploy(data=models["b"].read_bytes(), name="b.onnx")["model_id"]
            favour = {a_id: FAVOUR["a"], b_id: FAVOUR["b"]}
            stop, lock = threading.Event(), threading.Lock()
            answers: dict[str, int] = {a_id: 0, b_id: 0}
            failures: list[str] = []

            def predict_forever() -> None:
                with d.client(timeout=30) as c:
                    while not stop.is_set():
                        try:
                            ans = c.predict(images(2))
                        except Exception as exc:  # every failure counts, whatever its kind
                            with lock:
                                failures.append(f"{type(exc).__name__}: {exc}")
                            continue
                        ok = ans.model in favour and (ans.classes == favour[ans.model]).all()
                        with lock:
                            if ok:
                                answers[ans.model] += 1
                            else:
                                failures.append(f"{ans.model} answered {ans.classes.tolist()}")

            threads = [threading.Thread(target=predict_forever) for _ in range(8)]
            for t in threads:
                t.start()
            try:
                wait_until(lambda: sum(answers.values()) >= 16, what="clients answered")
                started = time.monotonic()
                for i in range(50):  # b serves now: a, b, a, ...
                    target = (a_id, b_id)[i % 2]
                    result = admin.deploy(model=target, reason=f"swap {i}")
                    assert result["changed"] and result["model_id"] == target
                took = time.monotonic() - started
                wait_until(lambda: sum(answers.values()) >= 32, what="clients answered after the swaps")
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            stats = admin.status()["runtime"]
            history = admin.history(limit=60)
        assert failures == [], failures[:5]
        assert answers[a_id] > 0 and answers[b_id] > 0, answers
        assert stats["swaps"] >= 51 and stats["failed_swaps"] == 0
        assert [r["reason"] for r in history["deployments"][:50]] == [f"swap {i}" for i in reversed(range(50))]
        print(f"50 swaps in {took:.1f} s under 8 clients; {sum(answers.values())} answers")
        assert d.stop() == 0
    assert_consistent(state, b_id)  # the last swap (i = 49) deployed b


# -- kill -9 in the middle of a change --------------------------------------------------------

# After a kill at each point, which model the restarted daemon serves: the pointer is the commit.
COMMITTED = {"registry-write": "a", "registry-rename": "a", "swap": "a", "deploy-pending": "a", "pointer": "b"}


@pytest.mark.slow
@pytest.mark.parametrize("point", ["registry-write", "swap", "deploy-pending", "pointer"])
def test_kill_9_mid_change_restarts_on_the_last_committed_model(models, dirs, point: str) -> None:
    assert set(COMMITTED) == set(PAUSE_POINTS)
    state, run = dirs
    ids = {"a": commit_model(state, models["a"]), "b": model_id(models["b"])}
    marker = run / "paused"
    env = {"LIFELONG_TEST_PAUSE_AT": point, "LIFELONG_TEST_PAUSE_MARKER": str(marker)}
    d = DaemonProcess(state, run, env=env).start()
    try:
        outcome: list[object] = []

        def deploy_b() -> None:
            try:
                with d.client() as c:
                    outcome.append(c.deploy(data=models["b"].read_bytes(), name="b.onnx"))
            except Exception as exc:
                outcome.append(exc)

        worker = threading.Thread(target=deploy_b)
        worker.start()
        wait_until(marker.exists, what=f"the daemon pausing at {point}")
        pings = d.notify.count("WATCHDOG")
        with d.client() as c:  # the API serves while the loop is stuck
            serving = c.predict(images(1)).model
        # the runtime swaps before the registry commits: from then on the new model answers
        assert serving == (ids["a"] if point == "registry-write" else ids["b"])
        if point == "swap":  # the pings come from the loop: a stuck loop stops them
            time.sleep(1.5)
            assert d.notify.count("WATCHDOG") - pings <= 1
        d.kill()
        worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], DaemonUnreachable), outcome
    finally:
        d.close()
    expect = ids[COMMITTED[point]]
    d2 = DaemonProcess(state, run).start()
    try:
        with d2.client() as c:
            assert c.predict(images(3)).model == expect
            assert c.health()["model"] == expect
            status = c.status()
        assert d2.stop() == 0
    finally:
        d2.close()
    assert_consistent(state, expect)
    b_visible = ids["b"] in Registry(state)
    assert b_visible == (point != "registry-write"), "a half-written model must never be visible"
    if point == "pointer":
        assert status["store"]["deployment"]["state"] == "canary"  # switched just before the crash
        assert any(e["kind"] == "reconcile" for e in status["events"])


# -- refusals while serving goes on -----------------------------------------------------------


@pytest.fixture(scope="module")
def shared(models, tmp_path_factory):
    """One daemon serving model a, for the tests that only add refusals and samples."""
    run = short_dir()
    state = run / "state"
    a_id = commit_model(state, models["a"])
    models_dir = str(models["a"].parent)
    d = DaemonProcess(state, run, args=("--probe-interval", "0.3", "--deploy-dir", models_dir)).start()
    yield d, a_id
    d.close()
    remove(run)


@pytest.fixture
def background_predictions(shared):
    """A client predicting all along; the test asserts none of its requests failed."""
    d, a_id = shared
    stop, failures, count = threading.Event(), [], [0]

    def run() -> None:
        with d.client() as c:
            while not stop.is_set():
                try:
                    assert c.predict(images(1)).model == a_id
                    count[0] += 1
                except Exception as exc:
                    failures.append(repr(exc))
                time.sleep(0.01)

    t = threading.Thread(target=run)
    t.start()
    yield failures
    stop.set()
    t.join(10)
    assert failures == []
    assert count[0] > 0


def test_bad_models_are_refused_with_a_clear_error_and_the_old_one_serves_on(
    shared, models, background_predictions
) -> None:
    d, a_id = shared
    with d.client() as c:
        with pytest.raises(ModelLoadError, match=r"corrupt\.onnx: not a readable ONNX model .*expected an ONNX file"):
            c.deploy(data=models["corrupt"].read_bytes(), name="corrupt.onnx")
        with pytest.raises(ModelLoadError, match=r"input 'image' has shape \['N', 784\]; expected one input 'image'"):
            c.deploy(data=models["wrong_signature"].read_bytes(), name="wrong.onnx")
        with pytest.raises(ModelLoadError, match=r"logits differs from the expected outputs"):
            c.deploy(path=models["bad_parity"])
        with pytest.raises(RecordNotFound, match=r"no model 'feedfacefeedface' in the registry"):
            c.deploy(model="feedfacefeedface")
        missing = models["a"].parent / "missing.onnx"
        with pytest.raises(ModelLoadError, match=rf"no model file at {re.escape(str(missing))}"):
            c.deploy(path=missing)
        assert c.health() == {"status": "ok", "model": a_id}
        status, history = c.status(), c.history()
    assert status["runtime"]["failed_swaps"] >= 2
    assert [e["kind"] for e in status["events"]].count("deploy-refused") >= 5
    failed = [r for r in history["deployments"] if r["state"] == "failed"]
    assert failed and "breaks the model contract" in failed[-1]["detail"]
    assert history["current"] == history["serving"] == a_id


def test_admin_commands_are_served_on_the_owner_only_socket_and_nowhere_else(shared, models) -> None:
    d, a_id = shared
    assert stat.S_IMODE(os.stat(d.admin_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o660
    with d.client() as c:  # an application in the service's group: predict yes, change what serves no
        for method, path, body in (("POST", "/v1/rollback", b"{}"), ("POST", "/v1/deploy", b'{"model": "0" }'),
                                   ("GET", "/v1/history", None)):  # fmt: skip
            status, data = c.request(method, path, body, "application/json" if body else None)
            assert status == 403, (path, data)
            assert f"served on the admin socket {d.admin_socket}" in json.loads(data)["error"]
        assert c.predict(images(1)).model == a_id
    with Client(d.admin_socket) as admin:  # the admin socket answers status and health, not predict
        assert admin.health()["model"] == a_id
        assert admin.request("POST", "/v1/predict", b"x", "application/octet-stream")[0] == 404
        assert admin.history()["current"] == a_id


def test_deploy_by_path_reads_only_from_the_allowed_folders_and_reveals_nothing_else(shared) -> None:
    d, a_id = shared
    with d.client() as c:
        answers = []
        for path in ("/etc/shadow", "/nonexistent/m.onnx", "/etc/../etc/passwd"):
            with pytest.raises(Forbidden) as caught:
                c.deploy(path=path)
            answers.append(str(caught.value))
        assert len(set(answers)) == 1 and "reads models only from" in answers[0]  # exists or not: the same answer
        link = d.state_dir / "inbox" / "escape.onnx"  # a link in an allowed folder to a file outside it
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/etc/passwd")
        try:
            with pytest.raises(Forbidden, match="reads models only from"):
                c.deploy(path=link)
        finally:
            link.unlink()
        with pytest.raises(RequestError, match="is relative; expected an absolute path"):
            c.deploy(path="m.onnx")
        assert c.health()["model"] == a_id


def test_malformed_requests_get_4xx_with_a_message(shared, background_predictions) -> None:
    d, _ = shared
    with d.client() as c, Client(d.admin_socket) as admin:
        cases = [
            ("POST", "/v1/predict", b"garbage", "application/octet-stream", 415, "is not read here; send"),
            ("POST", "/v1/predict", b'{"inputs": [[1, 2], [3]]}', "application/json", 400, "rectangular"),
            ("POST", "/v1/deploy", b'{"model": "x", "path": "/y"}', "application/json", 400, "exactly one of"),
            ("POST", "/v1/deploy", b'{"modle": "x"}', "application/json", 400, r"unknown keys \['modle'\]"),
            ("POST", "/v1/deploy", b"[1]", "application/json", 400, "expected a JSON object"),
            ("POST", "/v1/deploy", b'{"model": "../x"}', "application/json", 400, "expected 16 hex digits"),
            ("POST", "/v1/deploy", b"x", "text/plain", 400, "Content-Type 'text/plain' is not read here"),
            ("POST", "/v1/rollback", b'{"why": 1}', "application/json", 400, "reason"),
            ("GET", "/v1/history?limit=abc", None, None, 400, "expected an integer from 1 to 1000"),
            ("GET", "/v1/history?limit=" + "9" * 5000, None, None, 400, "expected an integer from 1 to 1000"),
            ("GET", "/v1/history?limit=%C2%B2", None, None, 400, "expected an integer from 1 to 1000"),
            ("GET", "/v1/deploy", None, None, 405, "use POST"),
            ("GET", "/v1/nothing", None, None, 404, "no route"),
        ]
        for method, path, body, ctype, want, pattern in cases:
            status, data = (admin if path.startswith(("/v1/deploy", "/v1/rollback", "/v1/history")) else c).request(
                method, path, body, ctype
            )
            assert status == want, (path, body, data)
            assert __import__("re").search(pattern, json.loads(data)["error"]), (path, data)
        nan = np.full((1, 28, 28), np.nan, np.float32)
        with pytest.raises(RequestError, match="NaN"):
            c.predict(nan)
        with pytest.raises(RequestError, match=r"input shape \(3, 5\) is not accepted"):
            c.predict(np.zeros((3, 5), np.uint8))
        with pytest.raises(PayloadTooLarge, match="over the limit"):
            c.predict(np.zeros((3000, 28, 28), np.float32))  # 9.4 MB > 8 MiB
        assert c.health()["status"] == "ok"


def test_policy_edits_take_effect_and_an_invalid_one_is_rejected(shared, background_predictions) -> None:
    d, a_id = shared
    policy = d.policy

    def policy_status() -> dict:
        with d.client() as c:
            return c.status()["policy"]

    policy.write_text(VALID_POLICY.format(name="edited-1", threads=2))
    wait_until(lambda: policy_status()["name"] == "edited-1", what="the first edit taking effect")
    policy.write_text(BAD_POLICY)
    rejected = wait_until(lambda: (p := policy_status())["error"] and p, what="the bad edit being rejected")
    assert rejected["name"] == "edited-1", "the old policy stays"
    assert "budgets.latency_ms_p95: expected a positive number" in rejected["error"]
    assert "an unknown key in swap (did you mean 'canary_window'?)" in rejected["error"]
    assert "canary_windw" not in rejected["error"] and "-3" not in rejected["error"], (
        "the status quotes nothing of the file"
    )
    with d.client() as c:
        assert "policy file rejected" in c.status()["daemon"]["status_line"]
    tmp = policy.with_suffix(".part")
    tmp.write_text(VALID_POLICY.format(name="edited-2", threads=1))
    os.replace(tmp, policy)  # as editors save: write aside, rename over
    fixed = wait_until(lambda: (p := policy_status())["name"] == "edited-2" and p, what="the fix taking effect")
    assert fixed["error"] is None and fixed["source"] == str(policy)
    with d.client() as c:
        assert c.health()["model"] == a_id


def test_inbox_samples_and_feedback_reach_the_store(shared) -> None:
    d, a_id = shared
    inbox = d.state_dir / "inbox"
    (inbox / "5").mkdir(exist_ok=True)
    Image.fromarray(images(1)[0]).save(inbox / "5" / ".writing.png")  # hidden while written
    os.replace(inbox / "5" / ".writing.png", inbox / "5" / "shoe.png")
    np.savez(inbox / "batch.npz", x=images(4), y=np.array([0, 1, 2, 3]))
    (inbox / "broken.png").write_bytes(b"not a png")
    with d.client() as c:
        wait_until(lambda: c.status()["inbox"]["files"] >= 2 and c.status()["inbox"]["rejected"] >= 1, what="ingest")
        ans = c.predict(images(2))
        assert c.feedback(labels=[(ans.request_id, 1, 4)]) == 1
        assert c.feedback(labels=[9, 8], images=images(2)) == 2
        with pytest.raises(RecordNotFound, match="no prediction"):
            c.feedback(labels=[("unknown-request", 0, 1)])
        samples = c.status()["store"]["samples"]
    assert samples["by_source"]["inbox"] == {"total": 5, "labelled": 5}
    assert samples["by_source"]["feedback"] == {"total": 3, "labelled": 3}
    assert sorted(p.name for p in inbox.iterdir()) == [".processed", ".rejected", "5"]
    assert list((inbox / "5").iterdir()) == []
    store = Store(d.state_dir / "state.db")
    try:
        rows = {s.ref.rsplit("/", 1)[-1]: s for s in store.recent_samples(20)}
        shoe = next(s for k, s in rows.items() if k.endswith("shoe.png"))
        assert (shoe.label, shoe.predicted, shoe.model_id) == (5, FAVOUR["a"], a_id)
        labelled = store.labelled_samples(10, source="feedback")
        by_request = [s for s in labelled if s.request_id == ans.request_id]
        assert [(s.label, s.predicted, s.model_id) for s in by_request] == [(4, FAVOUR["a"], a_id)]
        path, index = by_request[0].ref.split("#")
        with np.load(path) as z:  # the image itself was kept, as the model saw it
            assert z["x"][int(index)].shape == (28, 28) and z["y"][int(index)] == 4
    finally:
        store.close()


def test_latency_probe_records_metrics_and_the_model_latency(shared) -> None:
    d, a_id = shared
    with d.client() as c:
        probe = wait_until(lambda: c.status()["latency_probe"], what="a latency probe")
        jobs = c.status()["jobs"]
    assert probe["model"] == a_id and probe["batch"] == 1 and 0 < probe["p50_ms"] <= probe["p95_ms"]
    assert jobs["latency-probe"]["runs"] >= 1 and jobs["retention"]["runs"] >= 1
    assert jobs["retention"]["last_error"] is None
    store = Store(d.state_dir / "state.db")
    try:
        assert store.recent_metrics("latency_probe_p50_ms")[-1].labels == {"model": a_id, "batch": 1}
        assert store.get_model(a_id).latency_p50_ms is not None
    finally:
        store.close()


def test_the_serving_process_never_imports_torch(shared) -> None:
    d, _ = shared
    with d.client() as c:
        assert c.status()["daemon"]["torch_imported"] is False
    maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" in maps


# -- systemd: notify, reload, drain -----------------------------------------------------------


def test_start_without_a_model_and_with_an_invalid_policy(dirs) -> None:
    state, run = dirs
    state.mkdir(parents=True)
    (state / "policy.toml").write_text(BAD_POLICY)
    with DaemonProcess(state, run).start() as d:
        ready = d.notify.wait_for("READY", "1")
        assert ready["STATUS"].startswith("no model deployed; run lifelong deploy FILE")
        assert "policy file rejected" in ready["STATUS"]
        with d.client() as c:
            status_code, body = c.request("GET", "/v1/health")
            doc = c.status()
        assert status_code == 503 and json.loads(body)["status"] == "no model"
        assert doc["policy"]["name"] == "balanced" and doc["policy"]["source"] == "preset:balanced"
        assert "budgets.latency_ms_p95" in doc["policy"]["error"]
        assert d.stop() == 0


@pytest.mark.slow
def test_sighup_reloads_the_policy_and_sigterm_drains_requests_in_flight(models, dirs) -> None:
    state, run = dirs
    slow = commit_model(state, models["slow"])
    policy = state / "policy.toml"
    policy.write_text(VALID_POLICY.format(name="first", threads=2))
    # a long settle time: only SIGHUP can make the daemon re-read the file in this test
    d = DaemonProcess(state, run, args=("--settle-ms", "600000")).start()
    try:
        ready = d.notify.wait_for("READY", "1")
        assert ready["STATUS"] == f"serving {slow}; policy first"
        mark = len(d.notify)
        # a 3 s window: 6 pings at every watchdog_interval / 2 (1 s here); at least 4 allows for
        # a loaded machine, while one ping per interval (3) would fail
        time.sleep(3.0)
        assert d.notify.count("WATCHDOG", since=mark) >= 4, "WATCHDOG=1 every watchdog_interval / 2"

        policy.write_text(VALID_POLICY.format(name="second", threads=1))
        mark = len(d.notify)
        d.signal(signal.SIGHUP)
        reloading = d.notify.wait_for("RELOADING", "1", since=mark)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        d.notify.wait_for("READY", "1", since=mark)
        with d.client() as c:
            assert c.status()["policy"]["name"] == "second"
            assert c.status()["runtime"]["model_id"] == slow

        results: list[object] = []

        def slow_request() -> None:
            try:
                with d.client() as c:
                    results.append(c.predict(images(8)).model)
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=slow_request) for _ in range(3)]
        for t in threads:
            t.start()

        def in_flight() -> bool:
            with d.client() as c:
                text = c.metrics()
            line = next(x for x in text.splitlines() if x.startswith("lifelong_requests_in_flight"))
            return int(line.split()[-1]) >= 4  # three predictions and this scrape

        wait_until(in_flight, what="three requests in flight")
        mark = len(d.notify)
        d.signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0
        for t in threads:
            t.join(30)
        assert results == [slow, slow, slow], "requests in flight at SIGTERM are answered"
        assert "STOPPING" in d.notify.wait_for("STOPPING", "1", since=mark)
        assert not d.socket.exists(), "the socket is removed on a clean stop"
    finally:
        d.close()


def test_serve_under_the_units_command_line_uses_systemds_directories(models, dirs) -> None:
    state, run = dirs
    config = run / "etc"
    config.mkdir()
    (config / "policy.toml").write_text(VALID_POLICY.format(name="from-etc", threads=1))
    a_id = commit_model(state, models["a"])
    with DaemonProcess(state, run, script=True, systemd_dirs=config).start() as d:
        assert d.socket == run / "lifelong.sock" and d.socket.is_socket()
        assert oct(d.socket.stat().st_mode & 0o777) == "0o660"
        with d.client() as c:
            doc = c.status()
        assert doc["model"] == a_id and doc["policy"]["name"] == "from-etc"
        assert doc["daemon"]["state_dir"] == str(state)
        assert d.stop() == 0


def test_serve_imports_no_torch_and_cli_help_is_light() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from service.cli.main import cli; import service.daemon.core;"
        "r = CliRunner().invoke(cli, ['serve', '--help']); assert r.exit_code == 0, r.output;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_an_image_body_is_not_a_model(shared) -> None:
    d, a_id = shared
    buf = io.BytesIO()
    Image.fromarray(images(1)[0]).save(buf, format="PNG")
    with d.client() as c:
        with pytest.raises(ModelLoadError, match=r"upload photo\.png: not a readable ONNX model"):
            c.deploy(data=buf.getvalue(), name="photo.png")
        assert c.health()["model"] == a_id

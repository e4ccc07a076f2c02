"""The service's CLI commands against a real daemon subprocess, and against a stopped one."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from daemon_harness import DaemonProcess, commit_model, remove, short_dir
from PIL import Image
from tiny_models import write_classifier, write_corrupt

from policies import load_preset
from service.cli.main import cli
from service.state.paths import admin_socket_for

FAVOUR = {"a": 3, "b": 7}
PRESETS = Path(__file__).resolve().parents[1] / "policies" / "presets"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("cli-models")
    models = {k: write_classifier(d / f"{k}.onnx", favour_class=v, seed=v) for k, v in FAVOUR.items()}
    models["corrupt"] = write_corrupt(d / "corrupt.onnx")
    run = short_dir("llc")
    state = run / "state"
    a_id = commit_model(state, models["a"])
    proc = DaemonProcess(state, run).start()
    yield proc, models, a_id, d
    proc.close()
    remove(run)


def invoke(*args: str, sock: Path | None = None) -> tuple[int, str, str]:
    full = list(args) + (["--socket", str(sock)] if sock else [])
    result = CliRunner().invoke(cli, full)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_status_text_and_json(daemon) -> None:
    d, _, a_id, _ = daemon
    code, out, _ = invoke("status", sock=d.socket)
    assert code == 0, out
    assert f"model:    {a_id}  subnet tiny_mlp" in out
    assert re.search(r"accuracy \?, latency p50 .* \(batch 1, this device\)", out)
    assert "precision unknown" in out and "policy:   balanced (preset:balanced)" in out
    assert "workers:  none running" in out and "events (newest first):" in out
    assert f"(unix:{d.socket}; admin unix:{d.admin_socket})" in out.splitlines()[0]  # where to send what
    code, out, _ = invoke("status", "--json", sock=d.socket)
    doc = json.loads(out)
    assert code == 0 and doc["model"] == a_id and doc["store"]["model"]["id"] == a_id
    assert {"daemon", "policy", "store", "events", "jobs", "workers", "runtime"} <= set(doc)


def test_predict_npy_npz_and_image(daemon, tmp_path: Path) -> None:
    d, _, a_id, _ = daemon
    x = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    Image.fromarray(x[0]).save(tmp_path / "x.png")
    code, out, _ = invoke("predict", str(tmp_path / "x.npy"), sock=d.socket)
    assert code == 0 and out.startswith(f"model {a_id}") and out.count("class 3") == 3
    code, out, _ = invoke("predict", str(tmp_path / "x.npz"), "--json", sock=d.socket)
    doc = json.loads(out)
    assert doc["model"] == a_id and doc["classes"] == [3, 3, 3] and len(doc["probabilities"][0]) == 10
    code, out, _ = invoke("predict", str(tmp_path / "x.png"), "--json", sock=d.socket)
    assert code == 0 and json.loads(out)["classes"] == [3]
    (tmp_path / "x.txt").write_text("1 2 3")
    code, _, err = invoke("predict", str(tmp_path / "x.txt"), sock=d.socket)
    assert code == 2 and "expected a .npy or .npz batch, or a .png/.jpg image" in err


def test_deploy_file_and_id_rollback_and_history(daemon) -> None:
    d, models, a_id, _ = daemon
    code, out, _ = invoke("deploy", str(models["b"]), "--reason", "cli test", sock=d.socket)
    assert code == 0 and re.match(r"deployed [0-9a-f]{16} \(was " + a_id + r"\); loaded, validated", out), out
    b_id = out.split()[1]
    code, out, _ = invoke("deploy", b_id, sock=d.socket)
    assert code == 0 and out.strip() == f"{b_id} already serves; nothing changed"
    code, _, err = invoke("deploy", str(models["corrupt"]), sock=d.socket)
    assert code == 2 and err.startswith("error: upload corrupt.onnx: not a readable ONNX model")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = invoke("deploy", "0123456789abcdef", sock=d.socket)
    assert code == 2 and "no model '0123456789abcdef' in the registry" in err
    code, out, _ = invoke("rollback", "--json", sock=d.socket)
    assert code == 0 and json.loads(out)["model_id"] == a_id
    code, out, _ = invoke("history", sock=d.socket)
    assert code == 0 and out.startswith(f"current: {a_id} (serving {a_id})")
    assert re.search(rf"rolled-back  {b_id}  tiny_mlp\s+cli test  \[rolled back to {a_id}", out), out
    code, out, _ = invoke("history", "--json", "--limit", "2", sock=d.socket)
    doc = json.loads(out)
    assert [r["model_id"] for r in doc["deployments"]] == [a_id, b_id]
    code, _, err = invoke("rollback", sock=d.socket)
    assert code == 2 and err.startswith("error: no earlier model to roll back to"), err


@pytest.mark.parametrize(
    "args", [["status"], ["history"], ["rollback"], ["deploy", "0123456789abcdef"], ["predict", "X.npy"]]
)
def test_a_stopped_daemon_gives_one_line_and_exit_code_1(args: list[str], tmp_path: Path) -> None:
    np.save(tmp_path / "X.npy", np.zeros((1, 28, 28), np.uint8))
    args = [str(tmp_path / a) if a == "X.npy" else a for a in args]
    missing = tmp_path / "no.sock"
    code, out, err = invoke(*args, sock=missing)
    admin = args[0] in ("history", "rollback", "deploy")  # these go to the admin socket beside it
    assert code == 1 and out == ""
    named = admin_socket_for(missing) if admin else missing
    assert err == f"error: no daemon socket at {named}: is the lifelong service running?\n"
    stale_dir = short_dir("lls")
    try:
        stale = stale_dir / "stale.sock"
        for path in (stale, admin_socket_for(stale)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(path))  # a socket file nobody listens on: what a killed daemon leaves
            s.close()
        code, _, err = invoke(*args, sock=stale)
        assert code == 1 and len(err.splitlines()) == 1 and "nothing listens at unix:" in err
    finally:
        remove(stale_dir)


def test_policy_check_valid_and_invalid(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    shutil.copy(PRESETS / "balanced.toml", good)
    code, out, _ = invoke("policy", "check", str(good))
    assert code == 0 and out.strip() == f"{good}: valid policy 'balanced' (objective utility, latency budget 5 ms p95)"
    bad = tmp_path / "bad.toml"
    bad.write_text("format_version = 1\n[budgets]\nlatency_ms_p95 = -3\n[swap]\ncanary_windw = 5\n")
    code, out, _ = invoke("policy", "check", str(bad))
    assert code == 1 and out.startswith(f"{bad}: invalid policy (2 problems):")
    assert "budgets.latency_ms_p95: expected a positive number" in out and "did you mean 'canary_window'" in out
    code, out, _ = invoke("policy", "check", str(bad), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["valid"] is False and len(doc["problems"]) == 2 and doc["policy"] is None
    code, out, _ = invoke("policy", "check", str(tmp_path / "missing.toml"))
    assert code == 1 and "policy file not found" in out


def test_policy_show_file_preset_and_default(tmp_path: Path) -> None:
    code, out, _ = invoke("policy", "show", "--preset", "low-latency")
    assert code == 0 and out.startswith("# preset:low-latency\n") and 'name = "low-latency"' in out
    code, out, _ = invoke("policy", "show", "--preset", "low-latency", "--json")
    doc = json.loads(out)
    assert doc["policy"]["name"] == "low-latency" and doc["source"] == "preset:low-latency"
    mine = tmp_path / "p.toml"
    mine.write_text('format_version = 1\nname = "mine"\n')
    code, out, _ = invoke("policy", "show", str(mine))
    assert code == 0 and 'name = "mine"' in out and "[retention]" in out  # defaults filled in
    code, out, _ = invoke("policy", "show", "--state-dir", str(tmp_path / "empty"), "--json")
    doc = json.loads(out)
    assert doc["source"].startswith("preset:balanced (no policy file at") and doc["policy"]["name"] == "balanced"
    assert doc["policy"] == json.loads(json.dumps(__import__("policies").policy_to_dict(load_preset("balanced"))))
    code, _, err = invoke("policy", "show", str(mine), "--preset", "balanced")
    assert code == 2 and "not both" in err
    code, _, err = invoke("policy", "show", "--preset", "balancd")
    assert code == 2 and "did you mean 'balanced'" in err

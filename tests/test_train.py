from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_space import SMALL_SPACE

from lifelong.errors import CheckpointError, FormatVersionError, TrainingError
from lifelong.nn.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from lifelong.persist.digest import file_sha256
from lifelong.train.trainer import TrainConfig, _augment, lr_at, phase_of, supernet_recipe, train_supernet

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    epochs=3, warmup_epochs=1, int8_epochs=1, batch_size=32, max_train_samples=96, val_fraction=0.0, checkpoint_every=1
)


def test_phases_follow_the_schedule() -> None:
    cfg = TrainConfig(epochs=6, warmup_epochs=2, int8_epochs=1)
    assert [phase_of(cfg, e) for e in range(6)] == ["fp-warmup"] * 2 + ["int8"] + ["mixed"] * 3
    lrs = [lr_at(cfg, s, 1000) for s in range(1000)]
    assert max(lrs) == pytest.approx(cfg.lr, rel=1e-3) and lrs[-1] < 0.01 * cfg.lr and lrs[0] < lrs[50]


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(TrainingError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(TrainingError, match="lr must be"):
        TrainConfig(lr=-1)
    with pytest.raises(TrainingError, match=r"student_label must be in \[0, 1\], got 1.5"):
        TrainConfig(student_label=1.5)


def test_a_step_without_the_sandwich_trains_only_sampled_subnets_on_labels() -> None:
    """Uniform sampling: the smallest and ``n_random`` subnets, each on the labels' loss; with the
    sandwich, the largest comes first and the students' loss mixes labels in as configured."""
    import numpy as np

    from lifelong.nn.supernet import Supernet
    from lifelong.space.config import Precision, SearchSpace
    from lifelong.train.trainer import _sandwich_step, _uniform_step

    space = SearchSpace(SMALL_SPACE)
    model = Supernet(space).train()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    seen = []
    model.set_active_subnet = lambda cfg: (seen.append(cfg), Supernet.set_active_subnet(model, cfg))  # type: ignore[method-assign]
    precs = (Precision(),)
    losses = _uniform_step(model, space, x, y, np.random.default_rng(0), precs, TrainConfig(sandwich=False, n_random=2))
    assert len(losses) == 3 and space.largest(Precision()) not in seen and seen[0] == space.smallest(Precision())
    assert all(1.0 < v < 4.0 for v in losses), losses  # cross-entropy of an untrained net, about ln 10
    seen.clear()
    kd_only = _sandwich_step(
        model, space, x, y, np.random.default_rng(0), precs, TrainConfig(n_random=1, sandwich=True)
    )
    seen.clear()
    mixed = _sandwich_step(
        model, space, x, y, np.random.default_rng(0), precs, TrainConfig(n_random=1, sandwich=True, student_label=1.0)
    )
    assert seen[0] == space.largest(Precision()) and len(mixed) == 3
    assert kd_only[1:] != pytest.approx(mixed[1:], abs=1e-6)  # the students' loss changed with the labels' share


def test_a_recipe_recorded_before_the_sandwich_switch_reads_as_the_sandwich() -> None:
    import json
    from types import SimpleNamespace

    old = {k: v for k, v in TrainConfig(**TINY).to_dict().items() if k not in ("sandwich", "student_label")}
    ck = SimpleNamespace(train={"config": json.dumps(old)}, meta={"lineage": []})
    assert supernet_recipe(ck).sandwich is True  # type: ignore[arg-type]
    now = SimpleNamespace(train={"config": json.dumps(TrainConfig(**TINY).to_dict())}, meta={"lineage": []})
    assert supernet_recipe(now).sandwich is False  # type: ignore[arg-type]


def test_augment_keeps_shape_and_content() -> None:
    x = torch.rand(16, 1, 28, 28)
    y = _augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert not torch.equal(x, y)
    # a shift or flip moves pixels, it does not invent them: the brightest pixel survives mostly
    assert (y.flatten(1).max(1).values <= x.flatten(1).max(1).values + 1e-6).all()


@pytest.mark.slow
def test_training_learns_checkpoints_and_resumes_identically(fashion_train, tmp_path: Path) -> None:
    data = fashion_train.head(96)
    cfg = TrainConfig(**TINY)
    full = train_supernet(data, tmp_path / "a.pt", cfg, space=SMALL_SPACE, progress=False)
    assert [r["phase"] for r in full.record] == ["fp-warmup", "int8", "mixed"]
    ck = load_checkpoint(tmp_path / "a.pt")
    assert ck.complete and ck.train["step"] == 9
    # interrupted after 4 steps (inside the int8 phase), then resumed
    part = train_supernet(data, tmp_path / "b.pt", cfg, space=SMALL_SPACE, progress=False, stop_after_steps=4)
    assert not load_checkpoint(part.checkpoint).complete
    train_supernet(data, tmp_path / "b.pt", cfg, space=SMALL_SPACE, progress=False)
    a, b = load_checkpoint(tmp_path / "a.pt").state_dict, load_checkpoint(tmp_path / "b.pt").state_dict
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # an unfinished checkpoint with other settings is not silently resumed
    train_supernet(data, tmp_path / "c.pt", cfg, space=SMALL_SPACE, progress=False, stop_after_steps=1)
    with pytest.raises(TrainingError, match="other settings"):
        train_supernet(data, tmp_path / "c.pt", TrainConfig(**{**TINY, "lr": 0.01}), space=SMALL_SPACE, progress=False)


@pytest.mark.slow
def test_continuing_a_supernet_keeps_its_learned_quantizers(fashion_train, tmp_path: Path) -> None:
    data = fashion_train.head(96)
    base = train_supernet(data, tmp_path / "a.pt", TrainConfig(**TINY), space=SMALL_SPACE, progress=False).checkpoint
    more = dict(TINY, epochs=1, warmup_epochs=0, int8_epochs=0, n_random=2, init_from=str(base))
    # one step at a vanishing learning rate: the weights and every precision's step size stay
    # those of the base; re-initialising the quantizers or a precision transfer would move them
    tiny_lr = TrainConfig(**{**more, "lr": 1e-9, "epochs": 1})
    cont = train_supernet(
        data, tmp_path / "c.pt", tiny_lr, space=SMALL_SPACE, progress=False, stop_after_steps=1
    ).checkpoint
    a, c = load_checkpoint(base), load_checkpoint(cont)
    assert c.train["phase"] == "mixed" and c.meta["init_from_sha256"] == file_sha256(base)
    steps = [k for k in a.state_dict if ".steps." in k]
    assert len(steps) > 10
    learned = [k for k in a.state_dict if "running_" not in k and "num_batches" not in k]  # BN statistics move
    for k in learned:
        torch.testing.assert_close(
            c.state_dict[k], a.state_dict[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}"
        )
    # a real continuation trains in the mixed phase only and changes the weights
    done = train_supernet(data, tmp_path / "d.pt", TrainConfig(**more), space=SMALL_SPACE, progress=False)
    assert [r["phase"] for r in done.record] == ["mixed"]
    # baselines "trained for as many epochs as the supernet" count the base's 3 and these 1
    ck = load_checkpoint(done.checkpoint)
    assert [e["sha256"] for e in ck.meta["lineage"]] == [file_sha256(base)]
    assert supernet_recipe(ck) == TrainConfig(**{**TINY, "epochs": 4})
    # a checkpoint without the lineage in its metadata is traced through its init_from file
    ck.meta.pop("lineage")
    assert supernet_recipe(ck) == TrainConfig(**{**TINY, "epochs": 4})
    base.write_bytes(base.read_bytes() + b"changed")
    with pytest.raises(TrainingError, match="gone or changed"):
        supernet_recipe(ck)
    d = load_checkpoint(done.checkpoint).state_dict
    assert any(not torch.equal(d[k], a.state_dict[k]) for k in a.state_dict if k.endswith("weight"))


def test_continuing_needs_a_complete_supernet(fashion_train, tmp_path: Path) -> None:
    data = fashion_train.head(96)
    with pytest.raises(TrainingError, match="warmup_epochs and int8_epochs must be 0"):
        TrainConfig(**dict(TINY, init_from="x.pt"))
    more = dict(TINY, epochs=1, warmup_epochs=0, int8_epochs=0)
    with pytest.raises(TrainingError, match="no such checkpoint"):
        train_supernet(
            data,
            tmp_path / "c.pt",
            TrainConfig(**more, init_from=str(tmp_path / "none.pt")),
            space=SMALL_SPACE,
            progress=False,
        )
    part = train_supernet(
        data, tmp_path / "p.pt", TrainConfig(**TINY), space=SMALL_SPACE, progress=False, stop_after_steps=1
    ).checkpoint
    with pytest.raises(TrainingError, match="unfinished training"):
        train_supernet(
            data, tmp_path / "c.pt", TrainConfig(**more, init_from=str(part)), space=SMALL_SPACE, progress=False
        )


@pytest.mark.slow
def test_training_reduces_loss(fashion_train, tmp_path: Path) -> None:
    cfg = TrainConfig(
        epochs=2, warmup_epochs=2, int8_epochs=0, batch_size=64, max_train_samples=512, val_fraction=0.0, lr=0.05
    )
    rec = train_supernet(fashion_train, tmp_path / "s.pt", cfg, space=SMALL_SPACE, progress=False).record
    assert rec[1]["loss"] < rec[0]["loss"] < 2.3


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable lifelong checkpoint"):
        load_checkpoint(bad)
    torch.save({"kind": "lifelong-supernet", "format_version": CHECKPOINT_FORMAT + 1}, tmp_path / "v.pt")
    with pytest.raises(FormatVersionError, match="reads version 1"):
        load_checkpoint(tmp_path / "v.pt")
    torch.save({"kind": "something-else"}, tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match="not a lifelong supernet checkpoint"):
        load_checkpoint(tmp_path / "k.pt")


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"kind": "lifelong-supernet", "format_version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_round_trip_builds_the_same_model(tmp_path: Path) -> None:
    from lifelong.nn.checkpoint import Checkpoint
    from lifelong.nn.supernet import Supernet
    from lifelong.space.config import SearchSpace

    torch.manual_seed(0)
    model = Supernet(SearchSpace(SMALL_SPACE))
    save_checkpoint(tmp_path / "m.pt", Checkpoint(SMALL_SPACE, model.state_dict(), [{"epoch": 1}]))
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.record == [{"epoch": 1}] and not back.complete
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    rebuilt = back.build().eval()
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.slow
def test_kill_during_training_then_resume(fashion_train, tmp_path: Path) -> None:
    """A real process killed with SIGKILL mid-training resumes from its last checkpoint."""
    ckpt = tmp_path / "k.pt"
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        from lifelong.data.datasets import load_fashion_mnist
        from lifelong.space.config import SpaceConfig
        from lifelong.train.trainer import TrainConfig, train_supernet
        cfg = TrainConfig(epochs=3, warmup_epochs=1, int8_epochs=1, batch_size=32, max_train_samples=192,
                          val_fraction=0.0, checkpoint_every=2)
        space = SpaceConfig.from_dict({SMALL_SPACE.to_dict()!r})
        train_supernet(load_fashion_mnist("train"), {str(ckpt)!r}, cfg, space, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ckpt.exists():
            try:
                if load_checkpoint(ckpt).train["step"] >= 4:
                    break
            except CheckpointError:
                pass  # only a missing file can be seen here: writes are atomic
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = load_checkpoint(ckpt).train["step"]
    assert 4 <= killed_at < 18, "the kill should land mid-training"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming {ckpt} at step {killed_at}/18" in out.stdout
    final = load_checkpoint(ckpt)
    assert final.complete and final.train["step"] == 18 and len(final.record) >= 1


@pytest.mark.slow
def test_data_parallel_training_with_torchrun_gloo(tmp_path: Path) -> None:
    """Two gloo processes train one supernet: replicas end with identical weights, rank 0 writes."""
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, torch
            torch.set_num_threads(1)
            from lifelong.data.datasets import load_fashion_mnist
            from lifelong.space.config import SpaceConfig
            from lifelong.train.trainer import TrainConfig, train_supernet
            cfg = TrainConfig(epochs=2, warmup_epochs=1, int8_epochs=1, batch_size=32, max_train_samples=128,
                              val_fraction=0.0, checkpoint_every=100)
            space = SpaceConfig.from_dict({SMALL_SPACE.to_dict()!r})
            res = train_supernet(load_fashion_mnist("train"), {str(tmp_path / "ddp.pt")!r}, cfg, space, progress=False)
            params = {{k: v for k, v in res.model.named_parameters()}}
            torch.save(params, {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ddp = load_checkpoint(tmp_path / "ddp.pt")
    assert ddp.complete and ddp.train["step"] == 8
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    from lifelong.nn.supernet import Supernet
    from lifelong.space.config import SearchSpace

    init = dict(Supernet(SearchSpace(SMALL_SPACE)).named_parameters())
    moved = 0
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=lambda m, k=k: f"replicas differ at {k}: {m}")
        moved += not torch.equal(r0[k], init[k])
        torch.testing.assert_close(ddp.state_dict[k], r0[k], rtol=0, atol=0)
    assert moved > len(r0) // 2, "training did not change the weights"

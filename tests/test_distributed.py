"""Data-parallel training (selab.training.distributed): 2 CPU processes with gloo against 1 process.

The 2-process runs fork this test process (so that they start in a fraction of a second) and join a
gloo process group through the environment variables torchrun sets; one test starts the real
``python -m torch.distributed.run --nproc_per_node 2 -m selab train``.
"""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import selab.training.checkpoints
import selab.training.figures
import selab.training.loop
import selab.training.runs
from selab.training import distributed
from selab.training.config import TrainConfig
from selab.training.loop import run

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds a group of processes may take before the test fails (a hang, not a slow machine)


def tiny(tmp_path, name, **overrides):
    # 8 images, global batch 4: 2 steps per epoch; 3 validation images: the two processes score 2 and 1.
    options = dict(limit=8, val_limit=3, image_size=32, epochs=1, batch_size=4, progress=False, num_figures=2,
                   out_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"), n_segments=20, device="cpu",
                   model={"feature_channels": 8, "hidden_channels": 8, "num_layers": 2})
    options.update(overrides)
    return TrainConfig(**options)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _forbid(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process other than rank 0 called {name}")
    return refuse


def _worker(rank, world, port, config, interrupt, queue):
    """One process of a torchrun-like group: the environment torchrun would set, then selab.training.loop.run."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    try:
        if rank != 0:  # rank 0 alone writes the run folder
            for module, name in ((selab.training.checkpoints, "atomic_save"), (selab.training.runs, "atomic_write_text"),
                                 (selab.training.loop, "write_metrics"), (selab.training.loop, "write_config"),
                                 (selab.training.loop, "save_per_image"), (selab.training.figures, "_save_figure")):
                setattr(module, name, _forbid(f"{module.__name__}.{name}"))
        if interrupt is not None and rank == interrupt["rank"]:
            calls, original = {"n": 0}, selab.training.loop.compute_loss

            def loss_then_ctrl_c(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == interrupt["at"]:  # a real SIGINT, as torchrun forwards a Ctrl-C
                    os.kill(os.getpid(), signal.SIGINT)
                return original(*args, **kwargs)

            selab.training.loop.compute_loss = loss_then_ctrl_c
        result = run(TrainConfig.from_dict(config))
        queue.put((rank, "ok", {"epochs": result["epochs"], "final": result["final"]}))
    except KeyboardInterrupt:
        queue.put((rank, "interrupted", None))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))


def run_processes(config: TrainConfig, world: int = 2, interrupt: dict | None = None) -> dict:
    """``run(config)`` in ``world`` forked processes; {rank: (status, payload)}."""
    context = multiprocessing.get_context("fork")
    queue, port = context.Queue(), _free_port()
    processes = [context.Process(target=_worker, args=(r, world, port, config.to_dict(), interrupt, queue))
                 for r in range(world)]
    for process in processes:
        process.start()
    results = {}
    try:
        for _ in processes:
            rank, status, payload = queue.get(timeout=TIMEOUT)
            results[rank] = (status, payload)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return results


def weights(folder):
    return torch.load(Path(folder) / "checkpoints" / "last.pt", weights_only=True)["model"]


def records(result):
    """The per-epoch records without their wall-clock seconds."""
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in result["epochs"]]


def assert_all_ok(results):
    for rank, (status, payload) in sorted(results.items()):
        assert status == "ok", f"rank {rank}: {status}\n{payload}"


@pytest.mark.parametrize("variant", ["cnn", "graph_lstm"])
def test_two_processes_train_the_global_batch_of_one_process(tmp_path, variant):
    # Equal only where nothing depends on how the batch is split: no dropout, BatchNorm with its running
    # statistics (batchnorm="frozen"; per-process statistics are the documented difference), and SGD, whose
    # step is linear in the gradient (AdamW would magnify float rounding of near-zero gradients).
    model = {"feature_channels": 8, "hidden_channels": 8, "num_layers": 2, "dropout": 0.0, "batchnorm": "frozen"}
    options = dict(variant=variant, epochs=2, optimizer="sgd", lr=0.05, model=model)
    one = run(tiny(tmp_path, "one", **options))
    two = run_processes(tiny(tmp_path, "two", **options))
    assert_all_ok(two)
    assert records(two[0][1]) == records(two[1][1]), "the two processes report different results"
    epochs = two[0][1]["epochs"]
    assert [e["train_loss"] for e in epochs] == pytest.approx([e["train_loss"] for e in one["epochs"]], rel=1e-5)
    assert two[0][1]["final"]["mean_iou"] == pytest.approx(one["final"]["mean_iou"], abs=0.2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert sorted(a) == sorted(b), "a distributed checkpoint must hold the one-process model's keys"
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
    # the validation split was scored once per image, all images, in the split's order
    from selab.training.metrics import load_per_image

    ids_one, confusion_one = load_per_image(tmp_path / "one" / selab.training.metrics.PER_IMAGE_FILE)
    ids_two, confusion_two = load_per_image(tmp_path / "two" / selab.training.metrics.PER_IMAGE_FILE)
    assert ids_two.tolist() == ids_one.tolist() and len(ids_one) == 3
    assert confusion_two.sum() == confusion_one.sum()


SE_LSTM = dict(variant="se_lstm", lr_schedule="constant")


@pytest.fixture(scope="module")
def straight_se_lstm(tmp_path_factory):
    """A 2-process se_lstm run of 2 epochs (dropout and per-process BatchNorm on, as by default).

    A constant learning rate, so that a run of 1 epoch is the first half of it (the poly schedule
    depends on the number of epochs).
    """
    folder = tmp_path_factory.mktemp("straight")
    results = run_processes(tiny(folder, "run", **SE_LSTM, epochs=2))
    assert_all_ok(results)
    return folder / "run", results[0][1]


def test_a_two_process_run_resumes_at_an_epoch_boundary(tmp_path, straight_se_lstm):
    folder, straight = straight_se_lstm
    first = run_processes(tiny(tmp_path, "split", **SE_LSTM, epochs=1))
    assert_all_ok(first)
    written = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert written == ["checkpoints", "config.json", "figures", "metrics.csv", "metrics.json", "val_per_image.npz"]
    saved = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert len(saved["accumulators"]["ranks"]) == 2  # both processes' RNG states
    resumed = run_processes(tiny(tmp_path, "split", **SE_LSTM, epochs=2, resume=True))
    assert_all_ok(resumed)
    assert records(resumed[0][1]) == records(straight) == records(resumed[1][1])
    a, b = weights(folder), weights(tmp_path / "split")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_ctrl_c_in_one_process_stops_both_and_the_run_resumes(tmp_path, straight_se_lstm):
    folder, straight = straight_se_lstm
    # SIGINT reaches rank 1 only, during the first step: both processes stop after that step.
    stopped = run_processes(tiny(tmp_path, "split", **SE_LSTM, epochs=2), interrupt={"rank": 1, "at": 1})
    assert [stopped[r][0] for r in (0, 1)] == ["interrupted", "interrupted"], stopped
    checkpoint = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (0, 1)
    # a mid-epoch checkpoint of 2 processes does not continue in 1
    with pytest.raises(ValueError, match="mid-epoch by 2 process"):
        run(tiny(tmp_path, "split", **SE_LSTM, epochs=2, resume=True))
    resumed = run_processes(tiny(tmp_path, "split", **SE_LSTM, epochs=2, resume=True))
    assert_all_ok(resumed)
    assert records(resumed[0][1]) == records(straight)
    assert resumed[0][1]["final"] == straight["final"]
    a, b = weights(folder), weights(tmp_path / "split")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_torchrun_runs_selab_train_with_one_report(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "selab",
               "train", "--variant", "cnn", "--limit", "4", "--val-limit", "2", "--image-size", "32", "--epochs", "1",
               "--batch-size", "2", "--model-option", "feature_channels=8", "--quiet", "--device", "cpu",
               "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])  # one JSON report: rank 0's
    assert report["paths"]["run_dir"] == str(tmp_path / "run")
    for name in ("config.json", "metrics.json", "checkpoints/last.pt", "figures/curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert done.stdout.count("epoch 1/1") == 1


def test_the_global_batch_must_split_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="batch_size: 3 is the global batch.*multiple of 2"):
        distributed.setup(TrainConfig(batch_size=3, device="cpu"))
    with pytest.raises(ValueError, match="batchnorm: 'sync'.*GPUs only"):
        distributed.setup(TrainConfig(batch_size=4, device="cpu", model={"batchnorm": "sync"}))
    assert not dist.is_initialized()


def test_shards_of_an_epoch_make_its_global_batches(monkeypatch):
    order = ["a", "b", "c", "d", "e"]
    assert distributed.shard(order) == order  # one process: everything
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(order))
    # local batch 2 of a global batch 4: step k takes positions 4k..4k+3; the odd tail is padded with "a"
    assert parts == [["a", "c", "e"], ["b", "d", "a"]]
    assert distributed.derive_seed(7, 0) == 7 and distributed.derive_seed(7, 1) != distributed.derive_seed(7, 2)

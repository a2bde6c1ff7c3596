"""Tests for selab.training (the loop, config, optim, runs): run folders, resume, caches, two-step training, schedules, config checks."""

import json
import math
import os
import signal

import pytest
import torch

import selab.method.superpixels
import selab.training.loop

from selab.model.parser import SELabModel
from selab.seeds import seed_everything
from selab.training.checkpoints import load_model
from selab.training.config import LR_SCHEDULES, TrainConfig
from selab.training.evaluation import evaluate
from selab.training.loop import run
from selab.training.optim import build_scheduler, load_schedule


def tiny(tmp_path, name, **overrides):
    options = dict(limit=4, val_limit=2, image_size=32, epochs=1, batch_size=2, progress=False,
                   out_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"), n_segments=20,
                   model={"feature_channels": 8, "hidden_channels": 8})
    options.update(overrides)
    return TrainConfig(**options)


def test_run_writes_the_run_folder(tmp_path):
    result = run(tiny(tmp_path, "cnn"))
    folder = tmp_path / "cnn"
    for name in ("config.json", "metrics.json", "metrics.csv", "checkpoints/last.pt", "figures/curves.png",
                 "figures/predictions.png"):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / "metrics.json").read_text())
    assert len(saved["epochs"]) == 1 and saved["final"]["mean_iou"] == result["final"]["mean_iou"]
    assert set(result["final"]["per_class_iou"]) == {"background", "head", "torso", "upper_arm", "lower_arm",
                                                       "upper_leg", "lower_leg"}
    assert 0 <= result["final"]["pixel_accuracy"] <= 100


@pytest.mark.parametrize("variant,interrupt_at", [("graph_lstm", 3), ("se_lstm", 2)])
def test_ctrl_c_then_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, variant, interrupt_at):
    model = {"feature_channels": 8, "hidden_channels": 8, "num_layers": 2}
    straight = run(tiny(tmp_path, "straight", variant=variant, epochs=2, model=model))

    calls = {"n": 0}
    original = selab.training.loop.compute_loss

    def loss_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == interrupt_at:  # a real SIGINT, as from Ctrl-C, in the middle of an epoch
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(selab.training.loop, "compute_loss", loss_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(tiny(tmp_path, "split", variant=variant, epochs=2, model=model))
    checkpoint = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == divmod(interrupt_at, 2)
    monkeypatch.setattr(selab.training.loop, "compute_loss", original)
    resumed = run(tiny(tmp_path, "split", variant=variant, epochs=2, resume=True, model=model))
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in straight["epochs"]]
    assert resumed["final"] == straight["final"]
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_frozen_backbone_caches_features_and_evaluates(tmp_path):
    config = tiny(tmp_path, "frozen", variant="graph_lstm", freeze_backbone=True)
    assert config.use_feature_cache
    run(config)
    cached = list((tmp_path / "cache" / "features").rglob("*.pt"))
    assert len(cached) == 4 + 2  # training and validation images
    features = torch.load(cached[0], weights_only=True)
    assert isinstance(features, list) and features[0].dtype == torch.float16
    out = tmp_path / "eval.json"
    metrics = evaluate(tmp_path / "frozen", dataset="synthetic", split="val", limit=2, out=str(out), progress=False)
    assert json.loads(out.read_text())["mean_iou"] == metrics["mean_iou"]
    model, checkpoint = load_model(tmp_path / "frozen")
    assert model.config.variant == "graph_lstm" and checkpoint["epoch"] == 1


def test_superpixels_are_computed_once_and_reused(tmp_path, monkeypatch):
    calls = []
    real_slic = selab.method.superpixels.slic

    def counting_slic(*args, **kwargs):
        calls.append(1)
        return real_slic(*args, **kwargs)

    monkeypatch.setattr(selab.method.superpixels, "slic", counting_slic)
    run(tiny(tmp_path, "first", variant="graph_lstm"))
    cached = list((tmp_path / "cache" / "superpixels").rglob("*.npy"))
    assert len(cached) == len(calls) == 4 + 2  # each training and validation image once
    run(tiny(tmp_path, "second", variant="graph_lstm", epochs=2))
    assert len(calls) == 6  # the second run reads them all from the cache


def test_two_step_training_first_trains_the_confidence_layer(tmp_path):
    """Step one moves only the CNN (backbone, neck) and the confidence layer; step two moves the graph part."""
    config = tiny(tmp_path, "twostep", variant="graph_lstm", epochs=1, two_step_epochs=1)
    seed_everything(config.seed)  # the initial weights, as run() draws them
    initial = SELabModel(config.model).state_dict()
    first = run(config)
    after_one = torch.load(tmp_path / "twostep/checkpoints/last.pt", weights_only=True)["model"]
    second = run(tiny(tmp_path, "twostep", variant="graph_lstm", epochs=2, two_step_epochs=1, resume=True))
    after_two = torch.load(tmp_path / "twostep/checkpoints/last.pt", weights_only=True)["model"]
    assert [e["stage"] for e in first["epochs"]] == ["confidence"]
    assert [e["stage"] for e in second["epochs"]] == ["confidence", "all"]

    def moved(before, after):
        return {key.split(".")[0] for key in before if before[key].is_floating_point()
                and not torch.equal(before[key], after[key])}

    cnn = {"backbone", "neck", "confidence"}
    assert "confidence" in moved(initial, after_one) and moved(initial, after_one) <= cnn
    assert moved(after_one, after_two) - cnn, "step two trains the graph layers and the classifier"


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_lr_schedules_follow_their_formulas(schedule):
    def sgd():
        return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (3e-3, 3e-4)])

    optimizer = sgd()
    scheduler = build_scheduler(optimizer, TrainConfig(epochs=3, lr_schedule=schedule), steps_per_epoch=7)
    for step in range(21):
        t = step / 21
        factor = {"poly": (1 - t) ** 0.9, "cosine": 0.5 * (1 + math.cos(math.pi * t)), "constant": 1.0}[schedule]
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3e-3 * factor, 3e-4 * factor], rel=1e-9)
        optimizer.step()
        scheduler.step()
    # a run resumed with more epochs continues on the longer curve, also from a rate its old length ended at 0
    optimizer = sgd()
    short = build_scheduler(optimizer, TrainConfig(epochs=1, lr_schedule=schedule), steps_per_epoch=7)
    for _ in range(7):
        optimizer.step()
        short.step()
    longer = build_scheduler(optimizer, TrainConfig(epochs=3, lr_schedule=schedule), steps_per_epoch=7)
    load_schedule(longer, short.state_dict())
    factor = {"poly": (2 / 3) ** 0.9, "cosine": 0.5 * (1 + math.cos(math.pi / 3)), "constant": 1.0}[schedule]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3e-3 * factor, 3e-4 * factor], rel=1e-9)


def test_resume_refuses_a_changed_config(tmp_path):
    run(tiny(tmp_path, "a"))
    with pytest.raises(ValueError, match="lr"):
        run(tiny(tmp_path, "a", lr=0.5, resume=True))


@pytest.mark.parametrize("field,value", [("dataset", "imagenet"), ("image_size", 4), ("optimizer", "adam"),
                                         ("epochs", -1), ("limit", 0), ("model", {"nope": 1})])
def test_config_names_the_bad_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_real_data_needs_a_root():
    with pytest.raises(ValueError, match="data_root"):
        TrainConfig(dataset="pascal_person_part")


def test_pascal_evaluation_uses_full_resolution_masks(tmp_path, pascal_root):
    config = tiny(tmp_path, "pascal", dataset="pascal_person_part", data_root=str(pascal_root), epochs=1)
    result = run(config)
    assert result["final"]["mean_iou"] >= 0
    metrics = evaluate(tmp_path / "pascal", dataset="pascal_person_part", data_root=str(pascal_root), split="val",
                       limit=2, progress=False)
    assert metrics["num_images"] == 2 and metrics["image_size"] == 32


@pytest.mark.parametrize("variant", ["cnn", "graph_lstm", "se_lstm"])
def test_bf16_training_runs_with_finite_losses(tmp_path, variant):
    """precision="bf16": autocast on the CPU, through the Graph LSTM level loop and the MH sampler for se_lstm."""
    model = {"feature_channels": 8, "hidden_channels": 8, "num_layers": 2}
    result = run(tiny(tmp_path, "bf16", variant=variant, epochs=2, precision="bf16", model=model))
    losses = [e["train_loss"] for e in result["epochs"]]
    assert all(math.isfinite(loss) for loss in losses) and math.isfinite(result["final"]["mean_iou"])
    fp32 = run(tiny(tmp_path, "fp32", variant=variant, epochs=2, model=model))
    assert losses != [e["train_loss"] for e in fp32["epochs"]]  # bf16 did compute in another precision
    weights = torch.load(tmp_path / "bf16/checkpoints/last.pt", weights_only=True)["model"]
    assert all(w.dtype != torch.bfloat16 for w in weights.values())  # the weights stay float32


def test_the_model_stream_lives_on_the_models_device():
    from selab.seeds import MODEL, epoch_generator

    a, b = epoch_generator(3, 1, MODEL), epoch_generator(3, 1, MODEL, torch.device("cpu"))
    assert a.device.type == "cpu" and torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    if torch.cuda.is_available():
        assert epoch_generator(3, 1, MODEL, "cuda").device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_se_lstm_trains_and_resumes_on_cuda(tmp_path, monkeypatch, precision):
    model = {"feature_channels": 8, "hidden_channels": 8, "num_layers": 2}
    options = dict(variant="se_lstm", epochs=2, device="cuda", precision=precision, model=model)
    straight = run(tiny(tmp_path, "straight", **options))
    assert all(math.isfinite(e["train_loss"]) for e in straight["epochs"])
    calls, original = {"n": 0}, selab.training.loop.compute_loss

    def loss_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(selab.training.loop, "compute_loss", loss_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(tiny(tmp_path, "split", **options))
    monkeypatch.setattr(selab.training.loop, "compute_loss", original)
    resumed = run(tiny(tmp_path, "split", resume=True, **options))
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx(
        [e["train_loss"] for e in straight["epochs"]], rel=1e-5)  # CUDA kernels need not be deterministic


def test_a_mid_epoch_state_of_another_device_kind_is_a_clear_error(tmp_path):
    cuda_like_state = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes, a CPU one's 5056
    with pytest.raises(ValueError, match="another kind of device"):
        selab.training.loop._restore_generator(torch.Generator(), cuda_like_state, tmp_path / "last.pt")

import json
import os
import signal

import pytest
import torch

import selab.superpixels
import selab.train

from selab.train import TrainConfig, evaluate, load_model, run


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
    original = selab.train.compute_loss

    def loss_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == interrupt_at:  # a real SIGINT, as from Ctrl-C, in the middle of an epoch
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(selab.train, "compute_loss", loss_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(tiny(tmp_path, "split", variant=variant, epochs=2, model=model))
    checkpoint = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == divmod(interrupt_at, 2)
    monkeypatch.setattr(selab.train, "compute_loss", original)
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
    real_slic = selab.superpixels.slic

    def counting_slic(*args, **kwargs):
        calls.append(1)
        return real_slic(*args, **kwargs)

    monkeypatch.setattr(selab.superpixels, "slic", counting_slic)
    run(tiny(tmp_path, "first", variant="graph_lstm"))
    cached = list((tmp_path / "cache" / "superpixels").rglob("*.npy"))
    assert len(cached) == len(calls) == 4 + 2  # each training and validation image once
    run(tiny(tmp_path, "second", variant="graph_lstm", epochs=2))
    assert len(calls) == 6  # the second run reads them all from the cache


def test_two_step_training_first_trains_the_confidence_layer(tmp_path):
    result = run(tiny(tmp_path, "twostep", variant="graph_lstm", epochs=2, two_step_epochs=1))
    assert [e["stage"] for e in result["epochs"]] == ["confidence", "all"]


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

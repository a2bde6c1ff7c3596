"""Evaluation of trained runs: per-image confusions, the hierarchy at test time, test-time options."""

import pytest

from selab.training.metrics import PER_IMAGE_FILE, load_per_image
from selab.training.config import TrainConfig
from selab.training.evaluation import evaluate
from selab.training.loop import run


@pytest.fixture(scope="module")
def se_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "se"
    run(TrainConfig(variant="se_lstm", epochs=1, limit=8, val_limit=4, image_size=48, out_dir=str(out),
                    progress=False, model={"num_layers": 3, "hidden_channels": 16}))
    return out


def test_training_saves_per_image_confusions_and_the_hierarchy(se_run):
    import json

    final = json.loads((se_run / "metrics.json").read_text())["final"]
    ids, confusion = load_per_image(se_run / PER_IMAGE_FILE)
    assert len(ids) == 4 and confusion.shape == (4, 7, 7)
    # The per-image matrices add up to the split's: same score.
    from selab.training.metrics import scores_from_confusion
    assert scores_from_confusion(confusion.sum(0))["mean_iou"] == pytest.approx(final["mean_iou"])
    nodes, purity = final["hierarchy"]["mean_nodes_per_image"], final["hierarchy"]["purity"]
    assert len(nodes) == 3 and all(a >= b for a, b in zip(nodes, nodes[1:]))
    assert all(0 < p <= 1 for p in purity) and all(a >= b - 1e-12 for a, b in zip(purity, purity[1:]))


def test_evaluate_with_test_time_options(se_run, tmp_path):
    greedy = evaluate(se_run, dataset="synthetic", progress=False, per_image_out=str(tmp_path / "g.npz"))
    again = evaluate(se_run, dataset="synthetic", progress=False)
    assert greedy["mean_iou"] == again["mean_iou"], "greedy test-time structure is deterministic"
    sampled = evaluate(se_run, dataset="synthetic", progress=False,
                       model_options={"eval_samples": 2, "evolution": {"eval_mode": "mh"}})
    assert 0 <= sampled["mean_iou"] <= 100 and len(sampled["hierarchy"]["purity"]) == 3
    unmerged = evaluate(se_run, dataset="synthetic", progress=False, model_options={"evolution": {"eval_mode": "none"}})
    assert unmerged["hierarchy"]["mean_nodes_per_image"] == [unmerged["hierarchy"]["mean_nodes_per_image"][0]] * 3
    ids, confusion = load_per_image(tmp_path / "g.npz")
    assert len(ids) == greedy["num_images"] and (confusion.sum(axis=(1, 2)) > 0).all()
    with pytest.raises(ValueError, match="hidden_channels"):
        evaluate(se_run, dataset="synthetic", progress=False, model_options={"hidden_channels": 8})


def test_flip_test_time_augmentation_averages_the_mirror_images_logits(se_run, tmp_path):
    import torch

    from selab.training.metrics import confusion_matrix
    from selab.data.prepare import to_device
    from selab.training.loaders import evaluation_loader
    from selab.training.checkpoints import load_model
    from selab.training.evaluation import evaluate_model, mirrored

    model, checkpoint = load_model(se_run)
    config = TrainConfig.from_dict(dict(checkpoint["train_config"], resume=False, progress=False))
    loader = evaluation_loader(config, model)
    with torch.no_grad():
        # Centre each class's logits, so that the argmax follows the (left-right asymmetric) spatial detail
        # and the mirror image's logits change predictions: else the test could not tell flip from no flip.
        data = to_device(next(iter(loader)), "cpu")
        model.classifier.bias -= model(data).logits.mean((0, 2, 3))
    per_image = []
    evaluate_model(model, loader, "cpu", per_image=per_image, flip=True)
    expected, plain = [], []
    with torch.no_grad():
        for data in loader:
            data = to_device(data, "cpu")
            mirror = mirrored(data)
            assert torch.equal(mirror["image"], data["image"].flip(-1))
            assert torch.equal(mirrored(mirror)["superpixels"], data["superpixels"])
            single = model(data).logits
            logits = (single + model(mirror).logits.flip(-1)) / 2
            for b, mask in enumerate(data["full_masks"]):
                for scores, into in ((logits, expected), (single, plain)):
                    up = torch.nn.functional.interpolate(scores[b : b + 1], size=tuple(mask.shape), mode="bilinear",
                                                         align_corners=False)
                    into.append(confusion_matrix(up[0].argmax(0), mask, model.config.num_classes))
    assert len(per_image) == len(expected) == 4
    assert any(not torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(expected, plain))
    for (_, got), want in zip(per_image, expected):
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))
    result = evaluate(se_run, dataset="synthetic", progress=False, tta="flip")
    assert result["test_time_augmentation"] == "flip"
    assert evaluate(se_run, dataset="synthetic", progress=False)["test_time_augmentation"] is None
    with pytest.raises(ValueError, match="tta"):
        evaluate(se_run, dataset="synthetic", progress=False, tta="zoom")


def test_rescaled_inputs_keep_the_superpixel_partition():
    import torch

    from selab.training.evaluation import rescaled, tta_sizes

    assert tta_sizes(320, (0.75, 1.0, 1.25), 32) == [256, 320, 416]
    assert tta_sizes(48, (0.5, 1.0, 2.0), 16) == [32, 48, 96] and tta_sizes(50, (1.0, 0.1), 16) == [50, 16]
    assert tta_sizes(64, (0.75, 1.0, 1.25), 32) == [64, 96]  # 0.75 x 64 rounds to 64: one pass, not two
    # Four superpixels (2 x 2 blocks of an 8 x 8 map); label 0 is also the bottom-right corner block.
    superpixels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 0]]).repeat_interleave(2, 0)
    superpixels = superpixels.repeat_interleave(2, 1)[None]
    full = torch.rand(3, 24, 16)
    data = {"image": torch.rand(1, 3, 8, 8), "full_images": [full], "superpixels": superpixels}
    big = rescaled(data, 16)
    from selab.data.datasets import resize_image
    assert torch.equal(big["image"][0], resize_image(full, 16))
    # Each 8 x 8 block keeps its place; the lone corner pixel of label 0 is a node of its own (5 nodes).
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 4]])
    assert torch.equal(big["superpixels"][0], expected.repeat_interleave(4, 0).repeat_interleave(4, 1))
    small = rescaled({**data, "features": [torch.rand(1, 4, 1, 1)]}, 4)
    assert "features" not in small and small["superpixels"].shape == (1, 4, 4)
    assert small["superpixels"].unique().tolist() == list(range(int(small["superpixels"].max()) + 1))


def test_multiscale_test_time_augmentation_averages_every_scales_logits(se_run):
    import torch
    import torch.nn.functional as F

    from selab.training.metrics import confusion_matrix
    from selab.data.prepare import to_device
    from selab.training.loaders import evaluation_loader
    from selab.training.checkpoints import load_model
    from selab.training.evaluation import evaluate_model, mirrored, rescaled

    model, checkpoint = load_model(se_run)
    config = TrainConfig.from_dict(dict(checkpoint["train_config"], resume=False, progress=False))
    loader = evaluation_loader(config, model)
    with torch.no_grad():
        data = to_device(next(iter(loader)), "cpu")
        model.classifier.bias -= model(data).logits.mean((0, 2, 3))  # predictions follow the spatial detail
    scales, sizes = (0.5, 1.0, 1.5), (32, 48, 80)  # 48 px images, the small backbone's stride 16
    for flip in (False, True):
        per_image = []
        evaluate_model(model, loader, "cpu", per_image=per_image, flip=flip, scales=scales)
        expected, plain = [], []
        with torch.no_grad():
            for data in loader:
                data = to_device(data, "cpu")
                passes = []
                for size in sizes:
                    inputs = data if size == 48 else rescaled(data, size)
                    logits = model(inputs).logits
                    assert logits.shape[-1] == size
                    if flip:
                        logits = (logits + model(mirrored(inputs)).logits.flip(-1)) / 2
                    passes.append(logits)
                for b, mask in enumerate(data["full_masks"]):
                    up = [F.interpolate(p[b : b + 1], size=tuple(mask.shape), mode="bilinear", align_corners=False)
                          for p in passes]
                    expected.append(confusion_matrix(((up[1] + up[0] + up[2]) / 3)[0].argmax(0), mask, 7))
                    plain.append(confusion_matrix(up[1][0].argmax(0), mask, 7))
        assert len(per_image) == len(expected) == 4
        assert any(not torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(expected, plain))
        for (_, got), want in zip(per_image, expected):
            assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))


def test_evaluate_records_which_test_time_augmentation(se_run, tmp_path, capsys):
    import json

    from selab.cli import main

    single = evaluate(se_run, dataset="synthetic", progress=False)
    assert single["test_time_augmentation"] is None and single["tta_scales"] is None and single["tta_sizes"] is None
    scaled = evaluate(se_run, dataset="synthetic", progress=False, tta="scale", tta_scales=(1, 2))
    assert scaled["test_time_augmentation"] == "scale"
    assert scaled["tta_scales"] == [1.0, 2.0] and scaled["tta_sizes"] == [48, 96]
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(se_run), "--dataset", "synthetic", "--quiet", "--out", str(out),
                 "--tta", "flip,scale", "--tta-scales", "0.75,1"]) == 0
    recorded = json.loads(out.read_text())
    assert recorded["test_time_augmentation"] == "flip,scale" and recorded["tta_sizes"] == [32, 48]
    for bad in ((0.75, 1.25), (1, -1), (1, 1), "x"):
        with pytest.raises(ValueError, match="tta_scales"):
            evaluate(se_run, dataset="synthetic", progress=False, tta="scale", tta_scales=bad)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", str(se_run), "--tta", "scale", "--tta-scales", "1,big"])
    assert "--tta-scales" in capsys.readouterr().err

"""Evaluation of trained runs: per-image confusions, the hierarchy at test time, test-time options."""

import pytest

from selab.metrics import PER_IMAGE_FILE, load_per_image
from selab.train import TrainConfig, evaluate, run


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
    from selab.metrics import scores_from_confusion
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

    from selab.metrics import confusion_matrix
    from selab.prepare import evaluation_loader, to_device
    from selab.train import evaluate_model, load_model, mirrored

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
        evaluate(se_run, dataset="synthetic", progress=False, tta="scale")

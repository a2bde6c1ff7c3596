"""Tests for selab.data.augment and end-to-end training: the paper's augmentation of image, mask and superpixels,
seeded per epoch, and a trained backbone with its own learning rate."""

import os
import signal

import numpy as np
import pytest
import skimage.graph
import torch

import selab.training.loop
from selab.data.augment import Augmentation, person_box, renumber
from selab.model.parser import SELabModel
from selab.training.loaders import TrainingData
from selab.seeds import seed_everything
from selab.method.superpixels import adjacency, check_labels, slic
from selab.data.synthetic import SyntheticPersonParts
from selab.training.config import TrainConfig
from selab.training.loop import run
from selab.training.optim import build_optimizer

NO_COLOUR = Augmentation(intensity=(1.0, 1.0), channel=0.0)


def _draws(augmentation, n, seed=0):
    return augmentation.draws(n, torch.Generator().manual_seed(seed))


def test_renumber_splits_fragments_and_numbers_consecutively():
    labels = torch.tensor([[7, 7, 3, 7],
                           [3, 3, 3, 7]])
    out = renumber(labels)
    assert out.tolist() == [[0, 0, 1, 2], [1, 1, 1, 2]]  # the two pieces of 7 are two nodes


@pytest.mark.parametrize("seed", range(4))
def test_augmented_superpixels_are_a_valid_partition_with_its_adjacency(seed):
    sample = SyntheticPersonParts(1, 64, seed=seed)[0]
    superpixels = torch.from_numpy(slic(sample["image"], n_segments=60))
    for row, flip in zip(_draws(Augmentation(), 3, seed), (False, True, True)):
        out = Augmentation()(sample["image"], sample["mask"], superpixels, 48, row, flip)["superpixels"]
        n = check_labels(out)  # 0..N-1, no gaps
        assert n == int(out.max()) + 1 and bool((torch.bincount(out.flatten()) > 0).all())
        # every node is one connected region: renumbering again splits nothing
        assert torch.equal(renumber(out), out)
        edges = adjacency(out)
        assert edges.shape[0] == 2 and bool((edges[0] < edges[1]).all()) and int(edges.max()) < n
        rag = skimage.graph.RAG(out.numpy(), connectivity=1)
        assert {tuple(e) for e in edges.T.tolist()} == {tuple(sorted(e)) for e in rag.edges}
        # every node of a connected partition with more than one node has a neighbour
        assert n == 1 or set(edges.flatten().tolist()) == set(range(n))


def _position_coded(height=96, width=128, block=(12, 16), size=32):
    """An image whose red/green channels hold the pixel's x/y, a mask and superpixels that are functions of it.

    The mask's blocks (``block`` pixels at full resolution) and the S x S superpixels' 4 x 4 blocks are the same
    regions of the image, so each superpixel should cover one mask value.
    """
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([(x + 0.5) / width, (y + 0.5) / height, torch.full((height, width), 0.5)])
    mask = ((y // block[0]) + (x // block[1])) % 7
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    superpixels = (ys // 4) * (size // 4) + xs // 4
    return image, mask, superpixels


@pytest.mark.parametrize("flip", [False, True])
def test_mask_and_superpixels_stay_aligned_with_the_image(flip):
    height, width, block, size = 96, 128, (12, 16), 32
    image, mask, superpixels = _position_coded(height, width, block, size)
    for row in _draws(NO_COLOUR, 8, seed=int(flip)):
        out = NO_COLOUR(image, mask, superpixels, size, row, flip)
        # where the image says each output pixel came from, the mask must hold that place's class
        x, y = out["image"][0] * width, out["image"][1] * height
        expected = ((y // block[0]).long() + (x // block[1]).long()) % 7
        assert (expected == out["mask"]).float().mean() > 0.9
        # each superpixel covers one mask value (their blocks are the same regions of the image)
        sp, m = out["superpixels"].flatten(), out["mask"].flatten()
        counts = torch.zeros(int(sp.max()) + 1, 7).index_put_((sp, m), torch.ones(len(sp)), accumulate=True)
        assert counts.max(dim=1).values.sum() / len(sp) > 0.99


def test_the_flip_mirrors_the_window():
    image, mask, superpixels = _position_coded()
    row = _draws(NO_COLOUR, 1)[0]
    plain = NO_COLOUR(image, mask, superpixels, 32, row, flip=False)
    mirrored = NO_COLOUR(image, mask, superpixels, 32, row, flip=True)
    torch.testing.assert_close(mirrored["image"], plain["image"].flip(-1))
    assert torch.equal(mirrored["mask"], plain["mask"].flip(-1))


def test_crops_centre_on_the_people():
    mask = torch.zeros(200, 200, dtype=torch.long)
    mask[10:30, 150:170] = 1  # one small person in a corner: 1 % of the image
    assert person_box(mask) == pytest.approx((-0.9, -0.7, 0.5, 0.7))
    image = torch.rand(3, 200, 200)
    for row in _draws(Augmentation(), 20):
        out = Augmentation()(image, mask, None, 64, row)
        assert (out["mask"] > 0).float().mean() > 0.1
    # without a person: the image's centre, at most the full image
    out = Augmentation()(image, torch.zeros(200, 200, dtype=torch.long), None, 64, _draws(Augmentation(), 1)[0])
    assert out["image"].shape == (3, 64, 64) and bool((out["mask"] == 0).all())


def test_colour_intensity_scaling_stays_in_range_and_changes_the_image():
    image = torch.full((3, 40, 40), 0.5)
    mask = torch.ones(40, 40, dtype=torch.long)
    factors = []
    for row in _draws(Augmentation(), 10):
        out = Augmentation()(image, mask, None, 40, row)["image"]
        assert 0 <= float(out.min()) and float(out.max()) <= 1
        factors.append(out.mean(dim=(1, 2)) / 0.5)
    factors = torch.stack(factors)
    assert float(factors.min()) >= 0.75 * 0.9 - 1e-6 and float(factors.max()) <= 1.25 * 1.1 + 1e-6
    assert float(factors.std()) > 0.05


def _tiny(tmp_path, name, **overrides):
    options = dict(variant="graph_lstm", limit=4, val_limit=2, image_size=32, epochs=1, batch_size=2,
                   progress=False, num_figures=0, out_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"),
                   n_segments=20, freeze_backbone=False, augmentation="paper",
                   model={"feature_channels": 8, "hidden_channels": 8})
    options.update(overrides)
    return TrainConfig(**options)


def test_an_epochs_augmentation_depends_only_on_seed_and_epoch(tmp_path):
    config = _tiny(tmp_path, "data")
    seed_everything(0)
    data = TrainingData(config, SELabModel(config.model))

    def batches(epoch, start_step=0):
        return list(data.loader(epoch, data.permutation(epoch), start_step))

    first, again, other = batches(0), batches(0), batches(1)
    for a, b in zip(first, again):
        for key in ("image", "mask", "superpixels"):
            assert torch.equal(a[key], b[key]), key
    assert torch.equal(batches(0, start_step=1)[0]["image"], first[1]["image"])  # a resumed epoch
    assert not torch.equal(torch.cat([b["image"] for b in other]), torch.cat([b["image"] for b in first]))
    # the paper's augmentation changes what the flips alone would give
    flips_only = TrainingData(_tiny(tmp_path, "flips", augmentation="flip"), SELabModel(config.model))
    plain = list(flips_only.loader(0, flips_only.permutation(0)))
    assert not torch.equal(plain[0]["image"], first[0]["image"])


def test_end_to_end_training_moves_the_backbone_and_resumes_exactly(tmp_path, monkeypatch):
    config = _tiny(tmp_path, "straight")
    seed_everything(config.seed)
    initial = SELabModel(config.model).backbone.state_dict()
    run(config)
    trained = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model"]
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained[f"backbone.{k}"])]
    assert "stride8.0.0.weight" in moved and "stride16.1.0.weight" in moved

    original, calls = selab.training.loop.compute_loss, {"n": 0}

    def loss_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # Ctrl-C during the first of the epoch's two steps
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(selab.training.loop, "compute_loss", loss_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(_tiny(tmp_path, "split"))
    monkeypatch.setattr(selab.training.loop, "compute_loss", original)
    assert torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)["step"] == 1
    resumed = run(_tiny(tmp_path, "split", resume=True))
    straight = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    assert resumed["epochs"][0]["train_loss"] == straight["history"][0]["train_loss"]
    final = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)["model"]
    for key in trained:
        torch.testing.assert_close(final[key], trained[key], rtol=0, atol=0)


def test_parameter_groups_give_the_pretrained_backbone_its_own_learning_rate():
    paper = dict(backbone="efficientnet_lite0", lr=1e-3, backbone_lr_scale=0.1, optimizer="sgd")

    def rates(**options):
        config = TrainConfig(**options)
        model = SELabModel(config.model)
        groups = build_optimizer(model, config).param_groups
        backbone = {id(p) for p in model.backbone.parameters()}
        return [(g["lr"], all(id(p) in backbone for p in g["params"])) for g in groups]

    assert rates(**paper, freeze_backbone=False) == [(1e-3, False), (pytest.approx(1e-4), True)]
    assert rates(**paper, freeze_backbone=True) == [(1e-3, False)]  # frozen: no backbone group
    assert rates(**paper, freeze_backbone=False, model={"pretrained": False}) == [(1e-3, False), (1e-3, True)]
    assert rates(backbone="small", lr=1e-3, backbone_lr_scale=0.1) == [(1e-3, False), (1e-3, True)]  # from scratch


def test_efficientnet_lite0_trains_end_to_end_with_the_papers_augmentation(tmp_path):
    config = _tiny(tmp_path, "lite0", variant="cnn", backbone="efficientnet_lite0", limit=2, val_split=None,
                   lr=1e-3, optimizer="sgd")
    run(config)
    checkpoint = torch.load(tmp_path / "lite0/checkpoints/last.pt", weights_only=True)
    assert [g["initial_lr"] for g in checkpoint["optimizer"]["param_groups"]] == [1e-3, pytest.approx(1e-4)]
    pretrained = SELabModel(config.model).backbone.state_dict()
    stem = "net._conv_stem.weight"
    assert not torch.equal(checkpoint["model"][f"backbone.{stem}"], pretrained[stem])


def test_the_papers_augmentation_needs_uncached_features():
    with pytest.raises(ValueError, match="TrainConfig.augmentation"):
        TrainConfig(backbone="efficientnet_lite0", augmentation="paper")  # frozen, cached features
    TrainConfig(backbone="efficientnet_lite0", augmentation="paper", cache_features=False)
    TrainConfig(backbone="efficientnet_lite0", augmentation="paper", augment=False)
    with pytest.raises(ValueError, match="TrainConfig.augmentation"):
        TrainConfig(augmentation="crop")

"""Partial fine-tuning (``ModelConfig.finetune_after_stride``): the frozen backbone's later blocks train."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selab.workbench import pretrained
from selab.model.backbones import EfficientNetLiteBackbone, load_efficientnet_lite
from selab.model.config import ModelConfig
from selab.model.parser import SELabModel, build_model
from selab.training.checkpoints import load_checkpoint
from selab.training.config import TrainConfig
from selab.training.loop import run
from selab.training.optim import build_optimizer


@pytest.fixture(scope="module")
def batch(synthetic_batch):
    return synthetic_batch(64, seed=5, n_segments=30)


def _partial(variant="graph_lstm", stride=8, **options):
    torch.manual_seed(0)
    return build_model(dict(variant=variant, backbone="efficientnet_lite0", freeze_backbone=True,
                            finetune_after_stride=stride, feature_channels=8, hidden_channels=8, n_segments=30,
                            **options))


def _block_index(name: str) -> int:
    return int(name.split("net._blocks.")[1].split(".")[0])


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("stride", [8, 16])
def test_forward_from_continues_the_frozen_maps_exactly(level, stride):
    net = EfficientNetLiteBackbone(level, pretrained=False).eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full = net(image)
        frozen = net(image, until_stride=stride)
        resumed = net.forward_from(frozen, stride)
    assert len(frozen) == net.strides.index(stride) + 1
    assert len(resumed) == len(full) and all(torch.equal(a, b) for a, b in zip(resumed, full))
    # a longer list (a full feature cache) is cut to the frozen maps: the later maps are computed again
    stale = [m.clone() for m in full[:len(frozen)]] + [torch.zeros_like(m) for m in full[len(frozen):]]
    assert all(torch.equal(a, b) for a, b in zip(net.forward_from(stale, stride), full))
    with pytest.raises(ValueError, match="maps up to stride"):
        net.forward_from(frozen[:0], stride)
    with pytest.raises(ValueError, match="stride must be one of"):
        net.blocks_after(4)


@pytest.mark.parametrize("stride, first_trained", [(8, 5), (16, 11)])
def test_only_the_blocks_after_the_stride_train(stride, first_trained, batch):
    model = _partial(stride=stride)
    trained = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    assert trained and {_block_index(n) for n in trained} == set(range(first_trained, 16))
    model.train()
    assert [block.training for block in model.backbone.net._blocks] == [i >= first_trained for i in range(16)]
    assert not model.backbone.net._bn0.training
    F.cross_entropy(model(batch).logits, batch["mask"]).backward()
    for name, p in model.backbone.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == p.requires_grad, name
    config = TrainConfig(backbone="efficientnet_lite0", model={"finetune_after_stride": stride}, lr=1e-3)
    groups = build_optimizer(model, config).param_groups
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.backbone.parameters() if p.requires_grad}


def test_cached_maps_give_the_logits_of_the_image(batch):
    model = _partial(variant="se_lstm").eval()
    with torch.no_grad():
        direct = model(batch).logits
        full = model.backbone(batch["image"])
        cached = model(dict(batch, features=[f.clone() for f in full])).logits
        prefix = model(dict(batch, features=full[:1])).logits
    torch.testing.assert_close(cached, direct, rtol=0, atol=0)
    torch.testing.assert_close(prefix, direct, rtol=0, atol=0)


@pytest.mark.parametrize("options, words", [
    ({"backbone": "small", "freeze_backbone": True}, "frozen pretrained EfficientNet-Lite"),
    ({"backbone": "efficientnet_lite0", "freeze_backbone": False}, "frozen pretrained EfficientNet-Lite"),
    ({"backbone": "efficientnet_lite0", "freeze_backbone": True, "pretrained": False}, "frozen pretrained"),
    ({"backbone": "efficientnet_lite0", "freeze_backbone": True, "finetune_after_stride": 32}, "8 or 16"),
    ({"backbone": "efficientnet_lite0", "freeze_backbone": True, "output_stride": 16, "finetune_after_stride": 8},
     "at least output_stride"),
])
def test_config_names_the_parameter(options, words):
    options = {"finetune_after_stride": 8, **options}
    with pytest.raises(ValueError, match=f"finetune_after_stride: expected.*{words}"):
        ModelConfig(variant="cnn", **options)


def test_a_cached_run_trains_the_later_blocks_and_keeps_the_others(tmp_path):
    config = TrainConfig(variant="cnn", backbone="efficientnet_lite0", limit=4, val_limit=2, image_size=64, epochs=1,
                         batch_size=2, progress=False, out_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                         model={"feature_channels": 8, "finetune_after_stride": 16})
    assert config.use_feature_cache
    run(config)
    assert any((tmp_path / "cache" / "features").rglob("*.pt")), "the frozen backbone's maps are cached"
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    original = load_efficientnet_lite(0).state_dict()
    changed = {_block_index(k) for k, v in weights.items() if k.startswith("backbone.net._blocks.")
               and v.is_floating_point() and not torch.equal(v, original[k[len("backbone.net."):]])}
    assert changed == set(range(11, 16))


def test_a_shipped_partial_model_carries_its_trained_blocks(tmp_path, monkeypatch, batch):
    model = _partial(variant="cnn", stride=16).eval()
    with torch.no_grad():
        for p in model.backbone.blocks_after(16).parameters():
            p.add_(0.01 * torch.randn_like(p))
        expected = model({"image": batch["image"]}).logits
    checkpoint = {"model": model.state_dict(), "model_config": model.config.to_dict(), "train_config": {}}
    path = pretrained.export(checkpoint, "partial", {}, None, "", folder=tmp_path)
    stored = torch.load(path, weights_only=True)["model"]
    shipped_blocks = {_block_index(k) for k in stored if k.startswith("backbone.")}
    assert shipped_blocks == set(range(11, 16))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    loaded, _ = pretrained.load("partial")
    with torch.no_grad():
        got = loaded({"image": batch["image"]}).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert np.isfinite(got.numpy()).all()

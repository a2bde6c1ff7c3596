import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selab.model import ModelConfig, SELabModel, build_model, upsample_and_pool
from selab.superpixels import pool_to_nodes, slic
from selab.synthetic import SyntheticPersonParts


@pytest.fixture(scope="module")
def tiny_batch():
    ds = SyntheticPersonParts(2, 48, seed=3)
    samples = [ds[i] for i in range(2)]
    image = torch.stack([s["image"] for s in samples])
    superpixels = torch.stack([torch.from_numpy(slic(s["image"], n_segments=40)) for s in samples])
    mask = torch.stack([s["mask"] for s in samples])
    return {"image": image, "superpixels": superpixels, "mask": mask}


def test_upsample_and_pool_equals_upsample_then_pool():
    torch.manual_seed(0)
    features = torch.rand(3, 5, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 29, 31)) + 9 * torch.arange(3).view(3, 1, 1)
    fast = upsample_and_pool(features, labels, 27, torch.tensor([0, 9, 18, 27]))
    reference = pool_to_nodes(F.interpolate(features, size=(29, 31), mode="bilinear", align_corners=False),
                              labels, 27).x
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["cnn", "graph_lstm", "se_lstm"])
def test_variants_forward_backward(variant, tiny_batch):
    torch.manual_seed(0)
    model = build_model({"variant": variant, "backbone": "small", "feature_channels": 16, "hidden_channels": 8,
                         "num_layers": 3 if variant == "se_lstm" else 2, "n_segments": 40})
    model.train()
    out = model(tiny_batch, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, 7, 48, 48)
    F.cross_entropy(out.logits, tiny_batch["mask"]).backward()
    assert model.classifier.weight.grad is not None
    if variant != "cnn":
        assert out.confidence_logits.shape == (2, 7, 48, 48)
        assert out.levels[0].num_nodes == int(tiny_batch["superpixels"][0].max() + tiny_batch["superpixels"][1].max() + 2)
        assert model.layers[0].input_proj.weight.grad.abs().sum() > 0
    if variant == "se_lstm":
        assert len(out.merge_prob) == len(out.merge_target) == 2
        assert len(out.levels) == 3 and out.levels[1].num_nodes <= out.levels[0].num_nodes
        assert all(p.shape == t.shape for p, t in zip(out.merge_prob, out.merge_target))
    model.eval()
    with torch.no_grad():
        first = model(tiny_batch).logits
        second = model(tiny_batch).logits
    torch.testing.assert_close(first, second)  # deterministic at test time


@pytest.mark.parametrize("training", [True, False])
def test_se_lstm_unpools_all_levels_through_the_superpixels_exactly(training, tiny_batch):
    """One unpooling of the levels' logits summed on the superpixels equals one unpooling per level."""
    import dataclasses

    from selab.graph import graph_from_superpixels

    torch.manual_seed(0)
    model = build_model({"variant": "se_lstm", "backbone": "small", "feature_channels": 16, "hidden_channels": 8,
                         "num_layers": 3, "n_segments": 40, "dropout": 0.0}).train(training)
    graph = graph_from_superpixels(tiny_batch["superpixels"])
    assert graph.superpixel_assignment is not None
    per_level = dataclasses.replace(graph, superpixel_assignment=None)  # forces one unpooling per level
    outputs = []
    for g in (graph, per_level):
        torch.manual_seed(1)
        outputs.append(model(dict(tiny_batch, graph=g), generator=torch.Generator().manual_seed(0)))
    fast, slow = outputs
    assert [lvl.num_nodes for lvl in fast.levels] == [lvl.num_nodes for lvl in slow.levels]
    assert fast.levels[-1].num_nodes < fast.levels[0].num_nodes  # the structure did evolve
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["confidence", "random", "bfs", "dfs"])
def test_orders(order, tiny_batch):
    model = build_model({"variant": "graph_lstm", "feature_channels": 8, "hidden_channels": 8, "order": order})
    out = model.eval()(tiny_batch, generator=torch.Generator().manual_seed(1))
    n = out.levels[0].num_nodes
    assert out.ranks[0].shape == (n,)


def test_graph_variant_needs_superpixels(tiny_batch):
    model = build_model({"variant": "graph_lstm", "feature_channels": 8, "hidden_channels": 8})
    with pytest.raises(ValueError, match="superpixels"):
        model({"image": tiny_batch["image"]})


def test_freeze_backbone_has_no_gradients_and_stays_in_eval(tiny_batch):
    model = build_model({"variant": "cnn", "freeze_backbone": True, "feature_channels": 8})
    model.train()
    assert not model.backbone.training and model.neck.training
    F.cross_entropy(model(tiny_batch).logits, tiny_batch["mask"]).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.requires_grad is False for p in model.backbone.parameters())


def test_cached_features_give_the_same_logits(tiny_batch):
    model = build_model({"variant": "graph_lstm", "freeze_backbone": True, "feature_channels": 8,
                         "hidden_channels": 8}).eval()
    with torch.no_grad():
        direct = model(tiny_batch).logits
        features = model.backbone(tiny_batch["image"])
        cached = model(dict(tiny_batch, features=features)).logits
    torch.testing.assert_close(direct, cached)


@pytest.mark.parametrize("field,value", [("variant", "unet"), ("backbone", "vgg"), ("hidden_channels", 0),
                                         ("order", "sideways"), ("dropout", 1.5), ("output_stride", 4)])
def test_config_names_the_bad_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_build_model_rejects_unknown_fields():
    with pytest.raises(ValueError, match="hiden_channels"):
        build_model({"hiden_channels": 3})
    with pytest.raises(TypeError):
        SELabModel({"variant": "cnn"})

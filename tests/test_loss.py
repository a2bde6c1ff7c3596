"""Tests for selab.model.loss: the supervision of the model's predictions."""

import dataclasses

import numpy as np
import pytest
import torch

from selab.method.graph import canonical_cluster, coarsen, graph_from_superpixels, level_majority_labels
from selab.model.loss import compute_loss, merge_loss, merge_target, merge_targets
from selab.model.parser import build_model
from selab.method.superpixels import node_label_histogram, node_majority_labels


def _levels(seed=0):
    """Three levels of a two-image batch: random superpixels coarsened twice, with a mask holding ties."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 12, (10, 10)), rng.integers(0, 9, (10, 10))])
    labels = np.stack([np.unique(image, return_inverse=True)[1].reshape(image.shape) for image in labels])
    level0 = graph_from_superpixels(labels)
    levels = [level0]
    for _ in range(2):
        graph = levels[-1]
        local = torch.arange(graph.num_nodes) - graph.ptr[graph.batch]
        cluster = canonical_cluster(graph.batch * graph.num_nodes + torch.div(local, 2, rounding_mode="floor"))
        levels.append(coarsen(graph, cluster))
    mask = torch.from_numpy(rng.integers(0, 3, (2, 10, 10)))
    mask[0, 0, :5] = 255  # ignored pixels count nowhere
    return levels, mask


def test_majority_labels_from_superpixel_histograms_equal_counting_the_pixels():
    levels, mask = _levels()
    histogram = node_label_histogram(mask, levels[0].assignment, levels[0].num_nodes, 7)
    ties = 0
    for level in levels:
        counts = node_label_histogram(mask, level.assignment, level.num_nodes, 7)
        ties += int(((counts == counts.max(1, keepdim=True).values).sum(1) > 1).sum())
        pixels = node_majority_labels(mask, level.assignment, level.num_nodes, 7)
        assert torch.equal(level_majority_labels(level, superpixel_histogram=histogram), pixels)
        assert torch.equal(level_majority_labels(level, mask, 7), pixels)
    assert ties > 0  # the tie-breaking (the smaller class id) is exercised
    assert [level.num_nodes for level in levels][-1] < levels[0].num_nodes


def test_merge_targets_are_the_targets_of_each_levels_majority_labels():
    levels, mask = _levels(1)
    targets = merge_targets(levels, mask, 7)
    for level, target in zip(levels, targets):
        labels = node_majority_labels(mask, level.assignment, level.num_nodes, 7)
        assert torch.equal(target, merge_target(level.edge_index, labels))
    # without superpixel_assignment the pixels are counted at every level: the same targets
    plain = [dataclasses.replace(level, superpixel_assignment=None) for level in levels]
    assert all(torch.equal(a, b) for a, b in zip(merge_targets(plain, mask, 7), targets))


def test_merge_target_and_loss():
    assert merge_target(torch.tensor([[0, 1], [1, 2]]), torch.tensor([4, 4, 5])).tolist() == [1.0, 0.0]
    assert float(merge_loss(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0]))) == pytest.approx(0.125)
    assert float(merge_loss(torch.zeros(0), torch.zeros(0))) == 0.0
    with pytest.raises(ValueError, match="differ"):
        merge_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="node_labels"):
        merge_target(torch.tensor([[0], [1]]), torch.zeros(2, 2))


@pytest.fixture(scope="module")
def batch(synthetic_batch):
    return synthetic_batch(48, seed=3, n_segments=40)


def test_compute_loss_sums_its_weighted_parts(batch):
    torch.manual_seed(0)
    model = build_model({"variant": "se_lstm", "feature_channels": 8, "hidden_channels": 8, "num_layers": 3,
                         "merge_loss_weight": 0.5, "confidence_loss_weight": 0.25}).train()
    out = model(batch, generator=torch.Generator().manual_seed(0), energy_labels=batch["mask"])
    parts = compute_loss(out, batch, model.config)
    assert sorted(parts) == ["confidence", "loss", "merge", "pixel"]
    targets = merge_targets(out.levels[:2], batch["mask"], 7)
    merge = torch.stack([merge_loss(p, t) for p, t in zip(out.merge_prob, targets)]).mean()
    torch.testing.assert_close(parts["merge"], merge)
    torch.testing.assert_close(parts["loss"], parts["pixel"] + 0.25 * parts["confidence"] + 0.5 * merge)
    parts["loss"].backward()
    assert model.evolutions[0].merge_probability.linear.weight.grad.abs().sum() > 0  # the L2 loss reaches it
    step_one = compute_loss(model(batch, confidence_only=True), batch, model.config, confidence_only=True)
    assert sorted(step_one) == ["confidence", "loss"]


def test_compute_loss_skips_ignored_pixels(batch):
    model = build_model({"variant": "cnn", "feature_channels": 8}).eval()
    out = model(batch)
    ignored = dict(batch, mask=batch["mask"].clone())
    ignored["mask"][:, :24] = 255
    loss = compute_loss(out, ignored, model.config, ignore_index=255)["loss"]
    labelled = ignored["mask"] != 255
    expected = torch.nn.functional.cross_entropy(out.logits.permute(0, 2, 3, 1)[labelled], ignored["mask"][labelled])
    torch.testing.assert_close(loss, expected)


def test_balanced_merge_loss_weighs_the_two_kinds_of_edges_half_and_half():
    p = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4], requires_grad=True)
    t = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    loss = merge_loss(p, t, balanced=True)
    expected = ((0.1 ** 2 + 0.2 ** 2 + 0.3 ** 2 + 0.4 ** 2) / 4 + 0.4 ** 2) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # the one edge to keep pulls as hard as the four edges to merge together
    assert p.grad[4].item() == pytest.approx(-4 * p.grad[3].item())
    # one kind only: the plain mean; as many of each: the plain mean too
    assert merge_loss(p[:4], t[:4], balanced=True).item() == pytest.approx(merge_loss(p[:4], t[:4]).item())
    assert merge_loss(p[3:], t[3:], balanced=True).item() == pytest.approx(merge_loss(p[3:], t[3:]).item())
    assert merge_loss(p[:0], t[:0], balanced=True).item() == 0.0


def test_compute_loss_uses_the_balanced_merge_loss_when_asked(batch):
    torch.manual_seed(0)
    model = build_model({"variant": "se_lstm", "feature_channels": 8, "hidden_channels": 8, "num_layers": 3}).train()
    out = model(batch, generator=torch.Generator().manual_seed(0), energy_labels=batch["mask"])
    targets = merge_targets(out.levels[:2], batch["mask"], 7)
    assert all(0 < t.mean() < 1 for t in targets), "both kinds of edges, so the two losses differ"
    plain = compute_loss(out, batch, model.config)["merge"]
    balanced = compute_loss(out, batch, dataclasses.replace(model.config, merge_loss_balanced=True))["merge"]
    expected = torch.stack([merge_loss(p, t, balanced=True) for p, t in zip(out.merge_prob, targets)]).mean()
    torch.testing.assert_close(balanced, expected)
    assert not torch.isclose(balanced, plain)
    with pytest.raises(ValueError, match="merge_loss_balanced"):
        build_model({"variant": "se_lstm", "merge_loss_balanced": "yes"})

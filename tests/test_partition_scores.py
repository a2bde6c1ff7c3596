"""Tests for the scores of a partition against its ground truth (selab.training.partition_scores)."""
import numpy as np
import pytest
import torch

from selab.method.graph import batch_graphs, coarsen, graph_from_superpixels
from selab.method.merge import connected_components
from selab.training.partition_scores import (PartitionScores, boundary_map, combine_hierarchy_stats, hierarchy_stats,
                                             score_partition)


# ------------------------------------------------------------------ references written out pixel by pixel
def python_scores(assignment, mask, num_classes, tolerance):
    """Every score of one image computed node by node and pixel by pixel, from the definitions."""
    assignment, mask = np.asarray(assignment), np.asarray(mask)
    valid = (mask >= 0) & (mask < num_classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    pure = ue = 0
    for node in np.unique(assignment):
        labels = mask[(assignment == node) & valid]
        if not labels.size:
            continue
        counts = np.bincount(labels, minlength=num_classes)
        pure += counts.max()
        confusion[:, counts.argmax()] += counts
        for k in range(num_classes):  # Neubert & Protzel: min(overlap, remainder) for every overlapping region
            if counts[k]:
                ue += min(counts[k], labels.size - counts[k])
    height, width = mask.shape

    def is_boundary(labels, y, x, usable):
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            v, u = y + dy, x + dx
            if 0 <= v < height and 0 <= u < width and usable[y, x] and usable[v, u] and labels[v, u] != labels[y, x]:
                return True
        return False

    everywhere = np.ones_like(valid)
    truth = recalled = 0
    for y in range(height):
        for x in range(width):
            if not is_boundary(mask, y, x, valid):
                continue
            truth += 1
            recalled += any(is_boundary(assignment, v, u, everywhere)
                            for v in range(max(0, y - tolerance), min(height, y + tolerance + 1))
                            for u in range(max(0, x - tolerance), min(width, x + tolerance + 1)))
    per_class = []
    for k in range(num_classes):
        union = confusion[k].sum() + confusion[:, k].sum() - confusion[k, k]
        if union:
            per_class.append(100.0 * confusion[k, k] / union)
    total = valid.sum()
    return {"miou": np.mean(per_class), "asa": pure / total, "ue": ue / total, "br": recalled / truth,
            "nodes": len(np.unique(assignment))}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_scores_match_their_definitions_written_out(seed, tolerance):
    rng = np.random.default_rng(seed)
    # blocky random maps, so that there are boundaries to find and regions to overlap
    mask = rng.integers(0, 4, size=(4, 5)).repeat(3, 0).repeat(3, 1)[:11, :13]
    mask[0, :3] = 255  # ignored pixels
    assignment = rng.integers(0, 9, size=(6, 7)).repeat(2, 0).repeat(2, 1)[:11, :13] * 3  # ids with gaps
    scores = score_partition(torch.from_numpy(assignment), torch.from_numpy(mask), num_classes=4, tolerance=tolerance)
    expected = python_scores(assignment, mask, 4, tolerance)
    assert scores.nodes_per_image == [expected["nodes"]]
    assert scores.achievable_miou == pytest.approx(expected["miou"])
    assert scores.asa == pytest.approx(expected["asa"])
    assert scores.undersegmentation_error == pytest.approx(expected["ue"])
    assert scores.boundary_recall == pytest.approx(expected["br"])


def test_the_ground_truth_parts_score_perfectly_and_one_node_badly():
    mask = torch.zeros(2, 12, 12, dtype=torch.long)
    mask[0, 2:6, 3:9], mask[0, 6:11, 3:9], mask[1, :, 6:] = 1, 2, 3
    parts = mask * 10 + 7  # any numbering
    scores = score_partition(parts, mask, num_classes=4)
    assert (scores.achievable_miou, scores.asa, scores.boundary_recall, scores.undersegmentation_error) == \
        (100.0, 1.0, 1.0, 0.0)
    assert scores.nodes_per_image == [3, 2]
    one = score_partition(torch.zeros_like(mask), mask, num_classes=4)
    assert one.nodes_per_image == [1, 1] and one.boundary_recall == 0.0 and one.asa < 1
    assert one.achievable_miou < 50 and one.undersegmentation_error > 0


def test_a_hand_computed_example():
    # 2 x 4 image, classes 0 | 1 | 1 | 2 in columns; nodes {col 0, col 1} and {col 2, col 3}
    mask = torch.tensor([[0, 1, 1, 2], [0, 1, 1, 2]])
    nodes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    s = score_partition(nodes, mask, num_classes=3, tolerance=0)
    # node 0: two 0s and two 1s, majority 0 (tie); node 1: two 1s, two 2s, majority 1 (tie)
    assert s.confusion.tolist() == [[2, 0, 0], [2, 2, 0], [0, 2, 0]]
    assert s.asa == 0.5
    assert s.achievable_miou == pytest.approx((2 / 4 + 2 / 6 + 0) / 3 * 100)
    assert s.undersegmentation_error == 1.0  # every overlap is min(2, 2)
    # ground-truth boundary pixels: columns 0..3 all (0|1 and 1|2 boundaries); partition's: columns 1, 2
    assert (s.boundary_pixels, s.boundary_recalled, s.boundary_recall) == (8, 4, 0.5)
    assert score_partition(nodes, mask, num_classes=3, tolerance=1).boundary_recall == 1.0


def test_scores_add_up_over_images_and_batches():
    rng = np.random.default_rng(1)
    mask = torch.from_numpy(rng.integers(0, 3, size=(3, 9, 9)))
    nodes = torch.from_numpy(rng.integers(0, 5, size=(3, 9, 9)))
    batch = score_partition(nodes, mask, num_classes=3)
    single = PartitionScores.total(score_partition(nodes[b], mask[b], num_classes=3) for b in range(3))
    assert batch.nodes_per_image == single.nodes_per_image
    assert np.array_equal(batch.confusion, single.confusion)
    assert batch.summary() == single.summary()
    assert batch.summary()["images"] == 3
    with pytest.raises(ValueError, match="tolerance"):
        batch + score_partition(nodes, mask, num_classes=3, tolerance=1)


def test_boundary_map_marks_both_sides_and_skips_invalid_pairs():
    labels = torch.tensor([[0, 0, 1], [2, 2, 1]])
    assert boundary_map(labels).all()
    valid = torch.tensor([[True, True, False], [True, True, False]])
    assert boundary_map(labels, valid).int().tolist() == [[1, 1, 0], [1, 1, 0]]


def test_bad_input_is_named():
    mask = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="must match"):
        score_partition(torch.zeros(4, 5, dtype=torch.long), mask)
    with pytest.raises(ValueError, match=">= 0"):
        score_partition(-torch.ones(4, 4, dtype=torch.long), mask)
    with pytest.raises(ValueError, match="integers"):
        score_partition(torch.zeros(4, 4), mask)
    with pytest.raises(ValueError, match="tolerance"):
        score_partition(mask, mask, tolerance=-1)
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        score_partition(torch.zeros(1, 1, 4, 4, dtype=torch.long), mask[None, None])
    with pytest.raises(ValueError, match="no scores"):
        PartitionScores.total([])


# ------------------------------------------------------------------ the levels of a hierarchy
def _toy_batch():
    grids = [np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1), np.arange(9).reshape(3, 3).repeat(3, 0).repeat(3, 1)[:8, :8]]
    return batch_graphs([graph_from_superpixels(g) for g in grids])


def python_purity(assignment, mask, num_classes):
    """Purity written out node by node: pixels of each node's majority label over labelled pixels."""
    assignment, mask = np.asarray(assignment).ravel(), np.asarray(mask).ravel()
    pure = total = 0
    for node in np.unique(assignment):
        labels = mask[(assignment == node) & (mask >= 0) & (mask < num_classes)]
        if labels.size:
            pure += np.bincount(labels, minlength=num_classes).max()
            total += labels.size
    return pure / total


def test_hierarchy_stats_counts_nodes_and_purity_per_level():
    graph = _toy_batch()  # two images, 16 and 9 superpixels, 8x8 pixels
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.integers(0, 3, size=(2, 8, 8)))
    mask[0, :2, :2] = 255  # ignored pixels
    cluster = connected_components(graph.edge_index, torch.from_numpy(rng.random(graph.edge_index.shape[1]) < 0.4),
                                   graph.num_nodes)
    levels = [graph, coarsen(graph, cluster)]
    stats = hierarchy_stats(levels, mask, num_classes=3)
    assert [s["num_nodes"] for s in stats] == [25, levels[1].num_nodes]
    assert stats[0]["nodes_per_image"] == [16, 9] and sum(stats[1]["nodes_per_image"]) == levels[1].num_nodes
    for s, level in zip(stats, levels):
        assert s["pixels"] == 2 * 64 - 4
        assert s["purity"] == pytest.approx(python_purity(level.assignment, mask, 3))
        expected = [python_scores(level.assignment[b], mask[b], 3, 2) for b in range(2)]
        assert s["scores"].nodes_per_image == s["nodes_per_image"]
        assert s["achievable_miou"] == pytest.approx(score_partition(level.assignment, mask, 3).achievable_miou)
        assert 0 <= s["boundary_recall"] <= 1 and 0 <= s["undersegmentation_error"] <= 2
        assert s["undersegmentation_error"] == pytest.approx(
            sum(e["ue"] * (64 - 4 * (b == 0)) for b, e in enumerate(expected)) / (2 * 64 - 4))
    assert stats[1]["purity"] <= stats[0]["purity"]  # merging never purifies
    assert stats[1]["boundary_recall"] <= stats[0]["boundary_recall"]  # nor finds new boundaries
    # full-resolution masks (twice the size): the assignment is resized by nearest neighbour
    full = [m.repeat_interleave(2, 0).repeat_interleave(2, 1) for m in mask]
    for a, b in zip(hierarchy_stats(levels, full, num_classes=3), stats):
        assert a["purity"] == pytest.approx(b["purity"]) and a["pixels"] == 4 * b["pixels"]
        assert a["achievable_miou"] == pytest.approx(b["achievable_miou"])
    # batches add up: two copies of a batch have the scores of one
    combined = combine_hierarchy_stats([stats, stats])
    assert combined[1]["purity"] == pytest.approx(stats[1]["purity"])
    assert combined[1]["achievable_miou"] == pytest.approx(stats[1]["achievable_miou"])
    assert combined[0]["nodes_per_image"] == [16, 9, 16, 9] and combined[0]["mean_nodes_per_image"] == 12.5
    with pytest.raises(ValueError, match="mask"):
        hierarchy_stats(levels, mask[:, :4])
    with pytest.raises(ValueError, match="levels"):
        hierarchy_stats([], mask)
    with pytest.raises(ValueError, match="different numbers of levels"):
        combine_hierarchy_stats([stats, stats[:1]])

"""Tests for the hand-crafted hierarchies (selab.method.agglomeration)."""
import time

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage import graph as skgraph

from selab.method.agglomeration import (agglomerate, agglomerate_batch, class_distribution, mean_lab, merge_sequence,
                                        pooled_maps, pooled_probabilities)
from selab.method.graph import batch_graphs, check_cluster, coarsen, graph_from_superpixels
from selab.method.superpixels import pool_to_nodes, slic


# ------------------------------------------------------------------ scikit-image's merge_hierarchical, the reference
def _weight_mean_color(graph, src, dst, n):  # scikit-image's plot_rag_merge example
    return {"weight": np.linalg.norm(graph.nodes[dst]["mean color"] - graph.nodes[n]["mean color"])}


def _merge_mean_color(graph, src, dst):
    graph.nodes[dst]["total color"] += graph.nodes[src]["total color"]
    graph.nodes[dst]["pixel count"] += graph.nodes[src]["pixel count"]
    graph.nodes[dst]["mean color"] = graph.nodes[dst]["total color"] / graph.nodes[dst]["pixel count"]


def _skimage_partition(image, labels, thresh):
    rag = skgraph.rag_mean_color(image, labels, connectivity=1, mode="distance")
    merged = skgraph.merge_hierarchical(labels, rag, thresh, rag_copy=False, in_place_merge=False,
                                        merge_func=_merge_mean_color, weight_func=_weight_mean_color)
    node_label = np.zeros(labels.max() + 1, dtype=np.int64)
    node_label[labels.ravel()] = merged.ravel()
    return node_label


def _same_partition(a, b):
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def _small_problem(seed, rows=8, cols=10):
    """A grid of rows x cols regions of 3 x 3 pixels, each of a random colour with pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows * cols).reshape(rows, cols).repeat(3, 0).repeat(3, 1)
    colour = rng.random((rows * cols, 3))
    colour[: rows * cols // 2] *= 0.4  # a darker upper half, so that the hierarchy has something to find
    image = colour[labels] + 0.05 * rng.random(labels.shape + (3,))
    return image, labels


@pytest.mark.parametrize("seed", range(3))
def test_agglomeration_matches_skimage_merge_hierarchical_at_every_threshold(seed):
    image, labels = _small_problem(seed)
    graph = graph_from_superpixels(labels)
    rag = skgraph.rag_mean_color(image, labels, connectivity=1)
    assert {tuple(sorted(e)) for e in rag.edges} == set(map(tuple, graph.edge_index.t().tolist()))
    pooled = pool_to_nodes(torch.from_numpy(image).permute(2, 0, 1).double(), torch.from_numpy(labels))
    merges, distances = merge_sequence(graph.edge_index, pooled.x, pooled.count)
    n = graph.num_nodes
    assert len(merges) == n - 1  # a connected graph merges down to one region
    thresholds = np.concatenate([[0.0], np.sort(distances) + 1e-9, [np.inf]])
    for thresh in thresholds:
        # merge_hierarchical merges while the nearest pair is nearer than thresh: a prefix of the sequence
        done = int(np.argmax(distances >= thresh)) if (distances >= thresh).any() else len(distances)
        ours = agglomerate(graph.edge_index, pooled.x, pooled.count, [n - done])[0]
        assert _same_partition(ours, _skimage_partition(image, labels, thresh)), f"threshold {thresh}"


def test_partitions_are_nested_and_hit_the_counts():
    image, labels = _small_problem(5)
    graph = graph_from_superpixels(labels)
    pooled = pool_to_nodes(torch.from_numpy(image).permute(2, 0, 1).float(), torch.from_numpy(labels))
    counts = [40, 1, 12, 25, 1000]
    clusters = agglomerate(graph.edge_index, pooled.x, pooled.count, counts)
    assert [int(c.max()) + 1 for c in clusters] == [40, 1, 12, 25, graph.num_nodes]
    order = np.argsort(counts)[::-1]  # finest first
    for fine, coarse in zip(order[:-1], order[1:]):  # every coarser partition is a union of finer regions
        pairs = set(zip(clusters[fine].tolist(), clusters[coarse].tolist()))
        assert len(pairs) == len(set(clusters[fine].tolist()))
    # every region is connected in the graph
    for cluster in clusters:
        coarse = coarsen(graph, torch.from_numpy(cluster))
        assert coarse.num_nodes == int(cluster.max()) + 1


def test_a_disconnected_graph_stops_at_its_components():
    edges = [[0, 2], [1, 3]]  # two components {0, 1} and {2, 3}
    clusters = agglomerate(edges, [[0.0], [0.0], [5.0], [5.0]], [1, 1, 1, 1], [1, 3])
    assert [c.tolist() for c in clusters] == [[0, 0, 1, 1], [0, 0, 1, 2]]


def test_weights_make_the_merged_descriptor_a_weighted_mean():
    # 0 (weight 3, value 0) + 1 (weight 1, value 4) -> mean 1, nearer to 2 (value 2.2) than 3 (value -1.5)
    merges, distances = merge_sequence([[0, 1, 1], [1, 2, 3]], [[0.0], [4.0], [2.2], [-1.5]], [3, 1, 1, 1])
    assert merges.tolist()[0] == [1, 2]  # |4 - 2.2| = 1.8 is the nearest pair
    merges, distances = merge_sequence([[0, 0], [1, 3]], [[0.0], [4.0], [0.0], [-1.5]], [3, 1, 1, 1])
    assert merges.tolist() == [[0, 3], [1, 4]]  # 0 and 3 first (1.5); then mean (3*0 - 1.5) / 4 with 1
    assert distances.tolist() == pytest.approx([1.5, 4.375])


def test_the_unit_mean_rule_keeps_merged_descriptors_on_the_sphere():
    angles = np.array([0.0, 0.1, 1.2, 1.3])
    directions = np.stack([np.cos(angles), np.sin(angles)], 1)
    edges = [[0, 1, 2], [1, 2, 3]]  # a path 0 - 1 - 2 - 3
    merges, distances = merge_sequence(edges, directions, [1, 1, 1, 1], rule="unit_mean")
    plain, plain_distances = merge_sequence(edges, directions, [1, 1, 1, 1])
    assert merges[:2].tolist() == plain[:2].tolist() == [[0, 1], [2, 3]]
    # {0,1} and {2,3}: their means shrink (norm cos 0.05), their unit means do not
    assert distances[2] == pytest.approx(2 * np.sin(0.6))
    assert plain_distances[2] == pytest.approx(2 * np.sin(0.6) * np.cos(0.05))
    with pytest.raises(ValueError, match="rule"):
        merge_sequence(edges, directions, [1, 1, 1, 1], rule="median")


def test_agglomerate_batch_keeps_images_apart_with_per_image_counts():
    (first, labels), (second, _) = _small_problem(1), _small_problem(2)
    graphs = [graph_from_superpixels(labels), graph_from_superpixels(labels // 2)]  # 80 and 40 regions
    images = [first, second]
    graph = batch_graphs(graphs)
    colour = torch.cat([pool_to_nodes(torch.from_numpy(i).permute(2, 0, 1).float(), g.assignment[0]).x
                        for i, g in zip(images, graphs)])
    clusters = agglomerate_batch(graph, colour, [[10, 3], [30, 5]])
    assert len(clusters) == 2
    for cluster, expected in zip(clusters, ([10, 30], [3, 5])):
        check_cluster(graph, cluster)  # never across images, numbered image by image
        per_image = [len(set(cluster[graph.batch == b].tolist())) for b in range(2)]
        assert per_image == expected
    single = agglomerate_batch(graph, colour, [7])[0]
    assert [len(set(single[graph.batch == b].tolist())) for b in range(2)] == [7, 7]
    alone = agglomerate(graphs[1].edge_index, colour[graphs[0].num_nodes:], graphs[1].size, [7])[0]
    assert _same_partition(single[graph.batch == 1], alone)
    with pytest.raises(ValueError, match="one per image"):
        agglomerate_batch(graph, colour, [[10], [20], [30]])
    with pytest.raises(ValueError, match="descriptor"):
        agglomerate_batch(graph, colour[:5], [7])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="weight"):
        merge_sequence([[0], [1]], [[0.0], [1.0]], [1, 0])
    with pytest.raises(ValueError, match="counts"):
        agglomerate([[0], [1]], [[0.0], [1.0]], [1, 1], [0])
    with pytest.raises(ValueError, match="non-finite"):
        merge_sequence([[0], [1]], [[0.0], [np.nan]], [1, 1])
    with pytest.raises(ValueError, match="edge_index"):
        merge_sequence([[0], [5]], [[0.0], [1.0]], [1, 1])


def test_descriptors():
    labels = np.array([[0, 0, 1, 1], [2, 2, 1, 1]])
    graph = graph_from_superpixels(labels)
    image = torch.zeros(1, 3, 2, 4)
    image[:, :, :, 2:] = 1.0  # white right half
    lab = mean_lab(image, graph)
    assert lab[:, 0].round().tolist() == [0.0, 100.0, 0.0] and lab[:, 1:].abs().max() < 1e-2
    mask = torch.tensor([[[0, 1, 1, 1], [2, 2, 1, 1]]])
    assert class_distribution(mask, graph, 3).tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    logits = torch.zeros(1, 3, 2, 4)
    logits[0, 2, 1, :2] = 10.0
    probabilities = pooled_probabilities(logits, graph)
    assert torch.allclose(probabilities.sum(1), torch.ones(3)) and probabilities[2].argmax() == 2
    maps = [torch.rand(1, 5, 1, 2), torch.rand(1, 8, 2, 2)]
    features = pooled_maps(maps, graph)
    assert features.shape == (3, 13) and torch.allclose(features.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="image"):
        mean_lab(image[:, :, :1], graph)


def test_a_thousand_superpixels_agglomerate_quickly():
    image = skdata.astronaut()[::2, ::2] / 255.0
    labels = slic(image, n_segments=1000)
    graph = graph_from_superpixels(labels)
    colour = mean_lab(torch.from_numpy(image).permute(2, 0, 1)[None].float(), graph)
    assert graph.num_nodes > 800
    start = time.perf_counter()
    clusters = agglomerate(graph.edge_index, colour, graph.size, [500, 200, 100, 50, 25, 12])
    elapsed = time.perf_counter() - start
    assert [int(c.max()) + 1 for c in clusters] == [500, 200, 100, 50, 25, 12]
    assert elapsed < 0.5, f"{graph.num_nodes} nodes to 12 took {elapsed * 1000:.0f} ms"  # about 40 ms on a busy core

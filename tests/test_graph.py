"""Tests for selab.method.graph: batching, coarsening (property-based with hypothesis), networkx export."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from selab.method.graph import (
    Graph,
    batch_graphs,
    canonical_cluster,
    coarsen,
    coarsen_edge_index,
    graph_from_superpixels,
    scatter_mean,
    to_networkx,
    unbatch,
)
from selab.method.superpixels import adjacency, pool_to_nodes, relabel, slic


def random_labels(rng, num_images, height, width, max_label):
    """Per-image label maps numbered from 0 without gaps (regions may be disconnected)."""
    return np.stack([relabel(rng.integers(0, max_label, size=(height, width))) for _ in range(num_images)])


def random_cluster(rng, graph, max_clusters):
    """A random partition that keeps images apart, numbered image by image."""
    raw = graph.batch * max_clusters + torch.from_numpy(rng.integers(0, max_clusters, graph.num_nodes))
    return canonical_cluster(raw)


@st.composite
def batched_graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    labels = random_labels(rng, *shape, draw(st.integers(1, 12)))
    graph = graph_from_superpixels(labels, x=torch.from_numpy(rng.normal(size=(shape[0], 2) + shape[1:])))
    return rng, graph


def edge_set(edge_index):
    return set(map(tuple, edge_index.T.tolist()))


@settings(max_examples=60, deadline=None)
@given(batched_graphs(), st.integers(1, 6))
def test_coarsen_properties(drawn, max_clusters):
    rng, graph = drawn
    cluster = random_cluster(rng, graph, max_clusters)
    coarse = coarsen(graph, cluster)
    # node counts and image membership
    assert coarse.num_nodes == len(torch.unique(cluster))
    assert torch.equal(coarse.batch[cluster], graph.batch)
    assert (coarse.batch[1:] >= coarse.batch[:-1]).all()
    assert coarse.num_graphs == graph.num_graphs
    pixels_per_image = float(np.prod(graph.assignment.shape[1:]))
    per_image = torch.zeros(graph.num_graphs, dtype=coarse.size.dtype).index_add_(0, coarse.batch, coarse.size)
    assert per_image.tolist() == [pixels_per_image] * graph.num_graphs
    # edges: each old edge falls inside a cluster or maps to a new edge; each new edge has an old one
    new_edges = edge_set(coarse.edge_index)
    mapped = {tuple(sorted(pair)) for pair in cluster[graph.edge_index].T.tolist()}
    assert {pair for pair in mapped if pair[0] != pair[1]} == new_edges
    ei = coarse.edge_index
    assert (ei[0] < ei[1]).all()
    keys = ei[0] * coarse.num_nodes + ei[1]
    assert (keys[1:] > keys[:-1]).all()
    # the coarse graph is exactly the region graph of the coarse pixel assignment
    assert torch.equal(coarse.edge_index, adjacency(coarse.assignment))
    assert torch.equal(coarse.assignment, cluster[graph.assignment])
    pooled = pool_to_nodes(torch.zeros(graph.num_graphs, 0, *graph.assignment.shape[1:], dtype=torch.float64),
                           coarse.assignment, coarse.num_nodes)
    torch.testing.assert_close(coarse.size, pooled.count.to(coarse.size.dtype))
    torch.testing.assert_close(coarse.pos, pooled.pos.to(coarse.pos.dtype))
    torch.testing.assert_close(coarse.x, scatter_mean(graph.x, cluster))
    assert torch.equal(coarse.superpixel_assignment, cluster)


@settings(max_examples=60, deadline=None)
@given(batched_graphs(), st.integers(1, 6), st.integers(1, 4))
def test_two_coarsenings_equal_one_by_composed_cluster(drawn, first_max, second_max):
    rng, graph = drawn
    first = random_cluster(rng, graph, first_max)
    mid = coarsen(graph, first)
    second = random_cluster(rng, mid, second_max)
    twice = coarsen(mid, second)
    once = coarsen(graph, second[first])
    for name in ("edge_index", "batch", "assignment", "superpixel_assignment"):
        assert torch.equal(getattr(twice, name), getattr(once, name)), name
    torch.testing.assert_close(twice.size, once.size)
    torch.testing.assert_close(twice.pos, once.pos)
    # the mean of means is the mean only when weighted by member counts: x is mean-of-members per level
    counts = torch.bincount(first).to(graph.x.dtype)
    torch.testing.assert_close(scatter_mean(mid.x * counts[:, None], second) /
                               scatter_mean(counts, second)[:, None], once.x)


@settings(max_examples=30, deadline=None)
@given(batched_graphs())
def test_batch_unbatch_roundtrip(drawn):
    _, graph = drawn
    parts = unbatch(graph)
    assert [p.num_nodes for p in parts] == torch.diff(graph.ptr).tolist()
    for part in parts:
        assert part.num_graphs == 1 and (part.batch == 0).all()
        assert int(part.assignment.max()) == part.num_nodes - 1
    rebuilt = batch_graphs(parts)
    for name in ("edge_index", "batch", "pos", "size", "assignment", "x", "superpixel_assignment"):
        assert torch.equal(getattr(rebuilt, name), getattr(graph, name)), name


def test_graph_from_superpixels_on_photos():
    images = [data.astronaut()[:256, :256], data.chelsea()[:256, :256]]
    labels = [slic(im, n_segments=150) for im in images]
    feats = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images])
    graph = graph_from_superpixels(np.stack(labels), x=feats)
    n0 = labels[0].max() + 1
    assert graph.num_nodes == n0 + labels[1].max() + 1
    assert graph.ptr.tolist() == [0, n0, graph.num_nodes]
    single = graph_from_superpixels(labels[1], x=feats[1])
    torch.testing.assert_close(graph.x[n0:], single.x)
    assert torch.equal(unbatch(graph)[1].edge_index, single.edge_index)
    assert torch.equal(single.edge_index, torch.from_numpy(adjacency(labels[1])))
    assert graph.size.sum() == 2 * 256 * 256
    # node features given directly are kept as they are
    given_x = torch.randn(graph.num_nodes, 5)
    assert graph_from_superpixels(np.stack(labels), x=given_x).x is given_x


def test_coarsen_small_example_and_scatter_mean():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    graph = graph_from_superpixels(labels, x=torch.tensor([[1.0], [2.0], [4.0]]))
    coarse = coarsen(graph, torch.tensor([0, 1, 0]))
    assert coarse.edge_index.tolist() == [[0], [1]]
    assert coarse.x.tolist() == [[2.5], [2.0]]
    assert coarse.size.tolist() == [4.0, 2.0]
    torch.testing.assert_close(coarse.pos, torch.tensor([[0.5, 0.5], [0.5, 2.0]]))
    top = coarsen(coarse, torch.tensor([0, 0]))
    assert top.num_nodes == 1 and top.edge_index.shape == (2, 0)
    assert (top.assignment == 0).all()
    h = torch.randn(3, 2, 4, requires_grad=True)
    scatter_mean(h, torch.tensor([0, 1, 0])).sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([0.5, 1.0, 0.5])[:, None, None].expand(3, 2, 4))
    assert coarsen_edge_index(torch.tensor([[0, 1], [1, 2]]), torch.tensor([1, 0, 1])).tolist() == [[0], [1]]


def test_canonical_cluster_orders_by_first_member():
    assert canonical_cluster(torch.tensor([5, 2, 5, 9])).tolist() == [0, 1, 0, 2]
    assert canonical_cluster(torch.tensor([3, 3, 0, 1, 0])).tolist() == [0, 0, 1, 2, 1]


def test_coarsen_rejects_bad_clusters():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    graph = graph_from_superpixels(np.stack([labels, labels]))  # 6 nodes, images [0,0,0,1,1,1]
    with pytest.raises(ValueError, match=r"cluster.*shape \[6\]"):
        coarsen(graph, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="gaps"):
        coarsen(graph, torch.tensor([0, 0, 0, 2, 2, 2]))
    with pytest.raises(ValueError, match="cross images"):
        coarsen(graph, torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="image by image"):
        coarsen(graph, torch.tensor([1, 1, 1, 0, 0, 0]))
    with pytest.raises(TypeError, match="cluster"):
        coarsen(graph, torch.zeros(6))
    with pytest.raises(ValueError, match="x"):
        coarsen(graph, torch.arange(6), x=torch.zeros(4, 1))


def test_graph_from_superpixels_rejects_bad_labels():
    with pytest.raises(ValueError, match="gaps"):
        graph_from_superpixels(np.array([[0, 2], [2, 0]]))
    with pytest.raises(ValueError, match=r"labels\[1\].*gaps"):
        graph_from_superpixels(np.stack([np.array([[0, 1]]), np.array([[0, 2]])]))
    with pytest.raises(TypeError, match="labels"):
        graph_from_superpixels(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="labels"):
        graph_from_superpixels(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="x"):
        graph_from_superpixels(np.array([[0, 1]]), x=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="graphs"):
        batch_graphs([graph_from_superpixels(np.array([[0, 1]])), graph_from_superpixels(np.array([[0, 1, 1]]))])


def test_to_networkx_any_level():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    graph = graph_from_superpixels(np.stack([labels, labels]), x=torch.arange(6.0)[:, None])
    g1 = to_networkx(graph, image=1, node_attrs=("x",))
    assert sorted(g1.edges()) == [(0, 1), (0, 2), (1, 2)]
    assert g1.nodes[1]["pos"] == (2.0, 0.5) and g1.nodes[1]["size"] == 2.0
    assert g1.nodes[1]["global_id"] == 4 and g1.nodes[1]["x"].tolist() == [4.0]
    coarse = coarsen(graph, torch.tensor([0, 1, 0, 2, 2, 2]))
    top = to_networkx(coarse, image=1)
    assert top.number_of_nodes() == 1 and top.number_of_edges() == 0 and top.nodes[0]["size"] == 6.0
    with pytest.raises(ValueError, match="image"):
        to_networkx(graph, image=2)


def test_graph_to_device_keeps_fields():
    graph = graph_from_superpixels(np.array([[0, 1]]))
    moved = graph.to("cpu")
    assert isinstance(moved, Graph) and moved.x is None
    assert torch.equal(moved.edge_index, graph.edge_index)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_follows_cuda_device():
    labels = torch.from_numpy(random_labels(np.random.default_rng(0), 2, 16, 16, 10)).cuda()
    graph = graph_from_superpixels(labels, x=torch.randn(2, 3, 16, 16, device="cuda"))
    cluster = random_cluster(np.random.default_rng(1), graph.to("cpu"), 3).cuda()
    coarse = coarsen(graph, cluster)
    for name in ("edge_index", "batch", "pos", "size", "assignment", "x", "superpixel_assignment"):
        assert getattr(coarse, name).device.type == "cuda", name
    reference = coarsen(graph.to("cpu"), cluster.cpu())
    assert torch.equal(coarse.edge_index.cpu(), reference.edge_index)
    torch.testing.assert_close(coarse.x.cpu(), reference.x)

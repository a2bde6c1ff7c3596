"""Update orders: confidence-driven, BFS/DFS, random, stochastic; ranks per image."""

import networkx as nx
import pytest
import torch

from selab.method.orders import (
    bfs_order,
    confidence_order,
    dfs_order,
    leftmost_node,
    most_confident_node,
    random_order,
    rank_from_order,
    stochastic_order,
)


def is_permutation_per_image(rank, batch):
    return all(
        sorted(rank[batch == b].tolist()) == list(range(int((batch == b).sum())))
        for b in batch.unique().tolist()
    )


def test_confidence_order_foreground_first_most_confident_first_ties_leftmost():
    confidence = torch.tensor([
        [0.9, 0.1, 0.0],  # background, 0.9
        [0.2, 0.5, 0.3],  # foreground 0.5
        [0.1, 0.0, 0.9],  # foreground 0.9
        [0.2, 0.5, 0.3],  # foreground 0.5, tie with node 1 but further left
        [0.6, 0.4, 0.0],  # background 0.6
    ])
    pos = torch.tensor([[0.0, 4.0], [0.0, 3.0], [0.0, 9.0], [5.0, 1.0], [0.0, 0.0]])
    assert confidence_order(confidence, pos).tolist() == [3, 2, 0, 1, 4]


def test_ranks_restart_per_image_and_images_are_independent():
    g = torch.Generator().manual_seed(0)
    confidence, pos = torch.rand(9, 4, generator=g), torch.rand(9, 2, generator=g)
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    rank = confidence_order(confidence, pos, batch)
    assert is_permutation_per_image(rank, batch)
    torch.testing.assert_close(rank[4:], confidence_order(confidence[4:], pos[4:]))
    torch.testing.assert_close(rank[:4], confidence_order(confidence[:4], pos[:4]))


def grid_graph(rows, cols, images=1):
    g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, cols), ordering="sorted")
    edges = torch.tensor(sorted(tuple(sorted(e)) for e in g.edges)).t()
    n = rows * cols
    edge_index = torch.cat([edges + k * n for k in range(images)], 1)
    batch = torch.arange(images).repeat_interleave(n)
    pos = torch.tensor([[r, c] for r in range(rows) for c in range(cols)], dtype=torch.float).repeat(images, 1)
    return g, edge_index, batch, pos


@pytest.mark.parametrize("images", [1, 3])
def test_bfs_and_dfs_match_networkx(images):
    g, edge_index, batch, pos = grid_graph(4, 5, images)
    start = leftmost_node(pos, batch)
    assert start.tolist() == [k * 20 for k in range(images)]
    bfs, dfs = bfs_order(edge_index, start, batch), dfs_order(edge_index, start, batch)
    for k in range(images):
        nodes = slice(k * 20, (k + 1) * 20)
        # networkx visits neighbours in insertion order; sorted grid ids make it the smallest id first
        expected_bfs = [0] + [v for _, v in nx.bfs_edges(g, 0, sort_neighbors=sorted)]
        expected_dfs = list(nx.dfs_preorder_nodes(g, 0, sort_neighbors=sorted))
        assert rank_from_order(torch.tensor(expected_bfs)).tolist() == bfs[nodes].tolist()
        assert rank_from_order(torch.tensor(expected_dfs)).tolist() == dfs[nodes].tolist()


def test_traversals_cover_disconnected_components_and_isolated_nodes():
    edge_index = torch.tensor([[0, 1, 3], [1, 2, 4]])  # 0-1-2, 3-4, isolated 5 and 6
    batch = torch.zeros(7, dtype=torch.long)
    for order in (bfs_order, dfs_order):
        rank = order(edge_index, torch.tensor([2]), batch)
        assert is_permutation_per_image(rank, batch)
        assert rank[2] < rank[1] < rank[0]  # within the start's component: traversal from node 2
        assert rank[3] < rank[4]  # other components start at their lowest id
    assert bfs_order(edge_index, torch.tensor([0]), num_nodes=7).shape == (7,)


def test_most_confident_node_prefers_foreground():
    confidence = torch.tensor([[0.99, 0.01], [0.4, 0.6], [0.3, 0.7], [0.9, 0.1]])
    batch = torch.tensor([0, 0, 0, 1])
    assert most_confident_node(confidence, batch).tolist() == [2, 3]


def test_random_and_stochastic_orders_are_seeded_permutations():
    batch = torch.tensor([0] * 6 + [1] * 4)
    r1 = random_order(batch, torch.Generator().manual_seed(1))
    assert torch.equal(r1, random_order(batch, torch.Generator().manual_seed(1)))
    assert is_permutation_per_image(r1, batch)
    g = torch.Generator().manual_seed(0)
    confidence, pos = torch.rand(10, 3, generator=g), torch.rand(10, 2, generator=g)
    s1 = stochastic_order(confidence, pos, batch, noise=0.5, generator=torch.Generator().manual_seed(2))
    s2 = stochastic_order(confidence, pos, batch, noise=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s2) and is_permutation_per_image(s1, batch)
    assert torch.equal(stochastic_order(confidence, pos, batch, noise=0.0), confidence_order(confidence, pos, batch))
    many = {tuple(stochastic_order(confidence, pos, batch, noise=0.5, generator=torch.Generator().manual_seed(s))
                  .tolist()) for s in range(10)}
    assert len(many) > 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="confidence"):
        confidence_order(torch.rand(3), torch.rand(3, 2))
    with pytest.raises(ValueError, match="pos"):
        confidence_order(torch.rand(3, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="batch"):
        confidence_order(torch.rand(3, 2), torch.rand(3, 2), torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="start"):
        bfs_order(torch.tensor([[0], [1]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="start"):
        bfs_order(torch.tensor([[0], [1]]), torch.tensor([1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="noise"):
        stochastic_order(torch.rand(3, 2), torch.rand(3, 2), noise=-1.0)

"""Deep hierarchies: levels stopped at a target node count, pairwise merge probabilities, the top-down layer."""

import networkx as nx
import numpy as np
import pytest
import torch

from selab.method.evolve import StructureEvolution
from selab.method.graph import graph_from_superpixels
from selab.method.merge import MergeProbability, connected_components, target_edges
from selab.model.parser import ModelConfig, SELabModel


def _kruskal(num_nodes, edges, p, target):
    """Reference: edges in descending p (ties by id) joined one at a time until `target` components remain."""
    graph = nx.utils.UnionFind(range(num_nodes))
    components, on = num_nodes, np.zeros(len(edges), bool)
    for e in sorted(range(len(edges)), key=lambda e: (-p[e], e)):
        if components <= target:
            break
        i, j = edges[e]
        if graph[i] != graph[j]:
            graph.union(i, j)
            components -= 1
        on[e] = True  # an edge inside a clique is switched on too: the prefix of the order
    return on, components


def _random_graph(seed, num_nodes=40, num_edges=90):
    rng = np.random.default_rng(seed)
    edges = {tuple(sorted(rng.choice(num_nodes, 2, replace=False))) for _ in range(num_edges)}
    edges = sorted(edges)
    p = rng.random(len(edges)).round(2)  # rounded: ties happen
    return edges, p


@pytest.mark.parametrize("seed", range(6))
def test_target_edges_are_the_kruskal_prefix_and_leave_the_target_count(seed):
    edges, p = _random_graph(seed)
    ei = torch.tensor(edges).T
    for target in (1, 5, 12, 30, 40):
        on = target_edges(ei, torch.tensor(p), 40, target_nodes=target)
        expected, components = _kruskal(40, edges, p, target)
        # the smallest prefix reaching the target: the reference stops at the edge that reaches it
        np.testing.assert_array_equal(on.numpy(), expected)
        assert int(connected_components(ei, on, 40).max()) + 1 == components


def test_target_edges_per_image_with_fractions():
    (e1, p1), (e2, p2) = _random_graph(1, 30, 70), _random_graph(2, 50, 120)
    ei = torch.tensor(e1 + [(i + 30, j + 30) for i, j in e2]).T
    p = torch.tensor(np.concatenate([p1, p2]))
    batch = torch.tensor([0] * 30 + [1] * 50)
    on = target_edges(ei, p, 80, target_nodes=0.2, batch=batch)
    cluster = connected_components(ei, on, 80)
    counts = [len(torch.unique(cluster[batch == b])) for b in (0, 1)]
    r1, c1 = _kruskal(30, e1, p1, 6)
    r2, c2 = _kruskal(50, e2, p2, 10)
    assert counts == [c1, c2]
    np.testing.assert_array_equal(on.numpy(), np.concatenate([r1, r2]))


def test_target_edges_errors_name_the_option():
    ei = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match="target_nodes as a fraction"):
        target_edges(ei, torch.tensor([0.5]), 2, target_nodes=1.5)
    with pytest.raises(ValueError, match="target_nodes as a count"):
        target_edges(ei, torch.tensor([0.5]), 2, target_nodes=0)
    with pytest.raises(TypeError, match="target_nodes"):
        StructureEvolution(8, target_nodes="half")


def test_greedy_evolution_keeps_the_target_count():
    superpixels = torch.arange(64).reshape(1, 8, 8) // 2
    graph = graph_from_superpixels(superpixels)
    evo = StructureEvolution(8, mode="greedy", target_nodes=0.25).eval()
    p = torch.rand(graph.edge_index.shape[1])
    cluster, on, _ = evo.sample(graph.edge_index, p, graph.batch, None)
    assert int(cluster.max()) + 1 == 8  # ceil(0.25 * 32)
    evo = StructureEvolution(8, mode="greedy", target_nodes=5).eval()
    cluster, _, _ = evo.sample(graph.edge_index, p, graph.batch, None)
    assert int(cluster.max()) + 1 == 5


def test_pairwise_merge_probability_is_symmetric_and_reads_both_nodes():
    torch.manual_seed(0)
    mp = MergeProbability(6, source="pairwise")
    h = torch.randn(5, 6)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    gates = torch.rand(2, 3, 6)
    p = mp(edge_forget=gates, h=h, edge_index=ei)
    p_flipped = mp(edge_forget=gates.flip(0), h=h, edge_index=ei.flip(0))
    torch.testing.assert_close(p, p_flipped)
    h2 = h.clone()
    h2[3] += 1.0  # only edge (2, 3) sees node 3
    p2 = mp(edge_forget=gates, h=h2, edge_index=ei)
    assert torch.equal(p[:2], p2[:2]) and not torch.equal(p[2], p2[2])
    with pytest.raises(ValueError, match="source=.pairwise."):
        mp(edge_forget=gates)


def _inputs(size=32, n_images=2):
    torch.manual_seed(0)
    image = torch.rand(n_images, 3, size, size)
    superpixels = (torch.arange(size * size).reshape(size, size) // 4 % 16
                   + 16 * (torch.arange(size).reshape(size, 1) // 4)).expand(n_images, size, size)
    mask = (torch.arange(size).reshape(1, size, 1) // 11).expand(n_images, size, size).contiguous()
    return {"image": image, "superpixels": superpixels.contiguous()}, mask


def test_top_down_model_logits_are_the_cnn_plus_every_share():
    from selab.method.superpixels import unpool_to_pixels
    inputs, mask = _inputs()
    config = ModelConfig(variant="se_lstm", backbone="small", num_layers=3, hidden_channels=8, feature_channels=8,
                         top_down=True, evolution={"target_nodes": 0.5, "source": "pairwise"}, dropout=0.0)
    model = SELabModel(config).eval()
    with torch.no_grad():
        out = model(inputs)
        shares = model.level_logits(out)
        assert out.top_down is not None and len(shares) == 4
        counts = [torch.bincount(level.batch).tolist() for level in out.levels]
        assert counts[1] == [int(np.ceil(n / 2)) for n in counts[0]]
        torch.testing.assert_close(model(inputs).logits, out.logits)  # the test-time structure is deterministic
        # the logits less every node share copied to its pixels are the same for a model without the shares
        rest = out.logits - sum(unpool_to_pixels(logits, level.assignment) for logits, level in shares)
        model.top_down_classifier.weight.data.zero_()
        for classifier in model.node_classifiers:
            classifier.weight.data.zero_()
        torch.testing.assert_close(model(inputs).logits, rest, atol=1e-5, rtol=1e-5)


def test_top_down_trains_and_is_refused_outside_se_lstm():
    from selab.model.loss import compute_loss
    inputs, mask = _inputs()
    config = ModelConfig(variant="se_lstm", backbone="small", num_layers=3, hidden_channels=8, feature_channels=8,
                         top_down=True, evolution={"target_nodes": 0.5})
    model = SELabModel(config).train()
    out = model(inputs, energy_labels=mask)
    loss = compute_loss(out, {"mask": mask}, config)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.top_down_input.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.top_down_layer.parameters())
    with pytest.raises(ValueError, match="ModelConfig.top_down"):
        ModelConfig(variant="graph_lstm", top_down=True)


def test_level0_readout_reaches_the_pixels_only_from_level0_and_the_top_down_layer():
    from selab.method.superpixels import unpool_to_pixels
    inputs, mask = _inputs()
    config = ModelConfig(variant="se_lstm", backbone="small", num_layers=3, hidden_channels=8, feature_channels=8,
                         top_down=True, readout="level0", evolution={"target_nodes": 0.5}, dropout=0.0)
    model = SELabModel(config).eval()
    assert len(model.node_classifiers) == 1
    with torch.no_grad():
        out = model(inputs)
        shares = model.level_logits(out)
        assert [level.num_nodes for _, level in shares] == [out.levels[0].num_nodes] * 2
        assert out.levels[-1].num_nodes < out.levels[0].num_nodes  # the levels still coarsen
        rest = out.logits - sum(unpool_to_pixels(logits, level.assignment) for logits, level in shares)
        model.top_down_classifier.weight.data.zero_()
        model.node_classifiers[0].weight.data.zero_()
        torch.testing.assert_close(model(inputs).logits, rest, atol=1e-5, rtol=1e-5)
    # the coarse layers still learn: through the top-down layer and their merge loss
    from selab.model.loss import compute_loss
    model = SELabModel(config).train()
    out = model(inputs, energy_labels=mask)
    compute_loss(out, {"mask": mask}, config)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.layers[2].parameters())
    with pytest.raises(ValueError, match="ModelConfig.readout"):
        ModelConfig(variant="se_lstm", readout="level0")  # without the top-down layer nothing reads the coarse levels
    with pytest.raises(ValueError, match="ModelConfig.readout"):
        ModelConfig(variant="se_lstm", top_down=True, readout="top")


def test_pairwise_classes_merge_probability_reads_the_class_distributions():
    torch.manual_seed(0)
    mp = MergeProbability(4, source="pairwise_classes", num_classes=3)
    h, forget = torch.randn(5, 4), torch.rand(2, 6, 4)
    ei = torch.tensor([[0, 1, 2, 3, 0, 4], [1, 2, 3, 4, 2, 1]])
    q = torch.softmax(torch.randn(5, 3), 1)
    p = mp(edge_forget=forget, h=h, edge_index=ei, class_prob=q)
    assert p.shape == (6,) and bool(((p > 0) & (p < 1)).all())
    torch.testing.assert_close(mp(edge_forget=forget.flip(0), h=h, edge_index=ei.flip(0), class_prob=q), p)
    q2 = q.clone()
    q2[0] = q[0].roll(1)
    assert not torch.allclose(mp(edge_forget=forget, h=h, edge_index=ei, class_prob=q2), p)  # the classes count
    with pytest.raises(ValueError, match="class_prob"):
        mp(edge_forget=forget, h=h, edge_index=ei)
    with pytest.raises(ValueError, match="num_classes"):
        MergeProbability(4, source="pairwise_classes")
    # in a model the evolution passes the nodes' confidences
    inputs, mask = _inputs()
    config = ModelConfig(variant="se_lstm", backbone="small", num_layers=3, hidden_channels=8, feature_channels=8,
                         evolution={"target_nodes": 0.5, "source": "pairwise_classes"})
    out = SELabModel(config).eval()(inputs)
    assert len(out.merge_prob) == 2 and all(p.numel() > 0 for p in out.merge_prob)

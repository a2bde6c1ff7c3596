"""Tests for structure evolution: merge probabilities and proposals (selab.method.merge), the energy (selab.method.energy),
the MH sampler (selab.method.mh) and StructureEvolution (selab.method.evolve)."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selab.method.energy import PartitionEnergy
from selab.method.evolve import StructureEvolution
from selab.method.graph import coarse_confidence
from selab.model.loss import merge_loss, merge_target
from selab.method.merge import (MergeProbability, candidate_edges, connected_components, greedy_merge, proposal_log_prob,
                         propose, smallest_members)
from selab.method.mh import _acceptance, metropolis_hastings
from selab.method.superpixels import node_majority_labels


# ------------------------------------------------------------------ brute-force oracles (test only)
def python_components(num_nodes, edges):
    """Union-find in plain Python: canonical cluster ids (by smallest member)."""
    parent = list(range(num_nodes))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(num_nodes)]
    ids = {}
    return [ids.setdefault(r, len(ids)) for r in roots]


def python_energy(cluster, labels, sizes, beta, num_classes):
    """Energy of PartitionEnergy written out with loops (tv distance, one image)."""
    mean_size = sum(sizes) / len(sizes)
    w = [s / mean_size for s in sizes]
    total = 0.0
    for k in set(cluster):
        members = [i for i, c in enumerate(cluster) if c == k]
        mass = sum(w[i] for i in members)
        mean = [sum(w[i] for i in members if labels[i] == c) / mass for c in range(num_classes)]
        for i in members:
            onehot = [1.0 if labels[i] == c else 0.0 for c in range(num_classes)]
            total += w[i] * 0.5 * sum(abs(a - b) for a, b in zip(onehot, mean))
    return total + beta * len(set(cluster))


def reference_energy(cluster, prob, size, batch, beta, scale, distance):
    """PartitionEnergy written out cluster by cluster (any class distributions, several images)."""
    cluster, prob, size, batch = (np.asarray(a, dtype=float) for a in (cluster, prob, size, batch))
    weight = np.empty_like(size)
    for image in np.unique(batch):
        weight[batch == image] = size[batch == image] / size[batch == image].mean()
    total = 0.0
    for k in np.unique(cluster):
        members = np.flatnonzero(cluster == k)
        mean = (weight[members, None] * prob[members]).sum(0) / weight[members].sum()
        for i in members:
            diff = prob[i] - mean
            total += weight[i] * (0.5 * np.abs(diff).sum() if distance == "tv" else (diff**2).sum())
    return scale * (total + beta * len(np.unique(cluster)))


def python_log_q(z, p):
    return sum(math.log(pe) if ze else math.log(1 - pe) for ze, pe in zip(z, p))


TINY_EDGES = torch.tensor([[0, 0, 1, 2, 2], [1, 2, 2, 3, 4]])  # 5 nodes, one triangle, 5 edges
TINY_LABELS = torch.tensor([0, 0, 1, 1, 1])
TINY_SIZES = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0])
TINY_P = torch.tensor([0.7, 0.3, 0.4, 0.8, 0.55])


# ------------------------------------------------------------------ merge probabilities and targets
def test_merge_probability_symmetric_and_differentiable():
    torch.manual_seed(0)
    mp = MergeProbability(8)
    gates = torch.rand(2, 6, 8, requires_grad=True)
    p = mp(edge_forget=gates)
    assert p.shape == (6,) and bool(((p > 0) & (p < 1)).all())
    assert torch.allclose(p, mp(edge_forget=gates.flip(0)))  # swapping directions changes nothing
    merge_loss(p, torch.ones(6)).backward()
    assert gates.grad is not None and mp.linear.weight.grad.abs().sum() > 0


def test_merge_probability_hidden_source_symmetric():
    mp = MergeProbability(4, source="hidden")
    h = torch.randn(3, 4)
    ei = torch.tensor([[0, 1], [1, 2]])
    assert torch.allclose(mp(h=h, edge_index=ei), mp(h=h, edge_index=ei.flip(0)))


def test_merge_probability_bad_input():
    with pytest.raises(ValueError, match="edge_forget"):
        MergeProbability(8)(edge_forget=torch.rand(6, 8))
    with pytest.raises(ValueError, match="source"):
        MergeProbability(8, source="gates")


def test_merge_target_and_majority_labels():
    mask = torch.tensor([[[0, 1, 1, 2], [0, 1, 2, 2]]])
    assignment = torch.tensor([[[0, 1, 1, 2], [0, 1, 1, 2]]])
    labels = node_majority_labels(mask, assignment, 3)
    assert labels.tolist() == [0, 1, 2]  # node 1: three 1s vs one 2
    ei = torch.tensor([[0, 1, 0], [1, 2, 2]])
    assert merge_target(ei, torch.tensor([4, 4, 5])).tolist() == [1.0, 0.0, 0.0]
    assert merge_loss(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0])).item() == pytest.approx(0.125)


# ------------------------------------------------------------------ proposals and components
def test_connected_components_matches_python_union_find():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.25]
        ei = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T
        on = torch.from_numpy(rng.random(ei.shape[1]) < 0.6)
        got = connected_components(ei, on, n).tolist()
        assert got == python_components(n, [p for p, o in zip(pairs, on.tolist()) if o])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 40), shape=st.sampled_from(["random", "path", "star", "reversed_path"]))
def test_smallest_members_matches_python_union_find(seed, n, shape):
    """The vectorised union-find on graphs with long chains, hubs, duplicates, self-loops, any edge order."""
    rng = np.random.default_rng(seed)
    if shape == "random":
        m = int(rng.integers(0, 3 * n + 1)) if n else 0
        rows, cols = rng.integers(0, max(n, 1), m), rng.integers(0, max(n, 1), m)
    elif shape == "star":
        rows, cols = np.full(max(n - 1, 0), n // 2), np.delete(np.arange(n), n // 2) if n else np.zeros(0, int)
    else:  # a path through the nodes in a random order (deep trees for the pointer jumping)
        order = rng.permutation(n)
        rows, cols = order[:-1], order[1:]
        if shape == "reversed_path":
            rows, cols = cols[::-1], rows[::-1]
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    root = smallest_members(rows, cols, n)
    want = python_components(n, list(zip(rows.tolist(), cols.tolist())))
    # same partition, and every node points at the smallest node of its component
    smallest = {}
    for node, label in enumerate(want):
        smallest.setdefault(label, node)
    assert root.tolist() == [smallest[label] for label in want]


def test_connected_components_bad_input():
    with pytest.raises(ValueError, match="edge_index"):
        connected_components(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="edges_on"):
        connected_components(TINY_EDGES, torch.ones(3, dtype=torch.bool))


def test_proposal_zero_and_one_probabilities():
    zero = propose(TINY_EDGES, torch.zeros(5))
    assert zero.cluster.tolist() == [0, 1, 2, 3, 4] and zero.log_q == 0.0
    one = propose(TINY_EDGES, torch.ones(5))
    assert one.cluster.tolist() == [0] * 5 and one.log_q == 0.0


def test_proposal_log_prob_brute_force():
    z = torch.tensor([True, False, False, True, True])
    assert proposal_log_prob(z, TINY_P) == pytest.approx(python_log_q(z.tolist(), TINY_P.tolist()))


def test_candidate_edges_budget():
    top2 = candidate_edges(TINY_P, 2)
    assert top2.tolist() == [True, False, False, True, False]
    assert candidate_edges(TINY_P, 0.4).tolist() == [True, False, False, True, False]  # ceil(0.4*5) = 2
    # per image: each image keeps its own top-1
    per = candidate_edges(torch.tensor([0.9, 0.8, 0.1, 0.2]), 1, torch.tensor([0, 0, 1, 1]))
    assert per.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="merge_budget"):
        candidate_edges(TINY_P, 1.5)


# ------------------------------------------------------------------ energy
def test_energy_matches_loop_oracle_on_all_partitions():
    energy = PartitionEnergy(node_labels=TINY_LABELS, size=TINY_SIZES, beta=0.7, num_classes=2, scale=1.0)
    assert PartitionEnergy(node_labels=TINY_LABELS, beta=0.7, scale=3.0)(torch.arange(5)) == pytest.approx(3 * 0.7 * 5)
    for z in itertools.product([False, True], repeat=5):
        cluster = connected_components(TINY_EDGES, torch.tensor(z), 5)
        want = python_energy(cluster.tolist(), TINY_LABELS.tolist(), TINY_SIZES.tolist(), 0.7, 2)
        assert energy(cluster) == pytest.approx(want)


def test_energy_prediction_mode_and_per_graph():
    prob = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
    batch = torch.tensor([0, 0, 1, 1])
    energy = PartitionEnergy(node_prob=prob, batch=batch, beta=0.1, scale=1.0)
    separate = energy.per_graph(torch.arange(4))
    assert separate.tolist() == pytest.approx([0.2, 0.2])
    merged = energy.per_graph(torch.tensor([0, 0, 1, 1]))
    assert merged.tolist() == pytest.approx([0.1 + 0.1, 0.1 + 0.1])  # tv 0.05 each + beta
    with pytest.raises(ValueError, match="node_prob"):
        PartitionEnergy()


# ------------------------------------------------------------------ Metropolis-Hastings
def _tiny_energy(beta=0.7):
    return PartitionEnergy(node_labels=TINY_LABELS, size=TINY_SIZES, beta=beta, num_classes=2, scale=1.0)


def test_acceptance_probabilities_brute_force():
    energy = _tiny_energy()
    temperature = 0.8
    cluster, trace = metropolis_hastings(TINY_EDGES, TINY_P, energy, 40, temperature,
                                         generator=torch.Generator().manual_seed(3))
    edges = TINY_EDGES.T.tolist()
    p = TINY_P.tolist()

    def log_pi(z):
        part = python_components(5, [e for e, o in zip(edges, z) if o])
        return -python_energy(part, TINY_LABELS.tolist(), TINY_SIZES.tolist(), 0.7, 2) / temperature

    current = [False] * 5
    assert trace.initial_log_q == pytest.approx(python_log_q(current, p))
    decisions = set()
    for step in trace.steps:
        z = step.proposal_edges.tolist()
        ratio = math.exp(log_pi(z) + python_log_q(current, p) - log_pi(current) - python_log_q(z, p))
        assert step.alpha == pytest.approx(min(1.0, ratio), rel=1e-9)
        assert step.log_q == pytest.approx(python_log_q(z, p))
        assert step.energy == pytest.approx(-log_pi(z) * temperature)
        decisions.add(step.accepted)
        if step.accepted:
            current = z
    assert decisions == {True, False}  # the chain both accepted and rejected
    final = python_components(5, [e for e, o in zip(edges, current) if o])
    assert cluster.tolist() == final


def test_acceptance_rule_edge_cases():
    assert _acceptance(-1.0, -2.0, -1.0, -2.0) == 1.0
    assert _acceptance(-3.0, 0.0, -1.0, 0.0) == pytest.approx(math.exp(-2.0))
    assert _acceptance(-1.0, 0.0, -1.0, -math.inf) == 1.0  # leave a state q cannot produce
    assert _acceptance(-math.inf, 0.0, -1.0, 0.0) == 0.0


def _exact_target(p, energy, temperature):
    states = list(itertools.product([False, True], repeat=len(p)))
    log_w = []
    for z in states:
        cluster = connected_components(TINY_EDGES, torch.tensor(z), 5)
        log_w.append(-energy(cluster) / temperature)
    log_w = np.array(log_w)
    pi = np.exp(log_w - log_w.max())
    return states, pi / pi.sum()


def test_long_chain_matches_target_distribution():
    energy = _tiny_energy(beta=0.7)
    temperature = 0.7
    steps = 30000
    _, trace = metropolis_hastings(TINY_EDGES, TINY_P, energy, steps, temperature,
                                   generator=torch.Generator().manual_seed(11))
    states, pi = _exact_target(TINY_P.tolist(), energy, temperature)
    index = {s: k for k, s in enumerate(states)}
    counts = np.zeros(len(states))
    current = (False,) * 5
    for step in trace.steps:
        if step.accepted:
            current = tuple(step.proposal_edges.tolist())
        counts[index[current]] += 1
    empirical = counts / counts.sum()
    tv = 0.5 * np.abs(empirical - pi).sum()
    print('total variation', tv)
    assert tv < 0.04, tv
    # the test has power: the proposal distribution itself (no MH correction) is far from pi
    q = np.array([math.exp(python_log_q(s, TINY_P.tolist())) for s in states])
    assert 0.5 * np.abs(q - pi).sum() > 0.15


def test_seeded_generator_reproduces_chain():
    energy = _tiny_energy()
    runs = [metropolis_hastings(TINY_EDGES, TINY_P, energy, 25, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1].steps, runs[1][1].steps):
        assert torch.equal(a.proposal_edges, b.proposal_edges) and a.accepted == b.accepted and a.alpha == b.alpha


@pytest.mark.parametrize("energy_kwargs", [
    dict(node_labels=True),
    dict(node_labels=True, distance="sq"),
    dict(node_prob=True),
    dict(node_prob=True, distance="sq"),
])
def test_partition_energy_fast_path_matches_calling_the_energy(energy_kwargs):
    """MH scores a PartitionEnergy from the cliques directly; a loop over clusters must agree."""
    rng = np.random.default_rng(1)
    n = 60
    pairs = sorted({(min(i, j), max(i, j)) for i, j in rng.integers(0, n, (150, 2)) if i != j})
    ei = torch.tensor(pairs).T
    p = torch.from_numpy(rng.uniform(0.05, 0.95, ei.shape[1]))
    kwargs = dict(energy_kwargs, size=torch.from_numpy(rng.integers(1, 50, n)).float(),
                  batch=torch.from_numpy(np.repeat([0, 1], n // 2)), beta=0.3, scale=2.0, num_classes=4)
    if kwargs.pop("node_labels", False):
        kwargs["node_labels"] = torch.from_numpy(rng.integers(0, 4, n))
    if kwargs.pop("node_prob", False):
        kwargs["node_prob"] = torch.from_numpy(rng.dirichlet(np.ones(4), n))
    energy = PartitionEnergy(**kwargs)
    prob = kwargs["node_prob"] if "node_prob" in kwargs else torch.nn.functional.one_hot(kwargs["node_labels"], 4)
    distance = kwargs.get("distance", "tv")

    def oracle(cluster):
        return reference_energy(cluster, prob, kwargs["size"], kwargs["batch"], 0.3, 2.0, distance)

    for budget in (None, 0.5):
        fast = metropolis_hastings(ei, p, energy, 30, generator=torch.Generator().manual_seed(2), merge_budget=budget)
        slow = metropolis_hastings(ei, p, oracle, 30, generator=torch.Generator().manual_seed(2), merge_budget=budget)
        assert torch.equal(fast[0], slow[0])
        assert fast[1].initial_energy == pytest.approx(slow[1].initial_energy, rel=1e-12)
        for a, b in zip(fast[1].steps, slow[1].steps):
            assert a.energy == pytest.approx(b.energy, rel=1e-10, abs=1e-10)
            assert a.alpha == pytest.approx(b.alpha, rel=1e-9) and a.accepted == b.accepted
            assert a.num_clusters == int(connected_components(ei, a.proposal_edges, n).max()) + 1


def test_all_zero_probabilities_merge_nothing():
    cluster, trace = metropolis_hastings(TINY_EDGES, torch.zeros(5), _tiny_energy(), 5)
    assert cluster.tolist() == list(range(5))
    assert all(not s.proposal_edges.any() for s in trace.steps)


def test_all_one_probabilities_merge_each_component():
    ei = torch.tensor([[0, 1, 3], [1, 2, 4]])  # two components {0,1,2}, {3,4} and a lone node 5
    energy = PartitionEnergy(node_labels=torch.tensor([0, 1, 0, 1, 1, 0]))
    cluster, trace = metropolis_hastings(ei, torch.ones(3), energy, 3, num_nodes=6)
    assert cluster.tolist() == [0, 0, 0, 1, 1, 2]
    assert trace.steps[0].accepted and trace.steps[0].alpha == 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), num_images=st.integers(1, 3), budget=st.sampled_from([None, 2, 0.5]),
       shuffle_edges=st.booleans())
def test_chains_never_cross_images_and_never_grow(seed, num_images, budget, shuffle_edges):
    """One chain per image on a disjoint batch of random graphs (via StructureEvolution.sample), with
    the edges grouped by image or in any order."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=num_images)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    pairs = [(o + i, o + j) for o, n in zip(offsets[:-1], sizes) for i in range(n) for j in range(i + 1, n)
             if rng.random() < 0.5]
    if shuffle_edges:
        pairs = [pairs[k] for k in rng.permutation(len(pairs))]
    ei = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T
    batch = torch.from_numpy(np.repeat(np.arange(num_images), sizes))
    n = int(offsets[-1])
    prob = torch.from_numpy(rng.dirichlet(np.ones(3), size=n)).float()
    p = torch.from_numpy(rng.random(ei.shape[1])).float()
    evo = StructureEvolution(4, merge_budget=budget, num_proposals=4)
    energy = PartitionEnergy(node_prob=prob, batch=batch)
    for mode in ("mh", "greedy", "none"):
        cluster, edges_on, chains = evo.sample(ei, p, batch, energy, torch.Generator().manual_seed(seed), mode)
        assert cluster.numel() == n and (cluster.max() + 1 if n else 0) <= n
        # clusters never cross images, and are numbered image by image
        owner = torch.full((int(cluster.max()) + 1,), -1, dtype=torch.long).scatter_reduce(0, cluster, batch, "amax")
        assert torch.equal(owner[cluster], batch)
        assert bool((owner[1:] >= owner[:-1]).all())
        assert torch.equal(cluster, connected_components(ei, edges_on, n))
        if budget is not None:
            assert not bool((edges_on & ~candidate_edges(p, budget, batch[ei[0]])).any())
        if mode == "mh":
            assert len(chains) == num_images and all(len(c.steps) == 4 for c in chains)
            edge_image = batch[ei[0]] if ei.numel() else batch.new_zeros(0)
            for image, chain in enumerate(chains):  # each chain holds its own image's edges, in edge order
                own = edge_image == image
                assert torch.equal(chain.edges_on, edges_on[own])
                assert all(step.proposal_edges.shape == (int(own.sum()),) for step in chain.steps)


def test_greedy_is_deterministic_and_thresholds():
    p = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.51])
    a, on_a = greedy_merge(TINY_EDGES, p)
    b, on_b = greedy_merge(TINY_EDGES, p)
    assert torch.equal(a, b) and on_a.tolist() == [True, False, True, False, True]
    assert a.tolist() == [0, 0, 0, 1, 0]
    top1, _ = greedy_merge(TINY_EDGES, p, merge_budget=1)
    assert top1.tolist() == [0, 0, 1, 2, 3]


def test_coarse_confidence_is_size_weighted_mean():
    prob = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = coarse_confidence(prob, torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 0, 1]))
    assert torch.allclose(out, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))


# ------------------------------------------------------------------ the layer-level module on real graphs
def _toy_batch():
    from selab.method.graph import batch_graphs, graph_from_superpixels

    grids = [np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1), np.arange(9).reshape(3, 3).repeat(3, 0).repeat(3, 1)[:8, :8]]
    graphs = [graph_from_superpixels(g) for g in grids]
    return batch_graphs(graphs)


class _FakeLSTM:
    def __init__(self, n, e, hidden, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.h = torch.randn(n, hidden, generator=g)
        self.m = torch.randn(n, hidden, generator=g)
        self.edge_forget = torch.rand(2, e, hidden, generator=g)


@pytest.mark.parametrize("mode", ["mh", "greedy", "none"])
def test_structure_evolution_coarsens_states(mode):
    graph = _toy_batch()
    n, e = graph.num_nodes, graph.edge_index.shape[1]
    graph.x = torch.randn(n, 5)
    lstm = _FakeLSTM(n, e, 6)
    prob = torch.softmax(torch.randn(n, 3), 1)
    labels = (graph.pos[:, 1] > 4).long()  # left/right halves
    evo = StructureEvolution(6, mode=mode, num_proposals=6)
    with torch.no_grad():
        evo.merge_probability.linear.bias.fill_(1.0)
    out = evo(graph, lstm, prob, node_labels=labels, generator=torch.Generator().manual_seed(0))
    next_graph, cluster, merge_prob, trace = out[:4]
    k = next_graph.num_nodes
    assert k == int(cluster.max()) + 1 <= n
    assert merge_prob.requires_grad and merge_prob.shape == (e,)
    assert trace.num_nodes_after == torch.bincount(next_graph.batch).tolist()
    assert sum(trace.num_nodes_before) == n
    members = torch.bincount(cluster, minlength=k).float()[:, None]
    assert torch.allclose(out.h, torch.zeros(k, 6).index_add_(0, cluster, lstm.h) / members, atol=1e-6)
    assert torch.allclose(out.m, torch.zeros(k, 6).index_add_(0, cluster, lstm.m) / members, atol=1e-6)
    assert torch.allclose(next_graph.x, torch.zeros(k, 5).index_add_(0, cluster, graph.x) / members, atol=1e-6)
    assert torch.equal(next_graph.assignment, cluster[graph.assignment])
    assert torch.allclose(out.confidence.sum(1), torch.ones(k))
    if mode == "none":
        assert k == n
    if mode == "mh":
        assert len(trace.chains) == graph.num_graphs
        # ground-truth energy with beta < 1: an accepted structure never mixes labels of two equal halves
        low = torch.full((k,), 9).scatter_reduce(0, cluster, labels, reduce="amin")
        high = torch.full((k,), -1).scatter_reduce(0, cluster, labels, reduce="amax")
        assert torch.equal(low, high)
        assert k < n  # and it does merge
        merge_loss(merge_prob, merge_target(graph.edge_index, labels)).backward()
        assert evo.merge_probability.linear.weight.grad is not None


def test_structure_evolution_eval_is_deterministic():
    graph = _toy_batch()
    n, e = graph.num_nodes, graph.edge_index.shape[1]
    lstm = _FakeLSTM(n, e, 6)
    prob = torch.softmax(torch.randn(n, 3), 1)
    evo = StructureEvolution(6).eval()
    with torch.no_grad():
        evo.merge_probability.linear.bias.fill_(1.0)  # p > 0.5 on most edges: greedy merges the budget's edges
    a = evo(graph, lstm, prob, generator=torch.Generator().manual_seed(0))
    b = evo(graph, lstm, prob, generator=torch.Generator().manual_seed(1))
    assert a.trace.mode == "greedy" and torch.equal(a.cluster, b.cluster)
    # the structure is greedy_merge's: p > threshold within each image's merge budget
    edge_graph = graph.batch[graph.edge_index[0]]
    expected, on = greedy_merge(graph.edge_index, a.merge_prob, n, 0.5, 0.25, edge_graph)
    assert torch.equal(a.cluster, expected) and torch.equal(a.trace.edges_on, on)
    assert a.graph.num_nodes < n  # it merged something


def test_candidate_edges_break_ties_by_edge_id_like_a_stable_sort():
    rng = np.random.default_rng(0)
    for trial in range(40):
        num_edges = int(rng.integers(1, 60))
        p = torch.from_numpy(rng.choice([0.0, 0.25, 0.5, 1.0, 0.3], size=num_edges)).float()
        edge_graph = rng.integers(0, 3, size=num_edges)
        edge_graph = torch.from_numpy(np.sort(edge_graph) if trial % 2 else edge_graph)  # grouped or not
        budget = int(rng.integers(0, 5)) if trial % 4 < 2 else float(rng.uniform(0.05, 1.0))
        expected = torch.zeros(num_edges, dtype=torch.bool)
        for image in edge_graph.unique().tolist():
            edges = [e for e in range(num_edges) if edge_graph[e] == image]
            ranked = sorted(edges, key=lambda e: (-float(p[e]), e))
            keep = budget if isinstance(budget, int) else math.ceil(len(edges) * budget)
            expected[ranked[:keep]] = True
        assert torch.equal(candidate_edges(p, budget, edge_graph), expected)


# ------------------------------------------------------------------ the test-time and energy options of StructureEvolution
@pytest.mark.parametrize("mode,eval_mode,expected", [("mh", "auto", "greedy"), ("greedy", "auto", "greedy"),
                                                     ("none", "auto", "none"), ("mh", None, "mh"),
                                                     ("none", "greedy", "greedy"), ("greedy", "mh", "mh")])
def test_eval_mode_auto_follows_the_family_of_mode(mode, eval_mode, expected):
    evo = StructureEvolution(6, mode=mode, eval_mode=eval_mode)
    assert evo.train().current_mode() == mode and evo.eval().current_mode() == expected
    assert StructureEvolution(6).eval_mode == "auto"


def test_state_is_coarsened_into_h_and_energy_source_is_explicit():
    graph = _toy_batch()
    n, e = graph.num_nodes, graph.edge_index.shape[1]
    lstm = _FakeLSTM(n, e, 6)
    prob = torch.softmax(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)), 1)
    labels = (graph.pos[:, 1] > 4).long()
    evo = StructureEvolution(6, num_proposals=6)
    with torch.no_grad():
        evo.merge_probability.linear.bias.fill_(1.0)
    state = torch.tanh(lstm.h)
    out = evo(graph, lstm, prob, node_labels=labels, generator=torch.Generator().manual_seed(0), state=state)
    members = torch.bincount(out.cluster).float()[:, None]
    torch.testing.assert_close(out.h, torch.zeros(out.graph.num_nodes, 6).index_add_(0, out.cluster, state) / members)
    assert out.trace.energy_source == "ground_truth"

    def run(**kwargs):
        return evo(graph, lstm, prob, generator=torch.Generator().manual_seed(0), **kwargs)

    # the prediction energy ignores the labels: the same chains as without labels
    by_prediction, unlabelled = run(node_labels=labels, energy_source="prediction"), run()
    assert by_prediction.trace.energy_source == unlabelled.trace.energy_source == "prediction"
    assert torch.equal(by_prediction.cluster, unlabelled.cluster)
    assert [c.energy for c in by_prediction.trace.chains] == [c.energy for c in unlabelled.trace.chains]
    assert [c.energy for c in by_prediction.trace.chains] != [c.energy for c in out.trace.chains]
    # the module option picks the default source where the labels are given
    evo.energy_source = "prediction"
    assert run(node_labels=labels).trace.energy_source == "prediction"
    with pytest.raises(ValueError, match="node_labels"):
        run(energy_source="ground_truth")
    with pytest.raises(ValueError, match="energy"):
        StructureEvolution(6, energy_source="labels")
    with pytest.raises(ValueError, match="eval_mode"):
        StructureEvolution(6, eval_mode="sometimes")


def test_mixed_energy_interpolates_between_ground_truth_and_prediction():
    graph = _toy_batch()
    n, e = graph.num_nodes, graph.edge_index.shape[1]
    lstm = _FakeLSTM(n, e, 6)
    prob = torch.softmax(3 * torch.randn(n, 3, generator=torch.Generator().manual_seed(1)), 1)
    labels = (graph.pos[:, 1] > 4).long()

    def chain_energies(energy, weight=0.5):
        torch.manual_seed(0)  # the same merge-probability weights, so the same proposals
        evo = StructureEvolution(6, num_proposals=6, energy_source=energy, prediction_weight=weight)
        with torch.no_grad():
            evo.merge_probability.linear.bias.fill_(1.0)
        out = evo(graph, lstm, prob, node_labels=labels, generator=torch.Generator().manual_seed(0))
        assert out.trace.energy_source == energy
        return np.array([[s.energy for s in chain.steps] for chain in out.trace.chains])

    ground, predicted = chain_energies("ground_truth"), chain_energies("prediction")
    np.testing.assert_allclose(chain_energies("mixed", 0.0), ground, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(chain_energies("mixed", 1.0), predicted, rtol=1e-9, atol=1e-9)
    halfway = chain_energies("mixed", 0.5)
    assert not np.allclose(halfway, ground) and not np.allclose(halfway, predicted)
    with pytest.raises(ValueError, match="prediction_weight"):
        StructureEvolution(6, energy_source="mixed", prediction_weight=1.5)

"""Graph LSTM: the equations by hand, wavefront == sequential oracle (outputs and every gradient), gradcheck."""

import numpy as np
import pytest
import torch
from skimage import data, transform

from selab.method.graph_lstm import GraphLSTM, wavefront_levels
from selab.method.orders import (bfs_order, confidence_order, dfs_order, leftmost_node, most_confident_node,
                                 random_order, stochastic_order)
from selab.method.superpixels import adjacency, pool_to_nodes, slic


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: with several threads on a shared, busy machine every op can stall on a barrier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_graph(num_nodes, num_edges, seed):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    return torch.unique(torch.sort(pairs, dim=0).values, dim=1)


def slic_graph(names, n_segments=120):
    """Small SLIC graphs of scikit-image photos, batched as one disjoint graph."""
    edges, positions, sizes, offset = [], [], [], 0
    for name in names:
        image = transform.resize(getattr(data, name)(), (96, 128), anti_aliasing=True)
        labels = slic(image, n_segments=n_segments)
        edges.append(torch.as_tensor(adjacency(labels)) + offset)
        positions.append(pool_to_nodes(torch.as_tensor(image).permute(2, 0, 1).float(), labels).pos)
        sizes.append(int(labels.max()) + 1)
        offset += sizes[-1]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.cat(edges, 1), batch, torch.cat(positions)


def all_orders(edge_index, batch, pos, seed=0):
    g = torch.Generator().manual_seed(seed)
    confidence = torch.softmax(2 * torch.randn(batch.numel(), 7, generator=g), dim=1)
    return {
        "confidence": confidence_order(confidence, pos, batch),
        "bfs_location": bfs_order(edge_index, leftmost_node(pos, batch), batch),
        "bfs_confidence": bfs_order(edge_index, most_confident_node(confidence, batch, pos), batch),
        "dfs_location": dfs_order(edge_index, leftmost_node(pos, batch), batch),
        "dfs_confidence": dfs_order(edge_index, most_confident_node(confidence, batch, pos), batch),
        "random": random_order(batch, g),
        "stochastic": stochastic_order(confidence, pos, batch, noise=0.2, generator=g),
    }


def run(layer, x, edge_index, rank, schedule, h0, m0):
    """Outputs and the gradient of every input and parameter under a loss touching every output."""
    for t in (x, h0, m0):
        t.grad = None
    layer.zero_grad(set_to_none=True)
    out = layer(x, edge_index, rank, update_schedule=schedule, h0=h0, m0=m0)
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out.h, out.m, out.edge_forget)]
    loss = sum((w * t).sum() for w, t in zip(weights, (out.h, out.m, out.edge_forget)))
    loss = loss + sum(gate.square().sum() for gate in out.gates.values())
    # Per-node scale keeps parameter gradients O(1), so an absolute float32 tolerance is meaningful.
    loss = loss / x.shape[0]
    loss.backward()
    grads = {f"grad_{n}": t.grad for n, t in (("x", x), ("h0", h0), ("m0", m0))}
    grads.update({f"grad_{n}": p.grad for n, p in layer.named_parameters()})
    return {"h": out.h, "m": out.m, "edge_forget": out.edge_forget, **out.gates, **grads}


def assert_schedules_agree(edge_index, rank, num_nodes, dtype, layer_kwargs=None, channels=(5, 6)):
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.manual_seed(0)
    layer = GraphLSTM(*channels, **(layer_kwargs or {})).to(dtype)
    x = torch.randn(num_nodes, channels[0], dtype=dtype, requires_grad=True)
    h0 = (0.5 * torch.randn(num_nodes, channels[1], dtype=dtype)).requires_grad_()
    m0 = (0.5 * torch.randn(num_nodes, channels[1], dtype=dtype)).requires_grad_()
    fast = run(layer, x, edge_index, rank, "wavefront", h0, m0)
    oracle = run(layer, x, edge_index, rank, "sequential", h0, m0)
    assert fast.keys() == oracle.keys()
    for name in fast:
        assert fast[name] is not None and oracle[name] is not None, name
        diff = (fast[name] - oracle[name]).abs().max().item() if fast[name].numel() else 0.0
        assert diff <= tol, f"{name}: max abs difference {diff:.3g} > {tol}"


@pytest.fixture(scope="module")
def photo_graphs():
    return slic_graph(["astronaut", "chelsea", "coffee"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "order", ["confidence", "bfs_location", "bfs_confidence", "dfs_location", "dfs_confidence", "random",
              "stochastic"])
def test_wavefront_equals_sequential_on_batched_slic_graphs(photo_graphs, order, dtype):
    edge_index, batch, pos = photo_graphs
    rank = all_orders(edge_index, batch, pos)[order]
    assert_schedules_agree(edge_index, rank, batch.numel(), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wavefront_equals_sequential_on_single_slic_graph(dtype):
    edge_index, batch, pos = slic_graph(["astronaut"], n_segments=150)
    orders = all_orders(edge_index, batch, pos, seed=3)
    for name in ("confidence", "dfs_confidence", "random"):
        assert_schedules_agree(edge_index, orders[name], batch.numel(), dtype)


@pytest.mark.parametrize("layer_kwargs", [{}, {"identical_forget_gates": True}, {"residual": True}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wavefront_equals_sequential_on_random_graphs(seed, layer_kwargs):
    # Sparse enough to leave isolated nodes; two "images" batched with ranks restarting at 0.
    edges_a, edges_b = random_graph(40, 50, seed), random_graph(30, 60, seed + 10) + 40
    edge_index = torch.cat([edges_a, edges_b], 1)
    batch = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    pos = torch.rand(70, 2, generator=torch.Generator().manual_seed(seed))
    for rank in all_orders(edge_index, batch, pos, seed).values():
        assert_schedules_agree(edge_index, rank, 70, torch.float64, layer_kwargs)


@pytest.mark.parametrize("schedule", ["wavefront", "synchronous"])
@pytest.mark.parametrize("identical", [False, True])
def test_zero_old_states_by_default_equal_explicit_zeros(photo_graphs, schedule, identical):
    """h0=None skips the products U h^old (all zero): outputs and gradients equal those of explicit
    zero states (and of the sequential oracle); only the U^* weights are left without a gradient."""
    edge_index, batch, pos = photo_graphs
    rank = all_orders(edge_index, batch, pos)["confidence"]
    N = batch.numel()
    torch.manual_seed(0)
    layer = GraphLSTM(5, 6, identical_forget_gates=identical).double()
    x = torch.randn(N, 5, dtype=torch.float64, requires_grad=True)
    m0 = (0.5 * torch.randn(N, 6, dtype=torch.float64)).requires_grad_()
    zeros = torch.zeros(N, 6, dtype=torch.float64, requires_grad=True)
    explicit = run(layer, x, edge_index, rank, schedule, zeros, m0)
    unused = {"grad_self_proj.weight", "grad_neighbour_forget_proj.weight"}
    if schedule == "wavefront":
        oracle = run(layer, x, edge_index, rank, "sequential", zeros, m0)
        for name in explicit:
            assert (explicit[name] - oracle[name]).abs().max() <= 1e-10, name
    layer.zero_grad(set_to_none=True)
    x.grad = m0.grad = None
    out = layer(x, edge_index, rank, update_schedule=schedule, m0=m0)
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out.h, out.m, out.edge_forget)]
    loss = sum((w * t).sum() for w, t in zip(weights, (out.h, out.m, out.edge_forget)))
    (loss + sum(gate.square().sum() for gate in out.gates.values())).div(N).backward()
    default = {"h": out.h, "m": out.m, "edge_forget": out.edge_forget, **out.gates,
               "grad_x": x.grad, "grad_m0": m0.grad}
    default.update({f"grad_{n}": p.grad for n, p in layer.named_parameters()})
    for name, value in default.items():
        if name in unused and not (identical and name == "grad_neighbour_forget_proj.weight"):
            assert value is None, f"{name}: U h^old is skipped for zero old states, so no gradient"
            assert explicit[name].abs().max() == 0
            continue
        assert (value - explicit[name]).abs().max() <= 1e-10, name


def test_residual_projection_when_channels_differ():
    edge_index = random_graph(20, 30, 0)
    rank = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert_schedules_agree(edge_index, rank, 20, torch.float64, {"residual": True}, channels=(3, 6))
    assert_schedules_agree(edge_index, rank, 20, torch.float64, {"residual": True}, channels=(6, 6))
    layer = GraphLSTM(6, 6, residual=True).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    out = layer(x, edge_index, rank)
    torch.testing.assert_close(out.h, out.hidden + x)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_three_node_example_by_hand():
    """Path 0 - 1 - 2 updated in the order 1, 0, 2: every gate from the equations of docs/method.md."""
    C, H = 2, 3
    torch.manual_seed(3)
    layer = GraphLSTM(C, H, init_range=0.5).double()
    P = {k: v.detach().numpy() for k, v in layer.gate_parameters().items()}
    f = np.array([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]])
    h_old = np.array([[0.1, -0.2, 0.3], [0.0, 0.4, -0.1], [-0.5, 0.2, 0.2]])
    m_old = np.array([[0.3, 0.1, -0.2], [-0.4, 0.5, 0.0], [0.2, -0.1, 0.6]])
    edge_index = torch.tensor([[0, 1], [1, 2]])
    out = layer(torch.tensor(f), edge_index, torch.tensor([1, 0, 2]),
                h0=torch.tensor(h_old), m0=torch.tensor(m_old))

    def gates(i, h_bar):
        u = sigmoid(P["W_u"] @ f[i] + P["U_u"] @ h_old[i] + P["U_un"] @ h_bar + P["b_u"])
        g_f = sigmoid(P["W_f"] @ f[i] + P["U_f"] @ h_old[i] + P["b_f"])
        o = sigmoid(P["W_o"] @ f[i] + P["U_o"] @ h_old[i] + P["U_on"] @ h_bar + P["b_o"])
        c = np.tanh(P["W_c"] @ f[i] + P["U_c"] @ h_old[i] + P["U_cn"] @ h_bar + P["b_c"])
        return u, g_f, o, c

    def adaptive(i, j):  # reads the neighbour's OLD hidden state, shares W^f and b^f
        return sigmoid(P["W_f"] @ f[i] + P["U_fn"] @ h_old[j] + P["b_f"])

    # Node 1 first: both neighbours (0, 2) not yet updated, q = 0.
    h_bar1 = (h_old[0] + h_old[2]) / 2
    u1, f1, o1, c1 = gates(1, h_bar1)
    m1 = (adaptive(1, 0) * m_old[0] + adaptive(1, 2) * m_old[2]) / 2 + f1 * m_old[1] + u1 * c1
    h1 = np.tanh(o1 * m1)
    # Node 0: its only neighbour 1 is updated (q = 1), so it reads h_1^new and m_1^new.
    u0, f0, o0, c0 = gates(0, h1)
    m0 = adaptive(0, 1) * m1 + f0 * m_old[0] + u0 * c0
    h0 = np.tanh(o0 * m0)
    # Node 2: same with neighbour 1.
    u2, f2, o2, c2 = gates(2, h1)
    m2 = adaptive(2, 1) * m1 + f2 * m_old[2] + u2 * c2
    h2 = np.tanh(o2 * m2)

    expected_gates = {
        "input": [u0, u1, u2], "forget": [f0, f1, f2], "output": [o0, o1, o2], "candidate": [c0, c1, c2],
    }
    for schedule in ("wavefront", "sequential"):
        out = layer(torch.tensor(f), edge_index, torch.tensor([1, 0, 2]), update_schedule=schedule,
                    h0=torch.tensor(h_old), m0=torch.tensor(m_old))
        for name, rows in expected_gates.items():
            np.testing.assert_allclose(out.gates[name].detach().numpy(), np.stack(rows), atol=1e-12)
        np.testing.assert_allclose(out.m.detach().numpy(), np.stack([m0, m1, m2]), atol=1e-12)
        np.testing.assert_allclose(out.h.detach().numpy(), np.stack([h0, h1, h2]), atol=1e-12)
        edge_forget = out.edge_forget.detach().numpy()  # row 0: gate at edge_index[0] for edge_index[1]
        np.testing.assert_allclose(edge_forget[0], np.stack([adaptive(0, 1), adaptive(1, 2)]), atol=1e-12)
        np.testing.assert_allclose(edge_forget[1], np.stack([adaptive(1, 0), adaptive(2, 1)]), atol=1e-12)
        assert out.wavefront.tolist() == [1, 0, 1]

    # Synchronous ablation: node 0 sees node 1's OLD state.
    sync = layer(torch.tensor(f), edge_index, torch.tensor([1, 0, 2]), update_schedule="synchronous",
                 h0=torch.tensor(h_old), m0=torch.tensor(m_old))
    u, g_f, o, c = gates(0, h_old[1])
    m_sync = adaptive(0, 1) * m_old[1] + g_f * m_old[0] + u * c
    np.testing.assert_allclose(sync.h[0].detach().numpy(), np.tanh(o * m_sync), atol=1e-12)
    assert sync.wavefront.tolist() == [0, 0, 0]


def test_identical_forget_gates_by_hand():
    torch.manual_seed(4)
    layer = GraphLSTM(2, 2, identical_forget_gates=True, init_range=0.5).double()
    P = {k: v.detach().numpy() for k, v in layer.gate_parameters().items()}
    f = np.array([[0.5, -1.0], [1.5, 0.2]])
    out = layer(torch.tensor(f), torch.tensor([[0], [1]]), torch.tensor([0, 1]))
    # Node 0 first from zero states; node 1 then reads h_0^new through U^fn in its single forget gate.
    z = np.zeros(2)
    u0 = sigmoid(P["W_u"] @ f[0] + P["b_u"])
    c0 = np.tanh(P["W_c"] @ f[0] + P["b_c"])
    m0 = u0 * c0
    h0 = np.tanh(sigmoid(P["W_o"] @ f[0] + P["b_o"]) * m0)
    g_f1 = sigmoid(P["W_f"] @ f[1] + P["U_fn"] @ h0 + P["b_f"])
    u1 = sigmoid(P["W_u"] @ f[1] + P["U_un"] @ h0 + P["b_u"])
    c1 = np.tanh(P["W_c"] @ f[1] + P["U_cn"] @ h0 + P["b_c"])
    m1 = g_f1 * z + u1 * c1
    np.testing.assert_allclose(out.m.detach().numpy(), np.stack([m0, m1]), atol=1e-12)
    np.testing.assert_allclose(out.gates["forget"][1].detach().numpy(), g_f1, atol=1e-12)


@pytest.mark.parametrize("schedule", ["wavefront", "sequential", "synchronous"])
@pytest.mark.parametrize("identical", [False, True])
def test_gradcheck(schedule, identical):
    torch.manual_seed(0)
    layer = GraphLSTM(3, 2, identical_forget_gates=identical, residual=True).double()
    edge_index = torch.tensor([[0, 0, 1, 2], [1, 2, 3, 3]])  # a square plus isolated node 4
    rank = torch.tensor([2, 0, 3, 1, 4])
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def f(x, h0, m0, *weights):
        with torch.nn.utils.stateless._reparametrize_module(
                layer, dict(zip([n for n, _ in layer.named_parameters()], weights))):
            out = layer(x, edge_index, rank, update_schedule=schedule, h0=h0, m0=m0)
        return out.h, out.m, out.edge_forget

    assert torch.autograd.gradcheck(f, (x, h0, m0, *[p.detach().requires_grad_() for p in params]))


def test_defaults_initialisation_and_isolated_nodes():
    layer = GraphLSTM(4, 8)
    for p in layer.parameters():
        assert p.abs().max() <= 0.1
    x = torch.randn(3, 4)
    out = layer(x, torch.empty(2, 0, dtype=torch.long), torch.tensor([0, 1, 2]))
    assert out.h.shape == (3, 8) and out.edge_forget.shape == (2, 0, 8)
    assert out.wavefront.tolist() == [0, 0, 0]
    # No neighbours and zero initial states: only the input gate, candidate and output gate act.
    P = layer.gate_parameters()
    m = torch.sigmoid(x @ P["W_u"].T + P["b_u"]) * torch.tanh(x @ P["W_c"].T + P["b_c"])
    torch.testing.assert_close(out.m, m)
    torch.testing.assert_close(out.h, torch.tanh(torch.sigmoid(x @ P["W_o"].T + P["b_o"]) * m))


def test_levels_are_longest_paths_and_independent_sets():
    edge_index = random_graph(50, 120, 5)
    rank = torch.randperm(50, generator=torch.Generator().manual_seed(5))
    levels = wavefront_levels(edge_index, rank, 50)
    a, b = edge_index
    assert (levels[a] != levels[b]).all()  # a level holds no edge
    earlier_first = rank[a] < rank[b]
    assert ((levels[a] < levels[b]) == earlier_first).all()
    # level = 1 + max level of earlier neighbours (0 without any)
    for i in range(50):
        earlier = [int(levels[j]) for j in range(50) if ((a == i) & (b == j) | (a == j) & (b == i)).any()
                   and rank[j] < rank[i]]
        assert int(levels[i]) == (1 + max(earlier) if earlier else 0)


def test_bad_inputs_raise_clear_errors():
    layer = GraphLSTM(4, 8)
    x = torch.randn(3, 4)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="rank"):
        layer(x, edge_index, torch.tensor([0, 0, 1]))  # adjacent nodes 0, 1 share a rank
    with pytest.raises(ValueError, match="rank"):
        layer(x, edge_index, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(3, 5), edge_index, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="schedule"):
        layer(x, edge_index, torch.tensor([0, 1, 2]), update_schedule="async")
    with pytest.raises(ValueError, match="edge_index"):
        layer(x, torch.tensor([[0, 1], [1, 3]]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="h0"):
        layer(x, edge_index, torch.tensor([0, 1, 2]), h0=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="images"):
        layer(x, edge_index, torch.tensor([0, 1, 2]), batch=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="hidden_channels"):
        GraphLSTM(4, 0)


def test_synchronous_differs_from_wavefront_but_ignores_rank():
    edge_index = random_graph(30, 60, 1)
    x = torch.randn(30, 5, dtype=torch.float64)
    layer = GraphLSTM(5, 6).double()
    r1, r2 = torch.randperm(30), torch.randperm(30)
    torch.testing.assert_close(layer(x, edge_index, r1, "synchronous").h, layer(x, edge_index, None, "synchronous").h)
    torch.testing.assert_close(layer(x, edge_index, r1, "synchronous").h, layer(x, edge_index, r2, "synchronous").h)
    assert not torch.allclose(layer(x, edge_index, r1).h, layer(x, edge_index, r1, "synchronous").h)

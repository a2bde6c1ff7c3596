r"""The Graph LSTM layer from `"Semantic Object Parsing with Graph LSTM"
<https://arxiv.org/abs/1603.07063>`_ (Liang et al., ECCV 2016), the unit that the Structure-evolving
LSTM (CVPR 2017) stacks, with an exact and fast parallel schedule.

Nodes (superpixels) are updated one at a time in a given order: a node averages the hidden states of
its neighbours, taking the *new* state of those already updated and the *old* state of the others, and
weighs each neighbour's memory with an adaptive forget gate of its own. Because only the order of
*neighbours* matters, all nodes of one "wavefront level" (level(i) = 1 + max level of the earlier
neighbours of i) share no edge and can be updated at once, which gives exactly the one-node-at-a-time
result with one Python step per level (about 10-20 on a SLIC graph) instead of one per node.

The equations (``../shared/PAPER.md``, Eq. 1-2), for node i with neighbours N(i), q_j = 1 if j was
already updated in this layer::

    h̄_i    = Σ_j (q_j h_j^new + (1-q_j) h_j^old) / |N(i)|
    g^u_i  = σ(W^u f_i + U^u h_i + U^un h̄_i + b^u)
    ḡ^f_ij = σ(W^f f_i + U^fn h_j^old + b^f)
    g^f_i  = σ(W^f f_i + U^f h_i + b^f)
    g^o_i  = σ(W^o f_i + U^o h_i + U^on h̄_i + b^o)
    g^c_i  = tanh(W^c f_i + U^c h_i + U^cn h̄_i + b^c)
    m_i^new = Σ_j ḡ^f_ij (q_j m_j^new + (1-q_j) m_j^old) / |N(i)| + g^f_i m_i + g^u_i g^c_i
    h_i^new = tanh(g^o_i m_i^new)

Paper configuration: ``GraphLSTM(C, H, residual=True)`` (two stacked layers with residual connections,
weights uniform in [-0.1, 0.1]) driven by :func:`~selab.orders.confidence_order`, schedule
``"wavefront"`` (or ``"sequential"``: same numbers, slower). ``identical_forget_gates=True`` is the
paper's ablation; ``schedule="synchronous"`` (every neighbour counted as not yet updated, all nodes at
once) is a selab ablation and the cost floor of the wavefront.

Update orders live in :mod:`selab.orders` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selab.orders import (  # noqa: F401  (re-exported: the orders belong to the layer's API)
    bfs_order,
    confidence_order,
    dfs_order,
    leftmost_node,
    most_confident_node,
    random_order,
    rank_from_order,
    stochastic_order,
)

__all__ = [
    "GraphLSTM",
    "GraphLSTMOutput",
    "wavefront_levels",
    "SCHEDULES",
    "confidence_order",
    "stochastic_order",
    "bfs_order",
    "dfs_order",
    "random_order",
    "leftmost_node",
    "most_confident_node",
    "rank_from_order",
]

SCHEDULES = ("wavefront", "sequential", "synchronous")
GATES = ("input", "forget", "output", "candidate")  # order of the fused gate blocks: u, f, o, c


@dataclass
class GraphLSTMOutput:
    """What one Graph LSTM layer returns.

    Attributes
    ----------
    h : Tensor [N, H]
        Layer output: the new hidden state, plus the input when ``residual=True``.
    m : Tensor [N, H]
        New memory state.
    edge_forget : Tensor [2, E, H]
        Adaptive forget gates per undirected edge: row 0 is ḡ^f_ij at node i = edge_index[0] for
        neighbour j = edge_index[1], row 1 the reverse (with ``identical_forget_gates`` the node forget
        gate g^f of either end point; selab decision).
    levels : LongTensor [N]
        Wavefront level of each node (all zeros for the synchronous schedule).
    hidden : Tensor [N, H]
        The new hidden state tanh(g^o ⊙ m) before the residual connection.
    gates : dict[str, Tensor [N, H]]
        Node gates ``input`` g^u, ``forget`` g^f, ``output`` g^o, ``candidate`` g^c (for inspection).
    """

    h: Tensor
    m: Tensor
    edge_forget: Tensor
    levels: Tensor
    hidden: Tensor
    gates: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_levels(self) -> int:
        return int(self.levels.max()) + 1 if self.levels.numel() else 0


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"tensor {value.dtype} of shape {list(value.shape)}"
    return type(value).__name__


def _oriented_edges(edge_index: Tensor, rank: Tensor) -> tuple[Tensor, Tensor]:
    """(earlier, later) end points of every edge in the update order."""
    src, dst = edge_index
    src_first = rank[src] < rank[dst]
    return torch.where(src_first, src, dst), torch.where(src_first, dst, src)


def wavefront_levels(edge_index: Tensor, rank: Tensor, num_nodes: int | None = None) -> Tensor:
    """Wavefront level of every node: level(i) = 1 + max level of i's neighbours ranked before i.

    A longest-path layering of the DAG that orients each edge from the earlier to the later node;
    computed by a vectorised fixed-point iteration (one scatter-max over the edges per level).

    Example
    -------
    >>> wavefront_levels(torch.tensor([[0, 1], [1, 2]]), torch.tensor([1, 0, 2]))
    tensor([1, 0, 1])
    """
    num_nodes = rank.numel() if num_nodes is None else num_nodes
    earlier, later = _oriented_edges(edge_index, rank)
    level = torch.zeros(num_nodes, dtype=torch.long, device=rank.device)
    while True:
        new = level.scatter_reduce(0, later, level[earlier] + 1, reduce="amax", include_self=True)
        if torch.equal(new, level):
            return level
        level = new


@dataclass
class _WavefrontPlan:
    """Index sets of the wavefront loop (nodes in slot order: sorted by level)."""

    node_bounds: list[int]  # level l holds slots node_bounds[l]:node_bounds[l+1]
    edge_bounds: list[int]  # its directed edges edge_bounds[l]:edge_bounds[l+1]
    edge_row: Tensor  # row of the updated node i within its level
    edge_nbr: Tensor  # slot of the neighbour j
    edge_grad_target: Tensor  # slot of j (reads j's new state) or N + slot (reads j's old state)


class _Wavefront(torch.autograd.Function):
    """The wavefront loop with a level-by-level backward.

    A plain autograd loop that writes each level into an [N, 2H] state tensor pays O(N H) per level
    in backward (zero-filled gradients of every gather and write). Here each level's small graph is
    kept, and backward walks the levels in reverse, scattering each level's input gradients in place
    into one buffer: rows 0..N-1 for the new states (read by later levels), N..2N-1 for the old ones.
    """

    @staticmethod
    def forward(ctx, layer, plan, own, m_own, inv_degree, state0, edge_weight, *params):
        H = layer.hidden_channels
        state = state0.detach().clone()
        own, m_own, inv_degree = own.detach(), m_own.detach(), inv_degree.detach()
        edge_weight = edge_weight.detach() if edge_weight is not None else None
        gate_rows, graphs = [], []
        with torch.enable_grad():
            for level in range(len(plan.node_bounds) - 1):
                lo, hi = plan.node_bounds[level], plan.node_bounds[level + 1]
                e_lo, e_hi = plan.edge_bounds[level], plan.edge_bounds[level + 1]
                leaves = [
                    own[lo:hi].detach().requires_grad_(),
                    m_own[lo:hi].detach().requires_grad_(),
                    state.index_select(0, plan.edge_nbr[e_lo:e_hi]).requires_grad_(),
                ]
                gathered = leaves[2]
                if edge_weight is not None:
                    leaves.append(edge_weight[e_lo:e_hi].detach().requires_grad_())
                    gathered = gathered * leaves[3]
                sums = state.new_zeros(hi - lo, 2 * H).index_add(0, plan.edge_row[e_lo:e_hi], gathered)
                hbar, neighbour_memory = (sums * inv_degree[lo:hi]).split(H, dim=1)
                h, m, gates = layer._cell(leaves[0], hbar, neighbour_memory, leaves[1])
                new_state, gates = torch.cat([h, m], dim=1), torch.cat(gates, dim=1)
                state[lo:hi] = new_state.detach()
                gate_rows.append(gates.detach())
                graphs.append((leaves, new_state, gates))
        ctx.plan, ctx.graphs, ctx.has_weight = plan, graphs, edge_weight is not None
        ctx.shapes = (own.shape, m_own.shape, state0.shape, None if edge_weight is None else edge_weight.shape)
        ctx.params = params
        all_gates = torch.cat(gate_rows) if gate_rows else own.new_zeros(0, 4 * H)
        return state, all_gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_state, grad_gates):
        plan, params = ctx.plan, ctx.params
        own_shape, m_shape, state_shape, weight_shape = ctx.shapes
        N = state_shape[0]
        grad_own = grad_state.new_zeros(own_shape)
        grad_m_own = grad_state.new_zeros(m_shape)
        grad_weight = grad_state.new_zeros(weight_shape) if ctx.has_weight else None
        grad_params = [torch.zeros_like(p) for p in params]
        # Rows 0..N-1: gradient of each node's new state; N..2N-1: of its old state.
        grad_states = torch.cat([grad_state, torch.zeros_like(grad_state)])
        for level in reversed(range(len(ctx.graphs))):
            leaves, new_state, gates = ctx.graphs[level]
            lo, hi = plan.node_bounds[level], plan.node_bounds[level + 1]
            e_lo, e_hi = plan.edge_bounds[level], plan.edge_bounds[level + 1]
            # Every later level has been walked already, so grad_states[lo:hi] is complete.
            grads = torch.autograd.grad(
                (new_state, gates), leaves + list(params), (grad_states[lo:hi], grad_gates[lo:hi]),
                allow_unused=True, retain_graph=True,  # backward may run again (e.g. gradcheck)
            )
            grad_own[lo:hi], grad_m_own[lo:hi] = grads[0], grads[1]
            grad_states.index_add_(0, plan.edge_grad_target[e_lo:e_hi], grads[2])
            if ctx.has_weight:
                grad_weight[e_lo:e_hi] = grads[3]
            for total, g in zip(grad_params, grads[len(leaves):]):
                if g is not None:
                    total += g
        return (None, None, grad_own, grad_m_own, None, grad_states[N:], grad_weight, *grad_params)


class GraphLSTM(nn.Module):
    r"""Graph LSTM layer (Liang et al., ECCV 2016, Eq. 1-2).

    Parameters
    ----------
    in_channels : int
        Size C of the node features f_i.
    hidden_channels : int
        Size H of the hidden and memory states.
    residual : bool
        selab reading of the paper's "residual connections": the output is ``h + x`` (or
        ``h + P x`` with a learned linear map P when ``in_channels != hidden_channels``).
    identical_forget_gates : bool
        The paper's ablation: one forget gate g^f_i = σ(W^f f_i + U^f h_i + U^fn h̄_i + b^f) and
        m_i^new = g^f_i ⊙ m_i + g^u_i ⊙ g^c_i (no neighbour memory term).
    init_range : float
        All parameters start uniform in [-init_range, init_range] (paper: 0.1).

    Parameters are stored fused, blocks in the order u, f, o, c (see :meth:`gate_parameters` for
    per-gate views): ``input_proj`` (W, b), ``self_proj`` (U), ``neighbour_proj`` (U^un, U^on, U^cn),
    ``neighbour_forget_proj`` (U^fn). W^f, b^f serve both forget gates.

    Example
    -------
    >>> layer = GraphLSTM(8, 16)
    >>> x = torch.randn(3, 8)
    >>> edge_index = torch.tensor([[0, 1], [1, 2]])
    >>> out = layer(x, edge_index, rank=torch.tensor([1, 0, 2]))
    >>> out.h.shape, out.edge_forget.shape, out.levels.tolist()
    (torch.Size([3, 16]), torch.Size([2, 2, 16]), [1, 0, 1])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        residual: bool = False,
        identical_forget_gates: bool = False,
        init_range: float = 0.1,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if init_range < 0:
            raise ValueError(f"init_range: expected a non-negative number, got {init_range}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.residual = residual
        self.identical_forget_gates = identical_forget_gates
        self.init_range = init_range
        H = hidden_channels
        self.input_proj = nn.Linear(in_channels, 4 * H)  # W^u, W^f, W^o, W^c and the biases
        self.self_proj = nn.Linear(H, 4 * H, bias=False)  # U^u, U^f, U^o, U^c
        self.neighbour_proj = nn.Linear(H, 3 * H, bias=False)  # U^un, U^on, U^cn
        self.neighbour_forget_proj = nn.Linear(H, H, bias=False)  # U^fn
        needs_projection = residual and in_channels != hidden_channels
        self.residual_proj = nn.Linear(in_channels, H, bias=False) if needs_projection else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -self.init_range, self.init_range)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, residual={self.residual}, "
            f"identical_forget_gates={self.identical_forget_gates}"
        )

    def gate_parameters(self) -> dict[str, Tensor]:
        """Per-gate views of the fused parameters, named as in the paper.

        Keys ``W_u W_f W_o W_c`` [H, C], ``b_u b_f b_o b_c`` [H], ``U_u U_f U_o U_c U_un U_on U_cn U_fn``
        [H, H]. Views share storage and gradients with the parameters.
        """
        H = self.hidden_channels
        names = ("u", "f", "o", "c")
        params = {}
        for k, name in enumerate(names):
            block = slice(k * H, (k + 1) * H)
            params[f"W_{name}"] = self.input_proj.weight[block]
            params[f"b_{name}"] = self.input_proj.bias[block]
            params[f"U_{name}"] = self.self_proj.weight[block]
        for k, name in enumerate(("u", "o", "c")):
            params[f"U_{name}n"] = self.neighbour_proj.weight[k * H : (k + 1) * H]
        params["U_fn"] = self.neighbour_forget_proj.weight
        return params

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, x, edge_index, rank, schedule, h0, m0, batch):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
            raise ValueError(f"x: expected a float tensor [N, {self.in_channels}], got {_describe(x)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels, got {x.shape[1]}")
        N = x.shape[0]
        if not isinstance(edge_index, Tensor) or edge_index.dtype != torch.long or edge_index.dim() != 2 \
                or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index: expected an int64 tensor [2, E], got {_describe(edge_index)}")
        if edge_index.numel():
            if int(edge_index.min()) < 0 or int(edge_index.max()) >= N:
                raise ValueError(f"edge_index: node ids must lie in [0, {N})")
            if bool((edge_index[0] == edge_index[1]).any()):
                raise ValueError("edge_index: self loops are not allowed")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        if schedule != "synchronous" or rank is not None:
            if not isinstance(rank, Tensor) or rank.dtype not in (torch.int32, torch.int64) \
                    or rank.shape != (N,):
                raise ValueError(f"rank: expected an integer tensor of shape [{N}], got {_describe(rank)}")
            if edge_index.numel() and bool((rank[edge_index[0]] == rank[edge_index[1]]).any()):
                raise ValueError("rank: two adjacent nodes have the same rank (the update order is ambiguous)")
        for name, state in (("h0", h0), ("m0", m0)):
            if state is not None and (not isinstance(state, Tensor) or state.shape != (N, self.hidden_channels)):
                raise ValueError(f"{name}: expected a tensor [{N}, {self.hidden_channels}], got {_describe(state)}")
        if batch is not None:
            if not isinstance(batch, Tensor) or batch.shape != (N,):
                raise ValueError(f"batch: expected an int64 tensor [{N}], got {_describe(batch)}")
            if edge_index.numel() and bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
                raise ValueError("edge_index: an edge joins nodes of two different images (see batch)")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        rank: Tensor | None,
        schedule: str = "wavefront",
        h0: Tensor | None = None,
        m0: Tensor | None = None,
        batch: Tensor | None = None,
    ) -> GraphLSTMOutput:
        """Update every node once.

        Parameters
        ----------
        x : Tensor [N, C]
            Node features f_i.
        edge_index : LongTensor [2, E]
            Each undirected edge once (as from :func:`selab.superpixels.adjacency`).
        rank : LongTensor [N]
            Position of each node in the update order (0 first). Only the relative order of adjacent
            nodes matters, so ranks may restart per image; adjacent nodes must differ. May be ``None``
            for the synchronous schedule.
        schedule : {"wavefront", "sequential", "synchronous"}
            ``wavefront`` and ``sequential`` compute the same function (the paper's); ``synchronous``
            counts every neighbour as not yet updated.
        h0, m0 : Tensor [N, H], optional
            Old hidden and memory states (selab decision: zeros by default).
        batch : LongTensor [N], optional
            Only used to check that no edge joins two images.

        Returns
        -------
        GraphLSTMOutput
        """
        self._check_inputs(x, edge_index, rank, schedule, h0, m0, batch)
        N, H = x.shape[0], self.hidden_channels
        if h0 is None:
            h0 = x.new_zeros(N, H)
        if m0 is None:
            m0 = x.new_zeros(N, H)
        if schedule == "sequential":
            hidden, m, gates, adaptive = self._sequential(x, edge_index, rank, h0, m0)
        else:
            hidden, m, gates, adaptive = self._parallel(x, edge_index, rank, h0, m0, schedule)

        E = edge_index.shape[1]
        if self.identical_forget_gates:
            # selab decision: without adaptive gates, report the node forget gate of either end point.
            edge_forget = torch.stack([gates["forget"][edge_index[0]], gates["forget"][edge_index[1]]])
        else:
            edge_forget = adaptive.view(2, E, H)
        if schedule == "synchronous":
            levels = torch.zeros(N, dtype=torch.long, device=x.device)
        else:
            levels = wavefront_levels(edge_index, rank, N)
        h = hidden
        if self.residual:
            h = hidden + (self.residual_proj(x) if self.residual_proj is not None else x)
        return GraphLSTMOutput(h=h, m=m, edge_forget=edge_forget, levels=levels, hidden=hidden, gates=gates)

    def _cell(self, own: Tensor, hbar: Tensor, neighbour_memory: Tensor, m_own: Tensor):
        """Gates and new states of a group of nodes that share no edge.

        ``own`` = W f_i + U h_i + b (all four gates), ``hbar`` = h̄_i, ``neighbour_memory`` =
        Σ_j ḡ^f_ij m_j / |N(i)|, ``m_own`` = the node's old memory.
        """
        H = self.hidden_channels
        own_u, own_f, own_o, own_c = own.split(H, dim=1)
        nb_u, nb_o, nb_c = self.neighbour_proj(hbar).split(H, dim=1)
        input_gate = torch.sigmoid(own_u + nb_u)
        output_gate = torch.sigmoid(own_o + nb_o)
        candidate = torch.tanh(own_c + nb_c)
        if self.identical_forget_gates:
            forget_gate = torch.sigmoid(own_f + self.neighbour_forget_proj(hbar))
            m = forget_gate * m_own + input_gate * candidate
        else:
            forget_gate = torch.sigmoid(own_f)
            m = neighbour_memory + forget_gate * m_own + input_gate * candidate
        h = torch.tanh(output_gate * m)
        return h, m, (input_gate, forget_gate, output_gate, candidate)

    def _parallel(self, x, edge_index, rank, h0, m0, schedule):
        """Wavefront (exact) or synchronous schedule: one batched step per level."""
        N, H = x.shape[0], self.hidden_channels
        device = x.device
        # Directed edges: first (i, j) = (edge_index[0], edge_index[1]), then the reverse; node i is
        # the one being updated, j its neighbour.
        node = torch.cat([edge_index[0], edge_index[1]])
        nbr = torch.cat([edge_index[1], edge_index[0]])
        degree = torch.bincount(node, minlength=N).clamp(min=1).to(x.dtype).unsqueeze(1)

        x_proj = self.input_proj(x)
        own = x_proj + self.self_proj(h0)  # h_i in the gates is the node's own old state
        if self.identical_forget_gates:
            adaptive = None
        else:  # ḡ^f_ij reads old states only: all directed edges at once
            adaptive = torch.sigmoid(x_proj[node, H : 2 * H] + self.neighbour_forget_proj(h0)[nbr])

        if schedule == "synchronous":
            hbar = torch.zeros_like(h0).index_add(0, node, h0[nbr]) / degree
            nm = None
            if adaptive is not None:
                nm = torch.zeros_like(m0).index_add(0, node, adaptive * m0[nbr]) / degree
            h, m, gates = self._cell(own, hbar, nm, m0)
            return h, m, dict(zip(GATES, gates)), adaptive

        # Work in "slot" order: nodes sorted by level, so every level is a contiguous block and the
        # per-node inputs of a level are slices (views), not gathers.
        levels = wavefront_levels(edge_index, rank, N)
        num_levels = int(levels.max()) + 1 if N else 0
        node_order = torch.sort(levels, stable=True).indices
        slot = torch.empty_like(node_order)
        slot[node_order] = torch.arange(N, device=device)
        level_sizes = torch.bincount(levels, minlength=num_levels)
        level_start = torch.cumsum(level_sizes, 0) - level_sizes
        edge_order = torch.sort(slot[node], stable=True).indices  # directed edges grouped by level of i
        e_row = (slot[node] - level_start[levels[node]])[edge_order]  # row of i within its level
        e_nbr = slot[nbr][edge_order]
        edge_bounds = [0] + torch.cumsum(torch.bincount(levels[node], minlength=num_levels), 0).tolist()
        node_bounds = [0] + torch.cumsum(level_sizes, 0).tolist()
        # Edges whose neighbour comes earlier read its new state, the others its old state.
        e_reads_new = (levels[nbr] < levels[node])[edge_order]
        plan = _WavefrontPlan(node_bounds, edge_bounds, e_row, e_nbr, e_nbr + N * (~e_reads_new).long())
        edge_weight = None
        if adaptive is not None:  # weights (1, ḡ^f_ij) per edge: h_j is averaged as is, m_j gated
            edge_weight = torch.cat([torch.ones_like(adaptive), adaptive], dim=1).index_select(0, edge_order)
        params = [self.neighbour_proj.weight, self.neighbour_forget_proj.weight]
        state, gates = _Wavefront.apply(
            self, plan,
            own.index_select(0, node_order),
            m0.index_select(0, node_order),
            degree.index_select(0, node_order).reciprocal(),
            torch.cat([h0, m0], dim=1).index_select(0, node_order),
            edge_weight,
            *params,
        )
        h, m = state.index_select(0, slot).split(H, dim=1)
        gates = dict(zip(GATES, gates.index_select(0, slot).split(H, dim=1)))
        return h, m, gates, adaptive

    def _sequential(self, x, edge_index, rank, h0, m0):
        """The test oracle: one node at a time in rank order, the equations line by line."""
        N = x.shape[0]
        P = self.gate_parameters()
        neighbours = [[] for _ in range(N)]
        for i, j in edge_index.t().tolist():
            neighbours[i].append(j)
            neighbours[j].append(i)
        h_new: list[Tensor | None] = [None] * N
        m_new: list[Tensor | None] = [None] * N
        gates = {name: [None] * N for name in GATES}
        adaptive = {}
        for i in torch.argsort(rank, stable=True).tolist():
            f_i, h_i, m_i = x[i], h0[i], m0[i]
            N_i = neighbours[i]
            q = [h_new[j] is not None for j in N_i]
            h_mix = [h_new[j] if q_j else h0[j] for j, q_j in zip(N_i, q)]
            m_mix = [m_new[j] if q_j else m0[j] for j, q_j in zip(N_i, q)]
            h_bar = torch.stack(h_mix).sum(0) / len(N_i) if N_i else torch.zeros_like(h_i)

            g_u = torch.sigmoid(P["W_u"] @ f_i + P["U_u"] @ h_i + P["U_un"] @ h_bar + P["b_u"])
            g_o = torch.sigmoid(P["W_o"] @ f_i + P["U_o"] @ h_i + P["U_on"] @ h_bar + P["b_o"])
            g_c = torch.tanh(P["W_c"] @ f_i + P["U_c"] @ h_i + P["U_cn"] @ h_bar + P["b_c"])
            if self.identical_forget_gates:
                g_f = torch.sigmoid(P["W_f"] @ f_i + P["U_f"] @ h_i + P["U_fn"] @ h_bar + P["b_f"])
                m = g_f * m_i + g_u * g_c
            else:
                g_f = torch.sigmoid(P["W_f"] @ f_i + P["U_f"] @ h_i + P["b_f"])
                neighbour_memory = torch.zeros_like(m_i)
                for j, m_j in zip(N_i, m_mix):
                    gbar_f_ij = torch.sigmoid(P["W_f"] @ f_i + P["U_fn"] @ h0[j] + P["b_f"])
                    adaptive[(i, j)] = gbar_f_ij
                    neighbour_memory = neighbour_memory + gbar_f_ij * m_j / len(N_i)
                m = neighbour_memory + g_f * m_i + g_u * g_c
            h = torch.tanh(g_o * m)

            h_new[i], m_new[i] = h, m
            for name, g in zip(GATES, (g_u, g_f, g_o, g_c)):
                gates[name][i] = g
        empty = x.new_zeros(0, self.hidden_channels)
        stack = lambda rows: torch.stack(rows) if rows else empty  # noqa: E731
        edge_gates = None
        if not self.identical_forget_gates:
            pairs = edge_index.t().tolist()
            edge_gates = stack([adaptive[(i, j)] for i, j in pairs] + [adaptive[(j, i)] for i, j in pairs])
        return stack(h_new), stack(m_new), {k: stack(v) for k, v in gates.items()}, edge_gates

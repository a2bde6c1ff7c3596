r"""The Graph LSTM layer from `"Semantic Object Parsing with Graph LSTM"
<https://arxiv.org/abs/1603.07063>`_ (Liang et al., ECCV 2016), the unit that the Structure-evolving
LSTM (CVPR 2017) stacks, with an exact and fast parallel schedule.

Nodes (superpixels) are updated one at a time in a given order: a node averages the hidden states of
its neighbours, taking the *new* state of those already updated and the *old* state of the others, and
weighs each neighbour's memory with an adaptive forget gate of its own. Because only the order of
*neighbours* matters, all nodes of one "wavefront level" (level(i) = 1 + max level of the earlier
neighbours of i) share no edge and can be updated at once, which gives exactly the one-node-at-a-time
result with one Python step per level (about 10-20 on a SLIC graph) instead of one per node.

The equations (the paper's Eq. 1-2; docs/method.md), for node i with neighbours N(i), q_j = 1 if j was
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
weights uniform in [-0.1, 0.1]) driven by :func:`~selab.method.orders.confidence_order`, schedule
``"wavefront"`` (or ``"sequential"``: same numbers, slower). ``identical_forget_gates=True`` is the
paper's ablation; ``update_schedule="synchronous"`` (every neighbour counted as not yet updated, all nodes at
once) is a selab ablation and the cost floor of the wavefront.

Update orders live in :mod:`selab.method.orders`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selab.method.graph import check_edge_index, describe

__all__ = [
    "GraphLSTM",
    "GraphLSTMOutput",
    "wavefront_levels",
    "UPDATE_SCHEDULES",
]

UPDATE_SCHEDULES = ("wavefront", "sequential", "synchronous")
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
    wavefront : LongTensor [N]
        Wavefront level of each node (all zeros for the synchronous schedule); not a level of the
        structure-evolving hierarchy (``ModelOutput.levels``).
    hidden : Tensor [N, H]
        The new hidden state tanh(g^o ⊙ m) before the residual connection.
    gates : dict[str, Tensor [N, H]]
        Node gates ``input`` g^u, ``forget`` g^f, ``output`` g^o, ``candidate`` g^c (for inspection).
    """

    h: Tensor
    m: Tensor
    edge_forget: Tensor
    wavefront: Tensor
    hidden: Tensor
    gates: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_wavefronts(self) -> int:
        """The number of wavefront levels (sequential steps of the layer)."""
        return int(self.wavefront.max()) + 1 if self.wavefront.numel() else 0

    def __repr__(self) -> str:
        """One line: ``GraphLSTMOutput(293 nodes, 16 channels, 803 edges, 14 wavefront levels)``."""
        nodes, channels = self.h.shape[0], self.h.shape[-1]
        return (f"GraphLSTMOutput({nodes} nodes, {channels} channels, {self.edge_forget.shape[1]} edges, "
                f"{self.num_wavefronts} wavefront levels)")


def _oriented_edges(edge_index: Tensor, rank: Tensor) -> tuple[Tensor, Tensor]:
    """(earlier, later) end points of every edge in the update order."""
    src, dst = edge_index
    src_first = rank[src] < rank[dst]
    return torch.where(src_first, src, dst), torch.where(src_first, dst, src)


def wavefront_levels(edge_index: Tensor, rank: Tensor, num_nodes: int | None = None) -> Tensor:
    """Wavefront level of every node: level(i) = 1 + max level of i's neighbours ranked before i.

    A longest-path layering of the DAG that orients each edge from the earlier to the later node;
    computed by a vectorised fixed-point iteration (one scatter-max over the edges per level).

    Examples
    --------
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
class _LevelPlan:
    """Index sets of the level loop. Nodes are in slot order (sorted by level), so the nodes of level
    l are the rows ``node_bounds[l]:node_bounds[l+1]``. Directed edges (i updated, j its neighbour)
    split into those that read j's *new* state (j is on an earlier level; grouped by the level of i,
    ``new_bounds``) and those that read j's *old* state (all of them at once, before the loop)."""

    node_bounds: list[int]
    new_bounds: list[int]
    new_node: Tensor  # slot of i, for edges reading j's new state
    new_nbr: Tensor  # slot of j
    new_edge: Tensor  # position of the edge in the directed edge list (its forget gate)
    old_node: Tensor
    old_nbr: Tensor
    old_edge: Tensor


class _LevelLoop(torch.autograd.Function):
    """The recurrent part of the layer, one batched step per level, with a hand-written backward.

    Everything that does not depend on the order (the input projections, the node forget gate, the
    old-state part of the neighbour sums, and in backward all parameter and edge gradients) is done
    once for all nodes; the loop over levels keeps only what must wait for the previous level: the
    new-state part of the neighbour sums, one [n, H] x [H, 3H] product and the cell's pointwise
    arithmetic. The backward walks the levels in reverse with the same shape of work, so the
    wavefront costs little more than the synchronous step (one level), which runs through it too.

    Inputs (slot order): ``own`` [N, 4H] = W f + U h + b in blocks u, f, o, c; ``m_own`` [N, H];
    ``inv_degree`` [N, 1]; ``state0`` [N, 2H] = old (h, m); ``edge_forget`` [2E, H] (ḡ^f per directed
    edge, or None with identical forget gates); ``neighbour_weight`` [3H or 4H, H] = U^un, U^on, U^cn
    (and U^fn with identical forget gates). Outputs: new (h, m) [N, 2H] and the gates [N, 4H] (u, f, o, c).
    """

    @staticmethod
    def forward(ctx, plan, identical, own, m_own, inv_degree, state0, edge_forget, neighbour_weight):
        ctx.set_materialize_grads(False)
        N, H = m_own.shape
        u_, f_, o_, c_ = own.split(H, dim=1)
        # Internal gate layout: the blocks that read h̄ first (u, o, c, and f when it does too).
        static = torch.cat([u_, o_, c_, f_] if identical else [u_, o_, c_], dim=1)
        gates = own.new_empty(N, 4 * H)  # u, o, c, f
        if not identical:
            torch.sigmoid(f_, out=gates[:, 3 * H :])
            forget_memory = gates[:, 3 * H :] * m_own
        width = H if identical else 2 * H  # the neighbour sums: h (and ḡ^f-weighted m)

        def read(states, nbr, edge):
            values = states.index_select(0, nbr)
            if identical:
                return values[:, :H]
            values[:, H:] *= edge_forget.index_select(0, edge)
            return values

        sums = own.new_zeros(N, width)
        sums.index_add_(0, plan.old_node, read(state0, plan.old_nbr, plan.old_edge))
        state = state0.clone()
        hbar_all = own.new_empty(N, H)
        for level in range(len(plan.node_bounds) - 1):
            lo, hi = plan.node_bounds[level], plan.node_bounds[level + 1]
            e_lo, e_hi = plan.new_bounds[level], plan.new_bounds[level + 1]
            if e_hi > e_lo:
                sums.index_add_(0, plan.new_node[e_lo:e_hi],
                                read(state, plan.new_nbr[e_lo:e_hi], plan.new_edge[e_lo:e_hi]))
            mean = sums[lo:hi] * inv_degree[lo:hi]
            hbar = mean[:, :H]
            pre = torch.addmm(static[lo:hi], hbar, neighbour_weight.t())
            g = gates[lo:hi]
            torch.sigmoid(pre[:, : 2 * H], out=g[:, : 2 * H])
            torch.tanh(pre[:, 2 * H : 3 * H], out=g[:, 2 * H : 3 * H])
            input_gate, output_gate, candidate = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H]
            if identical:
                torch.sigmoid(pre[:, 3 * H :], out=g[:, 3 * H :])
                m = torch.addcmul(g[:, 3 * H :] * m_own[lo:hi], input_gate, candidate)
            else:
                m = torch.addcmul(mean[:, H:] + forget_memory[lo:hi], input_gate, candidate)
            state[lo:hi, H:] = m
            torch.tanh(output_gate * m, out=state[lo:hi, :H])
            hbar_all[lo:hi] = hbar
        ctx.plan, ctx.identical = plan, identical
        ctx.save_for_backward(state, gates, m_own, inv_degree, state0, edge_forget, neighbour_weight, hbar_all)
        u, o, c, f = gates.split(H, dim=1)
        return state, torch.cat([u, f, o, c], dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_state, grad_gates):
        plan, identical = ctx.plan, ctx.identical
        state, gates, m_own, inv_degree, state0, edge_forget, neighbour_weight, hbar_all = ctx.saved_tensors
        N, H = m_own.shape
        h, m = state.split(H, dim=1)
        u, o, c, f = gates.split(H, dim=1)
        # d(pre-activation) = (the gradient that reaches the gate) x (a factor known from forward):
        # d m_total = dm + dh * o (1 - h²); d pre_u = dm_total c u(1-u); d pre_o = dh m (1-h²) o(1-o);
        # d pre_c = dm_total u (1-c²); d pre_f = dm_total m_own f(1-f).
        tanh_slope = 1 - h * h
        to_memory = o * tanh_slope
        slope_u, slope_o, slope_c, slope_f = u * (1 - u), o * (1 - o), 1 - c * c, f * (1 - f)
        factors = [c * slope_u, m * tanh_slope * slope_o, u * slope_c]
        if identical:
            factors.append(m_own * slope_f)
        factors = torch.cat(factors, dim=1)
        direct = None  # gradients that reach the gates as outputs of the layer
        if grad_gates is not None:
            gg_u, gg_f, gg_o, gg_c = grad_gates.split(H, dim=1)
            blocks = [gg_u * slope_u, gg_o * slope_o, gg_c * slope_c]
            direct = torch.cat(blocks + [gg_f * slope_f] if identical else blocks, dim=1)

        grad = (grad_state.clone() if grad_state is not None else state.new_zeros(N, 2 * H))
        width = H if identical else 2 * H
        grad_pre = state.new_empty(N, factors.shape[1])
        grad_sums = state.new_empty(N, width)

        def weigh(values, edge):  # the gradient that an edge's read of a neighbour state receives
            if not identical:
                values[:, H:] *= edge_forget.index_select(0, edge)
            return values

        for level in reversed(range(len(plan.node_bounds) - 1)):
            lo, hi = plan.node_bounds[level], plan.node_bounds[level + 1]
            e_lo, e_hi = plan.new_bounds[level], plan.new_bounds[level + 1]
            dh, dm = grad[lo:hi, :H], grad[lo:hi, H:]
            dm_total = torch.addcmul(dm, dh, to_memory[lo:hi])
            upstream = torch.cat([dm_total, dh, dm_total, dm_total] if identical else [dm_total, dh, dm_total], 1)
            dpre = grad_pre[lo:hi]
            torch.mul(upstream, factors[lo:hi], out=dpre)
            if direct is not None:
                dpre += direct[lo:hi]
            dhbar = dpre @ neighbour_weight
            ds = grad_sums[lo:hi]
            if identical:
                torch.mul(dhbar, inv_degree[lo:hi], out=ds)
            else:
                torch.mul(dhbar, inv_degree[lo:hi], out=ds[:, :H])
                torch.mul(dm_total, inv_degree[lo:hi], out=ds[:, H:])
            if e_hi > e_lo:  # into the new states of earlier neighbours, walked later in this loop
                grad[:, :width].index_add_(
                    0, plan.new_nbr[e_lo:e_hi],
                    weigh(grad_sums.index_select(0, plan.new_node[e_lo:e_hi]), plan.new_edge[e_lo:e_hi]))

        dh, dm = grad.split(H, dim=1)
        dm_total = torch.addcmul(dm, dh, to_memory)
        grad_u, grad_o, grad_c = grad_pre[:, :H], grad_pre[:, H : 2 * H], grad_pre[:, 2 * H : 3 * H]
        if identical:
            grad_f = grad_pre[:, 3 * H :]
        else:
            grad_f = dm_total * m_own * slope_f
            if grad_gates is not None:
                grad_f = grad_f + grad_gates[:, H : 2 * H] * slope_f
        grad_own = torch.cat([grad_u, grad_f, grad_o, grad_c], dim=1)
        grad_m_own = dm_total * f
        grad_neighbour_weight = grad_pre.t() @ hbar_all
        grad_state0 = state.new_zeros(N, 2 * H)
        grad_state0[:, :width].index_add_(
            0, plan.old_nbr, weigh(grad_sums.index_select(0, plan.old_node), plan.old_edge))
        grad_edge_forget = None
        if not identical and ctx.needs_input_grad[6]:
            # ḡ^f_ij scales the memory m_j that i read: j's new state or its old one.
            grad_edge_forget = torch.zeros_like(edge_forget)
            grad_edge_forget[plan.new_edge] = (grad_sums[:, H:].index_select(0, plan.new_node)
                                               * state[:, H:].index_select(0, plan.new_nbr))
            grad_edge_forget[plan.old_edge] = (grad_sums[:, H:].index_select(0, plan.old_node)
                                               * state0[:, H:].index_select(0, plan.old_nbr))
        return None, None, grad_own, grad_m_own, None, grad_state0, grad_edge_forget, grad_neighbour_weight


class GraphLSTM(nn.Module):
    r"""The Graph LSTM layer from the `"Semantic Object Parsing with Graph LSTM"
    <https://arxiv.org/abs/1603.07063>`__ paper (Liang et al., ECCV 2016, arXiv 1603.07063, Eq. 1-2), the
    unit that the `"Interpretable Structure-Evolving LSTM" <https://arxiv.org/abs/1703.03055>`__ paper
    (CVPR 2017, arXiv 1703.03055) stacks.

    In short, the nodes of a graph are updated one at a time in a given order, each from its input, the
    mean hidden state of its neighbours (the new state of those already updated, the old state of the
    others) and an adaptive forget gate per neighbour that weighs the neighbour's memory. Since only the
    order of adjacent nodes matters, the nodes of one wavefront level share no edge and are updated at
    once, with exactly the one-node-at-a-time result.

    To duplicate the configuration of the Graph LSTM paper, stack two layers with ``residual=True`` (and the
    defaults ``identical_forget_gates=False``, ``init_range=0.1``), run them in the confidence-driven order
    (:func:`~selab.method.orders.confidence_order`) with ``update_schedule="wavefront"`` or ``"sequential"`` (the same
    numbers) in :meth:`forward`; ``identical_forget_gates=True`` is the paper's "identical forget gates"
    ablation. selab decisions: zero initial states (``h0``, ``m0``; the paper's text does not give them),
    the hidden size (not given either), ``residual`` read as ``h + x`` (with a learned projection when the
    sizes differ), and ``update_schedule="synchronous"``, a selab ablation (docs/method.md).

    Parameters
    ----------
    in_channels : int
        Size C of the node features f_i.
    hidden_channels : int
        Size H of the hidden and memory states (selab decision: the paper does not give it).
    residual : bool, default False
        selab reading of the paper's "residual connections": the output is ``h + x`` (or
        ``h + P x`` with a learned linear map P when ``in_channels != hidden_channels``).
    identical_forget_gates : bool, default False
        The paper's ablation: one forget gate g^f_i = σ(W^f f_i + U^f h_i + U^fn h̄_i + b^f) and
        m_i^new = g^f_i ⊙ m_i + g^u_i ⊙ g^c_i (no neighbour memory term).
    init_range : float, default 0.1
        All parameters start uniform in [-init_range, init_range] (the paper's 0.1).

    Parameters are stored fused, blocks in the order u, f, o, c (see :meth:`gate_parameters` for
    per-gate views): ``input_proj`` (W, b), ``self_proj`` (U), ``neighbour_proj`` (U^un, U^on, U^cn),
    ``neighbour_forget_proj`` (U^fn). W^f, b^f serve both forget gates.

    Examples
    --------
    >>> layer = GraphLSTM(8, 16)
    >>> x = torch.randn(3, 8)
    >>> edge_index = torch.tensor([[0, 1], [1, 2]])
    >>> out = layer(x, edge_index, rank=torch.tensor([1, 0, 2]))
    >>> out.h.shape, out.edge_forget.shape, out.wavefront.tolist()
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
    def _check_inputs(self, x, edge_index, rank, update_schedule, h0, m0, batch):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
            raise ValueError(f"x: expected a float tensor [N, {self.in_channels}], got {describe(x)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels, got {x.shape[1]}")
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"x: expected float32 or float64 features, got {x.dtype}")
        weight = self.input_proj.weight
        if x.dtype != weight.dtype:
            raise ValueError(f"x: {x.dtype} features but the layer's parameters are {weight.dtype}; convert one "
                             f"of them (layer.double() for float64, or x.to({weight.dtype}))")
        N = x.shape[0]
        check_edge_index(edge_index, N)
        if edge_index.dtype != torch.long:
            raise ValueError(f"edge_index: expected an int64 tensor [2, E], got {describe(edge_index)}")
        if edge_index.numel():
            if bool((edge_index[0] == edge_index[1]).any()):
                raise ValueError("edge_index: self loops are not allowed")
            # Each undirected edge once: a repeated edge would count its neighbour twice in the gates.
            keys = torch.minimum(edge_index[0], edge_index[1]) * N + torch.maximum(edge_index[0], edge_index[1])
            keys = keys.sort().values
            repeated = keys[1:] == keys[:-1]
            if bool(repeated.any()):
                key = int(keys[1:][repeated][0])
                raise ValueError(f"edge_index: the edge ({key // N}, {key % N}) appears more than once (in either "
                                 f"direction); each undirected edge must be listed once "
                                 f"(selab.method.superpixels.adjacency gives such a list)")
        if update_schedule not in UPDATE_SCHEDULES:
            raise ValueError(f"update_schedule: expected one of {UPDATE_SCHEDULES}, got {update_schedule!r}")
        if update_schedule != "synchronous" or rank is not None:
            if not isinstance(rank, Tensor) or rank.dtype not in (torch.int32, torch.int64) \
                    or rank.shape != (N,):
                raise ValueError(f"rank: expected an integer tensor of shape [{N}], got {describe(rank)}")
            if edge_index.numel() and bool((rank[edge_index[0]] == rank[edge_index[1]]).any()):
                raise ValueError("rank: two adjacent nodes have the same rank (the update order is ambiguous)")
        for name, state in (("h0", h0), ("m0", m0)):
            if state is not None and (not isinstance(state, Tensor) or state.shape != (N, self.hidden_channels)):
                raise ValueError(f"{name}: expected a tensor [{N}, {self.hidden_channels}], got {describe(state)}")
            if state is not None and state.dtype != x.dtype:
                raise ValueError(f"{name}: expected {x.dtype} like x, got {state.dtype}")
        if batch is not None:
            if not isinstance(batch, Tensor) or batch.shape != (N,):
                raise ValueError(f"batch: expected an int64 tensor [{N}], got {describe(batch)}")
            if edge_index.numel() and bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
                raise ValueError("edge_index: an edge joins nodes of two different images (see batch)")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        rank: Tensor | None,
        update_schedule: str = "wavefront",
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
            Each undirected edge once (as from :func:`selab.method.superpixels.adjacency`).
        rank : LongTensor [N]
            Position of each node in the update order (0 first). Only the relative order of adjacent
            nodes matters, so ranks may restart per image; adjacent nodes must differ. May be ``None``
            for the synchronous schedule.
        update_schedule : {"wavefront", "sequential", "synchronous"}
            ``wavefront`` and ``sequential`` compute the same function (the paper's); ``synchronous``
            counts every neighbour as not yet updated.
        h0, m0 : Tensor [N, H], optional
            Old hidden and memory states (selab decision: zeros by default). Without ``h0`` the
            products U h^old are skipped (they are zero), so U^u, U^f, U^o, U^c (and U^fn, unless
            ``identical_forget_gates``) get no gradient from this call.
        batch : LongTensor [N], optional
            Only used to check that no edge joins two images.

        Returns
        -------
        GraphLSTMOutput
        """
        self._check_inputs(x, edge_index, rank, update_schedule, h0, m0, batch)
        N, H = x.shape[0], self.hidden_channels
        if m0 is None:
            m0 = x.new_zeros(N, H)
        if update_schedule == "sequential":
            h0 = x.new_zeros(N, H) if h0 is None else h0
            hidden, m, gates, adaptive = self._sequential(x, edge_index, rank, h0, m0)
            levels = wavefront_levels(edge_index, rank, N)
        else:
            hidden, m, gates, adaptive, levels = self._parallel(x, edge_index, rank, h0, m0, update_schedule)

        E = edge_index.shape[1]
        if self.identical_forget_gates:
            # selab decision: without adaptive gates, report the node forget gate of either end point.
            edge_forget = torch.stack([gates["forget"][edge_index[0]], gates["forget"][edge_index[1]]])
        else:
            edge_forget = adaptive.view(2, E, H)
        h = hidden
        if self.residual:
            h = hidden + (self.residual_proj(x) if self.residual_proj is not None else x)
        return GraphLSTMOutput(h=h, m=m, edge_forget=edge_forget, wavefront=levels, hidden=hidden, gates=gates)

    def _parallel(self, x, edge_index, rank, h0, m0, update_schedule):
        """Wavefront (exact) or synchronous schedule: one batched step per level (one level in all
        for the synchronous schedule, where every neighbour is read in its old state)."""
        N, H = x.shape[0], self.hidden_channels
        device = x.device
        # Directed edges: first (i, j) = (edge_index[0], edge_index[1]), then the reverse; node i is
        # the one being updated, j its neighbour.
        node = torch.cat([edge_index[0], edge_index[1]])
        nbr = torch.cat([edge_index[1], edge_index[0]])
        degree = torch.bincount(node, minlength=N).clamp(min=1).to(x.dtype).unsqueeze(1)

        x_proj = self.input_proj(x)
        # h_i in the gates is the node's own old state. Zero old states (h0=None) skip the products
        # U h^old: same numbers, and U^* then get no gradient (they take no part in this forward).
        own = x_proj if h0 is None else x_proj + self.self_proj(h0)
        if self.identical_forget_gates:
            adaptive = None
            neighbour_weight = torch.cat([self.neighbour_proj.weight, self.neighbour_forget_proj.weight])
        else:  # ḡ^f_ij reads old states only: all directed edges at once
            if h0 is None:  # ḡ^f_ij = σ(W^f f_i + b^f), the same for every neighbour j of i
                adaptive = torch.sigmoid(x_proj[:, H : 2 * H]).index_select(0, node)
            else:
                adaptive = torch.sigmoid(x_proj[node, H : 2 * H] + self.neighbour_forget_proj(h0)[nbr])
            neighbour_weight = self.neighbour_proj.weight
        if h0 is None:
            h0 = x.new_zeros(N, H)

        if update_schedule == "synchronous":
            levels = torch.zeros(N, dtype=torch.long, device=device)
        else:
            levels = wavefront_levels(edge_index, rank, N)
        num_levels = int(levels.max()) + 1 if N else 0
        # Slot order: nodes sorted by level, so that every level is a contiguous block of rows.
        node_order = torch.sort(levels, stable=True).indices
        slot = torch.empty_like(node_order)
        slot[node_order] = torch.arange(N, device=device)
        node_bounds = [0] + torch.cumsum(torch.bincount(levels, minlength=num_levels), 0).tolist()
        reads_new = levels[nbr] < levels[node]
        new_edge = torch.nonzero(reads_new).squeeze(1)
        new_edge = new_edge[torch.sort(levels[node[new_edge]], stable=True).indices]
        old_edge = torch.nonzero(~reads_new).squeeze(1)
        new_per_level = torch.bincount(levels[node[new_edge]], minlength=num_levels)
        plan = _LevelPlan(
            node_bounds=node_bounds,
            new_bounds=[0] + torch.cumsum(new_per_level, 0).tolist(),
            new_node=slot[node[new_edge]], new_nbr=slot[nbr[new_edge]], new_edge=new_edge,
            old_node=slot[node[old_edge]], old_nbr=slot[nbr[old_edge]], old_edge=old_edge,
        )
        state, gates = _LevelLoop.apply(
            plan, self.identical_forget_gates,
            own.index_select(0, node_order),
            m0.index_select(0, node_order),
            degree.index_select(0, node_order).reciprocal(),
            torch.cat([h0, m0], dim=1).index_select(0, node_order),
            adaptive,
            neighbour_weight,
        )
        h, m = state.index_select(0, slot).split(H, dim=1)
        gates = dict(zip(GATES, gates.index_select(0, slot).split(H, dim=1)))
        return h, m, gates, adaptive, levels

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

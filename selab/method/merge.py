r"""Merge probabilities and the structures they propose: candidate edges, proposals, log q, cliques.

The part of the Structure-evolving LSTM (Liang et al., "Interpretable Structure-Evolving LSTM", CVPR 2017)
that turns a Graph LSTM layer's outputs into candidate structures: every edge gets a merge probability
from the layer's gate outputs (:class:`MergeProbability`, selab decision 1 of docs/method.md); a
proposal switches each candidate edge on independently with its probability (:func:`propose`, with
:func:`candidate_edges`, the merge budget of decision 2), its probability q is
:func:`proposal_log_prob`, and its cliques are the connected components of the switched-on edges
(:func:`connected_components`, a vectorised union-find). :func:`greedy_merge` is the deterministic
structure of test time (decision 6). The sampler that accepts or rejects proposals is :mod:`selab.method.mh`.

An edge state ``z`` is a bool ``[E]`` over ``edge_index [2, E]`` (PyG's convention, each undirected
edge once); a partition is a ``cluster [N]`` vector numbered in the order of each clique's smallest
node (:func:`selab.method.graph.canonical_cluster`), so the cliques of a batch never cross images.

Examples
--------
>>> ei = torch.tensor([[0, 1], [1, 2]])
>>> greedy_merge(ei, torch.tensor([0.9, 0.2]))[0]
tensor([0, 0, 1])
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from selab.method.graph import canonical_cluster, check_edge_index

__all__ = [
    "MergeProbability",
    "candidate_edges",
    "proposal_log_prob",
    "propose",
    "Proposal",
    "connected_components",
    "smallest_members",
    "greedy_merge",
    "target_edges",
]

Budget = Optional[Union[int, float]]
MERGE_SOURCES = ("forget_gates", "hidden", "pairwise", "pairwise_classes")
Target = Optional[Union[int, float]]


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def check_merge_prob(merge_prob: Tensor, num_edges: int) -> None:
    if not isinstance(merge_prob, Tensor):
        raise TypeError(f"merge_prob must be a torch.Tensor, got {type(merge_prob).__name__}")
    if merge_prob.shape != (num_edges,):
        raise ValueError(
            f"merge_prob must have shape [E] = [{num_edges}] (one per edge), got {tuple(merge_prob.shape)}"
        )
    if merge_prob.numel() and (merge_prob.min() < 0 or merge_prob.max() > 1 or torch.isnan(merge_prob).any()):
        raise ValueError("merge_prob must hold probabilities in [0, 1]")


# --------------------------------------------------------------------------------------------------
# merge probabilities and their supervision
# --------------------------------------------------------------------------------------------------
class MergeProbability(nn.Module):
    r"""The merging probability of every edge, from the `"Interpretable Structure-Evolving LSTM"
    <https://arxiv.org/abs/1703.03055>`__ paper (Liang et al., CVPR 2017, arXiv 1703.03055).

    In short, the compatibility of two connected nodes is read from a Graph LSTM layer's gate outputs and
    turned into the probability that the two merge into one clique. It is learned with an L2 loss against
    whether the two nodes share a ground-truth label (:func:`selab.model.loss.merge_loss`).

    The paper fixes the inputs (the LSTM gate outputs) and the L2 supervision; the form is a selab
    decision (docs/method.md decision 1): with ``source="forget_gates"`` (the default)
    :math:`p_{ij} = \sigma(w \cdot (\bar g^f_{ij} + \bar g^f_{ji}) / 2 + b)`, from the adaptive forget
    gates of both directions (the one pairwise gate output of the layer), symmetric in i and j.
    ``source="hidden"``, a selab alternative, uses :math:`|h_i - h_j|` instead (also symmetric).
    ``source="pairwise"``, a selab alternative, reads both nodes' states and the gates of the edge they
    share through a small MLP, :math:`p_{ij} = \sigma(\mathrm{MLP}([|h_i - h_j|, h_i \odot h_j,
    (\bar g^f_{ij} + \bar g^f_{ji}) / 2]))`, symmetric in i and j: in the first layer the adaptive forget
    gate reads the neighbour's zero initial state, so the forget-gate form is a sum of two per-node terms
    there and cannot say that two nodes differ. ``source="pairwise_classes"``, a selab alternative, also
    gives the MLP both nodes' predicted class distributions, :math:`[\ldots, |q_i - q_j|, q_i \odot q_j]`
    (the confidences that order the updates, detached): agglomerating by them alone makes purer coarse
    levels than the states do (docs/results.md), so the head may start from them.

    Parameters
    ----------
    hidden_channels : int
        Width H of the gate outputs / hidden states.
    source : {"forget_gates", "hidden", "pairwise", "pairwise_classes"}, default "forget_gates"
        Which layer output the compatibility is read from.
    num_classes : int, optional
        Width K of the class distributions; required by ``source="pairwise_classes"``.

    Examples
    --------
    >>> mp = MergeProbability(16)
    >>> p = mp(edge_forget=torch.rand(2, 5, 16))
    >>> p.shape
    torch.Size([5])
    """

    def __init__(self, hidden_channels: int, source: str = "forget_gates", num_classes: Optional[int] = None):
        super().__init__()
        if not isinstance(hidden_channels, int) or hidden_channels <= 0:
            raise ValueError(f"hidden_channels must be a positive int, got {hidden_channels!r}")
        if source not in MERGE_SOURCES:
            raise ValueError(f"source must be one of {MERGE_SOURCES}, got {source!r}")
        if source == "pairwise_classes" and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                             or num_classes <= 0):
            raise ValueError(f"source='pairwise_classes' needs num_classes, a positive int, got {num_classes!r}")
        self.hidden_channels = hidden_channels
        self.source = source
        self.num_classes = num_classes
        if source in ("pairwise", "pairwise_classes"):
            width = 3 * hidden_channels + (2 * num_classes if source == "pairwise_classes" else 0)
            self.pairwise = nn.Sequential(nn.Linear(width, hidden_channels), nn.ReLU())
        self.linear = nn.Linear(hidden_channels, 1)

    def forward(
        self,
        edge_forget: Optional[Tensor] = None,
        h: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        class_prob: Optional[Tensor] = None,
    ) -> Tensor:
        """Return ``p [E]`` in (0, 1), differentiable (it gets an L2 loss).

        ``class_prob [N, K]``: the nodes' class distributions (``source="pairwise_classes"`` only).
        """
        if self.source != "hidden":
            if edge_forget is None:
                raise ValueError(f"edge_forget [2, E, H] is required when source={self.source!r}")
            if edge_forget.dim() != 3 or edge_forget.shape[0] != 2 or edge_forget.shape[2] != self.hidden_channels:
                raise ValueError(
                    f"edge_forget must have shape [2, E, {self.hidden_channels}], got {tuple(edge_forget.shape)}"
                )
            compat = 0.5 * (edge_forget[0] + edge_forget[1])
        if self.source != "forget_gates":
            if h is None or edge_index is None:
                raise ValueError(f"h [N, H] and edge_index [2, E] are required when source={self.source!r}")
            check_edge_index(edge_index)
            h_i, h_j = h[edge_index[0]], h[edge_index[1]]
            if self.source == "hidden":
                compat = (h_i - h_j).abs()
            else:
                parts = [(h_i - h_j).abs(), h_i * h_j, compat]
                if self.source == "pairwise_classes":
                    if class_prob is None or class_prob.shape != (h.shape[0], self.num_classes):
                        shape = None if class_prob is None else tuple(class_prob.shape)
                        raise ValueError(f"class_prob [N, K] = [{h.shape[0]}, {self.num_classes}] is required "
                                         f"when source='pairwise_classes', got {shape}")
                    q = class_prob.detach().to(h.dtype)
                    q_i, q_j = q[edge_index[0]], q[edge_index[1]]
                    parts += [(q_i - q_j).abs(), q_i * q_j]
                compat = self.pairwise(torch.cat(parts, -1))
        return torch.sigmoid(self.linear(compat).squeeze(-1))


# --------------------------------------------------------------------------------------------------
# proposals
# --------------------------------------------------------------------------------------------------
def candidate_edges(merge_prob: Tensor, budget: Budget = None, edge_graph: Optional[Tensor] = None) -> Tensor:
    """Edges that a proposal may switch on (bool ``[E]``): all, or the top-k most probable.

    selab decision (merge budget, docs/method.md decision 2): an int ``budget`` keeps the ``budget`` most
    probable edges, a float in (0, 1] keeps that fraction of the edges; with ``edge_graph [E]`` (the
    image of each edge) the budget applies per image. Other edges are always off.
    """
    check_budget(budget)
    p = merge_prob.detach().to(torch.float64).cpu().numpy()
    graph = None if edge_graph is None else edge_graph.cpu().numpy()
    return torch.from_numpy(candidate_mask(p, budget, graph)).to(merge_prob.device)


def check_budget(budget: Budget) -> None:
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"merge_budget must be None, an int (top-k) or a float fraction, got {budget!r}")
    if isinstance(budget, float) and not 0.0 < budget <= 1.0:
        raise ValueError(f"merge_budget as a fraction must be in (0, 1], got {budget}")
    if isinstance(budget, int) and budget < 0:
        raise ValueError(f"merge_budget as a count must be >= 0, got {budget}")


def candidate_mask(p: np.ndarray, budget: Budget, graph: Optional[np.ndarray]) -> np.ndarray:
    """:func:`candidate_edges` on host arrays: ``p [E]`` float64, ``graph [E]`` int or None."""
    num_edges = p.size
    if budget is None:
        return np.ones(num_edges, dtype=bool)
    if num_edges == 0:
        return np.zeros(0, dtype=bool)
    graph = np.zeros(num_edges, np.int64) if graph is None else graph
    # each image's edges as one slice (in edge id order), the k-th largest p of each image by an O(E)
    # selection, then one comparison over all edges
    order, starts, ends = group_by_graph(graph, int(graph.max()) + 1)
    per_graph = ends - starts
    keep = np.ceil(per_graph * budget).astype(np.int64) if isinstance(budget, float) else np.minimum(per_graph, budget)
    p_sorted, graph_sorted = (p, graph) if order is None else (p[order], graph[order])
    kth = np.full(per_graph.size, np.inf)  # k = 0: nothing is chosen
    for b in np.flatnonzero(keep > 0).tolist():
        values = p_sorted[starts[b]:ends[b]]
        kth[b] = np.partition(values, values.size - keep[b])[values.size - keep[b]]
    threshold = kth[graph_sorted]
    above, tied = p_sorted > threshold, p_sorted == threshold
    chosen = above | tied
    surplus = np.bincount(graph_sorted, chosen, minlength=per_graph.size) - keep
    for b in np.flatnonzero(surplus > 0).tolist():  # ties at the k-th value: the lower edge ids win
        rows = slice(starts[b], ends[b])
        need = keep[b] - int(above[rows].sum())
        chosen[rows] = above[rows] | (tied[rows] & (np.cumsum(tied[rows]) <= need))
    if order is not None:
        chosen[order] = chosen.copy()
    return chosen


def group_by_graph(graph: np.ndarray, num_graphs: int) -> tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
    """``(order, starts, ends)``: graph b's items are ``order[starts[b]:ends[b]]``, in index order.

    ``order`` is ``None`` when the items are grouped by graph already (then the ranges index them
    directly), else a stable sort by graph.
    """
    counts = np.bincount(graph, minlength=num_graphs)
    ends = np.cumsum(counts)
    order = None if bool((graph[1:] >= graph[:-1]).all()) else np.argsort(graph, kind="stable")
    return order, ends - counts, ends


def proposal_log_q(p: np.ndarray, graph: np.ndarray, num_graphs: int, on_state: np.ndarray, on_edge: np.ndarray,
           num_states: int) -> np.ndarray:
    """log q of edge states under the independent-edge proposal, per state and graph: float64 ``[1 + S, B]``.

    The C candidate edges have probabilities ``p [C]`` (float64) and graphs ``graph [C]``; state ``s + 1``
    switches on the candidates ``on_edge[k]`` with ``on_state[k] == s`` (the pairs of
    ``np.flatnonzero`` of an ``[S, C]`` bool array); row 0 is "nothing on". A graph's log q is the sum
    of log(1 - p) over its candidates plus log p - log(1 - p) per switched-on edge, and -inf (q = 0)
    where an edge with p = 1 is off or one with p = 0 is on. The one definition of log q: the sampler
    (:mod:`selab.method.mh`) scores all its proposals with it, :func:`proposal_log_prob` one state.
    """
    with np.errstate(divide="ignore"):
        log_on, log_off = np.log(p), np.log1p(-p)
    # edges with p = 1 add log 1 = 0 where on (as every drawn proposal has them) and make q = 0 where off
    certain = p >= 1.0
    log_off_uncertain = np.where(certain, 0.0, log_off)
    log_q = np.empty((num_states + 1, num_graphs))
    log_q[:] = np.bincount(graph, log_off_uncertain, minlength=num_graphs)
    on_slot = on_state * num_graphs + graph[on_edge]  # the slot (state, graph) of each switched-on pair
    log_q[1:] += np.bincount(on_slot, (log_on - log_off_uncertain)[on_edge],
                             minlength=num_states * num_graphs).reshape(num_states, num_graphs)
    if certain.any():
        certain_on = np.zeros((num_states + 1, num_graphs))
        certain_on[1:] = np.bincount(on_slot, certain[on_edge], minlength=num_states * num_graphs).reshape(
            num_states, num_graphs)
        log_q[certain_on < np.bincount(graph, certain, minlength=num_graphs)] = -math.inf
    return log_q


def proposal_log_prob(edges_on: Tensor, merge_prob: Tensor, candidates: Optional[Tensor] = None) -> float:
    """log q(z) of an edge state under the independent-edge proposal (float, may be -inf).

    q(z) = prod_e p_e^z_e (1 - p_e)^(1 - z_e) over candidate edges; non-candidates must be off.

    Examples
    --------
    >>> round(proposal_log_prob(torch.tensor([True, False]), torch.tensor([0.5, 0.5])), 4)
    -1.3863
    """
    on = edges_on.cpu().numpy()
    candidate = np.ones(on.size, dtype=bool) if candidates is None else candidates.cpu().numpy()
    if (on & ~candidate).any():
        return -math.inf
    index = np.flatnonzero(candidate)
    p = merge_prob.detach().double().cpu().numpy()[index]
    switched = np.flatnonzero(on[index])
    return float(proposal_log_q(p, np.zeros(index.size, np.int64), 1, np.zeros(switched.size, np.int64), switched, 1)[1, 0])


class Proposal(NamedTuple):
    """One proposed structure: switched-on edges, its partition and log q."""

    edges_on: Tensor
    cluster: Tensor
    log_q: float


def _draw_edges(merge_prob: Tensor, candidates: Tensor, num: int, generator: Optional[torch.Generator]) -> Tensor:
    u = torch.rand((num, merge_prob.numel()), generator=generator, device=merge_prob.device, dtype=torch.float64)
    return (u < merge_prob.detach().double()) & candidates


def propose(
    edge_index: Tensor,
    merge_prob: Tensor,
    num_nodes: Optional[int] = None,
    merge_budget: Budget = None,
    generator: Optional[torch.Generator] = None,
) -> Proposal:
    """Switch each (candidate) edge on independently with its merge probability.

    The cliques are the connected components of the switched-on edges.

    Examples
    --------
    >>> ei = torch.tensor([[0, 1], [1, 2]])
    >>> propose(ei, torch.tensor([1.0, 0.0])).cluster
    tensor([0, 0, 1])
    """
    check_edge_index(edge_index)
    check_merge_prob(merge_prob, edge_index.shape[1])
    num_nodes = check_edge_index(edge_index, num_nodes)
    candidates = candidate_edges(merge_prob, merge_budget)
    edges_on = _draw_edges(merge_prob, candidates, 1, generator)[0]
    cluster = connected_components(edge_index, edges_on, num_nodes)
    return Proposal(edges_on, cluster, proposal_log_prob(edges_on, merge_prob, candidates))


# --------------------------------------------------------------------------------------------------
# connected components
# --------------------------------------------------------------------------------------------------
def smallest_members(rows: np.ndarray, cols: np.ndarray, num_nodes: int) -> np.ndarray:
    """Smallest node of every node's connected component, for the undirected edges ``(rows, cols)``.

    A vectorised union-find. The first round hooks every node onto its smallest smaller neighbour
    and compresses the resulting trees by pointer jumping. Each further round works on the edges
    whose ends still have different roots only: it hooks each such root onto the smallest root
    across its edges and jumps the hooked roots to their new roots. Every round at least halves the
    number of trees that still have an edge out, so it takes O(log N) rounds of numpy work and no
    Python loop over nodes or edges; a last pointer jumping over all nodes points every node at its
    root. The root of a component is its smallest node, because pointers only go down.

    Examples
    --------
    >>> smallest_members(np.array([1, 3]), np.array([2, 2]), 5)
    array([0, 1, 1, 1, 4])
    """
    u, v = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    root = np.arange(num_nodes)
    np.minimum.at(root, np.maximum(u, v), np.minimum(u, v))
    root = _jump_to_roots(root)
    root_u, root_v = root[u], root[v]
    while True:
        apart = np.flatnonzero(root_u != root_v)
        if apart.size == 0:
            break
        low, high = np.minimum(root_u[apart], root_v[apart]), np.maximum(root_u[apart], root_v[apart])
        np.minimum.at(root, high, low)
        # the nodes still point at roots of an earlier round; only the roots hooked now form chains
        while True:
            target = root[high]
            jumped = root[target]
            if np.array_equal(jumped, target):
                break
            root[high] = jumped
        root_u, root_v = root[low], root[high]
    return _jump_to_roots(root)


def _jump_to_roots(parent: np.ndarray) -> np.ndarray:
    """Pointer jumping until every node points at the root of its tree (pointers only go down)."""
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            return parent
        parent = jumped


def connected_components(edge_index: Tensor, edges_on: Optional[Tensor] = None, num_nodes: Optional[int] = None) -> Tensor:
    """Cluster id per node of the connected components of the switched-on edges (LongTensor ``[N]``).

    Ids run 0..N'-1 in the order of each component's smallest node, so in a batch (images contiguous)
    clusters never cross images and keep the images' order. Runs as a vectorised union-find
    (:func:`smallest_members`) in numpy on the CPU; the result follows ``edge_index``'s device.

    Examples
    --------
    >>> connected_components(torch.tensor([[0, 2], [1, 3]]), torch.tensor([True, False]), 4)
    tensor([0, 0, 1, 2])
    """
    check_edge_index(edge_index)
    num_nodes = check_edge_index(edge_index, num_nodes)
    if edges_on is None:
        edges_on = torch.ones(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
    if edges_on.shape != (edge_index.shape[1],) or edges_on.dtype != torch.bool:
        raise ValueError(f"edges_on must be a bool tensor [E] = [{edge_index.shape[1]}], got "
                         f"{edges_on.dtype} {tuple(edges_on.shape)}")
    ei = edge_index[:, edges_on].cpu().numpy()
    return canonical_cluster(torch.from_numpy(smallest_members(ei[0], ei[1], num_nodes))).to(edge_index.device)


class _StateComponents(NamedTuple):
    """Connected components of S edge states over the nodes some candidate edge touches.

    A node no candidate edge touches is alone in every state, so only the ``active`` nodes [A] are
    clustered: one graph of S disjoint copies of them, state-major (position = s * A + local).
    """

    active: np.ndarray  # [A] sorted node ids
    root: np.ndarray  # [S * A] position of the smallest member of each position's component


def components_of_states(ends: np.ndarray, state: np.ndarray, edge: np.ndarray, num_states: int,
                          num_nodes: int) -> _StateComponents:
    """Components of S edge states given as switched-on (``state``, candidate ``edge``) pairs; the
    candidate edges have end nodes ``ends [2, C]``."""
    touched = np.zeros(num_nodes, dtype=bool)
    touched[ends.ravel()] = True
    active = np.flatnonzero(touched)
    local = np.cumsum(touched) - 1
    rows = state * active.size + local[ends[0, edge]]
    cols = state * active.size + local[ends[1, edge]]
    return _StateComponents(active, smallest_members(rows, cols, num_states * active.size))


def clique_roots(components: _StateComponents, num_nodes: int, state: np.ndarray) -> np.ndarray:
    """Smallest member of every node's clique ``[N]`` when the active nodes are in ``state [A]``
    (1-based proposal index; 0 = nothing on)."""
    roots = np.arange(num_nodes)
    num_active = components.active.size
    on = np.flatnonzero(state > 0)
    roots[components.active[on]] = components.active[components.root[(state[on] - 1) * num_active + on] % num_active]
    return roots


def greedy_merge(
    edge_index: Tensor,
    merge_prob: Tensor,
    num_nodes: Optional[int] = None,
    threshold: float = 0.5,
    merge_budget: Budget = None,
    edge_graph: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Deterministic merging: switch on edges with ``p > threshold`` (within the top-k budget, if any).

    Returns ``(cluster [N], edges_on [E])``.

    Examples
    --------
    >>> greedy_merge(torch.tensor([[0, 1], [1, 2]]), torch.tensor([0.9, 0.2]))[0]
    tensor([0, 0, 1])
    """
    check_edge_index(edge_index)
    check_merge_prob(merge_prob, edge_index.shape[1])
    n = check_edge_index(edge_index, num_nodes)
    p = merge_prob.detach()
    edges_on = (p > threshold) & candidate_edges(p, merge_budget, edge_graph)
    return connected_components(edge_index, edges_on.to(edge_index.device), n), edges_on


def check_target(target: Target) -> None:
    if target is None:
        return
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise TypeError(f"target_nodes must be None, an int (nodes per image) or a float fraction, got {target!r}")
    if isinstance(target, float) and not 0.0 < target <= 1.0:
        raise ValueError(f"target_nodes as a fraction must be in (0, 1], got {target}")
    if isinstance(target, int) and target < 1:
        raise ValueError(f"target_nodes as a count must be >= 1, got {target}")


def target_edges(
    edge_index: Tensor,
    merge_prob: Tensor,
    num_nodes: Optional[int] = None,
    target_nodes: Union[int, float] = 0.5,
    batch: Optional[Tensor] = None,
) -> Tensor:
    """The most probable edges of each image, just enough of them to leave ``target_nodes`` cliques.

    selab option (not in the paper, which does not say how many nodes a level keeps): instead of a
    fixed fraction of the edges (the merge budget) or a threshold on ``p``, a level keeps a given
    number of nodes per image. The edges are taken in descending ``p`` (ties: lower edge id first), as
    Kruskal's algorithm would, until the switched-on edges' connected components number
    ``ceil(target_nodes * n_b)`` (a float) or ``min(target_nodes, n_b)`` (an int) in image b, or as
    few as the image's graph allows. The partition is then what a single-linkage agglomeration on
    ``p`` stopped at that count gives. Switching on one edge removes at most one component, so the
    number of components falls through every count and the smallest prefix reaching the target is
    found exactly by a bisection over the prefix length of every image at once (about
    ``log2(E)`` vectorised union-finds, no loop over edges).

    Parameters
    ----------
    edge_index : LongTensor [2, E]
    merge_prob : Tensor [E]
    num_nodes : int, optional
    target_nodes : int or float, default 0.5
        Nodes to keep per image: an int count, or a float fraction in (0, 1] of the image's nodes.
    batch : LongTensor [N], optional
        Image of every node (default: one image).

    Returns
    -------
    BoolTensor [E]
        The switched-on edges; their connected components are the cliques.

    Examples
    --------
    >>> ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    >>> target_edges(ei, torch.tensor([0.9, 0.2, 0.7]), 4, target_nodes=2)
    tensor([ True, False,  True])
    >>> connected_components(ei, target_edges(ei, torch.tensor([0.9, 0.2, 0.7]), 4, target_nodes=0.25), 4)
    tensor([0, 0, 0, 0])
    """
    check_target(target_nodes)
    check_edge_index(edge_index)
    check_merge_prob(merge_prob, edge_index.shape[1])
    n = check_edge_index(edge_index, num_nodes)
    ei = edge_index.cpu().numpy()
    num_edges = ei.shape[1]
    node_graph = np.zeros(n, np.int64) if batch is None else batch.cpu().numpy().astype(np.int64)
    num_graphs = int(node_graph.max()) + 1 if n else 1
    nodes_per_graph = np.bincount(node_graph, minlength=num_graphs)
    if isinstance(target_nodes, float):
        target = np.ceil(nodes_per_graph * target_nodes).astype(np.int64)
    else:
        target = np.minimum(nodes_per_graph, target_nodes)
    if num_edges == 0:
        return torch.zeros(0, dtype=torch.bool, device=edge_index.device)
    edge_graph = node_graph[ei[0]]
    p = merge_prob.detach().double().cpu().numpy()
    # each edge's rank in its image, in descending p (lexsort: last key first; ties by edge id)
    order = np.lexsort((np.arange(num_edges), -p, edge_graph))
    starts = np.concatenate([[0], np.cumsum(np.bincount(edge_graph, minlength=num_graphs))[:-1]])
    rank = np.empty(num_edges, np.int64)
    rank[order] = np.arange(num_edges) - starts[edge_graph[order]]
    low = np.zeros(num_graphs, np.int64)  # invariant: the target needs more than `low - 1` edges ...
    high = np.bincount(edge_graph, minlength=num_graphs)  # ... and `high` edges are enough (or all there are)

    def components(prefix: np.ndarray) -> np.ndarray:
        on = rank < prefix[edge_graph]
        roots = smallest_members(ei[0, on], ei[1, on], n)
        return np.bincount(node_graph[roots == np.arange(n)], minlength=num_graphs)

    while bool((low < high).any()):
        middle = (low + high) // 2
        enough = components(middle) <= target
        high = np.where(enough & (low < high), middle, high)
        low = np.where(~enough & (low < high), middle + 1, low)
    return torch.from_numpy(rank < high[edge_graph]).to(edge_index.device)

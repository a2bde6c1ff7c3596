r"""Structure evolution: merge probabilities, a Metropolis-Hastings graph sampler, multi-level graphs.

Implements the part of the Structure-evolving LSTM (Liang et al., "Interpretable Structure-Evolving
LSTM", CVPR 2017) that is new over Graph LSTM: after a Graph LSTM layer, every edge gets a merge
probability from the layer's gate outputs; candidate structures switch edges on independently with
those probabilities, the cliques are the connected components of the switched-on edges, and a
Metropolis-Hastings (MH) independence sampler accepts or rejects each candidate against a target
:math:`\pi(z) \propto \exp(-E(\mathrm{partition}(z)) / T)`. The accepted partition is coarsened into
the next, higher-level graph (merged nodes take the mean of their f, h and m).

The SE-LSTM text that fixes these details is not available; every choice here is a selab decision
(docs/method.md, "Where selab decides") with a named option. The defaults reproduce selab's reading of the
paper's configuration: ``MergeProbability(source="forget_gates")`` (decision 1), independent edge
proposals over the top quarter of each image's edges (``merge_budget=0.25``, decision 2),
``PartitionEnergy(distance="tv", beta=0.1, scale=100)`` (decision 3),
``StructureEvolution(mode="mh", num_proposals=8, temperature=1.0)`` in training, with the ground-truth
energy (``energy="ground_truth"``), and the deterministic greedy structure (``p > 0.5``) at test time
(``eval_mode="auto"``; decisions 4 and 6). ``mode="none"`` gives a plain Graph LSTM (no merging, in
training and at test time).

The chain's state is a set of switched-on edges ``z`` (bool ``[E]``); its partition is the connected
components of ``z``. Because the proposal is an independence sampler, all proposals of a layer can be
drawn, clustered and scored at once; only the scalar accept/reject loop over proposals is sequential.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from selab.graph import check_edge_index, coarse_confidence, coarsen, scatter_mean
from selab.loss import merge_loss, merge_target  # noqa: F401  (re-exported: notebooks use them from here)
from selab.superpixels import node_label_histogram, node_majority_labels  # noqa: F401  (re-exported)

__all__ = [
    "MergeProbability",
    "merge_target",
    "merge_loss",
    "node_label_histogram",
    "node_majority_labels",
    "candidate_edges",
    "proposal_log_prob",
    "propose",
    "Proposal",
    "connected_components",
    "smallest_members",
    "PartitionEnergy",
    "metropolis_hastings",
    "MHStep",
    "MHTrace",
    "greedy_merge",
    "coarse_confidence",
    "StructureEvolution",
    "EvolutionTrace",
    "EvolutionOutput",
    "evolve",
    "hierarchy_stats",
    "combine_hierarchy_stats",
]

Budget = Optional[Union[int, float]]
MODES = ("mh", "greedy", "none")
ENERGIES = ("ground_truth", "prediction", "mixed")


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def _check_merge_prob(merge_prob: Tensor, num_edges: int) -> None:
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
    r"""Merge probability of every edge from a Graph LSTM layer's outputs.

    selab decision (docs/method.md decision 1): with ``source="forget_gates"`` (default),
    :math:`p_{ij} = \sigma(w \cdot (\bar g^f_{ij} + \bar g^f_{ji}) / 2 + b)`, from the adaptive forget
    gates of both directions (the one pairwise gate output of the layer), symmetric in i and j.
    ``source="hidden"`` uses :math:`|h_i - h_j|` instead (also symmetric).

    Parameters
    ----------
    hidden_channels : int
        Width H of the gate outputs / hidden states.
    source : {"forget_gates", "hidden"}
        Which layer output the compatibility is read from.

    Example
    -------
    >>> mp = MergeProbability(16)
    >>> p = mp(edge_forget=torch.rand(2, 5, 16))
    >>> p.shape
    torch.Size([5])
    """

    def __init__(self, hidden_channels: int, source: str = "forget_gates"):
        super().__init__()
        if not isinstance(hidden_channels, int) or hidden_channels <= 0:
            raise ValueError(f"hidden_channels must be a positive int, got {hidden_channels!r}")
        if source not in ("forget_gates", "hidden"):
            raise ValueError(f"source must be 'forget_gates' or 'hidden', got {source!r}")
        self.hidden_channels = hidden_channels
        self.source = source
        self.linear = nn.Linear(hidden_channels, 1)

    def forward(
        self,
        edge_forget: Optional[Tensor] = None,
        h: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
    ) -> Tensor:
        """Return ``p [E]`` in (0, 1), differentiable (it gets an L2 loss)."""
        if self.source == "forget_gates":
            if edge_forget is None:
                raise ValueError("edge_forget [2, E, H] is required when source='forget_gates'")
            if edge_forget.dim() != 3 or edge_forget.shape[0] != 2 or edge_forget.shape[2] != self.hidden_channels:
                raise ValueError(
                    f"edge_forget must have shape [2, E, {self.hidden_channels}], got {tuple(edge_forget.shape)}"
                )
            compat = 0.5 * (edge_forget[0] + edge_forget[1])
        else:
            if h is None or edge_index is None:
                raise ValueError("h [N, H] and edge_index [2, E] are required when source='hidden'")
            check_edge_index(edge_index)
            compat = (h[edge_index[0]] - h[edge_index[1]]).abs()
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
    _check_budget(budget)
    p = merge_prob.detach().to(torch.float64).cpu().numpy()
    graph = None if edge_graph is None else edge_graph.cpu().numpy()
    return torch.from_numpy(_candidate_mask(p, budget, graph)).to(merge_prob.device)


def _check_budget(budget: Budget) -> None:
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"merge_budget must be None, an int (top-k) or a float fraction, got {budget!r}")
    if isinstance(budget, float) and not 0.0 < budget <= 1.0:
        raise ValueError(f"merge_budget as a fraction must be in (0, 1], got {budget}")
    if isinstance(budget, int) and budget < 0:
        raise ValueError(f"merge_budget as a count must be >= 0, got {budget}")


def _candidate_mask(p: np.ndarray, budget: Budget, graph: Optional[np.ndarray]) -> np.ndarray:
    """:func:`candidate_edges` on host arrays: ``p [E]`` float64, ``graph [E]`` int or None."""
    num_edges = p.size
    if budget is None:
        return np.ones(num_edges, dtype=bool)
    if num_edges == 0:
        return np.zeros(0, dtype=bool)
    graph = np.zeros(num_edges, np.int64) if graph is None else graph
    # each image's edges as one slice (in edge id order), the k-th largest p of each image by an O(E)
    # selection, then one comparison over all edges
    order, starts, ends = _group_by_graph(graph, int(graph.max()) + 1)
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


def _group_by_graph(graph: np.ndarray, num_graphs: int) -> tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
    """``(order, starts, ends)``: graph b's items are ``order[starts[b]:ends[b]]``, in index order.

    ``order`` is ``None`` when the items are grouped by graph already (then the ranges index them
    directly), else a stable sort by graph.
    """
    counts = np.bincount(graph, minlength=num_graphs)
    ends = np.cumsum(counts)
    order = None if bool((graph[1:] >= graph[:-1]).all()) else np.argsort(graph, kind="stable")
    return order, ends - counts, ends


def _edge_log_terms(merge_prob: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """log p and log(1 - p) per edge, in float64; non-candidate edges are 'always off' (log 1, log 0)."""
    p = merge_prob.detach().double()
    log_on = torch.where(candidates, torch.log(p), torch.full_like(p, -math.inf))
    log_off = torch.where(candidates, torch.log1p(-p), torch.zeros_like(p))
    return log_on, log_off


def proposal_log_prob(edges_on: Tensor, merge_prob: Tensor, candidates: Optional[Tensor] = None) -> float:
    """log q(z) of an edge state under the independent-edge proposal (float, may be -inf).

    q(z) = prod_e p_e^z_e (1 - p_e)^(1 - z_e) over candidate edges; non-candidates must be off.
    """
    if candidates is None:
        candidates = torch.ones_like(edges_on, dtype=torch.bool)
    log_on, log_off = _edge_log_terms(merge_prob, candidates)
    return float(torch.where(edges_on, log_on, log_off).sum())


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

    Example
    -------
    >>> ei = torch.tensor([[0, 1], [1, 2]])
    >>> propose(ei, torch.tensor([1.0, 0.0])).cluster
    tensor([0, 0, 1])
    """
    check_edge_index(edge_index)
    _check_merge_prob(merge_prob, edge_index.shape[1])
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

    Example
    -------
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


def _canonical(roots: np.ndarray) -> np.ndarray:
    """Cluster ids 0.. in the order of each clique's smallest member, from that member per node."""
    is_root = roots == np.arange(roots.shape[-1])
    return (np.cumsum(is_root) - 1)[roots]


def connected_components(edge_index: Tensor, edges_on: Optional[Tensor] = None, num_nodes: Optional[int] = None) -> Tensor:
    """Cluster id per node of the connected components of the switched-on edges (LongTensor ``[N]``).

    Ids run 0..N'-1 in the order of each component's smallest node, so in a batch (images contiguous)
    clusters never cross images and keep the images' order. Runs as a vectorised union-find
    (:func:`smallest_members`) in numpy on the CPU; the result follows ``edge_index``'s device.

    Example
    -------
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
    return torch.from_numpy(_canonical(smallest_members(ei[0], ei[1], num_nodes))).to(edge_index.device)


class _StateComponents(NamedTuple):
    """Connected components of S edge states over the nodes some candidate edge touches.

    A node no candidate edge touches is alone in every state, so only the ``active`` nodes [A] are
    clustered: one graph of S disjoint copies of them, state-major (position = s * A + local).
    """

    active: np.ndarray  # [A] sorted node ids
    root: np.ndarray  # [S * A] position of the smallest member of each position's component


def _components_of_states(ends: np.ndarray, state: np.ndarray, edge: np.ndarray, num_states: int,
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


def _clique_roots(components: _StateComponents, num_nodes: int, state: np.ndarray) -> np.ndarray:
    """Smallest member of every node's clique ``[N]`` when the active nodes are in ``state [A]``
    (1-based proposal index; 0 = nothing on)."""
    roots = np.arange(num_nodes)
    num_active = components.active.size
    on = np.flatnonzero(state > 0)
    roots[components.active[on]] = components.active[components.root[(state[on] - 1) * num_active + on] % num_active]
    return roots


# --------------------------------------------------------------------------------------------------
# energy
# --------------------------------------------------------------------------------------------------
class PartitionEnergy:
    r"""Energy of a partition: class disagreement inside cliques, minus a reward for merging.

    selab decision (docs/method.md decision 3):

    .. math::
        E(c) = s \Big( \sum_i w_i \, D(p_i, \bar p_{c(i)}) + \beta \cdot |\{\text{clusters}\}| \Big),
        \qquad \bar p_k = \frac{\sum_{c(i)=k} w_i p_i}{\sum_{c(i)=k} w_i}

    with :math:`p_i` the node's predicted class distribution (prediction mode) or the one-hot of its
    ground-truth label (training mode), :math:`w_i` the node's pixel size divided by the mean node
    size of its image (so the disagreement is counted in "average nodes"), and D the total variation
    (``distance="tv"``, in [0, 1]) or the squared Euclidean distance (``distance="sq"``). Merging two
    average nodes with different labels costs 1 (tv) and gains ``beta``: with ``beta < 1`` the
    ground-truth energy prefers merging agreeing nodes only, and a clique may absorb a minority of at
    most about ``beta`` average nodes per merge. The count of clusters is what rewards merging.

    selab decision (normalisation): the scale ``s`` (nats per average node, default 100) makes the
    energy comparable with log q, which sums a log-odds term over every edge (about 3 per node on a
    SLIC graph): with ``s = 1`` the q-correction of the MH ratio dominates and the chain, started
    from "nothing on", accepts almost nothing when the merge probabilities are confident. On SLIC
    graphs of PASCAL-Person-Part images (about 800 nodes, ground-truth mode, merge budget 0.25),
    ``s = 100, beta = 0.1, T = 1`` merges about 30% of the nodes per layer with calibrated merge
    probabilities and keeps the cliques' label purity above 99.9% (``bench/evolve.py`` prints this).
    Evaluated on the host with numpy bincounts over the members of cliques of two or more (a lone
    node costs nothing), O(M K) for M such members; with labels and ``distance="tv"`` in closed
    form from each clique's mass per class, O(M).

    Parameters
    ----------
    node_prob : Tensor [N, K]
        Class distribution per node (rows sum to 1), or ``None`` with ``node_labels``.
    node_labels : Tensor [N], optional
        Ground-truth (majority) label per node; overrides ``node_prob`` (training mode).
    size : Tensor [N], optional
        Pixel count per node; default all 1.
    batch : Tensor [N], optional
        Image of each node (for per-image size normalisation and :meth:`per_graph`).
    beta : float
        Reward per merge (cost per cluster), in average nodes of disagreement.
    distance : {"tv", "sq"}
    num_classes : int, optional
        K for one-hot labels (default: max label + 1).
    scale : float
        Energy unit in nats per average node of disagreement (selab decision, see above).

    Example
    -------
    >>> energy = PartitionEnergy(node_labels=torch.tensor([0, 0, 1]), beta=0.5, scale=1.0)
    >>> energy(torch.tensor([0, 1, 2])), energy(torch.tensor([0, 0, 1]))
    (1.5, 1.0)
    """

    def __init__(
        self,
        node_prob: Optional[Tensor] = None,
        node_labels: Optional[Tensor] = None,
        size: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        beta: float = 0.1,
        distance: str = "tv",
        num_classes: Optional[int] = None,
        scale: float = 100.0,
    ):
        if distance not in ("tv", "sq"):
            raise ValueError(f"distance must be 'tv' or 'sq', got {distance!r}")
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise ValueError(f"beta must be a float >= 0, got {beta!r}")
        if node_labels is not None:
            if node_labels.dim() != 1:
                raise ValueError(f"node_labels must be [N], got {tuple(node_labels.shape)}")
            k = int(num_classes) if num_classes is not None else int(node_labels.max()) + 1 if node_labels.numel() else 1
            prob = torch.nn.functional.one_hot(node_labels.long(), k).double()
        elif node_prob is not None:
            if node_prob.dim() != 2:
                raise ValueError(f"node_prob must be [N, K], got {tuple(node_prob.shape)}")
            prob = node_prob.detach().double()
        else:
            raise ValueError("PartitionEnergy needs node_prob [N, K] or node_labels [N]")
        n = prob.shape[0]
        device = prob.device
        batch = torch.zeros(n, dtype=torch.long, device=device) if batch is None else batch.to(device).long()
        if batch.shape != (n,):
            raise ValueError(f"batch must be [N] = [{n}], got {tuple(batch.shape)}")
        size = torch.ones(n, dtype=torch.float64, device=device) if size is None else size.detach().to(device).double()
        if size.shape != (n,):
            raise ValueError(f"size must be [N] = [{n}], got {tuple(size.shape)}")
        self.num_graphs = int(batch.max()) + 1 if n else 1
        mean_size = torch.zeros(self.num_graphs, dtype=torch.float64, device=device).index_add_(0, batch, size)
        mean_size = mean_size / torch.bincount(batch, minlength=self.num_graphs).clamp(min=1)
        self.prob, self.batch, self.beta, self.distance = prob, batch, float(beta), distance
        self.weight = size / mean_size[batch].clamp(min=1e-12)
        self.labels = None if node_labels is None else node_labels.to(device).long()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        self._host = None

    def _host_arrays(self) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]:
        """(weight, prob, labels or None, batch) as numpy arrays, copied from the device once."""
        if self._host is None:
            labels = None if self.labels is None else self.labels.cpu().numpy()
            self._host = (self.weight.cpu().numpy(), self.prob.cpu().numpy(), labels, self.batch.cpu().numpy())
        return self._host

    def member_disagreement(self, node: np.ndarray, clique: np.ndarray, num_cliques: int) -> np.ndarray:
        r""":math:`w_i D(p_i, \bar p_{c})` of every member i of a clique c, given as (node, clique) pairs.

        ``node`` and ``clique`` are int arrays [M] (clique ids < ``num_cliques``; the same node may
        appear in several cliques, e.g. of different partitions). Returns float64 [M]; summed over
        the members of a partition it gives the partition's disagreement (the energy without the
        scale and the merge reward).
        """
        weight, prob, labels, _ = self._host_arrays()
        w = weight[node]
        mass = np.bincount(clique, w, minlength=num_cliques)
        num_classes = prob.shape[1]
        if labels is not None and self.distance == "tv":
            # one-hot p_i = e_l: TV(e_l, p_bar) = 1 - p_bar_l needs only each clique's mass per class
            cell = clique * num_classes + labels[node]
            class_mass = np.bincount(cell, w, minlength=num_cliques * num_classes)
            return w * np.maximum(1.0 - class_mass[cell] / mass[clique], 0.0)
        p = prob[node]
        cells = (clique[:, None] * num_classes + np.arange(num_classes)).ravel()
        total = np.bincount(cells, (w[:, None] * p).ravel(), minlength=num_cliques * num_classes)
        diff = p - total.reshape(num_cliques, num_classes)[clique] / mass[clique, None]
        return w * (0.5 * np.abs(diff).sum(1) if self.distance == "tv" else (diff**2).sum(1))

    def disagreement_by_slot(self, clique: np.ndarray, slot: np.ndarray, nodes: np.ndarray, num_slots: int) -> np.ndarray:
        """Disagreement per slot of partitions laid out position by position, float64 ``[num_slots]``.

        Position ``p`` holds node ``nodes[p % len(nodes)]`` (S partitions of the same nodes, one after
        the other), in clique ``clique[p]`` (ids ``< len(clique)``), counted in ``slot[p]`` (e.g.
        partition * B + image). A node alone in its clique disagrees with nobody: only members of
        cliques of two or more are scored (:meth:`member_disagreement`).
        """
        size = np.bincount(clique, minlength=clique.size)
        member = np.flatnonzero(size[clique] > 1)
        contribution = self.member_disagreement(nodes[member % max(nodes.size, 1)], clique[member], clique.size)
        return np.bincount(slot[member], contribution, minlength=num_slots)

    def per_graph_many(self, clusters: Tensor) -> Tensor:
        """Energies of S partitions at once, per image: ``[S, B]`` float64.

        Cluster ids of each row are in ``0..N-1``; a cluster is counted in the image of its members
        (partitions from :func:`connected_components` of a batch never cross images).
        """
        num_states, n = clusters.shape
        if n != self.prob.shape[0]:
            raise ValueError(f"clusters must have N = {self.prob.shape[0]} columns (one per node), got {n}")
        _, _, _, batch = self._host_arrays()
        ids = clusters.cpu().numpy().astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"cluster ids must be in 0..{n - 1}, got {ids.min()}..{ids.max()}")
        flat = (ids + np.arange(num_states)[:, None] * n).ravel()
        slot = ((np.arange(num_states)[:, None] * self.num_graphs) + batch).ravel()  # (state, image)
        disagreement = self.disagreement_by_slot(flat, slot, np.arange(n), num_states * self.num_graphs)
        cluster_slot = np.full(num_states * n, -1)
        cluster_slot[flat] = slot  # a cluster is counted in the image of its members
        count = np.bincount(cluster_slot[cluster_slot >= 0], minlength=num_states * self.num_graphs)
        energy = self.scale * (disagreement + self.beta * count)
        return torch.from_numpy(energy.reshape(num_states, self.num_graphs)).to(self.prob.device)

    def per_graph(self, cluster: Tensor) -> Tensor:
        """Energy per image ``[B]`` of one partition."""
        return self.per_graph_many(cluster[None])[0]

    def __call__(self, cluster: Tensor) -> float:
        if cluster.shape != (self.prob.shape[0],):
            raise ValueError(f"cluster must be [N] = [{self.prob.shape[0]}], got {tuple(cluster.shape)}")
        return float(self.per_graph(cluster).sum())


# --------------------------------------------------------------------------------------------------
# Metropolis-Hastings
# --------------------------------------------------------------------------------------------------
@dataclass
class MHStep:
    """One proposal of a chain: its edges, partition size, energy, log q, acceptance and decision.

    ``proposal_edges`` (bool ``[E]`` of the chain's graph) is row ``index`` of ``proposals``, the
    chain's states ``[S + 1, E]`` (row 0: nothing on), shared by all steps of the chain.
    """

    proposals: Tensor = field(repr=False)
    index: int
    energy: float
    log_q: float
    alpha: float
    accepted: bool
    num_clusters: int

    @property
    def proposal_edges(self) -> Tensor:
        return self.proposals[self.index]


@dataclass
class MHTrace:
    """Record of one chain: the initial state's energy and log q, then one :class:`MHStep` per proposal."""

    initial_energy: float
    initial_log_q: float
    steps: list = field(default_factory=list)
    edges_on: Optional[Tensor] = None
    energy: float = float("nan")

    @property
    def acceptance_rate(self) -> float:
        return float(np.mean([s.accepted for s in self.steps])) if self.steps else 0.0

    def __repr__(self) -> str:
        """One line: ``MHTrace(50 steps, 12% accepted, energy 812.3 -> 640.1)``."""
        return (f"MHTrace({len(self.steps)} steps, {self.acceptance_rate:.0%} accepted, "
                f"energy {self.initial_energy:.4g} -> {self.energy:.4g})")


def _acceptance(log_pi_new: float, log_q_new: float, log_pi_cur: float, log_q_cur: float) -> float:
    """alpha = min(1, pi(z') q(z) / (pi(z) q(z'))), in log space.

    selab decision: when the current state has q(z) = 0 (e.g. "nothing on" while some p = 1) the
    ratio is 0/0-like and the chain could never leave a state the proposal cannot produce; such a
    state is transient for the independence sampler, so any proposal with pi > 0 is accepted.
    """
    if log_pi_new == -math.inf:
        return 0.0
    if log_q_cur == -math.inf:
        return 1.0
    log_ratio = (log_pi_new - log_pi_cur) + (log_q_cur - log_q_new)
    return 1.0 if log_ratio >= 0 else math.exp(log_ratio)


def _edges_per_graph(edge_graph: np.ndarray, num_graphs: int) -> list:
    """Each graph's edges as an index: a slice where the edges are grouped by graph (cheap views)."""
    if num_graphs == 1:
        return [slice(None)]
    order, starts, ends = _group_by_graph(edge_graph, num_graphs)
    if order is None:
        return [slice(start, end) for start, end in zip(starts.tolist(), ends.tolist())]
    return [torch.from_numpy(order[start:end]) for start, end in zip(starts.tolist(), ends.tolist())]


def _run_chains(
    edge_index: np.ndarray,
    merge_prob: np.ndarray,
    num_nodes: int,
    edge_graph: np.ndarray,
    node_graph: np.ndarray,
    num_graphs: int,
    energy: Union["PartitionEnergy", Callable[[Tensor], float]],
    num_steps: int,
    temperature: float,
    candidates: np.ndarray,
    generator: Optional[torch.Generator],
    device: torch.device,
) -> tuple[Tensor, Tensor, list[MHTrace]]:
    """One independent MH chain per graph of a disjoint batch; all proposals drawn and scored at once.

    Works on host arrays (``edge_index [2, E]``, float64 ``merge_prob [E]``, ``edge_graph [E]``,
    ``node_graph [N]``, bool ``candidates [E]``); the random numbers come from ``generator`` on
    ``device``, where the results go. ``energy`` is a :class:`PartitionEnergy` (scored from the
    cliques directly, per graph) or, for a single chain (``num_graphs == 1``), any callable
    ``cluster [N] -> float``. Returns the final edge state ``[E]``, its partition ``[N]`` (canonical
    ids) and one trace per graph.
    """
    # Only candidate edges are ever on (the others add log 1 to log q): draw and score just those.
    candidate = np.flatnonzero(candidates)
    p_np = merge_prob[candidate]
    # the draws happen on the generator's device (a CPU generator may drive a model on the GPU)
    draw_device = generator.device if generator is not None else device
    p = torch.from_numpy(p_np).to(draw_device)
    drawn = torch.rand((num_steps, p.numel()), generator=generator, device=draw_device, dtype=torch.float64) < p
    uniforms = torch.rand((num_steps, num_graphs), generator=generator, device=draw_device, dtype=torch.float64)

    # The rest is O(S (A + C)) host work in numpy (A nodes touched by the C candidate edges; every
    # other node is alone in every state): log q, components, energies, then the scalar MH loop.
    drawn_np = drawn.cpu().numpy()
    num_edges = edge_index.shape[1]
    states_np = np.zeros((num_steps + 1, num_edges), dtype=bool)
    states_np[1:, candidate] = drawn_np  # state 0 = nothing on, where every chain starts
    states = torch.from_numpy(states_np).to(device)
    ends = edge_index[:, candidate]
    candidate_graph = edge_graph[candidate]
    num_states = num_steps + 1
    on = np.flatnonzero(drawn_np)  # switched-on (proposal, candidate) pairs
    on_state, on_edge = on // candidate.size, on % candidate.size
    on_slot = on_state * num_graphs + candidate_graph[on_edge]  # (proposal, image) of each

    # log q: 'nothing on' sums log(1 - p) (-inf where some p = 1: q = 0, handled by _acceptance); a
    # proposal adds log p - log(1 - p) per switched-on edge, on top of the edges with p = 1, which
    # every proposal switches on (log 1 = 0)
    with np.errstate(divide="ignore"):
        log_on, log_off = np.log(p_np), np.log1p(-p_np)
    log_off_uncertain = np.where(p_np >= 1.0, 0.0, log_off)
    log_q = np.empty((num_states, num_graphs))
    log_q[0] = np.bincount(candidate_graph, log_off, minlength=num_graphs)
    log_q[1:] = np.bincount(candidate_graph, log_off_uncertain, minlength=num_graphs)
    log_q[1:] += np.bincount(on_slot, (log_on - log_off_uncertain)[on_edge],
                             minlength=num_steps * num_graphs).reshape(num_steps, num_graphs)

    components = _components_of_states(ends, on_state, on_edge, num_steps, num_nodes)
    active_graph = node_graph[components.active]
    nodes_per_graph = np.bincount(node_graph, minlength=num_graphs)
    root = components.root
    # (proposal, image) slot of every position s * A + local of the components
    position_slot = (np.arange(num_steps)[:, None] * num_graphs + active_graph).ravel()
    first = np.flatnonzero(root == np.arange(root.size))  # one position per component
    component_slot = position_slot[first]
    count = np.empty((num_states, num_graphs), dtype=np.int64)
    count[0] = nodes_per_graph
    count[1:] = (nodes_per_graph - np.bincount(active_graph, minlength=num_graphs)
                 + np.bincount(component_slot, minlength=num_steps * num_graphs).reshape(num_steps, num_graphs))

    if isinstance(energy, PartitionEnergy):
        if energy.prob.shape[0] != num_nodes:
            raise ValueError(f"the energy has {energy.prob.shape[0]} nodes but the graph has {num_nodes}")
        disagreement = np.zeros((num_states, num_graphs))  # state 0: nothing merged
        disagreement[1:] = energy.disagreement_by_slot(root, position_slot, components.active,
                                                       num_steps * num_graphs).reshape(num_steps, num_graphs)
        energies = energy.scale * (disagreement + energy.beta * count)
    else:
        if num_graphs != 1:
            raise ValueError("a callable energy scores one chain; use PartitionEnergy for a batch of chains")
        active_state = np.zeros(components.active.size, dtype=np.int64)
        energies = np.empty((num_states, 1))
        for s in range(num_states):
            active_state[:] = s
            cluster = _canonical(_clique_roots(components, num_nodes, active_state))
            energies[s, 0] = float(energy(torch.from_numpy(cluster).to(device)))

    traces = [MHTrace(float(energies[0, b]), float(log_q[0, b])) for b in range(num_graphs)]
    # the accept/reject loop is inherently sequential over proposals but vectorised over nothing
    # bigger than B scalars; proposals, components and energies were computed above in one go.
    log_pi = (-energies / temperature).tolist()
    log_q_list, energy_list = log_q.tolist(), energies.tolist()
    count_list, uniform_list = count.tolist(), uniforms.cpu().tolist()
    chosen_list = [0] * num_graphs
    # each image's view of the proposals, sliced once (not per step)
    own = _edges_per_graph(edge_graph, num_graphs)
    own_edges = [states[:, edges] for edges in own]
    for s in range(1, num_states):
        for b in range(num_graphs):
            cur = chosen_list[b]
            alpha = _acceptance(log_pi[s][b], log_q_list[s][b], log_pi[cur][b], log_q_list[cur][b])
            accepted = uniform_list[s - 1][b] < alpha
            if accepted:
                chosen_list[b] = s
            traces[b].steps.append(MHStep(own_edges[b], s, energy_list[s][b], log_q_list[s][b], alpha, accepted,
                                          count_list[s][b]))
    chosen = np.asarray(chosen_list)
    picked = chosen[candidate_graph]  # each candidate edge's chosen state (0: nothing on)
    moved = np.flatnonzero(picked > 0)
    final_np = np.zeros(num_edges, dtype=bool)
    final_np[candidate[moved]] = drawn_np[picked[moved] - 1, moved]
    final = torch.from_numpy(final_np).to(device)
    for b in range(num_graphs):
        traces[b].edges_on = final[own[b]]
        traces[b].energy = energy_list[chosen_list[b]][b]
    # the final partition: each image's cliques in its chosen state (no second components pass)
    roots = _clique_roots(components, num_nodes, chosen[active_graph])
    return final, torch.from_numpy(_canonical(roots)).to(device), traces


def _finite_energy(energy: Callable[[Tensor], float]) -> Callable[[Tensor], float]:
    """``energy`` that raises on NaN: a NaN energy makes every acceptance test fail without a word."""

    def checked(cluster: Tensor) -> float:
        value = float(energy(cluster))
        if math.isnan(value):
            raise ValueError(f"energy returned NaN for a partition into {int(cluster.max()) + 1 if cluster.numel() else 0} "
                             f"clusters; it must return a number (inf for a forbidden partition)")
        return value

    return checked


def metropolis_hastings(
    edge_index: Tensor,
    merge_prob: Tensor,
    energy: Callable[[Tensor], float],
    num_steps: int,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
    num_nodes: Optional[int] = None,
    merge_budget: Budget = None,
) -> tuple[Tensor, MHTrace]:
    r"""Sample a partition with a Metropolis-Hastings independence sampler over edge states.

    The state is a bool edge vector z; its partition is the connected components of z; the target is
    :math:`\pi(z) \propto \exp(-E(\mathrm{partition}(z)) / T)`; proposals switch each edge on
    independently with its merge probability, :math:`q(z) = \prod_e p_e^{z_e}(1 - p_e)^{1 - z_e}`;
    :math:`\alpha = \min(1, \pi(z') q(z) / (\pi(z) q(z')))`. The chain starts from "nothing on" and
    runs ``num_steps`` proposals. With ``merge_budget`` only the top-k edges can be switched on (others
    always off, and q is computed over the candidates only). Works on one graph or a disjoint batch
    (as one chain; :class:`StructureEvolution` runs one chain per image).

    Parameters
    ----------
    edge_index : LongTensor [2, E]
    merge_prob : Tensor [E]
        Merge probabilities (detached internally; sampling is not differentiable).
    energy : callable
        ``energy(cluster [N]) -> float``.
    num_steps : int
        Number of proposals.
    temperature : float
    generator : torch.Generator, optional
        On ``merge_prob``'s device; a seeded generator reproduces the chain.

    Returns
    -------
    cluster : LongTensor [N]
        Partition of the final state.
    trace : MHTrace
        ``trace.steps[i]`` has ``proposal_edges`` (bool [E]), ``energy``, ``log_q``, ``alpha``,
        ``accepted``.

    Example
    -------
    >>> ei = torch.tensor([[0, 1], [1, 2]])
    >>> energy = PartitionEnergy(node_labels=torch.tensor([0, 0, 1]))
    >>> cluster, trace = metropolis_hastings(ei, torch.tensor([0.9, 0.1]), energy, 4,
    ...                                      generator=torch.Generator().manual_seed(0))
    >>> len(trace.steps)
    4
    """
    check_edge_index(edge_index)
    _check_merge_prob(merge_prob, edge_index.shape[1])
    if not callable(energy):
        raise TypeError("energy must be a callable cluster [N] -> float")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = check_edge_index(edge_index, num_nodes)
    _check_budget(merge_budget)
    if not isinstance(energy, PartitionEnergy):
        energy = _finite_energy(energy)
    p = merge_prob.detach().double().cpu().numpy()
    num_edges = edge_index.shape[1]
    _, cluster, traces = _run_chains(edge_index.cpu().numpy(), p, n, np.zeros(num_edges, np.int64), np.zeros(n, np.int64),
                                     1, energy, num_steps, float(temperature), _candidate_mask(p, merge_budget, None),
                                     generator, merge_prob.device)
    return cluster.to(edge_index.device), traces[0]


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

    Example
    -------
    >>> greedy_merge(torch.tensor([[0, 1], [1, 2]]), torch.tensor([0.9, 0.2]))[0]
    tensor([0, 0, 1])
    """
    check_edge_index(edge_index)
    _check_merge_prob(merge_prob, edge_index.shape[1])
    n = check_edge_index(edge_index, num_nodes)
    p = merge_prob.detach()
    edges_on = (p > threshold) & candidate_edges(p, merge_budget, edge_graph)
    return connected_components(edge_index, edges_on.to(edge_index.device), n), edges_on


# --------------------------------------------------------------------------------------------------
# the layer-level module
# --------------------------------------------------------------------------------------------------
@dataclass
class EvolutionTrace:
    """What one evolution step did, per image (detached, for the notebooks).

    ``chains[b]`` is the :class:`MHTrace` of image b (``None`` in greedy / none mode); ``edges_on`` the
    final switched-on edges of the whole batch; node counts before/after per image.
    """

    mode: str
    merge_prob: Tensor
    edge_index: Tensor
    edges_on: Tensor
    cluster: Tensor
    num_nodes_before: list
    num_nodes_after: list
    chains: list = field(default_factory=list)
    energy: Optional[str] = None  # "ground_truth", "prediction" or "mixed" in MH mode

    @property
    def merge_fraction(self) -> float:
        """Fraction of nodes that disappeared by merging (over the whole batch)."""
        before = sum(self.num_nodes_before)
        return 1.0 - sum(self.num_nodes_after) / before if before else 0.0

    def __repr__(self) -> str:
        """One line: ``EvolutionTrace(mh, 1 image, nodes [150] -> [97], 3 of 290 edges on, 1 chain)``."""
        images = len(self.num_nodes_before)
        chains = sum(chain is not None for chain in self.chains)
        return (f"EvolutionTrace({self.mode}, {images} image{'s' * (images != 1)}, nodes {list(self.num_nodes_before)}"
                f" -> {list(self.num_nodes_after)}, {int(self.edges_on.sum())} of {self.edges_on.numel()} edges on, "
                f"{chains} chain{'s' * (chains != 1)})")


class EvolutionOutput(NamedTuple):
    """Result of :class:`StructureEvolution`: the next level and the coarsened states."""

    graph: object
    cluster: Tensor
    merge_prob: Tensor
    trace: EvolutionTrace
    h: Tensor
    m: Tensor
    confidence: Tensor


class StructureEvolution(nn.Module):
    """Merge probabilities + structure sampling + coarsening after one Graph LSTM layer.

    Parameters
    ----------
    hidden_channels : int
    mode : {"mh", "greedy", "none"}
        Structure in training: MH sampling, deterministic thresholding, or no merging (Graph LSTM).
    num_proposals : int
        MH proposals per layer and image.
    temperature : float
    merge_budget : int or float, optional
        Top-k edges (int) or fraction of edges (float) per image that may merge. selab decision:
        0.25 by default, because independent switching of all edges of a planar SLIC graph
        percolates (with p around 0.8 one giant clique spans labels) and the chain then accepts
        nothing or a nearly total merge; ``None`` lets every edge merge.
    threshold : float
        Greedy mode: merge edges with ``p > threshold``.
    beta, energy_scale : float
        Merge reward and energy unit of the default energy (see :class:`PartitionEnergy`).
    distance : {"tv", "sq"}
    eval_mode : {"auto", "greedy", "mh", "none", None}
        Mode in ``eval()``. ``"auto"`` (default) follows the family of ``mode``: ``"mh"`` and ``"greedy"``
        -> ``"greedy"`` (selab decision, docs/method.md decision 6: a deterministic structure at test time),
        ``"none"`` -> ``"none"`` (a model trained without merging is not merged at test time either);
        ``None`` uses ``mode`` itself (MH at test time for an MH-trained model).
    source : {"forget_gates", "hidden"}
        Input of :class:`MergeProbability`.
    energy : {"ground_truth", "prediction"}
        Energy of the MH chains in training (selab decision, issue 19): ``"ground_truth"`` (default)
        scores partitions with the nodes' majority ground-truth labels, so training cliques are nearly
        pure; ``"prediction"`` with the predicted class distributions ``node_class_prob``, as at test
        time; ``"mixed"`` with the class distributions ``(1 - w) onehot(label_i) + w p_i``
        (``w`` = ``prediction_weight``). Read by the model, which passes the labels and the source to
        :meth:`forward`; at test time (no labels) the energy is always the prediction's.
    prediction_weight : float
        ``w`` in [0, 1] of ``energy="mixed"``; a trainer may change the attribute between epochs for a
        schedule from the ground truth (0) to the prediction (1).

    Example
    -------
    >>> evo = StructureEvolution(64)  # doctest: +SKIP
    >>> out = evo(graph, lstm_out, node_class_prob, node_labels=labels)  # doctest: +SKIP
    >>> next_graph, cluster, merge_prob, trace = out[:4]  # doctest: +SKIP
    """

    def __init__(
        self,
        hidden_channels: int,
        mode: str = "mh",
        num_proposals: int = 8,
        temperature: float = 1.0,
        merge_budget: Budget = 0.25,
        threshold: float = 0.5,
        beta: float = 0.1,
        energy_scale: float = 100.0,
        distance: str = "tv",
        eval_mode: Optional[str] = "auto",
        source: str = "forget_gates",
        energy: str = "ground_truth",
        prediction_weight: float = 0.5,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be 'mh', 'greedy' or 'none', got {mode!r}")
        if eval_mode not in MODES + ("auto", None):
            raise ValueError(f"eval_mode must be 'auto', 'mh', 'greedy', 'none' or None, got {eval_mode!r}")
        if energy not in ENERGIES:
            raise ValueError(f"energy must be 'ground_truth', 'prediction' or 'mixed', got {energy!r}")
        if isinstance(prediction_weight, bool) or not isinstance(prediction_weight, (int, float)) \
                or not 0 <= prediction_weight <= 1:
            raise ValueError(f"prediction_weight must be a number in [0, 1], got {prediction_weight!r}")
        if not isinstance(num_proposals, int) or num_proposals < 0:
            raise ValueError(f"num_proposals must be an int >= 0, got {num_proposals!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        _check_budget(merge_budget)
        self.mode, self.eval_mode, self.energy = mode, eval_mode, energy
        self.prediction_weight = float(prediction_weight)
        self.num_proposals, self.temperature = num_proposals, float(temperature)
        self.merge_budget, self.threshold = merge_budget, float(threshold)
        self.beta, self.distance, self.energy_scale = float(beta), distance, float(energy_scale)
        self.merge_probability = MergeProbability(hidden_channels, source=source)

    def current_mode(self) -> str:
        """The mode now: ``mode`` in training, ``eval_mode`` (resolved, see the class docstring) in ``eval()``."""
        if self.training or self.eval_mode is None:
            return self.mode
        if self.eval_mode == "auto":
            return "none" if self.mode == "none" else "greedy"
        return self.eval_mode

    def sample(
        self,
        edge_index: Tensor,
        merge_prob: Tensor,
        batch: Tensor,
        energy: PartitionEnergy,
        generator: Optional[torch.Generator] = None,
        mode: Optional[str] = None,
    ) -> tuple[Tensor, Tensor, list]:
        """Choose the partition: ``(cluster [N], edges_on [E], chains)``; one MH chain per image."""
        mode = mode or self.current_mode()
        n = batch.numel()
        num_graphs = int(batch.max()) + 1 if n else 1
        if mode == "none":
            edges_on = torch.zeros(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
            return torch.arange(n, device=batch.device), edges_on, []
        if mode == "greedy":
            edge_graph = batch[edge_index[0]] if edge_index.numel() else batch.new_zeros(0)
            cluster, edges_on = greedy_merge(edge_index, merge_prob, n, self.threshold, self.merge_budget, edge_graph)
            return cluster, edges_on, []
        ei, node_graph = edge_index.cpu().numpy(), batch.cpu().numpy()
        edge_graph = node_graph[ei[0]]
        p = merge_prob.detach().double().cpu().numpy()
        edges_on, cluster, chains = _run_chains(ei, p, n, edge_graph, node_graph, num_graphs, energy, self.num_proposals,
                                                self.temperature, _candidate_mask(p, self.merge_budget, edge_graph),
                                                generator, merge_prob.device)
        return cluster.to(batch.device), edges_on, chains

    def forward(
        self,
        graph,
        lstm_output,
        node_class_prob: Tensor,
        node_labels: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        features: Optional[Tensor] = None,
        state: Optional[Tensor] = None,
        energy: Optional[str] = None,
    ) -> EvolutionOutput:
        """Evolve ``graph`` after a Graph LSTM layer.

        Parameters
        ----------
        graph : selab.graph.Graph
            This level (``edge_index``, ``batch``, ``size``, ``assignment``, optional ``x`` = f).
        lstm_output : GraphLSTMOutput
            With ``.h [N, H]``, ``.m [N, H]``, ``.edge_forget [2, E, H]``.
        node_class_prob : Tensor [N, K]
            Predicted class distribution per node (energy in prediction mode; coarse confidences).
        node_labels : LongTensor [N], optional
            Ground-truth majority labels: energy in ground-truth mode (training).
        generator : torch.Generator, optional
        features : Tensor [N, C], optional
            The layer input f to coarsen (default ``graph.x``).
        state : Tensor [N, H], optional
            The hidden state to coarsen into the next level's h0 (default ``lstm_output.h``).
        energy : {"ground_truth", "prediction", "mixed"}, optional
            Source of the MH energy: the labels ``node_labels`` (required then), ``node_class_prob``,
            or their mix (labels required). Default: the module's ``energy`` option when labels are
            given, else ``"prediction"``.

        Returns
        -------
        EvolutionOutput
            ``(graph, cluster, merge_prob, trace, h, m, confidence)``: the next level's Graph (its
            ``x`` is the mean f), the clusters, the differentiable merge probabilities, the trace,
            the mean h and m, and the coarse (size-weighted mean) class confidences.
        """
        edge_index, batch = graph.edge_index, graph.batch
        n = batch.numel()
        if node_class_prob.shape[0] != n:
            raise ValueError(f"node_class_prob must have {n} rows (one per node), got {tuple(node_class_prob.shape)}")
        if node_labels is not None and node_labels.shape != (n,):
            raise ValueError(f"node_labels must be [N] = [{n}], got {tuple(node_labels.shape)}")
        if energy is None:
            energy = self.energy if node_labels is not None else "prediction"
        if energy not in ENERGIES:
            raise ValueError(f"energy must be 'ground_truth', 'prediction' or 'mixed', got {energy!r}")
        if energy != "prediction" and node_labels is None:
            raise ValueError(f"energy={energy!r} needs node_labels [N]")
        state = lstm_output.h if state is None else state
        if state.shape[0] != n:
            raise ValueError(f"state must have {n} rows (one per node), got {tuple(state.shape)}")
        merge_prob = self.merge_probability(edge_forget=lstm_output.edge_forget, h=lstm_output.h, edge_index=edge_index)
        mode = self.current_mode()
        partition_energy = None
        if mode == "mh":
            node_prob = node_class_prob
            if energy == "mixed":
                onehot = torch.nn.functional.one_hot(node_labels.long(), node_class_prob.shape[1])
                w = self.prediction_weight
                node_prob = (1 - w) * onehot.to(node_class_prob.dtype) + w * node_class_prob.detach()
            partition_energy = PartitionEnergy(
                node_prob=node_prob, node_labels=node_labels if energy == "ground_truth" else None,
                size=graph.size, batch=batch, beta=self.beta, distance=self.distance,
                num_classes=node_class_prob.shape[1], scale=self.energy_scale,
            )
        cluster, edges_on, chains = self.sample(edge_index, merge_prob, batch, partition_energy, generator, mode)
        num_clusters = int(cluster.max()) + 1 if n else 0
        f = graph.x if features is None else features
        next_graph = coarsen(graph, cluster, x=f)
        h = scatter_mean(state, cluster, num_clusters)
        m = scatter_mean(lstm_output.m, cluster, num_clusters)
        confidence = coarse_confidence(node_class_prob, graph.size, cluster, num_clusters)
        num_graphs = int(batch.max()) + 1 if n else 0
        before = torch.bincount(batch, minlength=num_graphs).tolist()
        after = torch.bincount(batch.new_zeros(num_clusters).index_copy_(0, cluster, batch), minlength=num_graphs).tolist()
        trace = EvolutionTrace(mode, merge_prob.detach(), edge_index, edges_on, cluster, before, after, chains,
                               energy if mode == "mh" else None)
        return EvolutionOutput(next_graph, cluster, merge_prob, trace, h, m, confidence)


def evolve(graph, lstm_output, node_class_prob, module: StructureEvolution, **kwargs) -> EvolutionOutput:
    """Functional shorthand for ``module(graph, lstm_output, node_class_prob, **kwargs)``."""
    return module(graph, lstm_output, node_class_prob, **kwargs)


# --------------------------------------------------------------------------------------------------
# the hierarchy at test time: node counts and clique label purity
# --------------------------------------------------------------------------------------------------
def hierarchy_stats(levels: list, mask, num_classes: int = 7) -> list[dict]:
    r"""Node counts and clique label purity of every level of a batch (``ModelOutput.levels``).

    selab definition (issue 19): the **purity** of a level is the fraction of labelled pixels whose
    level node's majority label (over the node's labelled pixels) is their own label,
    :math:`\sum_n \max_k c_{nk} / \sum_{n,k} c_{nk}` with :math:`c_{nk}` the pixels of class k in node
    n. It is 1 when every node is pure, and it can only fall from one level to the next (a merged
    node's majority count is at most the sum of its members'). At level 0 it is the superpixels'
    achievable segmentation accuracy (ASA). Pixels with a label outside ``0..num_classes-1`` (ignore
    values such as 255) are not counted.

    Parameters
    ----------
    levels : list of selab.graph.Graph
        The levels of one batch, each with ``assignment [B,S,S]`` (global node ids) and ``batch``.
    mask : LongTensor [B,S,S] or list of LongTensor [H_b,W_b]
        Ground-truth labels at the levels' resolution, or one full-resolution mask per image (then
        each level's assignment is resized to it by nearest neighbour).
    num_classes : int

    Returns
    -------
    list of dict
        One per level: ``level``, ``num_nodes`` (over the batch), ``nodes_per_image`` (list of int),
        ``mean_nodes_per_image``, ``pure_pixels`` and ``pixels`` (counts, so that batches add up,
        see :func:`combine_hierarchy_stats`) and ``purity`` (``pure_pixels / pixels``, NaN without
        labelled pixels).

    Example
    -------
    >>> from selab.graph import coarsen, graph_from_superpixels
    >>> level0 = graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> level1 = coarsen(level0, torch.tensor([0, 0, 1]))
    >>> mask = torch.tensor([[[0, 0, 1], [0, 0, 0]]])
    >>> [(s["num_nodes"], round(s["purity"], 3)) for s in hierarchy_stats([level0, level1], mask)]
    [(3, 0.833), (2, 0.833)]
    """
    if not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError("hierarchy_stats: levels must be a non-empty list of Graph (ModelOutput.levels)")
    stats = []
    for index, level in enumerate(levels):
        assignment = level.assignment
        num_images = assignment.shape[0]
        if isinstance(mask, Tensor):
            if mask.shape != assignment.shape:
                raise ValueError(f"hierarchy_stats: mask {tuple(mask.shape)} must match level {index}'s "
                                 f"assignment {tuple(assignment.shape)} (or be a list of per-image masks)")
            hist = node_label_histogram(mask.to(assignment.device), assignment, level.num_nodes, num_classes)
        else:
            if len(mask) != num_images:
                raise ValueError(f"hierarchy_stats: {len(mask)} masks for {num_images} images")
            hist = 0
            for b, full in enumerate(mask):  # a loop over images, not pixels or nodes
                full = torch.as_tensor(full).to(assignment.device)
                resized = torch.nn.functional.interpolate(assignment[b][None, None].double(), size=tuple(full.shape),
                                                          mode="nearest")[0, 0].long()
                hist = hist + node_label_histogram(full, resized, level.num_nodes, num_classes)
        pure, pixels = int(hist.max(1).values.sum()) if level.num_nodes else 0, int(hist.sum())
        per_image = torch.bincount(level.batch, minlength=num_images).tolist()
        stats.append({"level": index, "num_nodes": level.num_nodes, "nodes_per_image": per_image,
                      "mean_nodes_per_image": level.num_nodes / max(num_images, 1), "pure_pixels": pure,
                      "pixels": pixels, "purity": pure / pixels if pixels else float("nan")})
    return stats


def combine_hierarchy_stats(batches: list) -> list[dict]:
    """:func:`hierarchy_stats` of several batches as one (e.g. a validation split), level by level.

    Node counts are concatenated and pixel counts summed, so the purity is over all pixels of the
    split and ``mean_nodes_per_image`` over all images. Batches must have the same number of levels.

    Example
    -------
    >>> a = [{"level": 0, "num_nodes": 5, "nodes_per_image": [5], "mean_nodes_per_image": 5.0,
    ...       "pure_pixels": 9, "pixels": 10, "purity": 0.9}]
    >>> b = [dict(a[0], num_nodes=3, nodes_per_image=[3], pure_pixels=10, purity=1.0)]
    >>> combined = combine_hierarchy_stats([a, b])[0]
    >>> combined["mean_nodes_per_image"], combined["purity"]
    (4.0, 0.95)
    """
    batches = [list(b) for b in batches]
    if not batches:
        raise ValueError("combine_hierarchy_stats: no batches")
    depth = {len(b) for b in batches}
    if len(depth) != 1:
        raise ValueError(f"combine_hierarchy_stats: batches have different numbers of levels {sorted(depth)}")
    combined = []
    for per_level in zip(*batches):
        nodes = [n for s in per_level for n in s["nodes_per_image"]]
        pure, pixels = sum(s["pure_pixels"] for s in per_level), sum(s["pixels"] for s in per_level)
        combined.append({"level": per_level[0]["level"], "num_nodes": sum(nodes), "nodes_per_image": nodes,
                         "mean_nodes_per_image": sum(nodes) / max(len(nodes), 1), "pure_pixels": pure,
                         "pixels": pixels, "purity": pure / pixels if pixels else float("nan")})
    return combined

r"""The Metropolis-Hastings sampler of structure evolution: one chain per image, all proposals at once.

selab decision 4 of docs/method.md, for the Structure-evolving LSTM (Liang et al., CVPR 2017): an
independence sampler over edge states z. Proposals switch every candidate edge on independently with
its merge probability (:mod:`selab.method.merge`), the target is :math:`\pi(z) \propto \exp(-E(\mathrm{partition}(z))/T)`
(:mod:`selab.method.energy`), and a proposal is accepted with
:math:`\alpha = \min(1, \pi(z') q(z) / (\pi(z) q(z')))`. Every chain starts from "nothing on".
Because the proposal does not depend on the chain's state, all proposals of a layer are drawn,
clustered and scored at once; only the scalar accept/reject loop is sequential. :class:`MHTrace`
records every step for the notebooks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor

from selab.method.energy import PartitionEnergy
from selab.method.graph import canonical_cluster, check_edge_index
from selab.method.merge import (Budget, candidate_mask, check_budget, check_merge_prob, clique_roots,
                         components_of_states, group_by_graph, proposal_log_q)

__all__ = ["metropolis_hastings", "MHStep", "MHTrace", "Chains"]


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
    order, starts, ends = group_by_graph(edge_graph, num_graphs)
    if order is None:
        return [slice(start, end) for start, end in zip(starts.tolist(), ends.tolist())]
    return [torch.from_numpy(order[start:end]) for start, end in zip(starts.tolist(), ends.tolist())]


class Chains(NamedTuple):
    """The host arrays of one MH step over a disjoint batch of graphs: one chain per graph (image).

    Two index layouts run through the sampler (and :meth:`selab.method.energy.PartitionEnergy.disagreement_by_slot`):

    - **slot** ``s * num_graphs + b``: a (state, graph) pair, state ``s`` (the S proposals, 0-based)
      major; per-slot arrays reshape to ``[S, B]`` (with a row 0 for "nothing on", ``[S + 1, B]``).
    - **position** ``s * A + local``: a (state, node) pair over the A *active* nodes, those that some
      candidate edge touches (sorted ids, ``local`` their index): the S copies of the active nodes, one
      per proposal, are clustered as one disjoint graph. Every other node is alone in every state.
    """

    edge_index: np.ndarray  # [2, E] int64
    merge_prob: np.ndarray  # [E] float64, detached
    candidates: np.ndarray  # [E] bool: the edges a proposal may switch on (the merge budget)
    edge_graph: np.ndarray  # [E] graph of each edge
    node_graph: np.ndarray  # [N] graph of each node
    num_graphs: int

    @property
    def num_nodes(self) -> int:
        return int(self.node_graph.size)

    @classmethod
    def of(cls, edge_index: Tensor, merge_prob: Tensor, num_nodes: int, batch: Optional[Tensor] = None,
           merge_budget: Budget = None) -> "Chains":
        """The chains of a batch (``batch [N]``: graph of each node; default one graph)."""
        ei = edge_index.cpu().numpy()
        if batch is None:
            node_graph, num_graphs = np.zeros(num_nodes, np.int64), 1
        else:
            node_graph = batch.cpu().numpy()
            num_graphs = int(node_graph.max()) + 1 if node_graph.size else 1
        edge_graph = node_graph[ei[0]]
        p = merge_prob.detach().double().cpu().numpy()
        return cls(ei, p, candidate_mask(p, merge_budget, edge_graph), edge_graph, node_graph, num_graphs)


def _state_energies(energy, components, position_slot: np.ndarray, count: np.ndarray, num_steps: int,
                    num_graphs: int, num_nodes: int, device) -> np.ndarray:
    """The energy of every proposed state of every chain ``[1 + S, B]`` (state 0: nothing merged)."""
    num_states = num_steps + 1
    if isinstance(energy, PartitionEnergy):
        if energy.prob.shape[0] != num_nodes:
            raise ValueError(f"the energy has {energy.prob.shape[0]} nodes but the graph has {num_nodes}")
        disagreement = np.zeros((num_states, num_graphs))  # state 0: nothing merged
        disagreement[1:] = energy.disagreement_by_slot(components.root, position_slot, components.active,
                                                       num_steps * num_graphs).reshape(num_steps, num_graphs)
        return energy.scale * (disagreement + energy.beta * count)
    if num_graphs != 1:
        raise ValueError("a callable energy scores one chain; use PartitionEnergy for a batch of chains")
    active_state = np.zeros(components.active.size, dtype=np.int64)
    energies = np.empty((num_states, 1))
    for s in range(num_states):
        active_state[:] = s
        cluster = canonical_cluster(torch.from_numpy(clique_roots(components, num_nodes, active_state)))
        energies[s, 0] = float(energy(cluster.to(device)))
    return energies


def run_chains(
    chains: Chains,
    energy: Union[PartitionEnergy, Callable[[Tensor], float]],
    num_steps: int,
    temperature: float,
    generator: Optional[torch.Generator],
    device: torch.device,
) -> tuple[Tensor, Tensor, list[MHTrace]]:
    """One independent MH chain per graph of a disjoint batch; all proposals drawn and scored at once.

    The random numbers come from ``generator`` (on its device), the results go to ``device``.
    ``energy`` is a :class:`~selab.method.energy.PartitionEnergy` (scored from the cliques directly, per graph)
    or, for a single chain (``num_graphs == 1``), any callable ``cluster [N] -> float``. Returns the
    final edge state ``[E]``, its partition ``[N]`` (canonical ids) and one trace per graph.
    """
    edge_index, merge_prob, _, edge_graph, node_graph, num_graphs = chains
    num_nodes = chains.num_nodes
    # Only candidate edges are ever on (the others add log 1 to log q): draw and score just those.
    candidate = np.flatnonzero(chains.candidates)
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
    log_q = proposal_log_q(p_np, candidate_graph, num_graphs, on_state, on_edge, num_steps)

    components = components_of_states(ends, on_state, on_edge, num_steps, num_nodes)
    active_graph = node_graph[components.active]
    nodes_per_graph = np.bincount(node_graph, minlength=num_graphs)
    root = components.root
    # the slot of every position
    position_slot = (np.arange(num_steps)[:, None] * num_graphs + active_graph).ravel()
    first = np.flatnonzero(root == np.arange(root.size))  # one position per component
    component_slot = position_slot[first]
    count = np.empty((num_states, num_graphs), dtype=np.int64)
    count[0] = nodes_per_graph
    count[1:] = (nodes_per_graph - np.bincount(active_graph, minlength=num_graphs)
                 + np.bincount(component_slot, minlength=num_steps * num_graphs).reshape(num_steps, num_graphs))

    energies = _state_energies(energy, components, position_slot, count, num_steps, num_graphs, num_nodes, device)

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
    roots = clique_roots(components, num_nodes, chosen[active_graph])
    return final, canonical_cluster(torch.from_numpy(roots)).to(device), traces


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
    r"""Sample a partition with a Metropolis-Hastings independence sampler over edge states, the structure
    sampler of the `"Interpretable Structure-Evolving LSTM" <https://arxiv.org/abs/1703.03055>`__ paper
    (Liang et al., CVPR 2017, arXiv 1703.03055).

    In short, candidate structures switch each edge on with its merging probability, and a candidate is
    accepted with the Metropolis-Hastings probability, which favours a high transition probability and a
    low partition energy. Sampling rather than merging deterministically avoids getting stuck in local
    optima (the paper's abstract; deterministic merging is reported inferior).

    The paper fixes a Metropolis-Hastings acceptance over structures proposed from the merging
    probabilities; the rest is selab decision 4 (docs/method.md): an independence sampler whose
    proposals do not depend on the state, started from "nothing on", with the energy of decision 3
    (:class:`~selab.method.energy.PartitionEnergy`) and the merge budget of decision 2.

    The state is a bool edge vector z; its partition is the connected components of z; the target is
    :math:`\pi(z) \propto \exp(-E(\mathrm{partition}(z)) / T)`; proposals switch each edge on
    independently with its merge probability, :math:`q(z) = \prod_e p_e^{z_e}(1 - p_e)^{1 - z_e}`;
    :math:`\alpha = \min(1, \pi(z') q(z) / (\pi(z) q(z')))`. The chain starts from "nothing on" and
    runs ``num_steps`` proposals. With ``merge_budget`` only the top-k edges can be switched on (others
    always off, and q is computed over the candidates only). Works on one graph or a disjoint batch
    (as one chain; :class:`~selab.method.evolve.StructureEvolution` runs one chain per image).

    Parameters
    ----------
    edge_index : LongTensor [2, E]
    merge_prob : Tensor [E]
        Merge probabilities (detached internally; sampling is not differentiable).
    energy : callable
        ``energy(cluster [N]) -> float``.
    num_steps : int
        Number of proposals.
    temperature : float, default 1.0
        T of the target exp(-E/T).
    generator : torch.Generator, optional
        On ``merge_prob``'s device; a seeded generator reproduces the chain.
    num_nodes : int, optional
        N (default: one more than the largest node id of ``edge_index``).
    merge_budget : int or float, optional
        Only the top-k (int) or the top fraction (float) of the edges may switch on (default: every edge).

    Returns
    -------
    cluster : LongTensor [N]
        Partition of the final state.
    trace : MHTrace
        ``trace.steps[i]`` has ``proposal_edges`` (bool [E]), ``energy``, ``log_q``, ``alpha``,
        ``accepted``.

    Examples
    --------
    >>> ei = torch.tensor([[0, 1], [1, 2]])
    >>> energy = PartitionEnergy(node_labels=torch.tensor([0, 0, 1]))
    >>> cluster, trace = metropolis_hastings(ei, torch.tensor([0.9, 0.1]), energy, 4,
    ...                                      generator=torch.Generator().manual_seed(0))
    >>> len(trace.steps)
    4
    """
    check_edge_index(edge_index)
    check_merge_prob(merge_prob, edge_index.shape[1])
    if not callable(energy):
        raise TypeError("energy must be a callable cluster [N] -> float")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = check_edge_index(edge_index, num_nodes)
    check_budget(merge_budget)
    if not isinstance(energy, PartitionEnergy):
        energy = _finite_energy(energy)
    chains = Chains.of(edge_index, merge_prob, n, merge_budget=merge_budget)
    _, cluster, traces = run_chains(chains, energy, num_steps, float(temperature), generator, merge_prob.device)
    return cluster.to(edge_index.device), traces[0]

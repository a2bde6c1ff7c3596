r"""Structure evolution: one evolving step of the Structure-evolving LSTM, and the hierarchy it builds.

Implements the part of the Structure-evolving LSTM (Liang et al., "Interpretable Structure-Evolving
LSTM", CVPR 2017) that is new over Graph LSTM, as one module per evolving layer,
:class:`StructureEvolution`: after a Graph LSTM layer, every edge gets a merge probability
(:mod:`selab.method.merge`); a structure is chosen by a Metropolis-Hastings sampler (:mod:`selab.method.mh`) against
the energy of a partition (:mod:`selab.method.energy`), by thresholding (greedy) or not at all; the accepted
partition is coarsened into the next, higher-level graph (:func:`selab.method.graph.coarsen`: merged nodes take
the mean of their f, h and m). :func:`selab.training.partition_scores.hierarchy_stats` measures the hierarchy
(node counts, purity and the other scores of each level).

The SE-LSTM text that fixes these details is not available; every choice here is a selab decision
(docs/method.md, "Where selab decides") with a named option. The defaults reproduce selab's reading of the
paper's configuration: ``MergeProbability(source="forget_gates")`` (decision 1), independent edge
proposals over the top quarter of each image's edges (``merge_budget=0.25``, decision 2),
``PartitionEnergy(distance="tv", beta=0.1, scale=100)`` (decision 3),
``StructureEvolution(mode="mh", num_proposals=8, temperature=1.0)`` in training, with the ground-truth
energy (``energy_source="ground_truth"``), and the deterministic greedy structure (``p > 0.5``) at test time
(``eval_mode="auto"``; decisions 4 and 6). ``mode="none"`` gives a plain Graph LSTM (no merging, in
training and at test time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from selab.method.energy import ENERGY_SOURCES, PartitionEnergy
from selab.method.graph import coarse_confidence, coarsen, scatter_mean
from selab.method.merge import (Budget, MergeProbability, Target, check_budget, check_target, connected_components,
                                greedy_merge, target_edges)
from selab.method.mh import Chains, run_chains

__all__ = ["StructureEvolution", "EvolutionTrace", "EvolutionOutput", "MODES"]

MODES = ("mh", "greedy", "none")


# --------------------------------------------------------------------------------------------------
# the layer-level module
# --------------------------------------------------------------------------------------------------
@dataclass
class EvolutionTrace:
    """What one evolution step did, per image (detached, for the notebooks).

    ``chains[b]`` is the :class:`~selab.method.mh.MHTrace` of image b (``None`` in greedy / none mode); ``edges_on`` the
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
    energy_source: Optional[str] = None  # "ground_truth", "prediction" or "mixed" in MH mode

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
    r"""One evolving layer of the `"Interpretable Structure-Evolving LSTM"
    <https://arxiv.org/abs/1703.03055>`__ paper (Liang et al., CVPR 2017, arXiv 1703.03055): merge
    probabilities, a sampled structure and the coarser graph it builds, after one Graph LSTM layer.

    In short, every edge gets a merging probability from the layer's gate outputs, candidate structures
    group the nodes into cliques by these probabilities, and a Metropolis-Hastings step accepts one of
    them against the energy of its partition. The accepted cliques become the nodes of the next,
    higher-level graph, which takes the mean of their states.

    The paper fixes merging probabilities from the gate outputs (supervised with an L2 loss,
    :func:`selab.model.loss.merge_loss`), stochastic structures accepted by Metropolis-Hastings in training and
    averaged clique states. The rest is selab's, each a named option (docs/method.md, "Where selab
    decides"): the probability's form (``source``, decision 1), independent edge proposals within a merge
    budget (``merge_budget``, decision 2), the energy (``beta``, ``energy_scale``, ``distance``, ``energy``;
    decision 3), the sampler (``num_proposals``, ``temperature``; decision 4) and a deterministic structure
    at test time (``eval_mode="auto"``, ``threshold``; decision 6). The defaults are selab's reading of the
    paper's configuration; ``mode="none"`` makes the layer a plain Graph LSTM layer (the ECCV 2016 model).

    Parameters
    ----------
    hidden_channels : int
        Width H of the Graph LSTM layer's states and gates.
    mode : {"mh", "greedy", "none"}, default "mh"
        Structure in training: MH sampling (the paper), deterministic thresholding, or no merging (Graph LSTM).
    num_proposals : int, default 8
        MH proposals per layer and image (selab decision 4).
    temperature : float, default 1.0
        T of the target exp(-E/T) (selab decision 3).
    merge_budget : int or float, optional, default 0.25
        Top-k edges (int) or fraction of edges (float) per image that may merge. selab decision:
        0.25 by default, because independent switching of all edges of a planar SLIC graph
        percolates (with p around 0.8 one giant clique spans labels) and the chain then accepts
        nothing or a nearly total merge; ``None`` lets every edge merge.
    threshold : float, default 0.5
        Greedy mode: merge edges with ``p > threshold``.
    beta, energy_scale : float, default 0.1 and 100.0
        Merge reward and energy unit of the default energy (see :class:`~selab.method.energy.PartitionEnergy`).
    distance : {"tv", "sq"}, default "tv"
        Class-distribution distance of the energy (see :class:`~selab.method.energy.PartitionEnergy`).
    eval_mode : {"auto", "greedy", "mh", "none", None}, default "auto"
        Mode in ``eval()``. ``"auto"`` follows the family of ``mode``: ``"mh"`` and ``"greedy"``
        -> ``"greedy"`` (selab decision, docs/method.md decision 6: a deterministic structure at test time),
        ``"none"`` -> ``"none"`` (a model trained without merging is not merged at test time either);
        ``None`` uses ``mode`` itself (MH at test time for an MH-trained model).
    source : {"forget_gates", "hidden", "pairwise", "pairwise_classes"}, default "forget_gates"
        Input of :class:`~selab.method.merge.MergeProbability`.
    energy_source : {"ground_truth", "prediction", "mixed"}, default "ground_truth"
        Energy of the MH chains in training (selab decision): ``"ground_truth"`` scores
        partitions with the nodes' majority ground-truth labels, so training cliques are nearly
        pure; ``"prediction"`` with the predicted class distributions ``node_class_prob``, as at test
        time; ``"mixed"`` with the class distributions ``(1 - w) onehot(label_i) + w p_i``
        (``w`` = ``prediction_weight``). Read by the model, which passes the labels and the source to
        :meth:`forward`; at test time (no labels) the energy is always the prediction's.
    prediction_weight : float, default 0.5
        ``w`` in [0, 1] of ``energy_source="mixed"``; a trainer may change the attribute between epochs for a
        schedule from the ground truth (0) to the prediction (1).
    target_nodes : int or float, optional
        selab option: how many nodes the next level keeps per image, a count (int) or a fraction of this
        level's nodes (float), instead of the merge budget and threshold (:func:`~selab.method.merge.target_edges`:
        the most probable edges, just enough of them). Greedy mode switches exactly those edges on, so a
        level has that many nodes; in MH mode they are the candidates the proposals switch on with their
        probabilities (a level then keeps at least that many). ``None`` (default): ``merge_budget`` and
        ``threshold`` as above.
    num_classes : int, optional
        Width K of ``node_class_prob``; required by ``source="pairwise_classes"`` (the model passes it).

    Examples
    --------
    >>> evo = StructureEvolution(64)
    >>> evo.current_mode(), evo.eval().current_mode()  # MH in training, the greedy structure at test time
    ('mh', 'greedy')
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
        energy_source: str = "ground_truth",
        prediction_weight: float = 0.5,
        target_nodes: Target = None,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be 'mh', 'greedy' or 'none', got {mode!r}")
        if eval_mode not in MODES + ("auto", None):
            raise ValueError(f"eval_mode must be 'auto', 'mh', 'greedy', 'none' or None, got {eval_mode!r}")
        if energy_source not in ENERGY_SOURCES:
            raise ValueError(f"energy_source must be 'ground_truth', 'prediction' or 'mixed', got {energy_source!r}")
        if isinstance(prediction_weight, bool) or not isinstance(prediction_weight, (int, float)) \
                or not 0 <= prediction_weight <= 1:
            raise ValueError(f"prediction_weight must be a number in [0, 1], got {prediction_weight!r}")
        if not isinstance(num_proposals, int) or num_proposals < 0:
            raise ValueError(f"num_proposals must be an int >= 0, got {num_proposals!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        check_budget(merge_budget)
        check_target(target_nodes)
        self.target_nodes = target_nodes
        self.mode, self.eval_mode, self.energy_source = mode, eval_mode, energy_source
        self.prediction_weight = float(prediction_weight)
        self.num_proposals, self.temperature = num_proposals, float(temperature)
        self.merge_budget, self.threshold = merge_budget, float(threshold)
        self.beta, self.distance, self.energy_scale = float(beta), distance, float(energy_scale)
        self.merge_probability = MergeProbability(hidden_channels, source=source, num_classes=num_classes)

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
        targeted = None if self.target_nodes is None else target_edges(edge_index, merge_prob, n, self.target_nodes, batch)
        if mode == "greedy":
            if targeted is not None:
                return connected_components(edge_index, targeted, n), targeted, []
            edge_graph = batch[edge_index[0]] if edge_index.numel() else batch.new_zeros(0)
            cluster, edges_on = greedy_merge(edge_index, merge_prob, n, self.threshold, self.merge_budget, edge_graph)
            return cluster, edges_on, []
        chains = Chains.of(edge_index, merge_prob, n, batch, self.merge_budget)
        if targeted is not None:
            chains = chains._replace(candidates=targeted.cpu().numpy())
        edges_on, cluster, traces = run_chains(chains, energy, self.num_proposals, self.temperature, generator,
                                                merge_prob.device)
        return cluster.to(batch.device), edges_on, traces

    def forward(
        self,
        graph,
        lstm_output,
        node_class_prob: Tensor,
        node_labels: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        features: Optional[Tensor] = None,
        state: Optional[Tensor] = None,
        energy_source: Optional[str] = None,
    ) -> EvolutionOutput:
        """Evolve ``graph`` after a Graph LSTM layer.

        Parameters
        ----------
        graph : selab.method.graph.Graph
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
        energy_source : {"ground_truth", "prediction", "mixed"}, optional
            Source of the MH energy: the labels ``node_labels`` (required then), ``node_class_prob``,
            or their mix (labels required). Default: the module's ``energy_source`` option when labels are
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
        if energy_source is None:
            energy_source = self.energy_source if node_labels is not None else "prediction"
        if energy_source not in ENERGY_SOURCES:
            raise ValueError(f"energy_source must be 'ground_truth', 'prediction' or 'mixed', got {energy_source!r}")
        if energy_source != "prediction" and node_labels is None:
            raise ValueError(f"energy_source={energy_source!r} needs node_labels [N]")
        state = lstm_output.h if state is None else state
        if state.shape[0] != n:
            raise ValueError(f"state must have {n} rows (one per node), got {tuple(state.shape)}")
        merge_prob = self.merge_probability(edge_forget=lstm_output.edge_forget, h=lstm_output.h, edge_index=edge_index,
                                            class_prob=node_class_prob)
        mode = self.current_mode()
        partition_energy = None
        if mode == "mh":
            node_prob = node_class_prob
            if energy_source == "mixed":
                onehot = torch.nn.functional.one_hot(node_labels.long(), node_class_prob.shape[1])
                w = self.prediction_weight
                node_prob = (1 - w) * onehot.to(node_class_prob.dtype) + w * node_class_prob.detach()
            partition_energy = PartitionEnergy(
                node_prob=node_prob, node_labels=node_labels if energy_source == "ground_truth" else None,
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
                               energy_source if mode == "mh" else None)
        return EvolutionOutput(next_graph, cluster, merge_prob, trace, h, m, confidence)

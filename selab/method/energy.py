r"""The energy of a partition: what the Metropolis-Hastings chains of structure evolution minimise.

selab decision 3 of docs/method.md: the target of the Structure-evolving LSTM's sampler (Liang et al.,
CVPR 2017) is :math:`\pi(G) \propto \exp(-E(G)/T)`, with E scoring how much a partition hurts the
parsing: the class disagreement of the nodes merged into one clique, minus a reward per merge.
:class:`PartitionEnergy` evaluates it for one partition, for many at once (:meth:`PartitionEnergy.per_graph_many`),
or per slot of the sampler's layout (:meth:`PartitionEnergy.disagreement_by_slot`, see :mod:`selab.method.mh`),
from the nodes' ground-truth labels (training), predicted class distributions (test time) or a mix.
``ENERGY_SOURCES`` names the sources :class:`selab.method.evolve.StructureEvolution` offers.

Examples
--------
>>> import torch
>>> energy = PartitionEnergy(node_labels=torch.tensor([0, 0, 1]), beta=0.5, scale=1.0)
>>> round(energy(torch.tensor([0, 0, 0])), 4)  # disagreement 1/3 + 1/3 + 2/3, one cluster
1.8333
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["PartitionEnergy", "ENERGY_SOURCES"]

#: Sources of the chains' energy: ground-truth labels, predicted classes, or their mix.
ENERGY_SOURCES = ("ground_truth", "prediction", "mixed")


class PartitionEnergy:
    r"""The energy of a partition that the structure sampler of the `"Interpretable Structure-Evolving
    LSTM" <https://arxiv.org/abs/1703.03055>`__ paper (Liang et al., CVPR 2017, arXiv 1703.03055) minimises.

    In short, a partition costs the class disagreement of the nodes merged into one clique, minus a reward
    per merge. The Metropolis-Hastings target is then :math:`\pi \propto \exp(-E/T)`, so that structures
    that hurt the parsing least are accepted most often.

    The paper's available text says only that the acceptance favours structures with better parsing
    performance (from a reader's note); the whole energy is selab decision 3 (docs/method.md), with the
    defaults ``beta=0.1``, ``distance="tv"``, ``scale=100``, scored by the ground-truth labels in training and by the predictions at test time:

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
    from "nothing on", accepts almost nothing when the merge probabilities are confident.
    ``bench/evolve.py`` measures how much ``s = 100, beta = 0.1, T = 1`` merges on PASCAL-Person-Part
    graphs, and how pure the cliques stay.
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
    beta : float, default 0.1
        Reward per merge (cost per cluster), in average nodes of disagreement.
    distance : {"tv", "sq"}, default "tv"
        Total variation or squared Euclidean distance D between class distributions.
    num_classes : int, optional
        K for one-hot labels (default: max label + 1).
    scale : float, default 100.0
        Energy unit in nats per average node of disagreement (selab decision, see above).

    Examples
    --------
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
        (partitions from :func:`selab.method.merge.connected_components` of a batch never cross images).
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

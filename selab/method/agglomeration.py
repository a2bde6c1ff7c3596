r"""Hand-crafted hierarchies: greedy agglomeration of the region adjacency graph, stopped at node counts.

The hierarchy a Structure-evolving LSTM (Liang et al., CVPR 2017) learns is only interesting next to
one built by hand from the same superpixels. The classic one is greedy agglomeration: repeatedly merge
the two adjacent regions whose descriptors are nearest (Euclidean distance), the merged region taking
the size-weighted mean of their descriptors, exactly what scikit-image's
``skimage.graph.merge_hierarchical`` does on ``rag_mean_color`` with a mean-colour merge (its
``plot_rag_merge`` example). ``merge_hierarchical`` stops at a distance threshold; :func:`agglomerate`
stops at node counts, and returns the partitions at several counts from one pass (each a prefix of
one merge sequence, :func:`merge_sequence`).

The descriptor decides the baseline: :func:`mean_lab` (mean CIE Lab colour, the scikit-image
hierarchy), :func:`pooled_maps` (pooled feature maps, e.g. a backbone's), :func:`pooled_probabilities`
(a predicted class distribution) and :func:`class_distribution` (the ground-truth class distribution
of every node: the oracle).

Examples
--------
>>> from selab.method.graph import graph_from_superpixels
>>> labels = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
>>> graph = graph_from_superpixels(labels)
>>> colour = torch.tensor([[0.0], [0.2], [1.0], [0.7]])  # two dark regions above two brighter ones
>>> [c.tolist() for c in agglomerate_batch(graph, colour, [3, 2, 1])]
[[0, 0, 1, 2], [0, 0, 1, 1], [0, 0, 0, 0]]
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
from skimage.color import rgb2lab

from selab.method.graph import Graph, canonical_cluster, check_edge_index
from selab.method.superpixels import node_label_histogram, pool_to_nodes, upsample_and_pool

#: The merged-descriptor rules of :func:`merge_sequence`.
RULES = ("mean", "unit_mean")
__all__ = ["RULES", "merge_sequence", "agglomerate", "agglomerate_batch", "mean_lab", "pooled_maps",
           "pooled_probabilities", "class_distribution"]


def _as_array(value, name: str, ndim: int) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"agglomerate: {name} must have {ndim} dimensions, got shape {array.shape}")
    return array


def _merge_inputs(edge_index, descriptor, weight, stop_at, rule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`merge_sequence`'s inputs as int64 edges, float64 descriptors and weights, or a ValueError naming the bad one."""
    edges = _as_array(edge_index, "edge_index", 2).astype(np.int64)
    features = _as_array(descriptor, "descriptor", 2).astype(np.float64)
    mass = _as_array(weight, "weight", 1).astype(np.float64)
    n = features.shape[0]
    if mass.shape[0] != n:
        raise ValueError(f"agglomerate: weight has {mass.shape[0]} entries for {n} nodes")
    if n and not (mass > 0).all():
        raise ValueError("agglomerate: weight must be > 0 for every node (e.g. its pixel count)")
    if not np.isfinite(features).all():
        raise ValueError("agglomerate: descriptor holds non-finite values")
    check_edge_index(torch.from_numpy(edges), n)
    if rule not in RULES:
        raise ValueError(f"agglomerate: rule must be one of {RULES}, got {rule!r}")
    if isinstance(stop_at, bool) or not isinstance(stop_at, (int, np.integer)) or stop_at < 1:
        raise ValueError(f"agglomerate: stop_at must be an int >= 1, got {stop_at!r}")
    return edges, features, mass


def merge_sequence(edge_index, descriptor, weight, stop_at: int = 1,
                   rule: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """The greedy merges of one region adjacency graph, nearest descriptors first, until ``stop_at`` regions.

    Each merge joins the two adjacent regions at the smallest Euclidean distance between their
    descriptors; the merged region takes the ``weight``-weighted mean of their descriptors (``rule="mean"``,
    ``merge_hierarchical``'s rule; ``rule="unit_mean"``: the mean rescaled to norm 1, for descriptors that
    are directions, such as L2-normalised features, so that the distance stays a cosine distance) and
    the sum of their weights, and its distances to its neighbours are computed anew.
    Region ids: ``0..N-1`` the nodes, ``N + t`` the region made by merge t. Ties go to the smaller ids.
    Stops early when no edge is left (a graph of several components).

    This is an evaluation tool, not a training hot path: one Python step per merge over a binary heap
    (lazy deletion: an entry whose region was merged is skipped), the distances to a merged region's
    neighbours computed at once: 800 superpixels to 12 regions in about 40 ms of CPU time, measured on a busy core.

    Parameters
    ----------
    edge_index : array or Tensor [2,E] int
        Undirected edges (each pair once) of nodes ``0..N-1``.
    descriptor : array or Tensor [N,D] float
    weight : array or Tensor [N] float, > 0
        E.g. the regions' pixel counts.
    stop_at : int, default 1
    rule : {"mean", "unit_mean"}, default "mean"
        The merged region's descriptor.

    Returns
    -------
    merges : ndarray [M,2] int64
        The two regions of every merge, in order (merge t makes region ``N + t``).
    distances : ndarray [M] float64
        Their descriptor distance when merged (not monotone: a merged region may be nearer a neighbour).

    Examples
    --------
    >>> merges, distances = merge_sequence([[0, 1], [1, 2]], [[0.0], [1.0], [3.0]], [1, 1, 1])
    >>> merges.tolist(), distances.tolist()  # 0+1 first (distance 1), then {0,1} (mean 0.5) with 2
    ([[0, 1], [2, 3]], [1.0, 2.5])
    """
    edges, features, mass = _merge_inputs(edge_index, descriptor, weight, stop_at, rule)
    n = features.shape[0]
    unit = rule == "unit_mean"
    size = 2 * n - 1 if n else 0
    table = np.empty((size, features.shape[1]))
    table[:n] = features
    # Python lists and a bytearray, not numpy arrays, for what the loop reads one entry at a time:
    # indexing a numpy array for one scalar costs several times more.
    weights = mass.tolist() + [0.0] * max(size - n, 0)
    alive = bytearray(size)
    alive[:n] = b"\x01" * n
    neighbours: list = [set() for _ in range(n)]
    low, high = np.minimum(edges[0], edges[1]), np.maximum(edges[0], edges[1])
    for a, b in zip(low.tolist(), high.tolist()):  # once per edge, building the graph the heap walks
        neighbours[a].add(b)
        neighbours[b].add(a)
    start = np.sqrt(((table[low] - table[high]) ** 2).sum(1)) if low.size else np.zeros(0)
    heap = list(zip(start.tolist(), low.tolist(), high.tolist()))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    merges, distances = [], []
    regions = n
    while regions > stop_at and heap:
        distance, a, b = pop(heap)
        if not (alive[a] and alive[b]):
            continue  # a stale entry: one of its regions was merged since
        new = n + len(merges)
        total = weights[a] + weights[b]
        weights[new] = total
        row = (table[a] * weights[a] + table[b] * weights[b]) / total
        if unit:
            row /= max(float(np.sqrt(row @ row)), 1e-12)
        table[new] = row
        alive[a] = alive[b] = 0
        alive[new] = 1
        around = neighbours[a] | neighbours[b]
        around.discard(a)
        around.discard(b)
        neighbours[a] = neighbours[b] = None
        neighbours.append(around)
        if around:
            others = list(around)
            for other in others:
                links = neighbours[other]
                links.discard(a)
                links.discard(b)
                links.add(new)
            gaps = table[others] - row
            for gap, other in zip(np.sqrt(np.einsum("ij,ij->i", gaps, gaps)).tolist(), others):
                push(heap, (gap, other, new))  # other < new: ids only grow
        merges.append((a, b))
        distances.append(distance)
        regions -= 1
    return np.array(merges, dtype=np.int64).reshape(-1, 2), np.array(distances, dtype=np.float64)


def _prefix_partition(merges: np.ndarray, n: int, steps: int) -> np.ndarray:
    """The cluster of every node after the first ``steps`` merges (numbered by their smallest node)."""
    parent = np.arange(n + steps)
    if steps:
        parent[merges[:steps].reshape(-1)] = np.repeat(np.arange(n, n + steps), 2)
    while True:  # pointer jumping: every node reaches its region's root in log(depth) rounds
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    return canonical_cluster(torch.from_numpy(parent[:n])).numpy()


def _check_counts(counts) -> list[int]:
    counts = [counts] if isinstance(counts, (int, np.integer)) and not isinstance(counts, bool) else list(counts)
    if not counts or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1 for c in counts):
        raise ValueError(f"agglomerate: counts must be ints >= 1, got {counts!r}")
    return [int(c) for c in counts]


def agglomerate(edge_index, descriptor, weight, counts, rule: str = "mean") -> list[np.ndarray]:
    """The greedy agglomeration of one graph (:func:`merge_sequence`) at every requested node count.

    Parameters
    ----------
    edge_index, descriptor, weight, rule
        As in :func:`merge_sequence`.
    counts : int or sequence of int, >= 1
        Node counts, in any order. A count of N or more gives the nodes themselves; a count below the
        graph's number of connected components gives those components.

    Returns
    -------
    list of ndarray [N] int64
        One cluster vector per count (in the order of ``counts``), numbered ``0..c-1`` by smallest node.

    Examples
    --------
    >>> [c.tolist() for c in agglomerate([[0, 1], [1, 2]], [[0.0], [1.0], [3.0]], [1, 1, 1], [2, 5])]
    [[0, 0, 1], [0, 1, 2]]
    """
    counts = _check_counts(counts)
    n = len(_as_array(descriptor, "descriptor", 2))
    merges, _ = merge_sequence(edge_index, descriptor, weight, stop_at=max(1, min(counts)), rule=rule)
    return [_prefix_partition(merges, n, min(max(n - c, 0), len(merges))) for c in counts]


def agglomerate_batch(graph: Graph, descriptor, counts, rule: str = "mean") -> list[torch.Tensor]:
    """:func:`agglomerate` every image of a batched level-0 ``graph``; the regions never cross images.

    Parameters
    ----------
    graph : selab.method.graph.Graph
        With ``edge_index``, ``batch`` and ``size`` (the weights: pixel counts).
    descriptor : Tensor [N,D]
    counts : sequence of int, or [B][C] nested sequence
        The same counts for every image, or each image's own (C counts per image).
    rule : {"mean", "unit_mean"}, default "mean"
        The merged region's descriptor (:func:`merge_sequence`).

    Returns
    -------
    list of LongTensor [N]
        One global cluster vector per count position (:func:`selab.method.graph.coarsen` takes it),
        clusters numbered image by image.
    """
    descriptor = torch.as_tensor(descriptor)
    if descriptor.ndim != 2 or descriptor.shape[0] != graph.num_nodes:
        raise ValueError(f"agglomerate: descriptor must be [N,D] with N={graph.num_nodes}, got "
                         f"{tuple(descriptor.shape)}")
    images = graph.num_graphs
    nested = len(counts) > 0 and not isinstance(counts[0], (int, np.integer))
    per_image = [_check_counts(c) for c in counts] if nested else [_check_counts(counts)] * images
    if len(per_image) != images or len({len(c) for c in per_image}) != 1:
        raise ValueError(f"agglomerate: counts must be one list of counts or one per image ({images}), "
                         f"all of one length")
    ptr = graph.ptr.tolist()
    edges = graph.edge_index.cpu()
    cuts = torch.searchsorted(edges[0].contiguous(), torch.tensor(ptr)).tolist()  # edges sorted, images in order
    features, size = descriptor.detach().cpu().double(), graph.size.detach().cpu().double()
    outputs = [[] for _ in per_image[0]]
    offset = 0
    for b in range(images):  # a loop over images
        lo, hi = ptr[b], ptr[b + 1]
        local = edges[:, cuts[b]:cuts[b + 1]] - lo
        clusters = agglomerate(local, features[lo:hi], size[lo:hi], per_image[b], rule)
        for slot, cluster in zip(outputs, clusters):
            slot.append(torch.from_numpy(cluster) + offset)
        offset += max((int(c.max()) + 1 if c.size else 0) for c in clusters)  # room for the largest count
    # renumbered without gaps (the offsets left room for each image's largest count)
    return [canonical_cluster(torch.cat(slot)).to(graph.device) for slot in outputs]


# --------------------------------------------------------------------------------------------------
# descriptors
# --------------------------------------------------------------------------------------------------
def mean_lab(image: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Mean CIE Lab colour of every node: ``[N,3]`` float (the descriptor of ``rag_mean_color`` in Lab).

    ``image`` is ``[B,3,H,W]`` RGB in [0,1] at the resolution of ``graph.assignment``.

    Examples
    --------
    >>> from selab.method.graph import graph_from_superpixels
    >>> graph = graph_from_superpixels(np.array([[0, 1]]))
    >>> mean_lab(torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]]]), graph)[:, 0].round().tolist()
    [100.0, 0.0]
    """
    image = torch.as_tensor(image)
    if image.ndim != 4 or image.shape[1] != 3 or image.shape[-2:] != graph.assignment.shape[-2:]:
        raise ValueError(f"mean_lab: image must be [B,3,H,W] RGB matching the graph's "
                         f"{tuple(graph.assignment.shape)}, got {tuple(image.shape)}")
    lab = rgb2lab(image.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy(), channel_axis=-1)
    lab = torch.from_numpy(lab).permute(0, 3, 1, 2).float()
    return pool_to_nodes(lab, graph.assignment.cpu(), graph.num_nodes).x


def pooled_maps(maps, graph: Graph) -> torch.Tensor:
    """Feature maps pooled to the nodes: every map bilinearly upsampled to the graph's resolution and
    averaged over each node, L2-normalised per map and concatenated, ``[N, M * ...]``.

    selab decision: the normalisation per map keeps a wide map from outweighing the others in the
    Euclidean distance; the concatenation is divided by sqrt(M), so a node's descriptor has norm 1.
    """
    maps = [maps] if isinstance(maps, torch.Tensor) else list(maps)
    if not maps or any(m.ndim != 4 or m.shape[0] != graph.num_graphs for m in maps):
        raise ValueError(f"pooled_maps: expected a list of [B,C,h,w] maps with B={graph.num_graphs}")
    parts = []
    for feature_map in maps:
        pooled = upsample_and_pool(feature_map.float(), graph.assignment.to(feature_map.device), graph.num_nodes,
                                   graph.ptr.to(feature_map.device))
        parts.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(parts, 1) / len(parts) ** 0.5


def pooled_probabilities(logits: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Mean predicted class distribution (softmax of ``logits [B,K,H,W]``) of every node: ``[N,K]``."""
    if logits.ndim != 4 or logits.shape[-2:] != graph.assignment.shape[-2:]:
        raise ValueError(f"pooled_probabilities: logits must be [B,K,H,W] matching {tuple(graph.assignment.shape)}, "
                         f"got {tuple(logits.shape)}")
    return pool_to_nodes(logits.float().softmax(1), graph.assignment.to(logits.device), graph.num_nodes).x


def class_distribution(mask: torch.Tensor, graph: Graph, num_classes: int) -> torch.Tensor:
    """Ground-truth class distribution of every node's labelled pixels: ``[N,K]`` (zeros without any).

    Examples
    --------
    >>> from selab.method.graph import graph_from_superpixels
    >>> graph = graph_from_superpixels(np.array([[0, 0, 1]]))
    >>> class_distribution(torch.tensor([[[0, 1, 1]]]), graph, 2).tolist()
    [[0.5, 0.5], [0.0, 1.0]]
    """
    hist = node_label_histogram(mask.to(graph.assignment.device), graph.assignment, graph.num_nodes, num_classes)
    return hist / hist.sum(1, keepdim=True).clamp(min=1)

r"""Region graphs of one level and of a batch, and coarsening them by a cluster vector.

The Structure-evolving LSTM (Liang et al., "Interpretable Structure-Evolving LSTM", CVPR 2017) starts
from the superpixel graph of the Graph LSTM (Liang et al., ECCV 2016) and, after each layer, merges
groups of nodes into the nodes of a coarser graph: a merged node takes the mean of its members' states,
and two merged nodes are adjacent if any of their members were.

A :class:`Graph` follows PyTorch Geometric's batching convention: the graphs of B images form one
disjoint graph with undirected ``edge_index [2,E]`` (each pair once, ``i < j``, sorted) and
``batch [N]``; nodes of one image are contiguous and images in order. ``assignment [B,H,W]`` maps
every pixel to its node at this level, so every level can be drawn on its image, and
``superpixel_assignment [N0]`` maps every level-0 superpixel to its node at this level.
:func:`coarsen` composes both maps, so a stack of coarsenings always points back to pixels.
Mean merging of node states (``scatter_mean``) is the paper's rule; size-weighted centroids are a
selab decision for drawing. Per level, :func:`coarse_confidence` gives the merged nodes' class
confidences (they drive the next update order) and :func:`level_majority_labels` their majority
ground-truth labels; :func:`check_edge_index` is the one check of an ``edge_index`` the other modules use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace

import networkx as nx
import numpy as np
import torch

from selab.method.superpixels import (PoolingMatrix, check_integer, adjacency, check_labels, node_label_histogram,
                               pool_to_nodes, pooling_matrix)

__all__ = [
    "Graph",
    "graph_from_superpixels",
    "SuperpixelStructures",
    "batch_graphs",
    "unbatch",
    "scatter_mean",
    "coarsen_edge_index",
    "canonical_cluster",
    "check_cluster",
    "check_edge_index",
    "coarsen",
    "coarse_confidence",
    "level_majority_labels",
    "to_networkx",
]


@dataclass
class Graph:
    """The region graph of one level for a batch of B images (B may be 1).

    Attributes
    ----------
    edge_index : torch.Tensor
        [2,E] int64, each undirected pair once with ``i < j``, sorted lexicographically.
    batch : torch.Tensor
        [N] int64 image index of each node; nodes of an image contiguous, images in order.
    pos : torch.Tensor
        [N,2] float (row, col) centroid in pixels.
    size : torch.Tensor
        [N] float number of pixels covered.
    assignment : torch.Tensor
        [B,H,W] int64 global node id (of this level) of every pixel.
    x : torch.Tensor, optional
        [N,C] node features.
    superpixel_assignment : torch.Tensor, optional
        [N0] int64 node id (of this level) of every level-0 superpixel (global ids); identity at level 0.

    Examples
    --------
    >>> g = graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> g.num_nodes, g.num_graphs, g.edge_index.tolist()
    (3, 1, [[0, 0, 1], [1, 2, 2]])
    """

    edge_index: torch.Tensor
    batch: torch.Tensor
    pos: torch.Tensor
    size: torch.Tensor
    assignment: torch.Tensor
    x: torch.Tensor | None = None
    superpixel_assignment: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.batch.numel())

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def num_graphs(self) -> int:
        return int(self.assignment.shape[0])

    @property
    def ptr(self) -> torch.Tensor:
        """[B+1] int64 offsets: nodes of image b are ``ptr[b]:ptr[b+1]``."""
        counts = torch.bincount(self.batch, minlength=self.num_graphs)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    @property
    def device(self) -> torch.device:
        return self.batch.device

    def to(self, device) -> "Graph":
        """Copy of the graph with every tensor on ``device``."""
        return Graph(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                        for f in fields(self)})

    def __repr__(self) -> str:
        """One line a notebook can print: ``Graph(293 nodes, 803 edges, 1 image, 256x256)``.

        The tensors stay reachable as attributes; printing them all would bury a notebook in numbers.

        Examples
        --------
        >>> graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]]))
        Graph(3 nodes, 3 edges, 1 image, 2x3)
        """
        images = self.num_graphs
        height, width = self.assignment.shape[-2:]
        extras = [f"x [{self.num_nodes}, {self.x.shape[1]}]"] if self.x is not None and self.x.ndim == 2 else []
        if self.superpixel_assignment is not None and self.superpixel_assignment.numel() != self.num_nodes:
            extras.append(f"from {self.superpixel_assignment.numel()} superpixels")
        device = [] if self.device.type == "cpu" else [str(self.device)]
        nodes, edges = self.num_nodes, self.num_edges
        return (f"Graph({nodes} node{'s' * (nodes != 1)}, {edges} edge{'s' * (edges != 1)}, "
                f"{images} image{'s' * (images != 1)}, {height}x{width}"
                + "".join(f", {item}" for item in extras + device) + ")")


def describe(value) -> str:
    """An input as error messages name it: ``tensor torch.int64 of shape [2, 5]``, else its type name."""
    if isinstance(value, torch.Tensor):
        return f"tensor {value.dtype} of shape {list(value.shape)}"
    return type(value).__name__


def check_edge_index(edge_index, num_nodes: int | None = None, name: str = "edge_index") -> int:
    """Check an integer ``edge_index [2,E]`` with node ids in ``0..num_nodes-1``; return the number of nodes.

    Without ``num_nodes`` the number of nodes is the largest id + 1 (0 without edges).

    Examples
    --------
    >>> check_edge_index(torch.tensor([[0, 1], [1, 2]]))
    3
    """
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2 \
            or edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected an integer tensor [2, E], got {describe(edge_index)}")
    if not edge_index.numel():
        return 0 if num_nodes is None else int(num_nodes)
    low, high = int(edge_index.min()), int(edge_index.max())
    if low < 0 or (num_nodes is not None and high >= num_nodes):
        raise ValueError(f"{name}: node ids must lie in [0, {num_nodes if num_nodes is not None else 'N'}), "
                         f"got {low}..{high}")
    return high + 1 if num_nodes is None else int(num_nodes)


def _as_long_tensor(array, device=None, name: str = "labels") -> torch.Tensor:
    check_integer(array, name)
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(array.astype(np.int64, copy=False))
    return array.to(device=device if device is not None else array.device, dtype=torch.int64)


def graph_from_superpixels(labels, x: torch.Tensor | None = None) -> Graph:
    """Level-0 graph of one image or a batch from per-image superpixel labels.

    Parameters
    ----------
    labels : np.ndarray or torch.Tensor
        [H,W] or [B,H,W] integer superpixel ids, each image numbered from 0 with no gaps.
    x : torch.Tensor, optional
        Node features [N,C] (stored as they are), or pixel features [C,H,W] / [B,C,H,W] that are
        mean-pooled to the nodes.

    Returns
    -------
    Graph
        Global node ids (image b's ids offset by the node counts of images before it), on the device
        of ``labels`` if it is a tensor, else of ``x``, else CPU.

    Examples
    --------
    >>> labels = np.array([[0, 0, 1], [2, 2, 1]])
    >>> g = graph_from_superpixels(np.stack([labels, labels]))
    >>> g.ptr.tolist(), g.edge_index[:, -1].tolist()
    ([0, 3, 6], [4, 5])
    """
    device = labels.device if isinstance(labels, torch.Tensor) else (x.device if isinstance(x, torch.Tensor) else None)
    lab = _as_long_tensor(labels, device, "labels")
    if lab.ndim == 2:
        lab = lab.unsqueeze(0)
    if lab.ndim != 3:
        raise ValueError(f"labels: expected shape [H,W] or [B,H,W], got {tuple(lab.shape)}")
    counts = torch.tensor([check_labels(lab[b], name=f"labels[{b}]") for b in range(lab.shape[0])],
                          dtype=torch.int64, device=lab.device)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    assignment = lab + offsets[:-1].view(-1, 1, 1)
    num_nodes = int(offsets[-1])
    batch = torch.repeat_interleave(torch.arange(lab.shape[0], device=lab.device), counts)
    edge_index = adjacency(assignment)

    node_x = None
    if x is not None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch tensor, got {type(x).__name__}")
        x = x.to(lab.device)
        if x.ndim == 2:
            if x.shape[0] != num_nodes:
                raise ValueError(f"x: expected [N,C] node features with N={num_nodes}, got {tuple(x.shape)}")
            node_x = x
        elif x.ndim in (3, 4):
            pixel_x = x.unsqueeze(0) if x.ndim == 3 else x
            if pixel_x.shape[0] != lab.shape[0] or pixel_x.shape[-2:] != lab.shape[-2:]:
                raise ValueError(f"x: pixel features {tuple(x.shape)} do not match labels {tuple(labels.shape)}")
            node_x = pool_to_nodes(pixel_x, assignment, num_nodes).x
        else:
            raise ValueError(f"x: expected [N,C], [C,H,W] or [B,C,H,W], got {tuple(x.shape)}")
    dtype = node_x.dtype if node_x is not None else torch.get_default_dtype()
    geometry = pool_to_nodes(torch.zeros(lab.shape[0], 0, *lab.shape[-2:], dtype=dtype, device=lab.device),
                             assignment, num_nodes)
    return Graph(edge_index=edge_index, batch=batch, pos=geometry.pos, size=geometry.count,
                 assignment=assignment, x=node_x,
                 superpixel_assignment=torch.arange(num_nodes, device=lab.device))


class SuperpixelStructures:
    """What depends only on an image's superpixels, computed once per distinct label map and kept.

    The level-0 graph (:func:`graph_from_superpixels`) and the pooling matrix of
    :func:`selab.method.superpixels.upsample_and_pool` are functions of the superpixels alone, and a training
    run feeds the same cached superpixel maps every epoch. This cache keeps both per image, keyed by
    the map's content (shape, dtype and the SHA-1 digest of its bytes, the feature size), and puts a
    batch together from the images' entries: the same tensors as computing them for the batch (each
    image's edges, centroids and matrix rows do not depend on the other images; tested in
    tests/test_speedups.py). selab decision: it fills until ``max_bytes`` and then keeps
    what it holds (an epoch visits every image once, so evicting the oldest would never hit);
    ``max_bytes=0`` turns it off.

    Parameters
    ----------
    max_bytes : int
        Memory the entries may take (about 0.2 MB per 320 x 320 map of 1000 superpixels).

    Examples
    --------
    >>> structures = SuperpixelStructures()
    >>> labels = torch.tensor([[[0, 0, 1], [2, 2, 1]]])
    >>> graph, matrix = structures.graph(labels, feature_size=(1, 2))
    >>> graph.edge_index.tolist(), matrix.shape, len(structures)
    ([[0, 0, 1], [1, 2, 2]], (3, 2), 1)
    """

    def __init__(self, max_bytes: int = 512 << 20):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"SuperpixelStructures.max_bytes: expected an int >= 0, got {max_bytes!r}")
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._entries: dict = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (f"SuperpixelStructures({len(self)} maps, {self.bytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MiB, "
                f"{self.hits} hits, {self.misses} misses)")

    def _entry(self, labels: torch.Tensor, feature_size) -> dict:
        host = labels.detach().cpu().contiguous()
        key = (tuple(host.shape), str(host.dtype), str(labels.device), feature_size,
               hashlib.sha1(host.numpy().view(np.uint8).data).digest())
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        graph = graph_from_superpixels(labels)
        entry = {"num_nodes": graph.num_nodes, "edge_index": graph.edge_index, "pos": graph.pos, "size": graph.size}
        if feature_size is not None:
            rows, cols, weights = pooling_matrix(graph.assignment, graph.num_nodes, graph.ptr, feature_size)
            entry.update(rows=rows, cols=cols, weights=weights, order=torch.argsort(cols, stable=True))
        size = sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))
        if self.bytes + size <= self.max_bytes:
            self._entries[key] = entry
            self.bytes += size
        return entry

    def graph(self, superpixels, feature_size: tuple[int, int] | None = None):
        """The level-0 :class:`Graph` of ``superpixels`` [B,S,S] (or [S,S]) and, with ``feature_size``
        ``(h, w)``, its float32 :class:`~selab.method.superpixels.PoolingMatrix` (else ``None``).

        Equal to ``graph_from_superpixels(superpixels)`` and to the matrix
        :func:`~selab.method.superpixels.upsample_and_pool` builds for [B,C,h,w] float32 features.
        """
        lab = _as_long_tensor(superpixels, None, "superpixels")
        if lab.ndim == 2:
            lab = lab.unsqueeze(0)
        if lab.ndim != 3:
            raise ValueError(f"superpixels: expected shape [H,W] or [B,H,W], got {tuple(lab.shape)}")
        feature_size = None if feature_size is None else (int(feature_size[0]), int(feature_size[1]))
        entries = [self._entry(lab[b], feature_size) for b in range(lab.shape[0])]
        device = lab.device
        graph = batch_graphs([
            Graph(edge_index=e["edge_index"], batch=torch.zeros(e["num_nodes"], dtype=torch.long, device=device),
                  pos=e["pos"], size=e["size"], assignment=lab[b : b + 1],
                  superpixel_assignment=torch.arange(e["num_nodes"], device=device))
            for b, e in enumerate(entries)])
        offsets = np.cumsum([0] + [e["num_nodes"] for e in entries]).tolist()
        num_nodes = offsets[-1]
        if feature_size is None:
            return graph, None
        cells = feature_size[0] * feature_size[1]
        nnz = np.cumsum([0] + [e["rows"].numel() for e in entries]).tolist()
        # Image b's entries sit in rows ptr[b]..ptr[b+1]-1 and columns b*h*w..(b+1)*h*w-1: the batch's
        # stable column order is every image's own, offset.
        rows = torch.cat([e["rows"] + o for e, o in zip(entries, offsets)])
        cols = torch.cat([e["cols"] + b * cells for b, e in enumerate(entries)])
        order = torch.cat([e["order"] + o for e, o in zip(entries, nnz)])
        weights = torch.cat([e["weights"] for e in entries])
        return graph, PoolingMatrix.from_coo(rows, cols, weights, (num_nodes, lab.shape[0] * cells), order)


def batch_graphs(graphs: list[Graph]) -> Graph:
    """Join graphs (each of one or more images of the same size) into one disjoint graph.

    Examples
    --------
    >>> g = graph_from_superpixels(np.array([[0, 1]]))
    >>> batch_graphs([g, g]).edge_index.tolist()
    [[0, 2], [1, 3]]
    """
    if not graphs:
        raise ValueError("graphs: expected at least one Graph")
    shapes = {tuple(g.assignment.shape[-2:]) for g in graphs}
    if len(shapes) > 1:
        raise ValueError(f"graphs: all images must have the same size to share assignment [B,H,W], got {shapes}")
    has_x = [g.x is not None for g in graphs]
    if any(has_x) and not all(has_x):
        raise ValueError("graphs: either all or none of the graphs must carry x")
    has_sp = all(g.superpixel_assignment is not None for g in graphs)
    node_offsets = np.cumsum([0] + [g.num_nodes for g in graphs])
    image_offsets = np.cumsum([0] + [g.num_graphs for g in graphs])
    return Graph(
        edge_index=torch.cat([g.edge_index + int(o) for g, o in zip(graphs, node_offsets)], dim=1),
        batch=torch.cat([g.batch + int(o) for g, o in zip(graphs, image_offsets)]),
        pos=torch.cat([g.pos for g in graphs]),
        size=torch.cat([g.size for g in graphs]),
        assignment=torch.cat([g.assignment + int(o) for g, o in zip(graphs, node_offsets)]),
        x=torch.cat([g.x for g in graphs]) if all(has_x) else None,
        superpixel_assignment=(torch.cat([g.superpixel_assignment + int(o) for g, o in zip(graphs, node_offsets)])
                               if has_sp else None),
    )


def unbatch(graph: Graph) -> list[Graph]:
    """Split a batched graph into one Graph per image (node ids from 0 again).

    Examples
    --------
    >>> g = graph_from_superpixels(np.stack([np.array([[0, 1]]), np.array([[0, 0]])]))
    >>> [part.num_nodes for part in unbatch(g)]
    [2, 1]
    """
    ptr = graph.ptr.tolist()
    edge_image = graph.batch[graph.edge_index[0]]
    sp_image = graph.batch[graph.superpixel_assignment] if graph.superpixel_assignment is not None else None
    parts = []
    for b in range(graph.num_graphs):  # a loop over images, not nodes
        lo, hi = ptr[b], ptr[b + 1]
        parts.append(Graph(
            edge_index=graph.edge_index[:, edge_image == b] - lo,
            batch=torch.zeros(hi - lo, dtype=torch.int64, device=graph.device),
            pos=graph.pos[lo:hi],
            size=graph.size[lo:hi],
            assignment=graph.assignment[b:b + 1] - lo,
            x=graph.x[lo:hi] if graph.x is not None else None,
            superpixel_assignment=(graph.superpixel_assignment[sp_image == b] - lo
                                   if sp_image is not None else None),
        ))
    return parts


def scatter_mean(src: torch.Tensor, cluster: torch.Tensor, num_clusters: int | None = None) -> torch.Tensor:
    """Mean of the rows of ``src`` per cluster (differentiable ``index_add_``); empty clusters get 0.

    Parameters
    ----------
    src : torch.Tensor
        [N, ...] values per node (e.g. features f, hidden states h, memories m).
    cluster : torch.Tensor
        [N] int64 cluster id of each node.
    num_clusters : int, optional
        Number of clusters N'; default ``cluster.max() + 1``.

    Returns
    -------
    torch.Tensor
        [N', ...] on ``src.device``.

    Examples
    --------
    >>> scatter_mean(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 1]))
    tensor([[2.],
            [5.]])
    """
    cluster = _as_long_tensor(cluster, src.device, "cluster")
    if cluster.ndim != 1 or cluster.shape[0] != src.shape[0]:
        raise ValueError(f"cluster: expected shape [{src.shape[0]}] to match src {tuple(src.shape)}, "
                         f"got {tuple(cluster.shape)}")
    if num_clusters is None:
        num_clusters = int(cluster.max()) + 1 if cluster.numel() else 0
    total = src.new_zeros((num_clusters,) + tuple(src.shape[1:])).index_add_(0, cluster, src)
    count = torch.bincount(cluster, minlength=num_clusters).clamp(min=1).to(src.dtype)
    return total / count.view((-1,) + (1,) * (src.ndim - 1))


def coarsen_edge_index(edge_index: torch.Tensor, cluster: torch.Tensor, num_clusters: int | None = None) -> torch.Tensor:
    """Edges between clusters: two clusters are adjacent if any of their members were.

    Both ends go through ``cluster``; pairs inside one cluster are dropped, each pair is ordered
    ``i < j`` and one ``unique`` over the 1-D key ``i * N' + j`` removes duplicates and sorts.

    Examples
    --------
    >>> coarsen_edge_index(torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([0, 0, 1])).tolist()
    [[0], [1]]
    """
    cluster = _as_long_tensor(cluster, edge_index.device, "cluster")
    if num_clusters is None:
        num_clusters = int(cluster.max()) + 1 if cluster.numel() else 0
    a, b = cluster[edge_index[0]], cluster[edge_index[1]]
    between = a != b
    a, b = a[between], b[between]
    key = torch.unique(torch.minimum(a, b) * num_clusters + torch.maximum(a, b))
    return torch.stack([key // num_clusters, key % num_clusters])


def canonical_cluster(cluster: torch.Tensor) -> torch.Tensor:
    """Renumber a cluster vector ``0..N'-1`` in order of each cluster's smallest member.

    Any partition that keeps images apart then satisfies the batching convention (clusters of one
    image contiguous, images in order), which :func:`coarsen` requires.

    Examples
    --------
    >>> canonical_cluster(torch.tensor([5, 2, 5, 9])).tolist()
    [0, 1, 0, 2]
    """
    cluster = _as_long_tensor(cluster, None, "cluster")
    _, dense = torch.unique(cluster, return_inverse=True)
    num = int(dense.max()) + 1 if dense.numel() else 0
    nodes = torch.arange(cluster.numel(), device=cluster.device)
    first = torch.full((num,), cluster.numel(), dtype=torch.int64, device=cluster.device)
    first = first.scatter_reduce(0, dense, nodes, reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(num, device=cluster.device)
    return rank[dense]


def check_cluster(graph: Graph, cluster) -> torch.Tensor:
    """Validate a cluster vector for ``graph`` and return it as int64 on the graph's device.

    Raises
    ------
    ValueError
        Wrong length, ids not ``0..N'-1`` without gaps, a cluster spanning two images, or clusters not
        numbered image by image (fix with :func:`canonical_cluster`).
    """
    cluster = _as_long_tensor(cluster, graph.device, "cluster")
    if cluster.ndim != 1 or cluster.shape[0] != graph.num_nodes:
        raise ValueError(f"cluster: expected shape [{graph.num_nodes}] (one id per node), got {tuple(cluster.shape)}")
    if cluster.numel() == 0:
        return cluster
    if int(cluster.min()) < 0:
        raise ValueError("cluster: ids must be >= 0")
    num = int(cluster.max()) + 1
    if bool((torch.bincount(cluster, minlength=num) == 0).any()):
        raise ValueError("cluster: ids must be numbered 0..N'-1 with no gaps (see canonical_cluster)")
    lo = torch.full((num,), graph.num_graphs, dtype=torch.int64, device=graph.device)
    lo = lo.scatter_reduce(0, cluster, graph.batch, reduce="amin")
    hi = torch.full((num,), -1, dtype=torch.int64, device=graph.device).scatter_reduce(
        0, cluster, graph.batch, reduce="amax")
    if bool((lo != hi).any()):
        raise ValueError("cluster: a cluster contains nodes of different images; clusters must never cross images")
    if bool((lo[1:] < lo[:-1]).any()):
        raise ValueError("cluster: clusters must be numbered image by image, in image order "
                         "(renumber with selab.method.graph.canonical_cluster)")
    return cluster


def coarsen(graph: Graph, cluster, x: torch.Tensor | None = None) -> Graph:
    """The next level's graph: one node per cluster.

    Parameters
    ----------
    graph : Graph
        The current level.
    cluster : torch.Tensor or np.ndarray
        [N] int64 new node id of each node, ``0..N'-1`` with no gaps, never crossing images,
        numbered image by image (see :func:`canonical_cluster`).
    x : torch.Tensor, optional
        [N,C] node features to average; default ``graph.x``. Average other states (h, m) with
        :func:`scatter_mean` and the same ``cluster``.

    Returns
    -------
    Graph
        ``x`` = member mean, ``size`` = member sum, ``pos`` = size-weighted centroid, ``edge_index``
        between clusters (no self loops or duplicates), ``assignment = cluster[assignment]`` and
        ``superpixel_assignment = cluster[superpixel_assignment]``.

    Examples
    --------
    >>> g = graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> h = coarsen(g, torch.tensor([0, 1, 0]))
    >>> h.num_nodes, h.edge_index.tolist(), h.assignment.tolist()
    (2, [[0], [1]], [[[0, 0, 1], [0, 0, 1]]])
    """
    cluster = check_cluster(graph, cluster)
    num = int(cluster.max()) + 1 if cluster.numel() else 0
    if x is None:
        x = graph.x
    elif x.shape[0] != graph.num_nodes:
        raise ValueError(f"x: expected {graph.num_nodes} rows (one per node), got {tuple(x.shape)}")
    size = graph.size.new_zeros(num).index_add_(0, cluster, graph.size)
    weighted = graph.pos.new_zeros(num, 2).index_add_(0, cluster, graph.pos * graph.size.unsqueeze(1))
    pos = weighted / size.clamp(min=torch.finfo(size.dtype).tiny).unsqueeze(1)
    batch = graph.batch.new_zeros(num).scatter_(0, cluster, graph.batch)
    return Graph(
        edge_index=coarsen_edge_index(graph.edge_index, cluster, num),
        batch=batch,
        pos=pos,
        size=size,
        assignment=cluster.index_select(0, graph.assignment.reshape(-1)).reshape(graph.assignment.shape),
        x=scatter_mean(x, cluster, num) if x is not None else None,
        superpixel_assignment=(cluster[graph.superpixel_assignment]
                               if graph.superpixel_assignment is not None else None),
    )


def coarse_confidence(node_class_prob: torch.Tensor, size: torch.Tensor, cluster: torch.Tensor,
                      num_clusters: int | None = None) -> torch.Tensor:
    """Class confidences of the coarse nodes: the size-weighted mean over each clique ``[N', K]``.

    The model computes the next level's update order from these.

    Examples
    --------
    >>> coarse_confidence(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3.0, 1.0]), torch.tensor([0, 0]))
    tensor([[0.7500, 0.2500]])
    """
    if num_clusters is None:
        num_clusters = int(cluster.max()) + 1 if cluster.numel() else 0
    w = size.to(node_class_prob.dtype)
    total = node_class_prob.new_zeros(num_clusters, node_class_prob.shape[1]).index_add_(0, cluster, w[:, None] * node_class_prob)
    mass = node_class_prob.new_zeros(num_clusters).index_add_(0, cluster, w)
    return total / mass.clamp(min=1e-12)[:, None]


def level_majority_labels(graph: Graph, mask: torch.Tensor | None = None, num_classes: int = 7,
                          superpixel_histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Majority ground-truth label of every node of a level: int64 ``[N]`` (ties: the smaller class id).

    With ``superpixel_histogram [N0,K]`` (:func:`selab.method.superpixels.node_label_histogram` of the level-0
    superpixels) the node's class counts are the sums of its superpixels' counts, through
    ``superpixel_assignment``: the same counts as the node's pixels give, without a pass over the pixels
    at every level. Else the pixels of ``mask [B,H,W]`` are counted on ``assignment``.

    Examples
    --------
    >>> from selab.method.superpixels import node_label_histogram
    >>> g = graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> mask = torch.tensor([[[0, 0, 1], [1, 1, 0]]])
    >>> level = coarsen(g, torch.tensor([0, 1, 0]))
    >>> level_majority_labels(level, mask).tolist()
    [0, 0]
    >>> level_majority_labels(level, superpixel_histogram=node_label_histogram(mask, g.assignment, 3)).tolist()
    [0, 0]
    """
    if superpixel_histogram is not None:
        if graph.superpixel_assignment is None:
            raise ValueError("superpixel_histogram: the graph has no superpixel_assignment to sum it through")
        counts = superpixel_histogram.new_zeros(graph.num_nodes, superpixel_histogram.shape[1])
        counts.index_add_(0, graph.superpixel_assignment.to(counts.device), superpixel_histogram)
    elif mask is None:
        raise ValueError("level_majority_labels: needs mask [B,H,W] or superpixel_histogram [N0,K]")
    else:
        counts = node_label_histogram(mask, graph.assignment.to(mask.device), graph.num_nodes, num_classes)
    return counts.argmax(dim=1)


def to_networkx(graph: Graph, image: int = 0, node_attrs: tuple[str, ...] = ()) -> nx.Graph:
    """One image's graph as a networkx graph for drawing.

    Nodes are numbered from 0 within the image; each has ``pos`` = (x=col, y=row), so
    ``nx.draw(g, pos=nx.get_node_attributes(g, "pos"))`` overlays on ``plt.imshow(image)``,
    ``size`` (pixels), ``global_id`` and any extra ``node_attrs`` named (e.g. ``("x",)``).

    Examples
    --------
    >>> g = to_networkx(graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]])))
    >>> sorted(g.edges()), g.nodes[1]["pos"], g.nodes[1]["size"]
    ([(0, 1), (0, 2), (1, 2)], (2.0, 0.5), 2.0)
    """
    if not 0 <= image < graph.num_graphs:
        raise ValueError(f"image: expected an index in 0..{graph.num_graphs - 1}, got {image}")
    part = unbatch(graph)[image] if graph.num_graphs > 1 else graph
    offset = int(graph.ptr[image])
    pos = part.pos.detach().cpu().numpy()
    size = part.size.detach().cpu().numpy()
    extra = {name: getattr(part, name).detach().cpu().numpy() for name in node_attrs}
    out = nx.Graph()
    out.add_nodes_from(
        (i, {"pos": (float(pos[i, 1]), float(pos[i, 0])), "size": float(size[i]), "global_id": i + offset,
             **{name: values[i] for name, values in extra.items()}})
        for i in range(part.num_nodes)
    )
    out.add_edges_from(part.edge_index.detach().cpu().numpy().T.tolist())
    return out

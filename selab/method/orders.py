r"""Node update orders for the Graph LSTM, from
`"Semantic Object Parsing with Graph LSTM" <https://arxiv.org/abs/1603.07063>`_ (Liang et al., ECCV 2016)
and the stochastic node updating of
`"Interpretable Structure-Evolving LSTM" <https://arxiv.org/abs/1703.03055>`_ (Liang et al., CVPR 2017).

A Graph LSTM layer updates its nodes one after the other; a node sees the *new* state of neighbours
updated before it and the *old* state of the others, so the order is part of the model. Every function
here returns ``rank [N]`` (int64): each node's position in the update order of its own image, 0 first.

The paper's configuration is :func:`confidence_order` (foreground nodes first, most confident first,
ties left-most). Its ablations are :func:`bfs_order` / :func:`dfs_order` started at
:func:`leftmost_node` ("location") or :func:`most_confident_node` ("confidence"). :func:`random_order`
is a baseline; :func:`stochastic_order` is selab's reading of SE-LSTM's stochastic node updating
(training only).

Conventions: ``pos [N, 2]`` is the (row, col) centroid of a node, so "left-most" means the smallest
column; ``batch [N]`` holds the image index of each node (``None`` means one image).

Examples
--------
>>> import torch
>>> conf = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
>>> pos = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
>>> confidence_order(conf, pos)
tensor([2, 0, 1])
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse import csgraph

from selab.method.graph import check_edge_index, describe

__all__ = [
    "ORDERS",
    "update_rank",
    "confidence_order",
    "bfs_order",
    "dfs_order",
    "random_order",
    "stochastic_order",
    "leftmost_node",
    "most_confident_node",
    "rank_from_order",
]


#: The update orders by name: the paper's confidence-driven order, SE-LSTM's stochastic node updating
#: (selab's reading), a random baseline and the BFS / DFS ablations.
ORDERS = ("confidence", "stochastic", "random", "bfs", "dfs")


def _check_batch(batch, num_nodes: int, device) -> torch.Tensor:
    if batch is None:
        return torch.zeros(num_nodes, dtype=torch.long, device=device)
    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.long or batch.shape != (num_nodes,):
        raise ValueError(f"batch: expected an int64 tensor of shape [{num_nodes}], got {describe(batch)}")
    if num_nodes and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch: nodes of one image must be contiguous and images in order")
    return batch


def _check_float(name: str, value, ndim: int, num_nodes: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != ndim:
        raise ValueError(f"{name}: expected a float tensor with {ndim} dimensions, got {describe(value)}")
    if num_nodes is not None and value.shape[0] != num_nodes:
        raise ValueError(f"{name}: expected {num_nodes} rows, got {value.shape[0]}")
    return value


def _sort_by_keys(keys: list[torch.Tensor], num_nodes: int, device) -> torch.Tensor:
    """Node ids sorted lexicographically by ``keys`` (most significant first), ties by node id."""
    order = torch.arange(num_nodes, device=device)
    # Successive stable sorts, least significant key first, give a lexicographic sort.
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def rank_from_order(order: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a global update order (node ids, first updated first) into per-image ranks.

    Parameters
    ----------
    order : LongTensor [N]
        A permutation of the nodes; images may interleave.
    batch : LongTensor [N], optional
        Image index per node.

    Returns
    -------
    LongTensor [N]
        ``rank[i]`` = position of node ``i`` among the nodes of its image in ``order``.

    Examples
    --------
    >>> rank_from_order(torch.tensor([2, 0, 1]))
    tensor([1, 2, 0])
    """
    num_nodes = order.numel()
    batch = _check_batch(batch, num_nodes, order.device)
    order = order[torch.sort(batch[order], stable=True).indices]  # group by image, keep relative order
    counts = torch.bincount(batch, minlength=int(batch.max()) + 1 if num_nodes else 0)
    image_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(num_nodes, dtype=torch.long, device=order.device)
    rank[order] = torch.arange(num_nodes, device=order.device) - image_start[batch[order]]
    return rank


def confidence_order(
    confidence: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor | None = None, background: int = 0
) -> torch.Tensor:
    """The paper's confidence-driven order.

    Each node takes its most confident label; nodes whose label is not ``background`` come first, then
    by decreasing confidence of that label; ties go to the left-most node (then top-most, then lowest id).

    selab decision: background nodes follow, also sorted by decreasing confidence.

    Parameters
    ----------
    confidence : FloatTensor [N, K]
        Per-class confidence of every node (e.g. mean of the pixels' softmax scores).
    pos : FloatTensor [N, 2]
        (row, col) centroid of every node.
    batch : LongTensor [N], optional
    background : int
        Class id of the background.

    Returns
    -------
    LongTensor [N] rank per image.

    Examples
    --------
    >>> conf = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    >>> confidence_order(conf, torch.zeros(2, 2))   # node 1 is foreground
    tensor([1, 0])
    """
    confidence = _check_float("confidence", confidence, 2)
    num_nodes = confidence.shape[0]
    pos = _check_float("pos", pos, 2, num_nodes)
    batch = _check_batch(batch, num_nodes, confidence.device)
    best, label = confidence.max(dim=1)
    is_background = (label == background).long()
    order = _sort_by_keys([batch, is_background, -best, pos[:, 1], pos[:, 0]], num_nodes, confidence.device)
    return rank_from_order(order, batch)


def stochastic_order(
    confidence: torch.Tensor,
    pos: torch.Tensor,
    batch: torch.Tensor | None = None,
    noise: float = 0.1,
    generator: torch.Generator | None = None,
    background: int = 0,
) -> torch.Tensor:
    """Confidence-driven order with the confidences perturbed by Gaussian noise (for training).

    selab decision (SE-LSTM's "stochastic node updating scheme", whose exact form is not available):
    ``confidence_order(confidence + noise * N(0, 1), pos, batch)``; ``noise=0`` gives the test-time
    order.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> stochastic_order(torch.rand(5, 3, generator=g), torch.rand(5, 2, generator=g), generator=g).sort().values
    tensor([0, 1, 2, 3, 4])
    """
    confidence = _check_float("confidence", confidence, 2)
    if noise < 0:
        raise ValueError(f"noise: expected a non-negative standard deviation, got {noise}")
    perturbation = _randn(confidence.shape, generator, confidence)
    return confidence_order(confidence + noise * perturbation, pos, batch, background)


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def random_order(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random update order per image (seed it with ``generator``).

    Examples
    --------
    >>> random_order(torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0)).sort().values
    tensor([0, 1, 2, 3])
    """
    if not isinstance(batch, torch.Tensor):
        raise ValueError(f"batch: expected an int64 tensor [N], got {describe(batch)}")
    batch = _check_batch(batch, batch.numel(), batch.device)
    device = generator.device if generator is not None else batch.device
    keys = torch.rand(batch.numel(), generator=generator, device=device).to(batch.device)
    return rank_from_order(_sort_by_keys([batch, keys], batch.numel(), batch.device), batch)


def _first_per_image(order: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """The first node of each image in an order already grouped by image."""
    counts = torch.bincount(batch)
    image_start = torch.cumsum(counts, 0) - counts
    return order[image_start[counts > 0]]


def leftmost_node(pos: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    """The left-most node of each image (smallest column; ties: top-most, then lowest id) -> [B].

    Examples
    --------
    >>> leftmost_node(torch.tensor([[0.0, 5.0], [3.0, 1.0], [1.0, 1.0]]))
    tensor([2])
    """
    pos = _check_float("pos", pos, 2)
    batch = _check_batch(batch, pos.shape[0], pos.device)
    order = _sort_by_keys([batch, pos[:, 1], pos[:, 0]], pos.shape[0], pos.device)
    return _first_per_image(order, batch)


def most_confident_node(
    confidence: torch.Tensor,
    batch: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    background: int = 0,
) -> torch.Tensor:
    """The first node of :func:`confidence_order` in each image -> [B].

    selab decision: the most confident *foreground* node (background only if an image has no
    foreground node), ties left-most when ``pos`` is given, else lowest id.

    Examples
    --------
    >>> most_confident_node(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]))
    tensor([2])
    """
    confidence = _check_float("confidence", confidence, 2)
    num_nodes = confidence.shape[0]
    if pos is None:
        pos = torch.zeros(num_nodes, 2, dtype=confidence.dtype, device=confidence.device)
    rank = confidence_order(confidence, pos, batch, background)
    batch = _check_batch(batch, num_nodes, confidence.device)
    order = _sort_by_keys([batch, rank], num_nodes, confidence.device)
    return _first_per_image(order, batch)


def _traversal_order(edge_index, start, batch, num_nodes, depth_first: bool) -> torch.Tensor:
    if num_nodes is None and isinstance(batch, torch.Tensor):
        num_nodes = batch.numel()
    num_nodes = check_edge_index(edge_index, num_nodes)
    batch = _check_batch(batch, num_nodes, edge_index.device)
    start = torch.as_tensor(start, dtype=torch.long, device=edge_index.device).reshape(-1)
    num_images = int(batch.max()) + 1 if num_nodes else 0
    if start.numel() != num_images:
        raise ValueError(f"start: expected one start node per image ({num_images}), got {start.numel()}")
    if num_images and bool(((start < 0) | (start >= num_nodes)).any()):
        raise ValueError(f"start: node ids must lie in [0, {num_nodes})")
    if num_images and not torch.equal(batch[start], torch.arange(num_images, device=batch.device)):
        raise ValueError("start: start[b] must be a node of image b")

    # One traversal for the whole batch: a virtual root (id N) linked to every image's start node and
    # to the lowest-id node of every component that holds no start node. Within a component the
    # visiting order is then exactly a traversal from that component's root.
    src, dst = edge_index.cpu().numpy()
    n = num_nodes
    adjacency = sp.coo_matrix((np.ones(src.size), (src, dst)), shape=(n, n)).tocsr()
    _, component = csgraph.connected_components(adjacency, directed=False)
    component_root = np.full(component.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(component_root, component, np.arange(n))
    start_np = start.cpu().numpy()
    component_root[component[start_np]] = start_np
    rows = np.concatenate([src, dst, np.full(component_root.size, n)])
    cols = np.concatenate([dst, src, component_root])
    graph = sp.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    graph.sum_duplicates()
    graph.sort_indices()
    traverse = csgraph.depth_first_order if depth_first else csgraph.breadth_first_order
    order = traverse(graph, n, directed=True, return_predecessors=False)[1:]
    return rank_from_order(torch.as_tensor(order, dtype=torch.long, device=edge_index.device), batch)


def bfs_order(
    edge_index: torch.Tensor,
    start: torch.Tensor,
    batch: torch.Tensor | None = None,
    num_nodes: int | None = None,
) -> torch.Tensor:
    """Breadth-first order from ``start[b]`` in every image (neighbours visited by increasing id).

    selab decision: components not reached from the start are ranked by a traversal from their
    lowest-id node (their relative position to other components does not matter: they share no edge).

    Parameters
    ----------
    edge_index : LongTensor [2, E]
    start : LongTensor [B]
        Global id of the start node of each image (:func:`leftmost_node`, :func:`most_confident_node`).
    batch : LongTensor [N], optional
    num_nodes : int, optional
        Needed only without ``batch`` when the last nodes are isolated.

    Examples
    --------
    >>> edge_index = torch.tensor([[0, 1, 1], [1, 2, 3]])
    >>> bfs_order(edge_index, torch.tensor([0]))
    tensor([0, 1, 2, 3])
    """
    return _traversal_order(edge_index, start, batch, num_nodes, depth_first=False)


def dfs_order(
    edge_index: torch.Tensor,
    start: torch.Tensor,
    batch: torch.Tensor | None = None,
    num_nodes: int | None = None,
) -> torch.Tensor:
    """Depth-first (pre-)order from ``start[b]`` in every image; see :func:`bfs_order`.

    Examples
    --------
    >>> edge_index = torch.tensor([[0, 0, 1], [1, 3, 2]])
    >>> dfs_order(edge_index, torch.tensor([0]))
    tensor([0, 1, 2, 3])
    """
    return _traversal_order(edge_index, start, batch, num_nodes, depth_first=True)


def update_rank(
    name: str,
    edge_index: torch.Tensor,
    pos: torch.Tensor,
    batch: torch.Tensor | None = None,
    confidence: torch.Tensor | None = None,
    noise: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rank ``[N]`` of every node in the update order called ``name`` (one of :data:`ORDERS`).

    ``confidence`` and ``stochastic`` need the node ``confidence [N, K]``; ``bfs`` and ``dfs`` start at
    the most confident node when it is given (the paper's "BFS/DFS (confidence)"), else at the left-most
    node ("location"); ``stochastic`` (``noise``) and ``random`` draw from ``generator``.

    Examples
    --------
    >>> update_rank("bfs", torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.0, 0], [0, 1], [0, 2]])).tolist()
    [0, 1, 2]
    """
    if name not in ORDERS:
        raise ValueError(f"name: expected one of {ORDERS}, got {name!r}")
    if name in ("confidence", "stochastic"):
        if confidence is None:
            raise ValueError(f"confidence: the {name} order needs node confidences [N, K]")
        if name == "confidence":
            return confidence_order(confidence, pos, batch)
        return stochastic_order(confidence, pos, batch, noise=noise, generator=generator)
    if name == "random":
        return random_order(_check_batch(batch, pos.shape[0], pos.device), generator=generator)
    start = most_confident_node(confidence, batch, pos) if confidence is not None else leftmost_node(pos, batch)
    traverse = bfs_order if name == "bfs" else dfs_order
    return traverse(edge_index, start, batch, pos.shape[0])

r"""Superpixels and their region adjacency, vectorised.

The element-level graph of the Graph LSTM (Liang et al., "Semantic Object Parsing with Graph LSTM",
ECCV 2016) and of the Structure-evolving LSTM (Liang et al., CVPR 2017) has one node per SLIC superpixel
and an edge between every two superpixels that touch. A node's feature is the mean of the CNN features
of its pixels, and node states are copied back to the pixels they cover before the final classifier.

This module holds these steps as plain array functions: :func:`slic` (scikit-image SLIC, labels
renumbered ``0..N-1``), :func:`adjacency` (4-connected region adjacency with one ``np.unique`` over a
1-D key per boundary pixel pair, instead of ``skimage.graph.rag_mean_color`` which loops over pixels),
:func:`pool_to_nodes` and :func:`unpool_to_pixels` (differentiable ``index_add_`` / gather in torch),
:func:`upsample_and_pool` (bilinear upsampling of a low-resolution feature map and pooling to the nodes
as one sparse matrix product, :func:`pooling_matrix`) and :func:`node_label_histogram` (the pixel
labels pooled to the nodes: class counts per node, and their majority, :func:`node_majority_labels`).
The paper's configuration is about 1000 superpixels per image: ``slic(image, n_segments=1000)``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from skimage.segmentation import relabel_sequential
from skimage.segmentation import slic as _skimage_slic

__all__ = [
    "slic",
    "relabel",
    "check_labels",
    "adjacency",
    "NodePooling",
    "pool_to_nodes",
    "unpool_to_pixels",
    "upsample_and_pool",
    "pooling_matrix",
    "PoolingMatrix",
    "node_label_histogram",
    "node_majority_labels",
]


def _image_to_hwc(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as a float64 numpy HxWx3 array in [0, 1]; accept numpy HxWx3 or torch [3,H,W]."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{name}: expected a torch tensor of shape [3,H,W], got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: expected a numpy array of shape HxWx3, got {image.shape}")
    else:
        raise TypeError(f"{name}: expected a numpy array HxWx3 or a torch tensor [3,H,W], got {type(image).__name__}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        if image.size and (np.nanmin(image) < 0.0 or np.nanmax(image) > 1.0):
            raise ValueError(f"{name}: float images must lie in [0, 1], got range "
                             f"[{np.nanmin(image):.3g}, {np.nanmax(image):.3g}]")
        return image.astype(np.float64, copy=False)
    raise TypeError(f"{name}: expected dtype uint8 or float in [0, 1], got {image.dtype}")


def relabel(labels):
    """Renumber a label map to ``0..N-1`` with no gaps, keeping the order of the old ids.

    Use it after a crop or nearest-neighbour resize of a cached superpixel map, which can drop ids.

    Parameters
    ----------
    labels : np.ndarray or torch.Tensor
        Integer labels of any shape.

    Returns
    -------
    np.ndarray or torch.Tensor
        int64 labels of the same shape and type (torch output stays on the input's device).

    Examples
    --------
    >>> relabel(np.array([[3, 3, 7], [9, 7, 7]]))
    array([[0, 0, 1],
           [2, 1, 1]])
    """
    labels = labels if isinstance(labels, torch.Tensor) else np.asarray(labels)
    check_integer(labels)
    if isinstance(labels, torch.Tensor):
        _, inverse = torch.unique(labels, return_inverse=True)
        return inverse.to(torch.int64).reshape(labels.shape)
    labels = labels.astype(np.int64, copy=False)
    # relabel_sequential keeps the order of the ids and maps 0 to itself: shift the smallest id to 1 first
    return (relabel_sequential(labels - labels.min() + 1)[0] - 1).astype(np.int64) if labels.size else labels


def check_labels(labels, name: str = "labels") -> int:
    """Check that ``labels`` is an integer map numbered ``0..N-1`` with no gaps; return ``N``.

    Raises
    ------
    TypeError
        If ``labels`` is not an integer numpy array or torch tensor.
    ValueError
        If it is empty, negative, or skips an id (run :func:`relabel` first).

    Examples
    --------
    >>> check_labels(np.array([[0, 1], [1, 2]]))
    3
    """
    check_integer(labels, name)
    if isinstance(labels, torch.Tensor):
        flat = labels.reshape(-1)
        if flat.numel() == 0:
            raise ValueError(f"{name}: empty label map")
        if int(flat.min()) < 0:
            raise ValueError(f"{name}: labels must be >= 0, got {int(flat.min())}")
        present = torch.bincount(flat.to(torch.int64)) > 0
        n = present.numel()
        missing = int((~present).sum())
    else:
        if labels.size == 0:
            raise ValueError(f"{name}: empty label map")
        if labels.min() < 0:
            raise ValueError(f"{name}: labels must be >= 0, got {labels.min()}")
        present = np.bincount(labels.reshape(-1).astype(np.int64)) > 0
        n = present.size
        missing = int((~present).sum())
    if missing:
        raise ValueError(f"{name}: labels must be numbered 0..N-1 with no gaps; {missing} of the ids "
                         f"0..{n - 1} are missing (renumber with selab.method.superpixels.relabel)")
    return n


def slic(image, n_segments: int = 1000, compactness: float = 10.0, **skimage_kwargs) -> np.ndarray:
    """SLIC superpixels of an RGB image, numbered ``0..N-1`` with no gaps.

    Parameters
    ----------
    image : np.ndarray or torch.Tensor
        HxWx3 numpy array or [3,H,W] torch tensor; uint8, or float in [0, 1].
    n_segments : int
        Approximate number of superpixels (the paper uses about 1000).
    compactness : float
        SLIC's colour/space trade-off (scikit-image's default scale for Lab images).
    **skimage_kwargs
        Passed on to :func:`skimage.segmentation.slic` (e.g. ``sigma``, ``enforce_connectivity``).

    Returns
    -------
    np.ndarray
        int64 labels [H,W], ids ``0..N-1``.

    Examples
    --------
    >>> from skimage import data
    >>> labels = slic(data.astronaut(), n_segments=250)
    >>> labels.dtype, int(labels.min()), bool(labels.max() + 1 == len(np.unique(labels)))
    (dtype('int64'), 0, True)
    """
    if not isinstance(n_segments, (int, np.integer)) or n_segments < 1:
        raise ValueError(f"n_segments: expected a positive integer, got {n_segments!r}")
    hwc = _image_to_hwc(image)
    if hwc.shape[0] == 0 or hwc.shape[1] == 0:
        raise ValueError(f"image: expected at least 1 x 1 pixels, got {hwc.shape[0]} x {hwc.shape[1]}")
    labels = _skimage_slic(hwc, n_segments=int(n_segments), compactness=float(compactness),
                           start_label=0, channel_axis=-1, **skimage_kwargs)
    # SLIC can leave unused ids (e.g. after enforcing connectivity); nodes must be 0..N-1.
    return relabel(labels)


def check_integer(labels, name: str = "labels") -> None:
    """The one check that ``labels`` is an integer numpy array or torch tensor (TypeError otherwise)."""
    if isinstance(labels, torch.Tensor):
        integer = not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool)
    elif isinstance(labels, np.ndarray):
        integer = np.issubdtype(labels.dtype, np.integer)
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(labels).__name__}")
    if not integer:
        raise TypeError(f"{name}: expected integer labels, got {labels.dtype}")


def _check_label_map(labels, name: str = "labels"):
    check_integer(labels, name)
    if labels.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape [H,W] or [B,H,W], got {tuple(labels.shape)}")
    if labels.numel() if isinstance(labels, torch.Tensor) else labels.size:
        if labels.min() < 0:
            raise ValueError(f"{name}: labels must be >= 0")


def adjacency(labels):
    """Region adjacency of a label map: every 4-connected pair of touching labels once.

    Each horizontally or vertically neighbouring pixel pair with different labels gives the 1-D key
    ``min * N + max``; one ``unique`` over those keys yields the sorted, duplicate-free edge list.
    With ``[B,H,W]`` labels pixels are paired only within an image (use global ids for a batch).

    Parameters
    ----------
    labels : np.ndarray or torch.Tensor
        Integer labels [H,W] or [B,H,W], non-negative.

    Returns
    -------
    np.ndarray or torch.Tensor
        int64 ``edge_index`` [2,E] with ``edge_index[0] < edge_index[1]``, sorted lexicographically.
        Same type as ``labels``; a torch result stays on the input's device.
        Equals the edge set of ``skimage.graph.RAG(labels, connectivity=1)``.

    Examples
    --------
    >>> adjacency(np.array([[0, 0, 1], [2, 2, 1]]))
    array([[0, 0, 1],
           [1, 2, 2]])
    """
    _check_label_map(labels)
    if isinstance(labels, torch.Tensor):
        lab = labels.to(torch.int64)
        left, right, up, down = lab[..., :, :-1], lab[..., :, 1:], lab[..., :-1, :], lab[..., 1:, :]
        across, along = left != right, up != down
        a = torch.cat([left[across], up[along]])
        b = torch.cat([right[across], down[along]])
        if a.numel() == 0:
            return torch.empty(2, 0, dtype=torch.int64, device=labels.device)
        low, high = torch.minimum(a, b), torch.maximum(a, b)
        span = int((high - low).max()) + 1
        rows = int(low.max()) + 1
        if rows * span <= _DENSE_KEYS:
            # selab decision: a sort-free unique; the keys (low, high - low) fit a small bit table whose
            # set positions come out of nonzero() already sorted by (low, high).
            present = torch.zeros(rows * span, dtype=torch.bool, device=lab.device)
            present[low * span + (high - low)] = True
            key = present.nonzero().squeeze(1)
            low = torch.div(key, span, rounding_mode="floor")
            return torch.stack([low, low + key - low * span])
        n = int(lab.max()) + 1
        key = torch.unique(low * n + high)
        return torch.stack([key // n, key % n])
    lab = labels.astype(np.int64, copy=False)
    left, right, up, down = lab[..., :, :-1], lab[..., :, 1:], lab[..., :-1, :], lab[..., 1:, :]
    # Most neighbouring pixels share a label; keeping only boundary pairs keeps the sort small.
    across, along = left != right, up != down
    a = np.concatenate([left[across], up[along]])
    b = np.concatenate([right[across], down[along]])
    if a.size == 0:
        return np.empty((2, 0), dtype=np.int64)
    n = int(lab.max()) + 1
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return np.stack([key // n, key % n])


# Largest bit table (entries) of the sort-free unique in adjacency(); beyond it, a sort.
_DENSE_KEYS = 1 << 26


class NodePooling(NamedTuple):
    """Pixel features pooled to superpixel nodes.

    Attributes
    ----------
    x : torch.Tensor
        [N,C] mean feature of each node's pixels (zeros for a node with no pixels).
    count : torch.Tensor
        [N] float number of pixels per node.
    pos : torch.Tensor
        [N,2] float (row, col) centroid in pixels.
    """

    x: torch.Tensor
    count: torch.Tensor
    pos: torch.Tensor


def _labels_like(labels, features: torch.Tensor, name: str = "labels") -> torch.Tensor:
    _check_label_map(labels, name)
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels.astype(np.int64, copy=False))
    return labels.to(device=features.device, dtype=torch.int64)


def pool_to_nodes(features: torch.Tensor, labels, num_nodes: int | None = None) -> NodePooling:
    """Mean of pixel features over each superpixel, with pixel counts and centroids.

    Differentiable with respect to ``features`` (``index_add_``); runs on ``features.device``.

    Parameters
    ----------
    features : torch.Tensor
        [C,H,W] with labels [H,W], or [B,C,H,W] with labels [B,H,W].
    labels : np.ndarray or torch.Tensor
        Node id of every pixel. For a batch the ids must already be GLOBAL (offset per image).
    num_nodes : int, optional
        Number of nodes N; default ``labels.max() + 1``.

    Returns
    -------
    NodePooling
        ``x [N,C]``, ``count [N]``, ``pos [N,2]`` (row, col).

    Examples
    --------
    >>> feats = torch.arange(4.0).reshape(1, 2, 2)
    >>> pool_to_nodes(feats, np.array([[0, 0], [1, 1]])).x
    tensor([[0.5000],
            [2.5000]])
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features: expected a torch tensor, got {type(features).__name__}")
    if features.ndim not in (3, 4):
        raise ValueError(f"features: expected shape [C,H,W] or [B,C,H,W], got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features: expected a floating-point tensor, got {features.dtype}")
    lab = _labels_like(labels, features)
    spatial = features.shape[-2:] if features.ndim == 3 else (features.shape[0],) + tuple(features.shape[-2:])
    if tuple(lab.shape) != tuple(spatial):
        raise ValueError(f"labels: expected shape {tuple(spatial)} to match features "
                         f"{tuple(features.shape)}, got {tuple(lab.shape)}")
    if num_nodes is None:
        num_nodes = int(lab.max()) + 1 if lab.numel() else 0
    elif lab.numel() and int(lab.max()) >= num_nodes:
        raise ValueError(f"labels: ids must be < num_nodes={num_nodes}, got max {int(lab.max())}")
    channels = features.shape[-3]
    index = lab.reshape(-1)
    dtype, device = features.dtype, features.device
    # [C,P] keeps a [C,H,W] input a free view; index_add_ along pixels is the fastest CPU layout measured.
    pixels = (features if features.ndim == 3 else features.transpose(0, 1)).reshape(channels, index.numel())
    total = torch.zeros(channels, num_nodes, dtype=dtype, device=device).index_add_(1, index, pixels)
    # counts and centroids need no gradient: integer / weighted bincount is cheaper than index_add_
    count = torch.bincount(index, minlength=num_nodes).to(dtype)
    height, width = lab.shape[-2:]
    images = index.numel() // (height * width)
    rows = torch.arange(height, dtype=torch.float64, device=device).repeat_interleave(width).repeat(images)
    cols = torch.arange(width, dtype=torch.float64, device=device).repeat(height * images)
    pos_total = torch.stack([torch.bincount(index, weights=rows, minlength=num_nodes),
                             torch.bincount(index, weights=cols, minlength=num_nodes)], dim=1)
    denom = count.clamp(min=1)
    return NodePooling(x=(total / denom).t().contiguous(), count=count,
                       pos=(pos_total / denom.to(torch.float64).unsqueeze(1)).to(dtype))


def unpool_to_pixels(x: torch.Tensor, labels) -> torch.Tensor:
    """Copy node values back to the pixels each node covers (differentiable gather).

    Parameters
    ----------
    x : torch.Tensor
        [N,C] node values.
    labels : np.ndarray or torch.Tensor
        [H,W] or [B,H,W] node id of every pixel (global ids for a batch).

    Returns
    -------
    torch.Tensor
        [C,H,W] or [B,C,H,W] on ``x.device``.

    Examples
    --------
    >>> unpool_to_pixels(torch.tensor([[1.0], [2.0]]), np.array([[0, 1], [1, 0]]))
    tensor([[[1., 2.],
             [2., 1.]]])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x: expected shape [N,C], got {tuple(x.shape)}")
    lab = _labels_like(labels, x)
    if lab.numel() and int(lab.max()) >= x.shape[0]:
        raise ValueError(f"labels: ids must be < N={x.shape[0]} (rows of x), got max {int(lab.max())}")
    batched = lab.unsqueeze(0) if lab.ndim == 2 else lab
    out = _Unpool.apply(x, batched)
    return out[0] if lab.ndim == 2 else out


class _Unpool(torch.autograd.Function):
    """``x[labels]`` laid out [B,C,H,W], gathered and scattered one channel-major image at a time.

    Both directions work on [C, pixels] rows (contiguous output, ``index_add_`` along pixels in the
    backward, the layout :func:`pool_to_nodes` measured fastest) instead of the [pixels, C] rows of
    ``x[labels]`` and its ``index_put_`` backward; the values are the same.
    """

    @staticmethod
    def forward(ctx, x, labels):
        ctx.save_for_backward(labels)
        ctx.num_nodes = x.shape[0]
        channels, pixels = x.shape[1], labels[0].numel() if labels.shape[0] else 0
        columns = x.t().contiguous()
        out = x.new_empty(labels.shape[0], channels, *labels.shape[1:])
        for b in range(labels.shape[0]):  # a loop over images, not pixels or nodes
            torch.index_select(columns, 1, labels[b].reshape(-1), out=out[b].view(channels, pixels))
        return out

    @staticmethod
    def backward(ctx, grad):
        (labels,) = ctx.saved_tensors
        channels = grad.shape[1]
        total = grad.new_zeros(channels, ctx.num_nodes)
        for b in range(labels.shape[0]):
            total.index_add_(1, labels[b].reshape(-1), grad[b].reshape(channels, -1))
        return total.t(), None


def node_label_histogram(mask: torch.Tensor, assignment: torch.Tensor, num_nodes: int,
                         num_classes: int = 7) -> torch.Tensor:
    """Pixel count of every class in every node: ``[N, K]`` float.

    ``mask`` and ``assignment`` are ``[B, H, W]`` (or ``[H, W]``) int64; ``assignment`` holds global
    node ids of the level. Pixels with a label outside ``0..K-1`` (ignore values) are not counted.
    """
    if mask.shape != assignment.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and assignment {tuple(assignment.shape)} must match")
    labels = mask.reshape(-1).long()
    nodes = assignment.reshape(-1).long().to(labels.device)
    if nodes.numel() and (nodes.min() < 0 or nodes.max() >= num_nodes):
        raise ValueError(f"assignment must hold node ids in 0..{num_nodes - 1}")
    # Pixels outside the classes count in one extra bin per node, dropped after: the same counts as
    # selecting the valid pixels first, without the boolean compaction of every pixel.
    valid = (labels >= 0) & (labels < num_classes)
    flat = nodes * (num_classes + 1) + torch.where(valid, labels, num_classes)
    hist = torch.bincount(flat, minlength=num_nodes * (num_classes + 1))
    return hist.reshape(num_nodes, num_classes + 1)[:, :num_classes].float()


def node_majority_labels(mask: torch.Tensor, assignment: torch.Tensor, num_nodes: int,
                         num_classes: int = 7) -> torch.Tensor:
    """Majority ground-truth label of every node: LongTensor ``[N]`` (ties: the smaller class id).

    Examples
    --------
    >>> mask = torch.tensor([[[0, 1, 1]]]); assignment = torch.tensor([[[0, 0, 1]]])
    >>> node_majority_labels(mask, assignment, 2)
    tensor([0, 1])
    """
    return node_label_histogram(mask, assignment, num_nodes, num_classes).argmax(dim=1)


def _bilinear_taps(out_size: int, in_size: int, device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` on one axis."""
    src = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5)
    src = src.clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    w_high = src - low
    return low, high, 1.0 - w_high, w_high


def upsample_and_pool(features: torch.Tensor, labels: torch.Tensor, num_nodes: int, ptr: torch.Tensor,
                      matrix: "PoolingMatrix | None" = None) -> torch.Tensor:
    """Mean over each superpixel of the bilinearly upsampled ``features``, without upsampling.

    Equal (up to float rounding) to ``pool_to_nodes(F.interpolate(features, size=labels.shape[-2:],
    mode="bilinear"), labels).x`` but costs O(S^2 + nnz*C) instead of O(C*S^2): the composition of the
    two linear maps is a sparse [N, B*h*w] matrix (:func:`pooling_matrix`; a node touches about a dozen
    feature cells), applied as one CSR matrix product (and its transpose in the backward).

    Parameters
    ----------
    features : Tensor [B,C,h,w]
    labels : LongTensor [B,S,S]
        Global node ids (image b's nodes are ``ptr[b] .. ptr[b+1]-1``).
    num_nodes : int
    ptr : LongTensor [B+1]
    matrix : PoolingMatrix, optional
        The pooling matrix of ``labels`` for this feature size, prepared once (then ``labels`` and
        ``ptr`` are not read); by default it is built from ``labels``.

    Returns
    -------
    Tensor [N,C]

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> f = torch.rand(1, 3, 4, 4); lab = torch.zeros(1, 8, 8, dtype=torch.long)
    >>> x = upsample_and_pool(f, lab, 1, torch.tensor([0, 1]))
    >>> torch.allclose(x, F.interpolate(f, size=(8, 8), mode="bilinear").mean((2, 3)))
    True
    """
    batch, channels, h, w = features.shape
    cells = features.permute(0, 2, 3, 1).reshape(batch * h * w, channels)
    if matrix is not None:
        if matrix.shape != (num_nodes, batch * h * w) or matrix.weights.dtype != features.dtype:
            raise ValueError(f"matrix: a PoolingMatrix of shape {(num_nodes, batch * h * w)} and dtype "
                             f"{features.dtype} for features {tuple(features.shape)}, got {matrix.shape} "
                             f"{matrix.weights.dtype}")
        return _PooledProduct.apply(matrix, cells)
    rows, cols, weights = pooling_matrix(labels.to(features.device), num_nodes, ptr, (h, w), features.dtype)
    return _SparseRows.apply(rows, cols, weights, (num_nodes, batch * h * w), cells)


class PoolingMatrix(NamedTuple):
    """:func:`pooling_matrix` in CSR form with its transpose, built once for many products.

    ``crow, cols, weights`` are the CSR arrays of the [N, B*h*w] matrix; ``crow_t, rows_t, weights_t``
    those of its transpose (the entries in stable order of their column). Made by
    :meth:`from_coo`; :func:`upsample_and_pool` takes one as ``matrix`` (selab keeps them per
    superpixel map, :class:`selab.method.graph.SuperpixelStructures`), so a training step does not build it.
    """

    crow: torch.Tensor
    cols: torch.Tensor
    weights: torch.Tensor
    crow_t: torch.Tensor
    rows_t: torch.Tensor
    weights_t: torch.Tensor
    shape: tuple[int, int]

    @staticmethod
    def from_coo(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, shape: tuple[int, int],
                 order: torch.Tensor | None = None) -> "PoolingMatrix":
        """From :func:`pooling_matrix`'s ``(rows, cols, weights)``; ``order`` is ``argsort(cols, stable=True)``
        if already known."""
        order = torch.argsort(cols, stable=True) if order is None else order
        return PoolingMatrix(_compressed(rows, shape[0]), cols, weights, _compressed(cols[order], shape[1]),
                             rows[order], weights[order], (int(shape[0]), int(shape[1])))

    def to(self, device) -> "PoolingMatrix":
        """The matrix with its tensors on ``device``."""
        return PoolingMatrix(*(t.to(device) for t in self[:-1]), self.shape)

    def csr(self, transposed: bool = False) -> torch.Tensor:
        crow, index, values = (self.crow_t, self.rows_t, self.weights_t) if transposed else \
            (self.crow, self.cols, self.weights)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product itself is plain
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, index, values, self.shape[::-1] if transposed else self.shape,
                                           check_invariants=False)


class _PooledProduct(torch.autograd.Function):
    """``M @ dense`` with a prepared :class:`PoolingMatrix`; the same CSR products as :class:`_SparseRows`."""

    @staticmethod
    def forward(ctx, matrix, dense):
        ctx.matrix = matrix
        if matrix.weights.numel() == 0:
            return dense.new_zeros(matrix.shape[0], dense.shape[1])
        return matrix.csr() @ dense.contiguous()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[1]:
            return None, None
        matrix = ctx.matrix
        if matrix.weights.numel() == 0:
            return None, grad.new_zeros(matrix.shape[1], grad.shape[1])
        return None, matrix.csr(transposed=True) @ grad.contiguous()


def _compressed(sorted_rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """CSR row pointers [num_rows + 1] of sorted COO row indices."""
    counts = torch.bincount(sorted_rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _SparseRows(torch.autograd.Function):
    """``M @ dense`` for a COO matrix with sorted rows, as a CSR product; the backward is ``M^T @ grad``."""

    @staticmethod
    def forward(ctx, rows, cols, weights, shape, dense):
        ctx.save_for_backward(rows, cols, weights)
        ctx.shape = shape
        if rows.numel() == 0:
            return dense.new_zeros(shape[0], dense.shape[1])
        crow = _compressed(rows, shape[0])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product itself is plain
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(crow, cols, weights, shape, check_invariants=False)
        return matrix @ dense.contiguous()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[4]:
            return None, None, None, None, None
        rows, cols, weights = ctx.saved_tensors
        if rows.numel() == 0:
            return None, None, None, None, grad.new_zeros(ctx.shape[1], grad.shape[1])
        order = torch.argsort(cols, stable=True)
        crow = _compressed(cols[order], ctx.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            transposed = torch.sparse_csr_tensor(crow, rows[order], weights[order], ctx.shape[::-1],
                                                 check_invariants=False)
        return None, None, None, None, transposed @ grad.contiguous()


def pooling_matrix(labels: torch.Tensor, num_nodes: int, ptr: torch.Tensor, feature_size: tuple[int, int],
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse matrix of :func:`upsample_and_pool`: ``(rows, cols, weights)`` in COO form.

    ``rows`` are global node ids, ``cols`` global feature cells ``b*h*w + i*w + j`` of a [B,C,h,w] map,
    and ``weights`` the mean over the node's pixels of their bilinear weight on the cell
    (``F.interpolate(mode="bilinear", align_corners=False)``); sorted by row, then col. It depends
    only on the superpixels.

    Examples
    --------
    >>> r, c, wt = pooling_matrix(torch.zeros(1, 4, 4, dtype=torch.long), 1, torch.tensor([0, 1]), (2, 2))
    >>> r.tolist(), c.tolist(), wt.tolist()
    ([0, 0, 0, 0], [0, 1, 2, 3], [0.25, 0.25, 0.25, 0.25])
    """
    h, w = feature_size
    size_y, size_x = labels.shape[-2:]
    device = labels.device
    taps_y = _bilinear_taps(size_y, h, device)
    taps_x = _bilinear_taps(size_x, w, device)
    count = torch.bincount(labels.reshape(-1), minlength=num_nodes).to(dtype).clamp(min=1)
    # The four (cell, weight) taps of every pixel of an [S,S] image, the same for all images.
    taps = []
    for r_index, r_weight in ((taps_y[0], taps_y[2]), (taps_y[1], taps_y[3])):
        for c_index, c_weight in ((taps_x[0], taps_x[2]), (taps_x[1], taps_x[3])):
            taps.append(((r_index[:, None] * w + c_index[None, :]).reshape(-1),
                         (r_weight[:, None] * c_weight[None, :]).to(dtype).reshape(-1)))
    ptr = ptr.tolist()
    sizes = [stop - start for start, stop in zip(ptr[:-1], ptr[1:])]
    # One dense scratch block of N_b x h*w, reused by every image and cleared only where it was written.
    block = torch.zeros(max(sizes, default=0) * h * w, device=device, dtype=dtype)
    rows, cols, weights = [], [], []
    for b, (start, n) in enumerate(zip(ptr[:-1], sizes)):  # a loop over images, not pixels or nodes
        local = (labels[b].reshape(-1) - start) * (h * w)
        for cell, weight in taps:
            block.index_add_(0, local + cell, weight)
        key = block[: n * h * w].nonzero().squeeze(1)
        node = torch.div(key, h * w, rounding_mode="floor")
        rows.append(node + start)
        cols.append(key - node * (h * w) + b * h * w)
        weights.append(block[key] / count[start + node])
        block[key] = 0
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty, torch.zeros(0, dtype=dtype, device=device)
    return torch.cat(rows), torch.cat(cols), torch.cat(weights)

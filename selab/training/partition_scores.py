r"""Scores of a partition of an image against its ground-truth mask, and of the levels of a hierarchy.

A level of the Structure-evolving LSTM's hierarchy (Liang et al., CVPR 2017), a superpixel map or a
baseline's agglomeration is a partition of the image's pixels into nodes. It is judged the way superpixel
benchmarks judge a segmentation (Stutz, Hermans and Leibe, "Superpixels: an evaluation of the
state-of-the-art", CVIU 2018; Neubert and Protzel, 2012), at matched node counts:

- **nodes per image**;
- **achievable mIoU** (percent): every node labelled with its ground-truth majority class, the mIoU of
  the split from the summed confusion matrix (:func:`selab.training.metrics.iou`, the benchmark's
  definition): what a perfect node classifier would reach on that partition;
- **ASA**, the achievable segmentation accuracy (pixel purity): the fraction of labelled pixels whose
  node's majority class is their own, :math:`\sum_n \max_k c_{nk} / \sum_{n,k} c_{nk}` with
  :math:`c_{nk}` the pixels of class k in node n;
- **boundary recall**: the fraction of ground-truth boundary pixels (a labelled pixel with a 4-neighbour
  of another label) that lie within ``tolerance`` pixels (Chebyshev distance, 2 by default) of a
  boundary pixel of the partition (a pixel with a 4-neighbour in another node);
- **undersegmentation error** (Neubert and Protzel's formulation, as in Stutz et al.'s benchmark):
  :math:`\frac{1}{N} \sum_k \sum_n \min(c_{nk}, |n| - c_{nk})`, for every ground-truth region and node
  that overlap the smaller of the overlap and the node's remainder, over the N labelled pixels.

selab decisions: the ground-truth regions of the undersegmentation error are the image's class regions
(the part masks hold classes, not instances); pixels with a label outside ``0..K-1`` (ignore values) count
in no score and make no ground-truth boundary; every ratio is one of sums over the split (counts add up
over batches, :class:`PartitionScores`), so that on images of one size ASA, boundary recall and the
undersegmentation error are the means over the images weighted by their labelled pixels.

:func:`hierarchy_stats` scores every level of a model's output (``ModelOutput.levels``) and
:func:`combine_hierarchy_stats` adds up the batches of a split; training's evaluation reports them.

Examples
--------
>>> import torch
>>> mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
>>> halves = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
>>> s = score_partition(halves, mask)
>>> s.achievable_miou, s.asa, s.boundary_recall, s.undersegmentation_error
(100.0, 1.0, 1.0, 0.0)
>>> whole = score_partition(torch.zeros(2, 4, dtype=torch.long), mask)
>>> whole.achievable_miou, whole.asa, whole.undersegmentation_error  # one node: class 0 wins the tie
(25.0, 0.5, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from selab.classes import NUM_CLASSES
from selab.training.metrics import iou

__all__ = ["PartitionScores", "score_partition", "boundary_map", "hierarchy_stats", "combine_hierarchy_stats"]


@dataclass
class PartitionScores:
    """Additive counts of scored partitions (one image, a batch or a split); the scores as properties.

    ``a + b`` (and :meth:`total`) pools two sets of images; every score is then computed from the
    pooled counts (see the module docstring).

    Attributes
    ----------
    nodes_per_image : list of int
        Nodes of every image scored.
    confusion : ndarray [K,K] int64
        ``confusion[t, p]``: labelled pixels of class t in nodes whose majority class is p.
    pixels, pure_pixels, ue_pixels : int
        Labelled pixels; those of their node's majority class; the undersegmentation sum.
    boundary_pixels, boundary_recalled : int
        Ground-truth boundary pixels; those within ``tolerance`` of a boundary of the partition.
    tolerance : int
        Of the boundary recall, in pixels.

    Examples
    --------
    >>> a = score_partition(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), num_classes=2)
    >>> b = score_partition(torch.tensor([[0, 0]]), torch.tensor([[0, 1]]), num_classes=2)
    >>> total = PartitionScores.total([a, b])
    >>> total.nodes_per_image, total.asa, total.boundary_recall
    ([2, 1], 0.75, 0.5)
    """

    nodes_per_image: list = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    pixels: int = 0
    pure_pixels: int = 0
    ue_pixels: int = 0
    boundary_pixels: int = 0
    boundary_recalled: int = 0
    tolerance: int = 2

    def __add__(self, other: "PartitionScores") -> "PartitionScores":
        if not isinstance(other, PartitionScores):
            return NotImplemented
        if other.confusion.shape != self.confusion.shape or other.tolerance != self.tolerance:
            raise ValueError(f"PartitionScores: cannot add scores of {self.confusion.shape[0]} and "
                             f"{other.confusion.shape[0]} classes, tolerance {self.tolerance} and {other.tolerance}")
        return PartitionScores(self.nodes_per_image + other.nodes_per_image, self.confusion + other.confusion,
                               self.pixels + other.pixels, self.pure_pixels + other.pure_pixels,
                               self.ue_pixels + other.ue_pixels, self.boundary_pixels + other.boundary_pixels,
                               self.boundary_recalled + other.boundary_recalled, self.tolerance)

    @classmethod
    def total(cls, scores) -> "PartitionScores":
        """The sum of a non-empty iterable of :class:`PartitionScores`."""
        scores = list(scores)
        if not scores:
            raise ValueError("PartitionScores.total: no scores to add")
        result = scores[0]
        for s in scores[1:]:
            result = result + s
        return result

    @property
    def images(self) -> int:
        return len(self.nodes_per_image)

    @property
    def mean_nodes_per_image(self) -> float:
        return sum(self.nodes_per_image) / self.images if self.images else float("nan")

    @property
    def achievable_miou(self) -> float:
        """Percent; the classes absent from the ground truth are left out (NaN without labelled pixels)."""
        per_class = iou(self.confusion)
        return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")

    @property
    def asa(self) -> float:
        return self.pure_pixels / self.pixels if self.pixels else float("nan")

    @property
    def boundary_recall(self) -> float:
        return self.boundary_recalled / self.boundary_pixels if self.boundary_pixels else float("nan")

    @property
    def undersegmentation_error(self) -> float:
        return self.ue_pixels / self.pixels if self.pixels else float("nan")

    def summary(self) -> dict:
        """The scores as a dict: ``nodes_per_image`` (the mean), ``achievable_miou`` (percent), ``asa``,
        ``boundary_recall``, ``undersegmentation_error`` (fractions), ``images``."""
        return {"nodes_per_image": self.mean_nodes_per_image, "achievable_miou": self.achievable_miou,
                "asa": self.asa, "boundary_recall": self.boundary_recall,
                "undersegmentation_error": self.undersegmentation_error, "images": self.images}


def boundary_map(labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels with a 4-neighbour of another label: bool ``[..., H, W]`` (both sides of a boundary).

    With ``valid`` (bool, same shape) only pairs of valid pixels count.

    Examples
    --------
    >>> boundary_map(torch.tensor([[0, 0, 1], [0, 0, 1]])).int().tolist()
    [[0, 1, 1], [0, 1, 1]]
    """
    labels = torch.as_tensor(labels)
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for axis in (-1, -2):  # the two directions, each pair of neighbours once
        n = labels.shape[axis]
        first, second = labels.narrow(axis, 0, n - 1), labels.narrow(axis, 1, n - 1)
        differ = first != second
        if valid is not None:
            differ &= valid.narrow(axis, 0, n - 1) & valid.narrow(axis, 1, n - 1)
        out.narrow(axis, 0, n - 1).logical_or_(differ)
        out.narrow(axis, 1, n - 1).logical_or_(differ)
    return out


def _as_batch(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"score_partition: {name} must hold integers, got {tensor.dtype}")
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"score_partition: {name} must be [H,W] or [B,H,W], got shape {tuple(tensor.shape)}")
    return tensor.long()


def score_partition(assignment, mask, num_classes: int = NUM_CLASSES, tolerance: int = 2) -> PartitionScores:
    """Score the partition ``assignment`` of every image against its ground truth ``mask``.

    Parameters
    ----------
    assignment : Tensor or ndarray of int, [H,W] or [B,H,W]
        The node of every pixel, ids >= 0 (any numbering: a node is an (image, id) pair, so per-image
        ids and a level's global ids both work).
    mask : Tensor or ndarray of int, same shape
        Ground-truth classes; labels outside ``0..num_classes-1`` are ignored.
    num_classes : int
    tolerance : int, default 2
        Of the boundary recall, in pixels (Chebyshev distance).

    Returns
    -------
    PartitionScores
        The counts of the B images (see the module docstring for the scores).

    Examples
    --------
    >>> mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    >>> s = score_partition(torch.tensor([[0, 0, 1, 1, 1, 1]]), mask, num_classes=2, tolerance=0)
    >>> s.nodes_per_image, s.asa, s.undersegmentation_error, s.boundary_recall  # the cut is a pixel off
    ([2], 0.8333333333333334, 0.3333333333333333, 0.5)
    >>> score_partition(torch.tensor([[0, 0, 1, 1, 1, 1]]), mask, num_classes=2).boundary_recall  # within 2 px
    1.0
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"score_partition: tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"score_partition: num_classes must be an int >= 1, got {num_classes!r}")
    nodes = _as_batch(assignment, "assignment")
    labels = _as_batch(mask, "mask").to(nodes.device)
    if labels.shape != nodes.shape:
        raise ValueError(f"score_partition: mask {tuple(labels.shape)} must match assignment {tuple(nodes.shape)}")
    K, images = int(num_classes), nodes.shape[0]
    if nodes.numel() == 0:
        return PartitionScores([0] * images, np.zeros((K, K), np.int64), tolerance=int(tolerance))
    if int(nodes.min()) < 0:
        raise ValueError("score_partition: assignment must hold node ids >= 0")
    span = int(nodes.max()) + 1
    node = nodes + torch.arange(images, device=nodes.device).view(-1, 1, 1) * span  # (image, id) -> one bin
    valid = (labels >= 0) & (labels < K)
    # The ignored pixels go to one extra bin per node: they make the node exist but count in no score.
    flat = (node * (K + 1) + torch.where(valid, labels, K)).reshape(-1)
    hist = torch.bincount(flat, minlength=images * span * (K + 1)).reshape(images * span, K + 1)
    nodes_per_image = (hist.sum(1) > 0).reshape(images, span).sum(1).tolist()
    counts = hist[:, :K]
    size = counts.sum(1)
    best = counts.max(1)
    # achievable confusion: every labelled pixel of class t in a node of majority p counts at [t, p]
    # (argmax takes the first maximum: ties go to the smaller class id, as node_majority_labels)
    index = torch.arange(K, device=counts.device).view(1, K) * K + best.indices.view(-1, 1)
    confusion = torch.bincount(index.reshape(-1), weights=counts.reshape(-1).double(), minlength=K * K)
    # min(c, |n| - c) is 0 where c = 0: the sum over all (node, class) pairs is the sum over the overlaps
    ue = torch.minimum(counts, size.view(-1, 1) - counts).sum()
    truth = boundary_map(labels, valid)
    cut = boundary_map(nodes).float()[:, None]
    if tolerance:
        cut = F.max_pool2d(cut, kernel_size=2 * int(tolerance) + 1, stride=1, padding=int(tolerance))
    recalled = truth & (cut[:, 0] > 0)
    return PartitionScores(nodes_per_image, confusion.round().long().reshape(K, K).cpu().numpy(), int(size.sum()),
                           int(best.values.sum()), int(ue), int(truth.sum()), int(recalled.sum()), int(tolerance))


# --------------------------------------------------------------------------------------------------
# the levels of a model's hierarchy
# --------------------------------------------------------------------------------------------------
def _level_record(index: int, num_nodes: int, per_image: list, scores: PartitionScores) -> dict:
    return {"level": index, "num_nodes": num_nodes, "nodes_per_image": per_image,
            "mean_nodes_per_image": num_nodes / max(len(per_image), 1), "pure_pixels": scores.pure_pixels,
            "pixels": scores.pixels, "purity": scores.asa, "achievable_miou": scores.achievable_miou,
            "boundary_recall": scores.boundary_recall, "undersegmentation_error": scores.undersegmentation_error,
            "scores": scores}


def hierarchy_stats(levels: list, mask, num_classes: int = NUM_CLASSES, tolerance: int = 2) -> list[dict]:
    r"""Node counts and scores (:func:`score_partition`) of every level of a batch (``ModelOutput.levels``).

    A level's **purity** is its ASA: the fraction of labelled pixels whose level node's majority label is
    their own. It is 1 when every node is pure, and it can only fall from one level to the next (a merged
    node's majority count is at most the sum of its members'). At level 0 it is the superpixels' ASA.

    Parameters
    ----------
    levels : list of selab.method.graph.Graph
        The levels of one batch, each with ``assignment [B,S,S]`` (global node ids) and ``batch``.
    mask : LongTensor [B,S,S] or list of LongTensor [H_b,W_b]
        Ground-truth labels at the levels' resolution, or one full-resolution mask per image (then
        each level's assignment is resized to it by nearest neighbour).
    num_classes : int
    tolerance : int, default 2
        Of the boundary recall, in pixels of ``mask``.

    Returns
    -------
    list of dict
        One per level: ``level``, ``num_nodes`` (over the batch), ``nodes_per_image`` (list of int),
        ``mean_nodes_per_image``, ``pure_pixels`` and ``pixels`` (counts), ``purity`` (``pure_pixels /
        pixels``, NaN without labelled pixels), ``achievable_miou`` (percent), ``boundary_recall``,
        ``undersegmentation_error`` and ``scores``, the :class:`PartitionScores` that batches add up with
        (:func:`combine_hierarchy_stats`).

    Examples
    --------
    >>> import numpy as np
    >>> from selab.method.graph import coarsen, graph_from_superpixels
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
        if isinstance(mask, torch.Tensor):
            if mask.shape != assignment.shape:
                raise ValueError(f"hierarchy_stats: mask {tuple(mask.shape)} must match level {index}'s "
                                 f"assignment {tuple(assignment.shape)} (or be a list of per-image masks)")
            scores = score_partition(assignment, mask.to(assignment.device), num_classes, tolerance)
        else:
            if len(mask) != num_images:
                raise ValueError(f"hierarchy_stats: {len(mask)} masks for {num_images} images")
            per_image = []
            for b, full in enumerate(mask):  # a loop over images, not pixels or nodes
                full = torch.as_tensor(full).to(assignment.device)
                resized = F.interpolate(assignment[b][None, None].double(), size=tuple(full.shape),
                                        mode="nearest")[0, 0].long()
                per_image.append(score_partition(resized, full, num_classes, tolerance))
            scores = PartitionScores.total(per_image)
        per_image_nodes = torch.bincount(level.batch, minlength=num_images).tolist()
        stats.append(_level_record(index, level.num_nodes, per_image_nodes, scores))
    return stats


def combine_hierarchy_stats(batches: list) -> list[dict]:
    """:func:`hierarchy_stats` of several batches as one (e.g. a validation split), level by level.

    Node counts are concatenated and the scores' counts summed, so every score is over all pixels of the
    split and ``mean_nodes_per_image`` over all images. Batches must have the same number of levels.

    Examples
    --------
    >>> import numpy as np
    >>> from selab.method.graph import graph_from_superpixels
    >>> level0 = graph_from_superpixels(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> a = hierarchy_stats([level0], torch.tensor([[[0, 0, 1], [0, 0, 0]]]))
    >>> b = hierarchy_stats([level0], torch.tensor([[[0, 0, 1], [0, 0, 1]]]))
    >>> combined = combine_hierarchy_stats([a, b])[0]
    >>> combined["nodes_per_image"], round(combined["purity"], 4)
    ([3, 3], 0.9167)
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
        scores = PartitionScores.total(s["scores"] for s in per_level)
        combined.append(_level_record(per_level[0]["level"], sum(nodes), nodes, scores))
    return combined

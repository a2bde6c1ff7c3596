r"""The loss stage: what the model's predictions are scored against, and how.

The model (:mod:`selab.model.parser`) computes predictions only; this module holds the supervision of all three
variants, read from the batch's ground-truth ``mask``:

- the pixel cross-entropy of the logits, and of the initial confidence maps (weighted by
  ``ModelConfig.confidence_loss_weight``; the only loss of step one of the paper's two-step training);
- ``se_lstm``: the L2 loss of every evolution's merge probabilities (the Structure-evolving LSTM,
  Liang et al., CVPR 2017) against :func:`merge_target`, 1 where both ends of an edge have the same
  majority ground-truth label (selab decision 1, docs/method.md). The majority labels of every level
  come from the superpixels' label histograms summed per node (:func:`merge_targets`), one pass over
  the pixels per batch instead of one per level.

Examples
--------
>>> import torch
>>> from selab.model.config import ModelConfig
>>> from selab.model.parser import SELabModel
>>> model = SELabModel(ModelConfig(variant="cnn", backbone="small", feature_channels=8)).eval()
>>> batch = {"image": torch.rand(1, 3, 16, 16), "mask": torch.zeros(1, 16, 16, dtype=torch.long)}
>>> sorted(compute_loss(model(batch), batch, model.config))
['loss', 'pixel']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selab.method.graph import check_edge_index, level_majority_labels
from selab.method.superpixels import node_label_histogram

__all__ = ["compute_loss", "merge_target", "merge_targets", "merge_loss"]


def merge_target(edge_index: Tensor, node_labels: Tensor) -> Tensor:
    """L2 target of the merge probabilities: 1.0 where both ends have the same (majority) label.

    Examples
    --------
    >>> merge_target(torch.tensor([[0, 1], [1, 2]]), torch.tensor([3, 3, 0]))
    tensor([1., 0.])
    """
    check_edge_index(edge_index)
    if not isinstance(node_labels, Tensor) or node_labels.dim() != 1:
        raise ValueError("node_labels must be a 1-D tensor [N] of class ids")
    return (node_labels[edge_index[0]] == node_labels[edge_index[1]]).float()


def merge_targets(levels: list, mask: Tensor, num_classes: int) -> list[Tensor]:
    """:func:`merge_target` of the edges of every level in ``levels`` (``ModelOutput.levels``), ``[E_l]`` each.

    The levels' majority labels are the argmax of their class counts. Where the first level's nodes are
    the superpixels (``superpixel_assignment`` the identity), the counts are counted on the pixels once,
    for the superpixels, and summed per node at every level (:func:`selab.method.graph.level_majority_labels`):
    the same counts, hence the same labels and ties, as counting every level's pixels.
    """
    if not levels:
        return []
    first = levels[0]
    mask = mask.to(first.assignment.device)
    sp = first.superpixel_assignment
    histogram = None
    if sp is not None and torch.equal(sp, torch.arange(first.num_nodes, device=sp.device)):
        histogram = node_label_histogram(mask, first.assignment, first.num_nodes, num_classes)
    targets = []
    for level in levels:
        from_superpixels = histogram is not None and level.superpixel_assignment is not None
        labels = level_majority_labels(level, mask, num_classes, histogram if from_superpixels else None)
        targets.append(merge_target(level.edge_index, labels))
    return targets


def merge_loss(merge_prob: Tensor, target: Tensor, balanced: bool = False) -> Tensor:
    """Mean squared error between merge probabilities and targets (the paper's L2 loss).

    ``balanced=True`` (selab option): the mean of the errors on the edges to merge and the mean on
    the edges to keep, each half of the loss, so that the many same-part edges (about 92% of the superpixel
    graph's on PASCAL-Person-Part) do not push every probability above 0.5; a kind absent from the batch
    leaves the other's mean alone.

    Examples
    --------
    >>> p, t = torch.tensor([0.9, 0.9, 0.9, 0.5]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    >>> round(merge_loss(p, t).item(), 4), round(merge_loss(p, t, balanced=True).item(), 4)
    (0.07, 0.13)
    """
    if merge_prob.shape != target.shape:
        raise ValueError(f"merge_prob {tuple(merge_prob.shape)} and target {tuple(target.shape)} differ")
    if merge_prob.numel() == 0:
        return merge_prob.sum()
    target = target.to(merge_prob.dtype)
    error = (merge_prob - target) ** 2
    if not balanced:
        return error.mean()
    merge = target > 0.5
    means = [error[side].mean() for side in (merge, ~merge) if side.any()]
    return torch.stack(means).mean()


def _cross_entropy(logits, mask, ignore_index: int | None):
    if ignore_index is None:
        return F.cross_entropy(logits, mask)
    # The mean over the labelled pixels only; 0 (not NaN) for a batch without any.
    total = F.cross_entropy(logits, mask, ignore_index=ignore_index, reduction="sum")
    return total / (mask != ignore_index).sum().clamp(min=1)


def compute_loss(output, batch: dict, model_config, confidence_only: bool = False,
                 ignore_index: int | None = None) -> dict:
    """Pixel cross-entropy + weighted confidence-map cross-entropy + weighted merge-probability L2.

    Pixels labelled ``ignore_index`` count in neither cross-entropy (nor in the merge targets, whose
    label histograms skip values outside the classes). ``output`` is a :class:`selab.model.parser.ModelOutput`,
    ``model_config`` its model's :class:`selab.model.config.ModelConfig`. Returns a dict of scalar tensors:
    ``loss`` (the total) and its parts.
    """
    mask = batch["mask"].to(output.confidence_logits.device if output.logits is None else output.logits.device)
    parts = {}
    if confidence_only:
        parts["confidence"] = _cross_entropy(output.confidence_logits, mask, ignore_index)
        parts["loss"] = parts["confidence"]
        return parts
    parts["pixel"] = _cross_entropy(output.logits, mask, ignore_index)
    total = parts["pixel"]
    if output.confidence_logits is not None and model_config.confidence_loss_weight > 0:
        parts["confidence"] = _cross_entropy(output.confidence_logits, mask, ignore_index)
        total = total + model_config.confidence_loss_weight * parts["confidence"]
    if output.merge_prob:
        # evolution l's merge probabilities are those of level l's edges
        levels = output.levels[:len(output.merge_prob)]
        known = getattr(output, "level_labels", None) or []
        recorded = getattr(output, "labels_mask", None)
        if len(known) == len(levels) and recorded is not None and (recorded is mask or torch.equal(recorded, mask)):
            # the model counted these levels' majority labels on this mask for the chains' energy
            targets = [merge_target(level.edge_index, labels) for level, labels in zip(levels, known)]
        else:
            targets = merge_targets(levels, mask, model_config.num_classes)
        balanced = model_config.merge_loss_balanced
        parts["merge"] = torch.stack([merge_loss(p, t, balanced) for p, t in zip(output.merge_prob, targets)]).mean()
        total = total + model_config.merge_loss_weight * parts["merge"]
    parts["loss"] = total
    return parts

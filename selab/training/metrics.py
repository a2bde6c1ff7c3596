"""Segmentation metrics from an accumulated confusion matrix.

Implements the standard semantic-parsing metrics reported by Graph LSTM (Liang et al., ECCV 2016) and
SE-LSTM (Liang et al., CVPR 2017) on PASCAL-Person-Part: per-class intersection-over-union, their mean,
and pixel accuracy. The confusion matrix is accumulated over the whole split before any ratio is taken
(the benchmark's definition), never averaged per image.

Examples
--------
>>> import torch
>>> cm = ConfusionMatrix(num_classes=2)
>>> cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
>>> round(cm.compute()["mean_iou"], 2)
58.33
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selab.classes import CLASS_NAMES, NUM_CLASSES
from selab.files import atomic_write

PER_IMAGE_FILE = "val_per_image.npz"  # a run folder's per-image confusions (training's last epoch)


def confusion_matrix(prediction, target, num_classes: int = NUM_CLASSES, ignore_index: int | None = None):
    """Count (target, prediction) pairs.

    Parameters
    ----------
    prediction, target : Tensor or ndarray of int, same shape
        Predicted and ground-truth class ids.
    num_classes : int
    ignore_index : int, optional
        Target value to skip (PASCAL-Person-Part has none; kept for folder datasets).

    Returns
    -------
    Tensor of int64, shape (num_classes, num_classes)
        ``cm[t, p]`` = number of pixels of true class ``t`` predicted as ``p``.

    Examples
    --------
    >>> confusion_matrix(torch.tensor([0, 1]), torch.tensor([1, 1]), 2).tolist()
    [[0, 0], [1, 1]]
    """
    prediction = torch.as_tensor(prediction)
    target = torch.as_tensor(target, device=prediction.device)
    if prediction.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}"
        )
    prediction = prediction.reshape(-1).long()
    target = target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    if bool(((prediction < 0) | (prediction >= num_classes))[valid].any()):
        raise ValueError(f"confusion_matrix: prediction holds ids outside 0..{num_classes - 1}")
    index = target[valid] * num_classes + prediction[valid]
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou(cm) -> np.ndarray:
    """Per-class IoU (percent) of confusion matrices ``[..., K, K]``; NaN for a class absent from both sides.

    Examples
    --------
    >>> iou(np.array([[2, 1, 0], [0, 0, 0], [0, 0, 0]])).tolist()  # class 1 predicted once, class 2 nowhere
    [66.66666666666666, 0.0, nan]
    """
    cm = np.asarray(cm, dtype=np.float64)
    intersection = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-2) + cm.sum(-1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan) * 100.0


def scores_from_confusion(cm, class_names=CLASS_NAMES) -> dict:
    """Mean IoU, per-class IoU and pixel accuracy, all in percent.

    A class absent from both targets and predictions has an undefined IoU; it is reported as NaN
    and left out of the mean (selab decision, the usual convention).

    Examples
    --------
    >>> scores_from_confusion(np.eye(2, dtype=int) * 5, ("a", "b"))["per_class_iou"]
    {'a': 100.0, 'b': 100.0}
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"scores_from_confusion: cm must be square, got shape {cm.shape}")
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"scores_from_confusion: {len(class_names)} class_names for a {cm.shape[0]}-class cm")
    per_class, total = iou(cm), cm.sum()
    return {
        "mean_iou": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "per_class_iou": {name: float(v) for name, v in zip(class_names, per_class)},
        "pixel_accuracy": float(np.diag(cm).sum() / total * 100.0) if total > 0 else float("nan"),
    }


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches; :meth:`ConfusionMatrix.compute` gives the scores.

    Examples
    --------
    >>> cm = ConfusionMatrix()
    >>> cm.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long))
    >>> cm.compute()["pixel_accuracy"]
    100.0
    """

    def __init__(self, num_classes: int = NUM_CLASSES, class_names=None, ignore_index: int | None = None):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else (
            CLASS_NAMES if num_classes == NUM_CLASSES else tuple(str(i) for i in range(num_classes))
        )
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction, target) -> None:
        self.matrix += confusion_matrix(prediction, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> dict:
        return scores_from_confusion(self.matrix.numpy(), self.class_names)


def save_per_image(path, pairs) -> None:
    """Write ``(id, confusion [K,K])`` pairs to an ``.npz`` (arrays ``ids`` [N], ``confusion`` [N,K,K]).

    Written atomically (temporary file, then rename). Read back with :func:`load_per_image`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "per_image.npz"
    >>> save_per_image(path, [("a", torch.eye(2, dtype=torch.int64)), ("b", torch.ones(2, 2, dtype=torch.int64))])
    >>> ids, confusion = load_per_image(path)
    >>> ids.tolist(), confusion.sum(axis=(1, 2)).tolist()
    (['a', 'b'], [2, 4])
    """
    ids = np.array([str(i) for i, _ in pairs])
    confusion = np.stack([np.asarray(m, dtype=np.int64) for _, m in pairs]) if pairs else np.zeros((0, 0, 0), np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: numpy adds no ".npz" to the temporary name
            np.savez_compressed(handle, ids=ids, confusion=confusion)

    atomic_write(Path(path), write)


def load_per_image(path) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [N] str, confusion [N,K,K] int64)`` from a file of :func:`save_per_image`."""
    with np.load(path, allow_pickle=False) as data:
        return data["ids"].astype(str), data["confusion"].astype(np.int64)

"""The figures of a run folder: ``figures/curves.png`` (loss and validation mIoU per epoch) and
``figures/predictions.png`` (validation images, ground truth and prediction side by side).

Drawn on matplotlib :class:`~matplotlib.figure.Figure` objects of their own, never through pyplot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from selab.classes import CLASS_COLORS, CLASS_NAMES, colorize


def plot_curves(run_dir: Path, history: list) -> Path | None:
    """Write the loss and validation-mIoU curves of ``history`` to ``run_dir/figures/curves.png``.

    Draws on a :class:`matplotlib.figure.Figure` of its own, never through pyplot: a library must not
    change the caller's backend or current figure (a notebook that calls :func:`~selab.training.loop.run` keeps its inline
    figures).
    """
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker="o")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    if any(r.get("val_mean_iou") is not None for r in history):
        axes[1].plot(epochs, [r.get("val_mean_iou") for r in history], marker="o", color="C1")
    axes[1].set(xlabel="epoch", ylabel="mIoU (%)", title="validation mean IoU")
    return _save_figure(fig, run_dir, "curves.png")


def _save_figure(fig, run_dir: Path, name: str) -> Path:
    """Lay out ``fig`` (a pyplot-free ``Figure``), write it to ``run_dir/figures/name``.

    The figure belongs to no pyplot manager, so nothing needs closing: it is freed with its last
    reference.
    """
    fig.tight_layout()
    path = run_dir / "figures" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_predictions(run_dir: Path, examples: list) -> Path | None:
    """``examples``: (image [3,H,W], mask [H,W], prediction [H,W]) triples, one row each, with a
    legend of the classes present; written to ``run_dir/figures/predictions.png`` (no pyplot)."""
    if not examples:
        return None
    fig = Figure(figsize=(8.2, 2.4 * len(examples)))
    axes = fig.subplots(len(examples), 3, squeeze=False)
    for row, (image, mask, prediction) in enumerate(examples):
        for col, (title, picture) in enumerate((
            ("image", image.permute(1, 2, 0).clamp(0, 1).numpy()),
            ("ground truth", colorize(mask.numpy())),
            ("prediction", colorize(prediction.numpy())),
        )):
            axes[row, col].imshow(picture)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    # which colour is which part: every class that occurs in a mask or a prediction
    present = np.unique(np.concatenate([np.unique(m.numpy()) for _, *pair in examples for m in pair]))
    present = [int(c) for c in present if 0 <= c < len(CLASS_NAMES)]
    handles = [Patch(color=CLASS_COLORS[c] / 255.0, label=CLASS_NAMES[c]) for c in present]
    axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
                       frameon=False)
    return _save_figure(fig, run_dir, "predictions.png")

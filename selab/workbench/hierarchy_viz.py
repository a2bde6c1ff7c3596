"""Pictures of a hierarchy measured against hand-crafted ones (:mod:`selab.experiments.hierarchy`).

:func:`draw_score_curves` plots one score (achievable mIoU, boundary recall, ...) against the nodes per
image, log scale, one curve per method: the learned levels and the baselines, so that a learned level
reads against the baselines at its own node count. :func:`draw_level_partitions` shows the partitions of
one image side by side, one row per level or count and one column per method. Both take the plain
results of :func:`selab.experiments.hierarchy.measure_hierarchy` and
:func:`selab.experiments.hierarchy.image_partitions`, draw into given axes (or new ones) and leave pyplot's
state alone, as :mod:`selab.workbench.viz` does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes

from selab.experiments.hierarchy import METHODS, method_label
from selab.workbench.viz import draw_partition, new_axes, to_numpy

__all__ = ["SCORE_LABELS", "score_curve", "draw_score_curves", "draw_level_partitions"]

#: Axis labels of the scores (the percentages are those of the table).
SCORE_LABELS = {"achievable_miou": "achievable mIoU (%)", "asa": "ASA (%)", "boundary_recall": "boundary recall (%)",
                "undersegmentation_error": "undersegmentation error (%)"}
_STYLE = {"learned": dict(color="black", marker="o", linewidth=2.2, zorder=5),
          "colour": dict(color="tab:blue", marker="s"), "features": dict(color="tab:green", marker="^"),
          "prediction": dict(color="tab:orange", marker="v"), "oracle": dict(color="tab:red", marker="*",
                                                                             linestyle="--")}


def score_curve(result: dict, method: str, score: str = "achievable_miou") -> tuple[np.ndarray, np.ndarray]:
    """``(nodes per image, score)`` of one method over every row it has, sorted by nodes; scores in percent
    except ``nodes_per_image``.

    Examples
    --------
    >>> rows = [{"methods": {"oracle": {"nodes_per_image": n, "asa": a}}} for n, a in ((10, 0.9), (40, 1.0))]
    >>> score_curve({"rows": rows}, "oracle", "asa")
    (array([10., 40.]), array([ 90., 100.]))
    """
    points = sorted((r["methods"][method]["nodes_per_image"], r["methods"][method][score])
                    for r in result["rows"] if method in r["methods"])
    x, y = (np.array(v, dtype=np.float64) for v in zip(*points)) if points else (np.zeros(0), np.zeros(0))
    return x, (y if score == "achievable_miou" else 100.0 * y)


def draw_score_curves(result: dict, score: str = "achievable_miou", ax: Axes | None = None,
                      methods: Sequence[str] = METHODS, title: str | None = None) -> Axes:
    """One score against the nodes per image (log x), one curve per method.

    Examples
    --------
    >>> s = {"nodes_per_image": 50.0, "achievable_miou": 70.0, "asa": 0.9, "boundary_recall": 0.6,
    ...      "undersegmentation_error": 0.1}
    >>> result = {"rows": [{"methods": {"learned": s, "oracle": dict(s, achievable_miou=80.0)}}]}
    >>> ax = draw_score_curves(result, "boundary_recall")
    >>> ax.get_xscale(), ax.get_ylabel()
    ('log', 'boundary recall (%)')
    """
    if score not in SCORE_LABELS:
        raise ValueError(f"draw_score_curves: score must be one of {sorted(SCORE_LABELS)}, got {score!r}")
    ax = new_axes(ax, figsize=(6, 4))
    for method in methods:
        x, y = score_curve(result, method, score)
        if x.size:
            ax.plot(x, y, label=method_label(method), **_STYLE.get(method, {}))
    ax.set_xscale("log")
    ax.set_xlabel("nodes per image")
    ax.set_ylabel(SCORE_LABELS[score])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def draw_level_partitions(image: Any, superpixels: Any, partitions: dict, rows: Sequence[str] | None = None,
                          methods: Sequence[str] = METHODS, axes: Any = None, alpha: float = 0.55):
    """The partitions of one image side by side: a row per level or count, a column per method.

    Parameters
    ----------
    image : [3,H,W] or [H,W,3]
    superpixels : [H,W] int
        The level-0 node of every pixel (ids ``0..N0-1``).
    partitions : dict
        ``{row: {method: cluster [N0]}}`` (one image's, e.g.
        :func:`selab.experiments.hierarchy.partitions_of_image`); a missing method leaves its cell empty.
    rows : sequence of str, optional
        Which rows, in order (default: all).
    axes : 2-D array of Axes, optional
        ``len(rows) x len(methods)``; by default a new figure.

    Returns
    -------
    ndarray of Axes

    Examples
    --------
    >>> parts = {"level 0": {"learned": np.array([0, 1]), "oracle": np.array([0, 0])}}
    >>> axes = draw_level_partitions(np.zeros((2, 2, 3)), np.array([[0, 0], [1, 1]]), parts)
    >>> axes.shape, axes[0, 0].get_title()
    ((1, 5), 'learned, level 0: 2 nodes')
    """
    rows = list(partitions) if rows is None else list(rows)
    superpixels = to_numpy(superpixels).astype(np.int64)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(len(rows), len(methods), figsize=(2.6 * len(methods), 2.6 * len(rows)), squeeze=False)
    axes = np.asarray(axes).reshape(len(rows), len(methods))
    for i, row in enumerate(rows):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            cluster = partitions.get(row, {}).get(method)
            if cluster is None:
                ax.axis("off")
                continue
            cluster = to_numpy(cluster).astype(np.int64)
            nodes = len(np.unique(cluster))
            draw_partition(cluster[superpixels], ax=ax, image=image, alpha=alpha,
                           title=f"{method_label(method)}, {row}: {nodes} nodes")
            ax.title.set_fontsize("small")
    return axes

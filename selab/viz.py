"""Matplotlib pictures of selab's graphs, orders, merges and hierarchies, drawn over the image.

Draws what the Structure-evolving LSTM (Liang et al., CVPR 2017) and the Graph LSTM (Liang et al.,
ECCV 2016) compute: a superpixel region graph over its image, a per-node value (an update rank, a
wavefront level, a gate) painted into the superpixels, per-edge values (merge probabilities) as edge
colours, a partition of the nodes, a class map, a Metropolis-Hastings trace and the hierarchy of levels
as a tree. Every function takes plain numpy arrays or torch tensors (any device), draws into a given
``matplotlib`` axis (or a new one) and returns the axis, so notebooks and widgets stay thin.

Conventions: ``pos [N,2]`` holds (row, col) pixel centroids, so a node is drawn at x = col, y = row;
``edge_index [2,E]`` holds each undirected pair once; ``labels`` / ``assignment`` map pixels to node ids.
Nothing here loops over pixels or edges in Python: edges go into one ``LineCollection``.

Nothing here changes pyplot's state either: pyplot is imported only by :func:`new_axes`, when a caller
asks for a new figure (``ax=None``, the notebook convenience); the backend, the rc parameters and the
caller's other figures are left alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.patches import Patch

from selab.classes import CLASS_COLORS, CLASS_NAMES, colorize

__all__ = [
    "to_numpy",
    "to_image",
    "new_axes",
    "show_image",
    "draw_boundaries",
    "boundary_mask",
    "draw_graph",
    "draw_region_graph",
    "paint_nodes",
    "partition_colors",
    "draw_partition",
    "draw_segmentation",
    "class_legend",
    "class_handles",
    "figure_class_legend",
    "draw_edge_histogram",
    "draw_mh_trace",
    "hierarchy_layout",
    "draw_hierarchy",
    "demo_image",
]


def to_numpy(value: Any) -> np.ndarray:
    """Return ``value`` as a numpy array (torch tensors are detached and moved to the CPU).

    Example
    -------
    >>> to_numpy([1, 2]).tolist()
    [1, 2]
    """
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def to_image(image: Any) -> np.ndarray:
    """Return an RGB image as float ``[H,W,3]`` in [0, 1].

    Accepts ``[H,W,3]`` uint8 or float, ``[H,W]`` grey, or a torch/numpy ``[3,H,W]`` tensor.

    Example
    -------
    >>> to_image(np.zeros((3, 4, 5), dtype=np.float32)).shape
    (4, 5, 3)
    """
    array = to_numpy(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image: expected [H,W,3], [3,H,W] or [H,W], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def new_axes(ax: Axes | None = None, figsize: tuple[float, float] = (5, 5)) -> Axes:
    """Return ``ax``, or the axis of a new pyplot figure when ``ax`` is None.

    The only place selab.viz touches pyplot: a new figure in a notebook should show itself (inline
    backend), so it is made by ``plt.subplots``; the backend is whatever the caller has.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def show_image(image: Any, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Draw an image without ticks.

    Example
    -------
    >>> ax = show_image(np.zeros((4, 4, 3)))
    """
    ax = new_axes(ax)
    ax.imshow(to_image(image), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def draw_boundaries(
    image: Any,
    labels: Any,
    ax: Axes | None = None,
    color: tuple[float, float, float] = (1.0, 1.0, 0.0),
    title: str | None = None,
    alpha: float = 0.8,
) -> Axes:
    """Draw ``image`` with the borders between the regions of ``labels [H,W]`` marked.

    Example
    -------
    >>> ax = draw_boundaries(np.zeros((4, 4, 3)), np.array([[0, 0, 1, 1]] * 4))
    """
    image = to_image(image).copy()
    labels = to_numpy(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels: expected shape {image.shape[:2]} (the image's), got {labels.shape}")
    border = boundary_mask(labels)
    image[border] = (1 - alpha) * image[border] + alpha * np.asarray(color, dtype=np.float32)
    return show_image(image, ax=ax, title=title)


def boundary_mask(labels: Any) -> np.ndarray:
    """Pixels whose right or lower neighbour lies in another region: one-pixel borders, bool [H,W].

    Example
    -------
    >>> boundary_mask(np.array([[0, 0, 1]])).tolist()
    [[False, True, False]]
    """
    labels = to_numpy(labels)
    border = np.zeros(labels.shape, dtype=bool)
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    border[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return border


def _edge_segments(edge_index: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Segments ``[E,2,2]`` in (x, y) = (col, row) display coordinates."""
    xy = pos[:, ::-1]
    return np.stack([xy[edge_index[0]], xy[edge_index[1]]], axis=1)


def draw_graph(
    edge_index: Any,
    pos: Any,
    ax: Axes | None = None,
    edge_values: Any | None = None,
    node_values: Any | None = None,
    edge_cmap: str = "viridis",
    node_cmap: str = "viridis",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    edge_color: str = "white",
    node_color: str = "red",
    node_size: float = 8.0,
    linewidth: float = 1.2,
    colorbar: str | None = None,
) -> Axes:
    """Draw a graph at its node positions: edges as one line collection, nodes as dots.

    Parameters
    ----------
    edge_index : int array [2, E]
    pos : float array [N, 2]
        (row, col) of every node, in pixels.
    edge_values : float array [E], optional
        Colours the edges with ``edge_cmap`` between ``vmin`` and ``vmax`` (e.g. merge probabilities).
    node_values : float array [N], optional
        Colours the nodes with ``node_cmap`` (autoscaled).
    colorbar : str, optional
        When given, add a colour bar for the edge values with this label.

    Example
    -------
    >>> ax = draw_graph(np.array([[0], [1]]), np.array([[0.0, 0.0], [1.0, 1.0]]), edge_values=[0.5])
    """
    ax = new_axes(ax)
    edge_index = to_numpy(edge_index).astype(np.int64).reshape(2, -1)
    pos = to_numpy(pos).astype(np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"pos: expected [N,2] (row, col), got shape {pos.shape}")
    if edge_index.size and edge_index.max() >= len(pos):
        raise ValueError(f"edge_index: node id {edge_index.max()} but pos has only {len(pos)} nodes")
    lines = LineCollection(_edge_segments(edge_index, pos), linewidths=linewidth)
    if edge_values is not None:
        values = to_numpy(edge_values).astype(np.float64).reshape(-1)
        if values.shape[0] != edge_index.shape[1]:
            raise ValueError(
                f"edge_values: expected {edge_index.shape[1]} values (one per edge), got {values.shape[0]}"
            )
        lines.set_array(values)
        lines.set_cmap(edge_cmap)
        lines.set_clim(vmin, vmax)
    else:
        lines.set_color(edge_color)
    ax.add_collection(lines)
    if edge_values is not None and colorbar:
        ax.figure.colorbar(lines, ax=ax, fraction=0.046, pad=0.04, label=colorbar)
    if node_size > 0:
        if node_values is not None:
            ax.scatter(pos[:, 1], pos[:, 0], c=to_numpy(node_values), cmap=node_cmap, s=node_size, zorder=3)
        else:
            ax.scatter(pos[:, 1], pos[:, 0], c=node_color, s=node_size, zorder=3)
    if not ax.images:
        ax.set_xlim(pos[:, 1].min() - 1, pos[:, 1].max() + 1)
        ax.set_ylim(pos[:, 0].max() + 1, pos[:, 0].min() - 1)
        ax.set_aspect("equal")
    return ax


def draw_region_graph(
    image: Any,
    labels: Any,
    edge_index: Any,
    pos: Any,
    ax: Axes | None = None,
    edge_values: Any | None = None,
    title: str | None = None,
    **graph_kwargs: Any,
) -> Axes:
    """Draw the superpixel borders of ``labels`` over ``image`` and the region graph on top.

    Example
    -------
    >>> labels = np.array([[0, 0, 1, 1]] * 4)
    >>> ax = draw_region_graph(np.zeros((4, 4, 3)), labels, [[0], [1]], [[1.5, 0.5], [1.5, 2.5]])
    """
    ax = draw_boundaries(image, labels, ax=ax, title=title, alpha=0.35)
    return draw_graph(edge_index, pos, ax=ax, edge_values=edge_values, **graph_kwargs)


def paint_nodes(
    labels: Any,
    node_values: Any,
    ax: Axes | None = None,
    image: Any | None = None,
    cmap: str = "viridis",
    alpha: float = 0.75,
    title: str | None = None,
    colorbar: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Axes:
    """Paint every region of ``labels [H,W]`` with its node's value (a rank, a level, a gate).

    Example
    -------
    >>> ax = paint_nodes(np.array([[0, 1]]), np.array([0.2, 0.8]))
    """
    ax = new_axes(ax)
    labels = to_numpy(labels).astype(np.int64)
    values = to_numpy(node_values).astype(np.float64).reshape(-1)
    if labels.max() >= len(values):
        raise ValueError(f"node_values: labels reach node {labels.max()} but only {len(values)} values given")
    if image is not None:
        ax.imshow(to_image(image), interpolation="nearest")
    painted = ax.imshow(values[labels], cmap=cmap, alpha=alpha if image is not None else 1.0,
                        interpolation="nearest", vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(painted, ax=ax, fraction=0.046, pad=0.04, label=colorbar)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def partition_colors(num_parts: int, seed: int = 0) -> np.ndarray:
    """``num_parts`` distinct-looking random RGB colours in [0, 1], the same for the same seed.

    Example
    -------
    >>> partition_colors(3).shape
    (3, 3)
    """
    rng = np.random.default_rng(seed)
    hsv = np.stack(
        [rng.permutation(num_parts) / max(num_parts, 1), rng.uniform(0.5, 1.0, num_parts),
         rng.uniform(0.7, 1.0, num_parts)],
        axis=1,
    )
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(hsv)


def draw_partition(
    assignment: Any,
    ax: Axes | None = None,
    image: Any | None = None,
    alpha: float = 0.55,
    title: str | None = None,
    seed: int = 0,
) -> Axes:
    """Paint each part of a partition (``assignment [H,W]``: pixel -> node of a level) in its own colour.

    Part borders are drawn in white, so the shape of each merged region reads even where two random
    colours happen to be close.

    Example
    -------
    >>> ax = draw_partition(np.array([[0, 0, 1]]))
    """
    ax = new_axes(ax)
    assignment = to_numpy(assignment).astype(np.int64)
    colors = partition_colors(int(assignment.max()) + 1, seed=seed)[assignment]
    if image is not None:
        colors = (1 - alpha) * to_image(image) + alpha * colors
    colors[boundary_mask(assignment)] = 1.0
    ax.imshow(colors, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def class_handles(classes: Sequence[int] | None = None) -> list[Patch]:
    """Legend patches of the class colours (all classes, or only ``classes``), named by
    :data:`selab.classes.CLASS_NAMES`.

    Example
    -------
    >>> [h.get_label() for h in class_handles([0, 1])]
    ['background', 'head']
    """
    ids = range(len(CLASS_NAMES)) if classes is None else classes
    for i in ids:
        if not 0 <= int(i) < len(CLASS_NAMES):
            raise ValueError(f"classes: expected ids in 0..{len(CLASS_NAMES) - 1}, got {i}")
    return [Patch(facecolor=CLASS_COLORS[int(i)] / 255.0, edgecolor="0.5", label=CLASS_NAMES[int(i)])
            for i in ids]


def class_legend(ax: Axes, classes: Sequence[int] | None = None, **legend_kwargs: Any) -> Any:
    """Add a legend of class colours (all classes, or only ``classes``) beside ``ax``; returns it."""
    legend_kwargs.setdefault("loc", "upper left")
    legend_kwargs.setdefault("bbox_to_anchor", (1.01, 1.0))
    legend_kwargs.setdefault("fontsize", "small")
    return ax.legend(handles=class_handles(classes), **legend_kwargs)


def figure_class_legend(figure: Any, classes: Sequence[int] | None = None, title: str | None = None,
                        **legend_kwargs: Any) -> Any:
    """One legend of class colours for a whole figure, in a row along its bottom edge; returns it.

    For figures whose several panels share the colours (prediction, ground truth, hierarchy nodes):
    one legend says which colour is which part without shrinking any panel.

    Example
    -------
    >>> from matplotlib.figure import Figure
    >>> figure_class_legend(Figure(), title="classes").get_title().get_text()
    'classes'
    """
    handles = class_handles(classes)
    legend_kwargs.setdefault("loc", "lower center")
    legend_kwargs.setdefault("ncols", len(handles))
    legend_kwargs.setdefault("fontsize", "small")
    legend_kwargs.setdefault("frameon", False)
    return figure.legend(handles=handles, title=title, title_fontsize="small", **legend_kwargs)


def draw_segmentation(
    mask: Any,
    ax: Axes | None = None,
    image: Any | None = None,
    alpha: float = 0.6,
    title: str | None = None,
    legend: bool = False,
) -> Axes:
    """Draw a class map ``mask [H,W]`` in :data:`selab.classes.CLASS_COLORS`, over ``image`` if given.

    Example
    -------
    >>> ax = draw_segmentation(np.array([[0, 1], [2, 6]]))
    """
    ax = new_axes(ax)
    colors = colorize(to_numpy(mask).astype(np.int64)).astype(np.float32) / 255.0
    if image is not None:
        colors = (1 - alpha) * to_image(image) + alpha * colors
    ax.imshow(colors, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if legend:
        class_legend(ax)
    return ax


def draw_edge_histogram(
    values: Any,
    ax: Axes | None = None,
    target: Any | None = None,
    bins: int = 20,
    title: str | None = None,
) -> Axes:
    """Histogram of per-edge values in [0, 1]; split by a 0/1 ``target`` (same-label edges) if given.

    Example
    -------
    >>> ax = draw_edge_histogram([0.1, 0.9, 0.8], target=[0, 1, 1])
    """
    ax = new_axes(ax, figsize=(4, 3))
    values = to_numpy(values).astype(np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    if target is None:
        ax.hist(values, bins=edges, color="tab:blue")
    else:
        same = to_numpy(target).reshape(-1) > 0.5
        ax.hist([values[same], values[~same]], bins=edges, stacked=True,
                color=["tab:green", "tab:red"], label=["same label", "different labels"])
        ax.legend(fontsize="small")
    ax.set_xlabel("merge probability")
    ax.set_ylabel("edges")
    if title:
        ax.set_title(title)
    return ax


def draw_mh_trace(
    energy: Any,
    accepted: Any,
    ax: Axes | None = None,
    current_energy: Any | None = None,
    title: str | None = None,
) -> Axes:
    """Plot a Metropolis-Hastings chain: each proposal's energy, marked accepted (o) or rejected (x).

    Parameters
    ----------
    energy : float array [S]
        Energy of the proposal made at each step.
    accepted : bool array [S]
    current_energy : float array [S], optional
        Energy of the chain's state after each step (drawn as a step line).

    Example
    -------
    >>> ax = draw_mh_trace([3.0, 2.0, 2.5], [True, True, False])
    """
    ax = new_axes(ax, figsize=(5, 3))
    energy = to_numpy(energy).astype(np.float64).reshape(-1)
    accepted = to_numpy(accepted).astype(bool).reshape(-1)
    if accepted.shape != energy.shape:
        raise ValueError(f"accepted: expected {energy.shape[0]} flags (one per step), got {accepted.shape[0]}")
    steps = np.arange(len(energy))
    ax.scatter(steps[accepted], energy[accepted], marker="o", color="tab:green", label="accepted", zorder=3)
    ax.scatter(steps[~accepted], energy[~accepted], marker="x", color="tab:red", label="rejected", zorder=3)
    if current_energy is not None:
        ax.step(steps, to_numpy(current_energy).reshape(-1), where="post", color="k", lw=1, label="chain state")
    ax.set_xlabel("MH step")
    ax.set_ylabel("energy of proposal")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def hierarchy_layout(clusters: Sequence[Any], pos: Any) -> list[np.ndarray]:
    """x positions of every node of every level for :func:`draw_hierarchy`.

    Level 0 nodes sit at their own column; a coarser node at the mean x of its members.

    Example
    -------
    >>> [x.tolist() for x in hierarchy_layout([np.array([0, 0, 1])], np.array([[0, 0], [0, 2], [0, 4.0]]))]
    [[0.0, 2.0, 4.0], [1.0, 4.0]]
    """
    xs = [to_numpy(pos).astype(np.float64)[:, 1]]
    for cluster in clusters:
        cluster = to_numpy(cluster).astype(np.int64)
        count = np.bincount(cluster)
        total = np.bincount(cluster, weights=xs[-1], minlength=len(count))
        xs.append(total / np.maximum(count, 1))
    return xs


def draw_hierarchy(
    clusters: Sequence[Any],
    pos: Any,
    ax: Axes | None = None,
    node_colors: Sequence[Any] | None = None,
    title: str | None = None,
) -> Axes:
    """Draw the hierarchy of levels as a tree: level 0 at the bottom, each node linked to its parent.

    Parameters
    ----------
    clusters : list of int arrays
        ``clusters[l] [N_l]`` maps the nodes of level ``l`` to the nodes of level ``l + 1``.
    pos : float array [N_0, 2]
        (row, col) of the level-0 nodes; their columns place the leaves left to right.
    node_colors : list of arrays, optional
        One colour spec per level (e.g. class colours of the nodes' predictions).

    Example
    -------
    >>> ax = draw_hierarchy([np.array([0, 0, 1]), np.array([0, 0])], np.array([[0, 0], [0, 2], [0, 4.0]]))
    """
    ax = new_axes(ax, figsize=(7, 3))
    xs = hierarchy_layout(clusters, pos)
    segments = [
        np.stack([np.stack([xs[level], np.full_like(xs[level], level)], 1),
                  np.stack([xs[level + 1][to_numpy(cluster).astype(np.int64)],
                            np.full_like(xs[level], level + 1)], 1)], axis=1)
        for level, cluster in enumerate(clusters)
    ]
    if segments:
        ax.add_collection(LineCollection(np.concatenate(segments), colors="0.6", linewidths=0.6))
    for level, x in enumerate(xs):
        color = "tab:blue" if node_colors is None else node_colors[level]
        ax.scatter(x, np.full_like(x, level), s=max(4.0, 60.0 / np.sqrt(len(x))), c=color, zorder=3)
    ax.set_yticks(range(len(xs)), [f"level {level}\n{len(x)} nodes" for level, x in enumerate(xs)])
    ax.set_xlabel("image column")
    ax.autoscale_view()
    if title:
        ax.set_title(title)
    return ax


def demo_image(name: str = "astronaut", size: int | None = 256) -> np.ndarray:
    """A scikit-image sample photo by name (``astronaut``, ``chelsea``, ``coffee``, ...), float [H,W,3].

    ``size`` rescales the longer side to that many pixels (None keeps the original size).

    Example
    -------
    >>> demo_image("chelsea", 64).shape
    (43, 64, 3)
    """
    import skimage.data
    from skimage.transform import resize

    loader = getattr(skimage.data, name, None)
    if loader is None or not callable(loader):
        raise ValueError(f"name: expected a scikit-image sample photo such as 'astronaut', got {name!r}")
    image = to_image(loader())
    if size is not None:
        if size < 8:
            raise ValueError(f"size: expected at least 8 pixels, got {size}")
        scale = size / max(image.shape[:2])
        shape = (round(image.shape[0] * scale), round(image.shape[1] * scale))
        image = resize(image, shape, anti_aliasing=True).astype(np.float32)
    return image

"""Matplotlib pictures of selab's graphs, orders, merges and hierarchies, drawn over the image.

Draws what the Structure-evolving LSTM (Liang et al., CVPR 2017) and the Graph LSTM (Liang et al.,
ECCV 2016) compute: a superpixel region graph over its image, a per-node value (an update rank, a
wavefront level, a gate) painted into the superpixels, per-edge values (merge probabilities) as edge
colours or as colours of the border two nodes share, a partition of the nodes (random or class colours),
a class map, a Metropolis-Hastings trace and the hierarchy of levels as an icicle of blocks. Every function takes plain numpy arrays or torch tensors (any device), draws into a given
``matplotlib`` axis (or a new one) and returns the axis, so notebooks and widgets stay thin.

Conventions: ``pos [N,2]`` holds (row, col) pixel centroids, so a node is drawn at x = col, y = row;
``edge_index [2,E]`` holds each undirected pair once; ``labels`` / ``assignment`` map pixels to node ids.
Nothing here loops over pixels or edges in Python: edges go into one ``LineCollection``, borders are
found with array comparisons and a sorted lookup, hierarchy blocks go into one collection per level.

Nothing here changes pyplot's state either: pyplot is imported only by :func:`new_axes`, when a caller
asks for a new figure (``ax=None``, the notebook convenience); the backend, the rc parameters and the
caller's other figures are left alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import skimage.data
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import hsv_to_rgb, to_rgb
from matplotlib.patches import Patch, Rectangle
from scipy.ndimage import maximum_filter
from skimage.transform import resize

from selab.classes import CLASS_COLORS, CLASS_NAMES, colorize

__all__ = ["to_numpy", "to_image", "new_axes", "show_image", "draw_boundaries", "boundary_mask", "draw_graph",
           "draw_region_graph", "border_pixels", "draw_border_values", "paint_nodes", "partition_colors",
           "draw_partition", "draw_segmentation", "draw_no_data", "class_legend", "class_handles",
           "figure_class_legend", "draw_edge_histogram", "draw_mh_trace", "hierarchy_layout", "hierarchy_blocks",
           "draw_hierarchy", "demo_image"]


def to_numpy(value: Any) -> np.ndarray:
    """Return ``value`` as a numpy array (torch tensors are detached and moved to the CPU).

    Examples
    --------
    >>> to_numpy([1, 2]).tolist()
    [1, 2]
    """
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def to_image(image: Any) -> np.ndarray:
    """Return an RGB image as float ``[H,W,3]`` in [0, 1].

    Accepts ``[H,W,3]`` uint8 or float, ``[H,W]`` grey, or a torch/numpy ``[3,H,W]`` tensor.

    Examples
    --------
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

    The only place selab.workbench.viz touches pyplot: a new figure in a notebook should show itself (inline
    backend), so it is made by ``plt.subplots``; the backend is whatever the caller has.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def _finish(ax: Axes, title: str | None, axis_off: bool = True) -> Axes:
    """A panel's last touches: no ticks on a picture (``axis_off``), and its title."""
    if axis_off:
        ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def _colorbar(ax: Axes, mappable: Any, label: str | None) -> None:
    """A colour bar beside ``ax`` when a ``label`` is given (the ``colorbar`` argument of the draw functions)."""
    if label:
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, label=label)


def _edge_values(edge_values: Any, edge_index: np.ndarray) -> np.ndarray:
    """``edge_values`` as float [E], one per edge of ``edge_index`` [2,E], or a ValueError."""
    values = to_numpy(edge_values).astype(np.float64).reshape(-1)
    if values.shape[0] != edge_index.shape[1]:
        raise ValueError(f"edge_values: expected {edge_index.shape[1]} values (one per edge), got {values.shape[0]}")
    return values


def show_image(image: Any, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Draw an image without ticks.

    Examples
    --------
    >>> ax = show_image(np.zeros((4, 4, 3)))
    """
    ax = new_axes(ax)
    ax.imshow(to_image(image), interpolation="nearest")
    return _finish(ax, title)


def draw_boundaries(image: Any, labels: Any, ax: Axes | None = None,
                    color: tuple[float, float, float] = (1.0, 1.0, 0.0), title: str | None = None,
                    alpha: float = 0.8) -> Axes:
    """Draw ``image`` with the borders between the regions of ``labels [H,W]`` marked.

    Examples
    --------
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

    Examples
    --------
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


def draw_graph(edge_index: Any, pos: Any, ax: Axes | None = None, edge_values: Any | None = None,
               node_values: Any | None = None, edge_cmap: str = "viridis", node_cmap: str = "viridis",
               vmin: float | None = 0.0, vmax: float | None = 1.0, edge_color: str = "white",
               node_color: str = "red", node_size: float = 8.0, linewidth: float = 1.2,
               colorbar: str | None = None) -> Axes:
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

    Examples
    --------
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
        lines.set_array(_edge_values(edge_values, edge_index))
        lines.set_cmap(edge_cmap)
        lines.set_clim(vmin, vmax)
        _colorbar(ax, lines, colorbar)
    else:
        lines.set_color(edge_color)
    ax.add_collection(lines)
    if node_size > 0:
        colors = node_color if node_values is None else to_numpy(node_values)
        ax.scatter(pos[:, 1], pos[:, 0], c=colors, cmap=None if node_values is None else node_cmap, s=node_size,
                   zorder=3)
    if not ax.images:
        ax.set_xlim(pos[:, 1].min() - 1, pos[:, 1].max() + 1)
        ax.set_ylim(pos[:, 0].max() + 1, pos[:, 0].min() - 1)
        ax.set_aspect("equal")
    return ax


def draw_region_graph(image: Any, labels: Any, edge_index: Any, pos: Any, ax: Axes | None = None,
                      edge_values: Any | None = None, title: str | None = None, **graph_kwargs: Any) -> Axes:
    """Draw the superpixel borders of ``labels`` over ``image`` and the region graph on top.

    Examples
    --------
    >>> labels = np.array([[0, 0, 1, 1]] * 4)
    >>> ax = draw_region_graph(np.zeros((4, 4, 3)), labels, [[0], [1]], [[1.5, 0.5], [1.5, 2.5]])
    """
    ax = draw_boundaries(image, labels, ax=ax, title=title, alpha=0.35)
    return draw_graph(edge_index, pos, ax=ax, edge_values=edge_values, **graph_kwargs)


def border_pixels(assignment: Any, edge_index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The pixels on the border of every edge of a level: ``(pixel [P], edge [P])``, flat pixel ids.

    ``assignment [H,W]`` maps pixels to the level's nodes, ``edge_index [2,E]`` holds that level's
    (4-connected) adjacency. Every horizontally or vertically neighbouring pixel pair of two different
    nodes belongs to the edge joining them; both pixels of the pair are returned, so a border is two
    pixels wide. Pairs of nodes without an edge in ``edge_index`` are left out.

    Examples
    --------
    >>> pixel, edge = border_pixels(np.array([[0, 1, 1]]), np.array([[0], [1]]))
    >>> pixel.tolist(), edge.tolist()
    ([0, 1], [0, 0])
    """
    assignment = to_numpy(assignment).astype(np.int64)
    edge_index = to_numpy(edge_index).astype(np.int64).reshape(2, -1)
    if assignment.ndim != 2:
        raise ValueError(f"assignment: expected [H,W] (pixel -> node), got shape {assignment.shape}")
    num = int(max(assignment.max(initial=0), edge_index.max(initial=0))) + 1
    ids = np.arange(assignment.size).reshape(assignment.shape)
    firsts, seconds = [], []
    for a, b, ia, ib in ((assignment[:, :-1], assignment[:, 1:], ids[:, :-1], ids[:, 1:]),
                         (assignment[:-1, :], assignment[1:, :], ids[:-1, :], ids[1:, :])):
        apart = a != b
        firsts.append(np.stack([a[apart], b[apart]]))
        seconds.append(np.stack([ia[apart], ib[apart]]))
    nodes, pixels = np.concatenate(firsts, axis=1), np.concatenate(seconds, axis=1)
    keys = nodes.min(0) * num + nodes.max(0)
    edge_keys = edge_index.min(0) * num + edge_index.max(0)
    order = np.argsort(edge_keys, kind="stable")
    found = np.searchsorted(edge_keys[order], keys)
    found = np.minimum(found, max(len(order) - 1, 0))
    known = (edge_keys[order][found] == keys) if len(order) else np.zeros(len(keys), dtype=bool)
    edge = order[found[known]] if len(order) else np.zeros(0, dtype=np.int64)
    return np.concatenate([pixels[0, known], pixels[1, known]]), np.concatenate([edge, edge])


def draw_border_values(assignment: Any, edge_index: Any, edge_values: Any, ax: Axes | None = None,
                       image: Any | None = None, cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0,
                       width: int = 3, colorbar: str | None = None, title: str | None = None) -> Axes:
    """Colour the border between every two adjacent nodes by their edge's value (a merge probability).

    Lines from centroid to centroid (:func:`draw_graph`) turn into a star of overlapping lines around
    a large node of a coarse level; drawn on the shared border instead, every edge keeps its own
    place, so the merge probabilities of a large node with each of its neighbours can be told apart.
    Where borders meet, the larger value is shown. ``width`` widens the borders (pixels).

    Examples
    --------
    >>> ax = draw_border_values(np.array([[0, 0, 1, 1]] * 4), [[0], [1]], [0.9])
    >>> float(np.nanmax(ax.images[-1].get_array()))
    0.9
    """
    ax = new_axes(ax)
    assignment = to_numpy(assignment).astype(np.int64)
    edge_index = to_numpy(edge_index).astype(np.int64).reshape(2, -1)
    values = _edge_values(edge_values, edge_index)
    pixel, edge = border_pixels(assignment, edge_index)
    painted = np.full(assignment.size, -np.inf)
    np.maximum.at(painted, pixel, values[edge])
    painted = painted.reshape(assignment.shape)
    if width > 2:  # the pair already gives two pixels
        painted = maximum_filter(painted, size=width - 1, mode="nearest")
    shown = np.ma.masked_invalid(np.where(np.isfinite(painted), painted, np.nan))
    if image is not None:  # the photo, lighter, so that the coloured borders stand out
        ax.imshow(0.45 * to_image(image) + 0.55, interpolation="nearest")
    _colorbar(ax, ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"), colorbar)
    return _finish(ax, title)


def paint_nodes(labels: Any, node_values: Any, ax: Axes | None = None, image: Any | None = None,
                cmap: str = "viridis", alpha: float = 0.75, title: str | None = None, colorbar: str | None = None,
                vmin: float | None = None, vmax: float | None = None) -> Axes:
    """Paint every region of ``labels [H,W]`` with its node's value (a rank, a level, a gate).

    Examples
    --------
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
    _colorbar(ax, painted, colorbar)
    return _finish(ax, title)


def partition_colors(num_parts: int, seed: int = 0) -> np.ndarray:
    """``num_parts`` distinct-looking random RGB colours in [0, 1], the same for the same seed.

    Examples
    --------
    >>> partition_colors(3).shape
    (3, 3)
    """
    rng = np.random.default_rng(seed)
    return hsv_to_rgb(np.stack([rng.permutation(num_parts) / max(num_parts, 1), rng.uniform(0.5, 1.0, num_parts),
                                rng.uniform(0.7, 1.0, num_parts)], axis=1))


def draw_partition(assignment: Any, ax: Axes | None = None, image: Any | None = None, alpha: float = 0.55,
                   title: str | None = None, seed: int = 0, node_classes: Any | None = None) -> Axes:
    """Paint each part of a partition (``assignment [H,W]``: pixel -> node of a level) in its own colour.

    Part borders are drawn in white, so the shape of each merged region reads even where two colours
    are close. With ``node_classes [N]`` (e.g. each clique's majority class) every part takes its
    class colour (:data:`selab.classes.CLASS_COLORS`) instead of a random one.

    Examples
    --------
    >>> ax = draw_partition(np.array([[0, 0, 1]]))
    >>> ax = draw_partition(np.array([[0, 0, 1]]), node_classes=[2, 1])
    """
    ax = new_axes(ax)
    assignment = to_numpy(assignment).astype(np.int64)
    num_parts = int(assignment.max()) + 1
    if node_classes is None:
        colors = partition_colors(num_parts, seed=seed)[assignment]
    else:
        classes = to_numpy(node_classes).astype(np.int64).reshape(-1)
        if classes.shape[0] < num_parts:
            raise ValueError(f"node_classes: expected {num_parts} classes (one per part), got {classes.shape[0]}")
        colors = CLASS_COLORS[classes].astype(np.float32)[assignment] / 255.0
    if image is not None:
        colors = (1 - alpha) * to_image(image) + alpha * colors
    colors[boundary_mask(assignment)] = 1.0
    ax.imshow(colors, interpolation="nearest")
    return _finish(ax, title)


def draw_no_data(ax: Axes, text: str, image: Any | None = None, title: str | None = None) -> Axes:
    """A panel that has nothing to show says so: ``text`` in its middle, over a faded ``image`` if given.

    For panels that depend on data an input may lack (the ground truth of a photo): the panel keeps its
    place and tells the reader why it is empty, rather than disappearing.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> draw_no_data(Figure().subplots(), "no ground truth").texts[0].get_text()
    'no ground truth'
    """
    if image is not None:
        ax.imshow(0.3 * to_image(image) + 0.7, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.25", wrap=True)
    return _finish(ax, title, axis_off=False)


def class_handles(classes: Sequence[int] | None = None) -> list[Patch]:
    """Legend patches of the class colours (all classes, or only ``classes``), named by
    :data:`selab.classes.CLASS_NAMES`.

    Examples
    --------
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

    Examples
    --------
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


def draw_segmentation(mask: Any, ax: Axes | None = None, image: Any | None = None, alpha: float = 0.6,
                      title: str | None = None, legend: bool = False) -> Axes:
    """Draw a class map ``mask [H,W]`` in :data:`selab.classes.CLASS_COLORS`, over ``image`` if given.

    Examples
    --------
    >>> ax = draw_segmentation(np.array([[0, 1], [2, 6]]))
    """
    ax = new_axes(ax)
    colors = colorize(to_numpy(mask).astype(np.int64)).astype(np.float32) / 255.0
    if image is not None:
        colors = (1 - alpha) * to_image(image) + alpha * colors
    ax.imshow(colors, interpolation="nearest")
    if legend:
        class_legend(ax)
    return _finish(ax, title)


def draw_edge_histogram(values: Any, ax: Axes | None = None, target: Any | None = None, bins: int = 20,
                        title: str | None = None,
                        target_labels: tuple[str, str] = ("same label", "different labels")) -> Axes:
    """Histogram of per-edge values in [0, 1]; split by a 0/1 ``target`` (same-label edges) if given.

    ``target_labels`` names the two groups (target 1, target 0) in the legend.

    Examples
    --------
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
                color=["tab:green", "tab:red"], label=list(target_labels))
        ax.legend(fontsize="small")
    ax.set(xlabel="merge probability", ylabel="edges")
    return _finish(ax, title, axis_off=False)


def draw_mh_trace(energy: Any, accepted: Any, ax: Axes | None = None, current_energy: Any | None = None,
                  title: str | None = None) -> Axes:
    """Plot a Metropolis-Hastings chain: each proposal's energy, marked accepted (o) or rejected (x).

    Parameters
    ----------
    energy : float array [S]
        Energy of the proposal made at each step.
    accepted : bool array [S]
    current_energy : float array [S], optional
        Energy of the chain's state after each step (drawn as a step line).

    Examples
    --------
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
    ax.set(xlabel="MH step", ylabel="energy of proposal")
    ax.legend(fontsize="small")
    return _finish(ax, title, axis_off=False)


def hierarchy_layout(clusters: Sequence[Any], pos: Any) -> list[np.ndarray]:
    """x positions of every node of every level for :func:`draw_hierarchy`.

    Level 0 nodes sit at their own column; a coarser node at the mean x of its members.

    Examples
    --------
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


def hierarchy_blocks(clusters: Sequence[Any], pos: Any, sizes: Any | None = None,
                     groups: Sequence[Any] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where :func:`draw_hierarchy` puts every node: ``(left [N_l], width [N_l])`` per level, in [0, 1].

    Every node is an interval whose width is its share of the image (``sizes``: pixels of the level-0
    nodes; default one each); a node's interval is exactly the union of its children's, so the levels
    stack like an icicle plot. Siblings are ordered left to right by their mean column, and so are the
    nodes of the top level: the picture reads roughly like the image, left to right. With ``groups``
    (one int array per level, e.g. every node's majority class) siblings and top nodes are ordered by
    group first, then by column: each class then forms one band per parent (and one band at the top).

    Examples
    --------
    >>> blocks = hierarchy_blocks([np.array([1, 1, 0])], np.array([[0, 0], [0, 1], [0, 5.0]]), [1, 1, 2])
    >>> [(left.tolist(), width.tolist()) for left, width in blocks]
    [([0.0, 0.25, 0.5], [0.25, 0.25, 0.5]), ([0.5, 0.0], [0.5, 0.5])]
    """
    pos = to_numpy(pos).astype(np.float64)
    num_leaves = pos.shape[0]
    sizes = np.ones(num_leaves) if sizes is None else to_numpy(sizes).astype(np.float64).reshape(-1)
    if sizes.shape[0] != num_leaves:
        raise ValueError(f"sizes: expected {num_leaves} values (one per level-0 node), got {sizes.shape[0]}")
    # leaf -> its node at every level, and every node's size and size-weighted mean column
    owners = [np.arange(num_leaves)]
    for level, cluster in enumerate(clusters):
        cluster = to_numpy(cluster).astype(np.int64).reshape(-1)
        if cluster.shape[0] != int(owners[-1].max(initial=-1)) + 1:
            raise ValueError(f"clusters[{level}]: expected {int(owners[-1].max(initial=-1)) + 1} entries "
                             f"(one per node of level {level}), got {cluster.shape[0]}")
        owners.append(cluster[owners[-1]])
    if groups is not None and len(groups) != len(owners):
        raise ValueError(f"groups: expected one array per level ({len(owners)}), got {len(groups)}")
    ranks, totals = [], []
    for level, owner in enumerate(owners):
        count = int(owner.max(initial=-1)) + 1
        total = np.bincount(owner, weights=sizes, minlength=count)
        column = np.bincount(owner, weights=sizes * pos[:, 1], minlength=count) / np.maximum(total, 1e-12)
        group = np.zeros(count) if groups is None else to_numpy(groups[level]).reshape(-1)
        if group.shape[0] != count:
            raise ValueError(f"groups[{level}]: expected {count} values (one per node), got {group.shape[0]}")
        rank = np.empty(count, dtype=np.int64)
        rank[np.lexsort((np.arange(count), column, group))] = np.arange(count)  # by group, column, then id
        ranks.append(rank[owner])
        totals.append(total)
    # leaves sorted by their top-level node first, then down the levels: every node's leaves are contiguous
    order = np.lexsort(ranks)
    left_of_leaf = np.empty(num_leaves)
    left_of_leaf[order] = np.concatenate([[0.0], np.cumsum(sizes[order])[:-1]])
    scale = max(sizes.sum(), 1e-12)
    blocks = []
    for owner, total in zip(owners, totals):
        left = np.full(len(total), np.inf)
        np.minimum.at(left, owner, left_of_leaf)
        blocks.append((left / scale, total / scale))
    return blocks


def draw_hierarchy(clusters: Sequence[Any], pos: Any, ax: Axes | None = None,
                   node_colors: Sequence[Any] | None = None, title: str | None = None, sizes: Any | None = None,
                   highlight: int | None = None, label_min_width: float = 0.05,
                   groups: Sequence[Any] | None = None) -> Axes:
    """Draw the hierarchy of levels as an icicle: one row per level (level 0 at the bottom), one block
    per node, as wide as its share of the image and exactly above the nodes it merged.

    A clique reads as one wide block over the many narrow ones it joined; its colour says its class
    (``node_colors``, e.g. each node's majority predicted class) and blocks of at least
    ``label_min_width`` of the row are labelled with the number of superpixels they hold. Neighbouring
    blocks alternate in lightness and are separated by white lines, so that two cliques of one class
    stay two. ``highlight`` frames one level's row (the layer shown elsewhere).

    Parameters
    ----------
    clusters : list of int arrays
        ``clusters[l] [N_l]`` maps the nodes of level ``l`` to the nodes of level ``l + 1``.
    pos : float array [N_0, 2]
        (row, col) of the level-0 nodes; their columns order the blocks left to right.
    node_colors : list of arrays, optional
        One RGB colour per node and level (default: one blue).
    sizes : float array [N_0], optional
        Pixels of every level-0 node (block widths; default equal).
    groups : list of int arrays, optional
        Orders siblings by group before column (see :func:`hierarchy_blocks`), e.g. the node classes.

    Examples
    --------
    >>> ax = draw_hierarchy([np.array([0, 0, 1]), np.array([0, 0])], np.array([[0, 0], [0, 2], [0, 4.0]]))
    >>> len(ax.collections)  # one row of blocks per level
    3
    """
    ax = new_axes(ax, figsize=(7, 3))
    blocks = hierarchy_blocks(clusters, pos, sizes, groups)
    leaf_sizes = np.ones(len(blocks[0][0])) if sizes is None else to_numpy(sizes).astype(np.float64).reshape(-1)
    owner = np.arange(len(leaf_sizes))
    for level, (left, width) in enumerate(blocks):
        if level:
            owner = to_numpy(clusters[level - 1]).astype(np.int64)[owner]
        members = np.bincount(owner, minlength=len(left))
        if node_colors is None:
            colors = np.tile(np.asarray(to_rgb("tab:blue")), (len(left), 1))
        else:
            colors = np.asarray(node_colors[level], dtype=np.float64).reshape(len(left), -1)[:, :3]
        # alternate lightness along the row: neighbouring blocks of one class stay apart
        parity = np.argsort(np.argsort(left, kind="stable"), kind="stable") % 2 == 1
        colors = np.where(parity[:, None], 0.75 * colors + 0.25, colors)
        y0, y1 = level - 0.42, level + 0.42
        corners = np.stack([np.stack([left, np.full_like(left, y0)], 1), np.stack([left + width, np.full_like(left, y0)], 1),
                            np.stack([left + width, np.full_like(left, y1)], 1), np.stack([left, np.full_like(left, y1)], 1)], 1)
        wide = width >= 0.004  # separators only where a block is more than a sliver
        ax.add_collection(PolyCollection(corners, facecolors=colors, edgecolors="white",
                                         linewidths=np.where(wide, 0.6, 0.0)))
        for i in np.flatnonzero(width >= label_min_width):
            dark = colors[i] @ np.array([0.299, 0.587, 0.114]) < 0.5
            ax.text(left[i] + width[i] / 2, level, f"{members[i]}", ha="center", va="center", fontsize="x-small",
                    color="white" if dark else "black", clip_on=True)
    if highlight is not None and 0 <= highlight < len(blocks):
        ax.add_patch(Rectangle((0.0, highlight - 0.48), 1.0, 0.96, fill=False, edgecolor="0.15", linewidth=1.5))
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.55, len(blocks) - 0.45)
    ax.set_yticks(range(len(blocks)), [f"level {level}\n{len(left)} nodes" for level, (left, _) in enumerate(blocks)])
    ax.set_xlabel("share of the image; numbers: superpixels")
    ax.tick_params(axis="x", labelsize="small")
    return _finish(ax, title, axis_off=False)


def demo_image(name: str = "astronaut", size: int | None = 256) -> np.ndarray:
    """A scikit-image sample photo by name (``astronaut``, ``chelsea``, ``coffee``, ...), float [H,W,3].

    ``size`` rescales the longer side to that many pixels (None keeps the original size).

    Examples
    --------
    >>> demo_image("chelsea", 64).shape
    (43, 64, 3)
    """
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

"""selab.workbench.viz: every drawing function draws what it is given and rejects malformed input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from selab.workbench import viz
from selab.classes import CLASS_COLORS


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_to_image_accepts_the_three_layouts():
    hwc = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    assert np.allclose(viz.to_image(torch.from_numpy(hwc).permute(2, 0, 1)), hwc)
    assert np.allclose(viz.to_image((hwc * 255).astype(np.uint8)), hwc, atol=1 / 255)
    assert viz.to_image(hwc[..., 0]).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="image"):
        viz.to_image(np.zeros((4, 5, 2)))


def test_draw_graph_puts_one_segment_per_edge_at_col_row():
    pos = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])  # (row, col)
    edge_index = np.array([[0, 1], [1, 2]])
    ax = viz.draw_graph(edge_index, pos, edge_values=[0.25, 0.75])
    lines = ax.collections[0]
    segments = np.asarray(lines.get_segments())
    assert segments.shape == (2, 2, 2)
    assert np.allclose(segments[0], [[1.0, 0.0], [3.0, 2.0]])  # x = col, y = row
    assert np.allclose(lines.get_array(), [0.25, 0.75])


def test_draw_graph_rejects_mismatched_inputs():
    pos = np.zeros((3, 2))
    with pytest.raises(ValueError, match="edge_values"):
        viz.draw_graph([[0], [1]], pos, edge_values=[0.1, 0.2])
    with pytest.raises(ValueError, match="edge_index"):
        viz.draw_graph([[0], [7]], pos)
    with pytest.raises(ValueError, match="pos"):
        viz.draw_graph([[0], [1]], np.zeros((3, 3)))


def test_paint_nodes_copies_node_values_to_their_pixels():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    ax = viz.paint_nodes(labels, torch.tensor([5.0, 6.0, 7.0]))
    assert np.array_equal(ax.images[0].get_array(), [[5, 5, 6], [7, 7, 6]])
    with pytest.raises(ValueError, match="node_values"):
        viz.paint_nodes(labels, [1.0, 2.0])


def test_draw_partition_gives_each_part_one_colour_and_white_borders():
    assignment = np.array([[0, 0, 0, 1, 1, 1]] * 3)
    shown = viz.draw_partition(assignment).images[0].get_array()
    left, right = shown[1, 0], shown[1, 5]
    assert not np.allclose(left, right)
    assert np.allclose(shown[:, 2], 1.0) and not np.allclose(shown[:, 3], 1.0)  # one-pixel borders


def test_draw_segmentation_uses_class_colours():
    shown = viz.draw_segmentation(np.array([[1, 2]])).images[0].get_array()
    assert np.allclose(shown[0, 0], CLASS_COLORS[1] / 255.0)
    assert np.allclose(shown[0, 1], CLASS_COLORS[2] / 255.0)


def test_draw_mh_trace_marks_accepted_and_rejected():
    ax = viz.draw_mh_trace([3.0, 2.0, 2.5, 1.0], [True, True, False, True], current_energy=[3, 2, 2, 1])
    accepted, rejected = ax.collections[:2]
    assert len(accepted.get_offsets()) == 3 and len(rejected.get_offsets()) == 1
    with pytest.raises(ValueError, match="accepted"):
        viz.draw_mh_trace([1.0, 2.0], [True])


def test_hierarchy_layout_places_parents_at_the_mean_of_their_children():
    pos = np.array([[0, 0.0], [0, 2.0], [0, 4.0], [0, 10.0]])
    xs = viz.hierarchy_layout([np.array([0, 0, 1, 1]), np.array([0, 0])], pos)
    assert [len(x) for x in xs] == [4, 2, 1]
    assert np.allclose(xs[1], [1.0, 7.0]) and np.allclose(xs[2], [4.0])


def test_hierarchy_blocks_nest_every_node_over_its_children_sized_by_pixels():
    """Each node's block is exactly the union of its children's, as wide as its pixel share; siblings
    and top nodes ordered left to right by mean column."""
    rng = np.random.default_rng(0)
    pos = np.stack([np.zeros(12), rng.permutation(12).astype(float)], 1)
    sizes = rng.integers(1, 9, 12).astype(float)
    clusters = [np.array([0, 1, 0, 2, 1, 3, 3, 2, 0, 4, 4, 1]), np.array([1, 0, 1, 0, 1])]
    blocks = viz.hierarchy_blocks(clusters, pos, sizes)
    assert [len(left) for left, _ in blocks] == [12, 5, 2]
    assert np.allclose(blocks[0][1], sizes / sizes.sum())
    for level, cluster in enumerate(clusters):
        (left, width), (up_left, up_width) = blocks[level], blocks[level + 1]
        for parent in range(len(up_left)):
            children = np.flatnonzero(cluster == parent)
            assert np.isclose(left[children].min(), up_left[parent])
            assert np.isclose((left[children] + width[children]).max(), up_left[parent] + up_width[parent])
            assert np.isclose(width[children].sum(), up_width[parent])
    # the level's blocks tile [0, 1] without overlap
    for left, width in blocks:
        order = np.argsort(left)
        assert np.isclose(left[order][0], 0.0) and np.allclose(left[order][1:], (left + width)[order][:-1])
    # the top node whose leaves lie further left comes first
    top = clusters[1][clusters[0]]
    column = [np.average(pos[top == k, 1], weights=sizes[top == k]) for k in (0, 1)]
    assert (blocks[2][0][0] < blocks[2][0][1]) == (column[0] < column[1])
    # grouped: the top nodes by group first (node 1 in group 0 comes before node 0 in group 1)
    grouped = viz.hierarchy_blocks(clusters, pos, sizes, groups=[np.zeros(12), np.zeros(5), np.array([1, 0])])
    assert grouped[2][0][1] == 0.0 < grouped[2][0][0]
    with pytest.raises(ValueError, match="sizes"):
        viz.hierarchy_blocks(clusters, pos, sizes[:3])
    with pytest.raises(ValueError, match=r"groups\[2\]"):
        viz.hierarchy_blocks(clusters, pos, groups=[np.zeros(12), np.zeros(5), np.zeros(3)])
    with pytest.raises(ValueError, match=r"clusters\[1\]"):
        viz.hierarchy_blocks([clusters[0], np.array([0, 0])], pos)


def test_draw_hierarchy_draws_one_block_per_node_in_its_class_colour():
    pos = np.array([[0, 0.0], [0, 2.0], [0, 4.0], [0, 10.0]])
    clusters = [np.array([0, 0, 1, 1]), np.array([0, 0])]
    colours = [np.tile(CLASS_COLORS[1] / 255.0, (4, 1)), np.tile(CLASS_COLORS[2] / 255.0, (2, 1)),
               (CLASS_COLORS[3] / 255.0)[None]]
    ax = viz.draw_hierarchy(clusters, pos, node_colors=colours, sizes=[1, 1, 1, 5], highlight=1)
    rows = ax.collections
    assert [len(row.get_paths()) for row in rows] == [4, 2, 1]
    top = rows[2].get_facecolors()[0][:3]
    assert np.allclose(top, CLASS_COLORS[3] / 255.0)  # the first block of a row keeps its colour
    labels = [t.get_text() for t in ax.texts]
    assert "4" in labels, "the top node is labelled with its 4 superpixels"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["level 0\n4 nodes", "level 1\n2 nodes", "level 2\n1 nodes"]
    assert len(ax.patches) == 1, "one frame around the highlighted level"


def test_border_pixels_belong_to_the_edge_of_their_two_nodes():
    assignment = np.array([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [2, 2, 2, 1]])
    edge_index = np.array([[0, 0, 1], [1, 2, 2]])
    pixel, edge = viz.border_pixels(assignment, edge_index)
    flat = assignment.reshape(-1)
    for p, e in zip(pixel, edge):
        assert flat[p] in edge_index[:, e]
    assert set(edge.tolist()) == {0, 1, 2}
    assert set(pixel[edge == 0].tolist()) == {1, 2, 5, 6}  # the two columns either side of 0 | 1
    # a pair without an edge is left out
    pixel, edge = viz.border_pixels(assignment, edge_index[:, :1])
    assert set(edge.tolist()) == {0}


def test_draw_border_values_paints_each_edge_on_its_own_border():
    assignment = np.array([[0] * 4 + [1] * 4] * 4 + [[2] * 8] * 4)
    edge_index = np.array([[0, 0, 1], [1, 2, 2]])
    ax = viz.draw_border_values(assignment, edge_index, [0.1, 0.5, 0.9], width=2)
    shown = ax.images[-1].get_array()
    assert shown.mask[0, 0] and shown.mask[1, 1], "inside a node nothing is painted"
    assert np.isclose(shown[0, 3], 0.1) and np.isclose(shown[0, 4], 0.1)  # the 0 | 1 border
    assert np.isclose(shown[4, 0], 0.5) and np.isclose(shown[4, 7], 0.9)  # 0 / 2 and 1 / 2
    ax = viz.draw_border_values(assignment, edge_index, [0.1, 0.5, 0.9], image=np.zeros((8, 8, 3)),
                                colorbar="p")
    assert len(ax.images) == 2 and len(ax.figure.axes) == 2
    with pytest.raises(ValueError, match="edge_values"):
        viz.draw_border_values(assignment, edge_index, [0.1])


def test_draw_partition_in_class_colours_and_no_data_panels():
    from matplotlib.figure import Figure

    assignment = np.array([[0, 0, 0, 1, 1, 1]] * 3)
    shown = viz.draw_partition(assignment, node_classes=[2, 1]).images[0].get_array()
    assert np.allclose(shown[1, 0], CLASS_COLORS[2] / 255.0) and np.allclose(shown[1, 5], CLASS_COLORS[1] / 255.0)
    with pytest.raises(ValueError, match="node_classes"):
        viz.draw_partition(assignment, node_classes=[2])
    ax = viz.draw_no_data(Figure().subplots(), "no ground truth", image=np.zeros((4, 4, 3)), title="ground truth")
    assert ax.texts[0].get_text() == "no ground truth" and ax.get_title() == "ground truth" and ax.images


def test_edge_histogram_splits_by_target():
    ax = viz.draw_edge_histogram([0.1, 0.9, 0.8, 0.2], target=[0, 1, 1, 0], bins=2)
    heights = [patch.get_height() for patch in ax.patches]
    assert sum(heights) == 4
    ax = viz.draw_edge_histogram([0.1, 0.9], target=[0, 1], target_labels=("merged", "kept apart"))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["merged", "kept apart"]


def test_demo_image_resizes_the_longer_side():
    image = viz.demo_image("astronaut", 64)
    assert image.shape == (64, 64, 3) and 0.0 <= image.min() and image.max() <= 1.0
    with pytest.raises(ValueError, match="name"):
        viz.demo_image("no_such_photo")


def test_class_handles_name_and_colour_every_class():
    from selab.classes import CLASS_NAMES

    handles = viz.class_handles()
    assert [h.get_label() for h in handles] == list(CLASS_NAMES)
    assert np.allclose(handles[3].get_facecolor()[:3], CLASS_COLORS[3] / 255.0)
    assert [h.get_label() for h in viz.class_handles([2, 0])] == [CLASS_NAMES[2], CLASS_NAMES[0]]
    with pytest.raises(ValueError, match="classes"):
        viz.class_handles([255])


def test_segmentation_legend_and_figure_legend_list_the_classes():
    from matplotlib.figure import Figure

    from selab.classes import CLASS_NAMES

    ax = viz.draw_segmentation(np.array([[0, 1], [2, 6]]), legend=True)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(CLASS_NAMES)
    figure = Figure()
    legend = viz.figure_class_legend(figure, classes=[1, 2], title="parts")
    assert figure.legends == [legend] and [t.get_text() for t in legend.get_texts()] == list(CLASS_NAMES[1:3])


def test_viz_draws_on_given_axes_without_pyplot():
    """Drawing into a caller's (pyplot-free) Figure leaves pyplot without any new figure."""
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    ax = Figure().subplots()
    viz.draw_segmentation(np.array([[0, 1]]), ax=ax, legend=True)
    viz.draw_hierarchy([np.array([0, 0])], np.array([[0, 0.0], [0, 1.0]]), ax=ax)
    assert plt.get_fignums() == before


@pytest.fixture
def other_backend():
    """Switch to the non-interactive SVG backend for one test (so that a library call that forces
    "Agg" is seen), then back to Agg."""
    plt.close("all")
    matplotlib.use("svg")
    try:
        yield "svg"
    finally:
        plt.close("all")
        matplotlib.use("Agg")


def test_training_figures_keep_the_callers_backend_and_figures(tmp_path, other_backend):
    """selab.training.figures's figures must not switch a notebook's backend (a matplotlib.use("Agg") inside run()
    leaves a notebook such as 03 without figures) nor close or add pyplot figures."""
    from selab.training.figures import plot_curves, plot_predictions

    mine = plt.figure()
    history = [{"epoch": 1, "train_loss": 1.0, "val_mean_iou": 10.0},
               {"epoch": 2, "train_loss": 0.5, "val_mean_iou": 20.0}]
    curves = plot_curves(tmp_path, history)
    examples = [(torch.rand(3, 16, 16), torch.randint(0, 7, (16, 16)), torch.zeros(16, 16, dtype=torch.long))]
    predictions = plot_predictions(tmp_path, examples)
    assert matplotlib.get_backend().lower() == other_backend
    assert plt.get_fignums() == [mine.number], "a library figure leaked into pyplot, or closed mine"
    for path in (curves, predictions):
        assert path.is_file() and path.read_bytes().startswith(b"\x89PNG")
    assert plot_curves(tmp_path, []) is None and plot_predictions(tmp_path, []) is None

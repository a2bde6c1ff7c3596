"""selab.widgets: each explorer is driven as plain Python, by setting control values and checking state.

An exception inside a widget callback would not fail a papermill run, so the callbacks are tested here.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from selab import viz, widgets


@pytest.fixture(scope="module")
def image():
    return viz.demo_image("astronaut", 96)


def test_superpixel_explorer_recomputes_graph_and_figure(image):
    app = widgets.SuperpixelExplorer(image, n_segments=50, compactness=10.0)
    assert app.error is None and app.renders == 1
    assert app.controls["n_segments"].description == "superpixels"
    first_png, first_nodes = app.png, app.state["num_nodes"]
    assert first_png.startswith(b"\x89PNG")

    app.controls["n_segments"].value = 200
    assert app.state["num_nodes"] > first_nodes
    assert app.state["labels"].max() + 1 == app.state["num_nodes"]
    assert app.state["edge_index"].shape == (2, app.state["num_edges"])
    assert app.png != first_png and app.renders == 2
    assert f"num_nodes = {app.state['num_nodes']}" in app.readout.value


def test_superpixel_explorer_compactness_changes_the_regions(image):
    app = widgets.SuperpixelExplorer(image, n_segments=100, compactness=1.0)
    loose = app.state["labels"]
    app.controls["compactness"].value = 100.0
    assert app.state["compactness"] == pytest.approx(100.0)
    assert not np.array_equal(app.state["labels"], loose)


def test_superpixel_explorer_has_a_widget_to_display(image):
    app = widgets.SuperpixelExplorer(image, n_segments=50)
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert app.image in app.widget.children


def test_a_failing_callback_is_reported_and_raised(image):
    app = widgets.SuperpixelExplorer(image, n_segments=50)

    def broken():
        raise RuntimeError("boom")

    app.compute = broken
    with pytest.raises(RuntimeError, match="boom"):
        app.controls["n_segments"].value = 75
    assert app.error == "RuntimeError: boom" and "boom" in app.readout.value


@pytest.fixture(scope="module")
def small_graph(image):
    from selab.superpixels import slic

    labels = slic(image, n_segments=60)
    num_nodes = int(labels.max()) + 1
    confidence = np.random.default_rng(0).dirichlet(np.ones(7), size=num_nodes).astype(np.float32)
    return labels, confidence


def test_update_order_by_name_is_a_permutation_and_rejects_unknown_names():
    import torch

    edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])
    pos = torch.tensor([[0.0, 3.0], [0.0, 2.0], [0.0, 1.0], [0.0, 0.0]])
    assert widgets.update_order("bfs", edge_index, pos).tolist() == [3, 2, 1, 0]  # from the left-most node
    assert sorted(widgets.update_order("random", edge_index, pos, seed=3).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="name"):
        widgets.update_order("zigzag", edge_index, pos)
    with pytest.raises(ValueError, match="confidence"):
        widgets.update_order("confidence", edge_index, pos)


def test_update_order_explorer_follows_the_order_and_node(image, small_graph):
    import torch

    from selab.graph_lstm import wavefront_levels

    labels, confidence = small_graph
    app = widgets.UpdateOrderExplorer(image, labels, confidence=confidence, order="confidence")
    assert app.controls["order"].description == "order" and app.error is None
    png = app.png
    for name in widgets.ORDERS:
        app.controls["order"].value = name
        rank = torch.as_tensor(app.state["rank"])
        expected = widgets.update_order(name, app.graph.edge_index, app.graph.pos, confidence)
        assert torch.equal(rank, expected)
        assert app.state["num_levels"] == int(wavefront_levels(app.graph.edge_index, rank).max()) + 1
    assert app.png != png

    node = app.state["node"]
    neighbour = int(app.state["neighbours"][0])
    app.controls["node"].value = neighbour
    assert app.state["node"] == neighbour and node in app.state["neighbours"]
    assert app.state["degree"] == len(app.state["neighbour_forget"])
    rank = app.state["rank"]
    assert app.state["neighbours_before"] == int((rank[app.state["neighbours"]] < rank[neighbour]).sum())
    assert 0.0 < app.state["input_gate"] < 1.0


def test_update_order_explorer_without_confidence_offers_no_confidence_order(image, small_graph):
    labels, _ = small_graph
    app = widgets.UpdateOrderExplorer(image, labels)
    assert "confidence" not in app.controls["order"].options and app.state["order"] == "bfs"
    with pytest.raises(ValueError, match="confidence"):
        widgets.UpdateOrderExplorer(image, labels, confidence=np.ones((3, 7)))

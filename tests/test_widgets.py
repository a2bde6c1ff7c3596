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

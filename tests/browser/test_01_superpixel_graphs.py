"""notebooks/01_superpixel_graphs in JupyterLab: every cell runs without error, every figure the notebook
draws is on the page, and the superpixel explorer answers its sliders in the browser, as a person would
move them.

More superpixels must give more graph nodes in the readout and a new picture; a lower compactness must
redraw the picture with a different graph. No error output in any cell, nothing in JupyterLab's log
console (a callback that raised), no console or page errors in the browser.
"""

import re

import pytest

pytestmark = pytest.mark.browser

NOTEBOOK = "01_superpixel_graphs.ipynb"


def readout_numbers(text: str) -> dict[str, float]:
    """``"n_segments = 400, num_nodes = 391, ..."`` -> ``{"n_segments": 400.0, "num_nodes": 391.0}``."""
    return {key: float(value) for key, value in re.findall(r"(\w+) = ([-+0-9.eE]+)", text)}


def test_superpixel_explorer_answers_its_sliders(page, open_notebook):
    notebook = open_notebook(NOTEBOOK)
    notebook.run_all()
    notebook.assert_no_errors()
    notebook.assert_figures_shown()
    notebook.screenshot("ran_all")

    explorer = notebook.app("superpixels")
    explorer.scroll_into_view_if_needed()
    readout = explorer.locator(".widget-html")

    def readout_text() -> str:
        return readout.first.inner_text().strip()

    start = readout_numbers(readout_text())
    assert start["n_segments"] == float(notebook.slider_value("superpixels"))
    images = notebook.image_sources(explorer)
    assert len(images) == 1
    notebook.screenshot("explorer_start", explorer)

    # Two steps of 25 to the right: 50 more superpixels asked for, so more nodes.
    assert int(notebook.move_slider("superpixels", steps=2)) == start["n_segments"] + 50
    target = int(start["n_segments"] + 50)
    notebook.wait_for_change(lambda: readout_numbers(readout_text())["n_segments"] == target, False)
    notebook.wait_kernel_idle()
    more = readout_numbers(readout_text())
    assert more["num_nodes"] > start["num_nodes"], (start, more)
    images_more = notebook.wait_images_change(images, explorer)
    notebook.screenshot("more_superpixels", explorer)

    # Lower compactness: regions follow colour edges, the graph (and the picture) changes.
    shown = float(notebook.move_slider("compactness", steps=-3))  # the slider's own readout
    notebook.wait_for_change(
        lambda: abs(readout_numbers(readout_text())["compactness"] - shown) <= 0.02 * shown, False)
    notebook.wait_kernel_idle()
    less_compact = readout_numbers(readout_text())
    assert less_compact["compactness"] < more["compactness"], (more, less_compact)
    assert (less_compact["num_nodes"], less_compact["num_edges"]) != (more["num_nodes"],
                                                                      more["num_edges"])
    notebook.wait_images_change(images_more, explorer)
    notebook.screenshot("less_compact", explorer)

    notebook.assert_no_errors()
    page.selab_errors.assert_none()

"""notebooks/02_graph_lstm in JupyterLab: every cell runs without error, every figure the notebook draws
is on the page, and the update-order explorer answers its controls in the browser.

Picking another order in the dropdown must show that order and its number of wavefront levels in the
readout and redraw the picture; moving the node slider must show that node in the readout. No error
output, nothing in JupyterLab's log console, no console or page errors in the browser.
"""

import re

import pytest

pytestmark = pytest.mark.browser

NOTEBOOK = "02_graph_lstm.ipynb"


def readout_fields(text: str) -> dict[str, str]:
    """``"order = bfs, num_levels = 31, node = 57, ..."`` -> ``{"order": "bfs", "num_levels": "31", ...}``."""
    return dict(re.findall(r"(\w+) = ([^,]+)", text))


def test_update_order_explorer_answers_order_and_node(page, open_notebook):
    notebook = open_notebook(NOTEBOOK)
    notebook.run_all()
    notebook.assert_no_errors()
    notebook.assert_figures_shown()

    explorer = notebook.app("order", kind="widget-dropdown")
    explorer.scroll_into_view_if_needed()
    readout = explorer.locator(".widget-html").first

    def readout_text() -> str:
        return readout.inner_text().strip()

    start = readout_fields(readout_text())
    assert start["order"] == notebook.dropdown("order").input_value() == "confidence", \
        "the notebook leaves the explorer on its own order"
    assert start["node"] == notebook.slider_value("node")
    sources = notebook.image_sources(explorer)
    notebook.screenshot("explorer_start", explorer)

    notebook.pick("order", "dfs")
    notebook.wait_for_change(lambda: readout_fields(readout_text())["order"], "confidence")
    sources = notebook.wait_images_change(sources, explorer)
    dfs = readout_fields(readout_text())
    assert dfs["order"] == "dfs" == notebook.dropdown("order").input_value()
    assert int(dfs["num_levels"]) > int(start["num_levels"]), "DFS: a long path, more levels"
    notebook.screenshot("explorer_dfs", explorer)

    shown = notebook.move_slider("node", steps=1)
    notebook.wait_for_change(lambda: readout_fields(readout_text())["node"], dfs["node"])
    notebook.wait_images_change(sources, explorer)
    moved = readout_fields(readout_text())
    assert moved["node"] == shown == str(int(dfs["node"]) + 1) and moved["order"] == "dfs"
    notebook.screenshot("explorer_node", explorer)

    notebook.assert_no_errors()
    page.selab_errors.assert_none()

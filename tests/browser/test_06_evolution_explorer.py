"""notebooks/06_evolution_explorer in JupyterLab: every cell runs without error, its figure is on the
page, and the evolution explorer answers its controls in the browser as a person would use them.

Moving the layer slider must show another level: the readout's node count becomes that level's entry
of "nodes per level" (fewer nodes on the coarser level), and both the partition drawing and the merge-probability drawing change (the
explorer draws one figure of 2 x 3 panels; each panel is compared pixel by pixel). Picking another
setting in a dropdown (the image selector, where there is one) must change the readout and the
picture, and the readout must name the image the selector shows. No error output in any cell, nothing
in JupyterLab's log console, no console or page errors in the browser.

With ``SELAB_BROWSER_DOCS=1`` the explorer's screenshot is also written to docs/explorer.png (the
documentation's first picture, docs/index.md); otherwise runs never write into the repo.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from jlab import panel_difference

pytestmark = pytest.mark.browser

NOTEBOOK = "06_evolution_explorer.ipynb"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "explorer.png"
GRID = (2, 3)  # EvolutionExplorer's panels
PARTITION, MERGE_PROB = (0, 0), (0, 1)
# Mean |difference| (0..255) inside a panel below which it counts as unchanged; a redrawn partition
# or graph differs by several units, anti-aliasing noise between equal renders is 0.
CHANGED = 0.5

SUMMARY = re.compile(r"layer (\d+) of (\d+): (\d+) nodes, (\d+) edges; nodes per level \[([\d, ]*)\]")
IMAGE = re.compile(r"\bimage (\d+)\b")


def parse_readout(text: str) -> dict:
    """EvolutionExplorer's readout line -> its numbers."""
    match = SUMMARY.search(text)
    assert match, f"unexpected readout: {text!r}"
    layer, num_levels, nodes, edges, per_level = match.groups()
    image = IMAGE.search(text)
    return {"image": int(image.group(1)) if image else None,
            "layer": int(layer), "num_levels": int(num_levels), "num_nodes": int(nodes),
            "num_edges": int(edges), "nodes_per_level": [int(n) for n in per_level.split(",") if n.strip()],
            "text": text}


def test_evolution_explorer_answers_layer_and_settings(page, open_notebook):
    notebook = open_notebook(NOTEBOOK)
    notebook.run_all()
    notebook.assert_no_errors()
    notebook.assert_figures_shown()
    notebook.screenshot("ran_all")

    explorer = notebook.app("layer")
    explorer.scroll_into_view_if_needed()
    readout = explorer.locator(".widget-html").first

    def readout_text() -> str:
        return readout.inner_text().strip()

    start = parse_readout(readout_text())
    assert start["layer"] == int(notebook.slider_value("layer"))
    assert start["num_nodes"] == start["nodes_per_level"][start["layer"]]
    assert start["num_levels"] >= 2, "the explorer needs at least two levels to step through"
    picture = notebook.image_bytes(explorer)
    assert len(picture) == 1, "EvolutionExplorer draws one figure"
    sources = notebook.image_sources(explorer)
    notebook.screenshot(f"explorer_layer{start['layer']}", explorer)

    # One layer along the slider (down when the notebook left it above 0): another level of the
    # hierarchy, with its own partition and merge probabilities.
    step = -1 if start["layer"] > 0 else 1
    layer = start["layer"] + step
    assert notebook.move_slider("layer", steps=step) == str(layer)
    notebook.wait_for_change(lambda: parse_readout(readout_text())["layer"], start["layer"])
    sources = notebook.wait_images_change(sources, explorer)
    moved = parse_readout(readout_text())
    assert moved["layer"] == layer and moved["nodes_per_level"] == start["nodes_per_level"]
    assert moved["num_nodes"] == start["nodes_per_level"][layer]
    finer, coarser = (moved, start) if step < 0 else (start, moved)
    assert coarser["num_nodes"] < finer["num_nodes"], f"no merge between these levels: {moved['text']}"
    picture1 = notebook.image_bytes(explorer)
    assert panel_difference(picture[0], picture1[0], GRID, PARTITION) > CHANGED, "partition not redrawn"
    assert panel_difference(picture[0], picture1[0], GRID, MERGE_PROB) > CHANGED, \
        "merge probabilities not redrawn"
    shot = notebook.screenshot(f"explorer_layer{layer}", explorer)
    if os.environ.get("SELAB_BROWSER_DOCS"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # Another setting from a dropdown reruns the model: new readout, new picture.
    dropdown = next(name for name in ("image", "order", "structure")
                    if notebook.widget("widget-dropdown", name).count())
    current = notebook.dropdown(dropdown).input_value()
    options = notebook.dropdown(dropdown).locator("option").evaluate_all(
        "options => options.map(o => [o.value, o.textContent])")
    other = next(label for value, label in options if value != current)
    notebook.pick(dropdown, other)
    notebook.wait_for_change(readout_text, moved["text"])
    notebook.wait_images_change(sources, explorer)
    picked = parse_readout(readout_text())
    picture2 = notebook.image_bytes(explorer)
    assert picked["text"] != moved["text"]
    if dropdown == "image":  # the readout names the image the selector shows
        assert picked["image"] == int(notebook.dropdown("image").input_value().split(":")[0]) != moved["image"]
        # ipywidgets writes option labels with non-breaking spaces: \s matches both
        assert picked["nodes_per_level"][0] == int(re.search(r"\((\d+)\s+superpixels\)", other).group(1))
    assert panel_difference(picture1[0], picture2[0], GRID, PARTITION) > CHANGED \
        or panel_difference(picture1[0], picture2[0], GRID, MERGE_PROB) > CHANGED, \
        f"picking {dropdown} = {other!r} changed neither the partition nor the merge probabilities"
    notebook.screenshot(f"explorer_{dropdown}_" + re.sub(r"\W+", "_", other), explorer)

    notebook.assert_no_errors()
    page.selab_errors.assert_none()

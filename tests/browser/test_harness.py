"""The browser harness itself: on a tiny widget notebook written to the temporary lab root, a slider
moved by keyboard redraws a figure, and a widget callback that raises is reported as an error.

This keeps the harness honest (each of its checks must be able to fail) independently of selab's notebooks.
"""

import json

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    "import matplotlib\nimport matplotlib.pyplot as plt\nimport ipywidgets as widgets\n"
    "from IPython.display import display",
    """figure = widgets.Output()
figure.add_class("harness-figure")
layer = widgets.IntSlider(value=0, min=0, max=3, description="layer")
mode = widgets.Dropdown(options=["draw", "raise"], description="mode")
readout = widgets.HTML()
readout.add_class("harness-readout")

def draw(*_):
    if mode.value == "raise":
        raise RuntimeError("harness callback raised on purpose")
    with figure:
        figure.clear_output(wait=True)
        fig, ax = plt.subplots(figsize=(2.5, 1.8))
        ax.plot(range(layer.value + 2))
        ax.set_title(f"layer {layer.value}")
        plt.show()
    readout.value = f"nodes: {100 // (layer.value + 1)}"

layer.observe(draw, "value")
mode.observe(draw, "value")
draw()
display(widgets.VBox([layer, mode, readout, figure]))""",
    "assert layer.value == 0",
]


@pytest.fixture(scope="module")
def harness_notebook(lab_root):
    notebook = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "source": source,
                   "outputs": [], "execution_count": None} for i, source in enumerate(CELLS)],
    }
    path = lab_root / "browser_harness.ipynb"
    path.write_text(json.dumps(notebook))
    return path.name


def test_slider_redraws_and_raising_callback_is_reported(page, open_notebook, harness_notebook):
    notebook = open_notebook(harness_notebook)
    notebook.run_all()
    notebook.assert_no_errors()
    figure = notebook.panel.locator(".harness-figure")
    before = notebook.image_sources(figure)
    assert len(before) == 1

    assert notebook.move_slider("layer") == "1"
    after = notebook.wait_images_change(before, figure)
    assert len(after) == 1 and after != before
    assert notebook.texts(".harness-readout") == ["nodes: 50"]
    notebook.assert_no_errors()

    notebook.pick("mode", "raise")
    with pytest.raises(AssertionError, match="harness callback raised on purpose"):
        notebook.page.locator(".jp-LogConsoleStatusItem").filter(has_text="1").wait_for(
            timeout=30_000)
        notebook.assert_no_errors()
    page.selab_errors.assert_none()


BACKEND_CELLS = [
    "import matplotlib\nimport matplotlib.pyplot as plt",
    "plt.plot([0, 1])\nplt.show()",
    # what selab's training once did inside run(): every later plt.show() shows nothing
    'matplotlib.use("Agg")',
    "plt.plot([1, 0])\nplt.show()",
]


def test_figure_count_catches_a_switched_backend(page, open_notebook, lab_root):
    """The figure check must fail on a notebook whose figures vanish after a backend switch."""
    from jlab import drawn_figures

    notebook = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "source": source,
                   "outputs": [], "execution_count": None} for i, source in enumerate(BACKEND_CELLS)],
    }
    path = lab_root / "browser_harness_backend.ipynb"
    path.write_text(json.dumps(notebook))
    assert drawn_figures(path) == 2
    opened = open_notebook(path.name)
    opened.run_all()
    opened.assert_no_errors()
    assert opened.rendered_figures() == 1, "only the figure before the switch is shown"
    with pytest.raises(AssertionError, match="shows 1 figures, the notebook draws 2"):
        opened.assert_figures_shown()
    page.selab_errors.assert_none()

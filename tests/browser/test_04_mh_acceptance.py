"""notebooks/04_mh_acceptance in JupyterLab: every cell runs without error, every figure the notebook
draws is on the page, and the Metropolis-Hastings explorer answers its sliders in the browser.

The notebook leaves the explorer at its own parameters (the first proposal of the chain at the
notebook's temperature, which the text above it analyses). Moving the step slider must show that
proposal in the readout and redraw; moving the temperature slider must rerun the chain at the
temperature the slider shows. No error output, nothing in the log console, no browser errors.
"""

import re

import pytest

pytestmark = pytest.mark.browser

NOTEBOOK = "04_mh_acceptance.ipynb"


def readout_fields(text: str) -> dict[str, str]:
    """``"temperature = 1, step = 0, energy = 1234, ..."`` -> ``{"temperature": "1", "step": "0", ...}``."""
    return dict(re.findall(r"(\w+) = ([^,]+)", text))


def test_mh_explorer_answers_step_and_temperature(page, open_notebook):
    notebook = open_notebook(NOTEBOOK)
    notebook.run_all()
    notebook.assert_no_errors()
    notebook.assert_figures_shown()

    explorer = notebook.app("step")
    explorer.scroll_into_view_if_needed()
    readout = explorer.locator(".widget-html").first

    def readout_text() -> str:
        return readout.inner_text().strip()

    start = readout_fields(readout_text())
    assert start["step"] == notebook.slider_value("step") == "0", "the explorer is back at the first proposal"
    assert float(start["temperature"]) == pytest.approx(float(notebook.slider_value("temperature")))
    sources = notebook.image_sources(explorer)
    notebook.screenshot("explorer_start", explorer)

    # Each key press is a change the kernel answers: wait for the last one's readout.
    assert notebook.move_slider("step", steps=3) == "3"
    notebook.wait_for_change(lambda: readout_fields(readout_text())["step"] == "3", False)
    notebook.wait_kernel_idle()
    sources = notebook.wait_images_change(sources, explorer)
    stepped = readout_fields(readout_text())
    assert stepped["step"] == "3" and stepped["acceptance_rate"] == start["acceptance_rate"]
    notebook.screenshot("explorer_step3", explorer)

    shown = float(notebook.move_slider("temperature", steps=4))  # up one decade (step 0.25 in log10)
    notebook.wait_for_change(
        lambda: abs(float(readout_fields(readout_text())["temperature"]) - shown) <= 0.02 * shown, False)
    notebook.wait_kernel_idle()
    notebook.wait_images_change(sources, explorer)
    hot = readout_fields(readout_text())
    assert float(hot["temperature"]) == pytest.approx(shown, rel=0.02)
    assert float(hot["temperature"]) > float(stepped["temperature"]) and hot["step"] == "3"
    notebook.screenshot("explorer_hot", explorer)

    notebook.assert_no_errors()
    page.selab_errors.assert_none()

"""The notebooks without an explorer (03, 05), executed by papermill: every figure they draw is in
their outputs, and no cell failed.

The browser tests run the widget notebooks in JupyterLab; these two have no widget, and both can train
a model (05 always, 03 with ``model = "train"``; its default loads the shipped model), so running them
here with small parameters keeps ``make test`` short while still catching the failure a reader met: a library call (``selab.training.loop.run``) that switched the kernel's
matplotlib backend to Agg, after which every ``plt.show()`` showed nothing. The expected number of
figures is read from the notebook's source (:func:`jlab.drawn_figures`), never from a run.
No browser is needed; the tests are marked ``browser`` because they check what a reader sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jlab import drawn_figures, output_figures

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("SELAB_BROWSER_NOTEBOOKS", REPO / "notebooks"))

# Small but real runs: the notebooks' own asserts (the training loss goes down, training lowers the
# merge loss) must still hold with these. Notebook 03 twice: its default (the shipped model on photos)
# and the model it trains itself.
CASES = [
    ("03_merge_probabilities.ipynb", {}),
    ("03_merge_probabilities.ipynb", {"model": "train", "epochs": 2, "num_images": 16, "val_images": 2}),
    ("05_train.ipynb", {"epochs": 2, "num_images": 16, "val_images": 4}),
]


@pytest.mark.parametrize("name, case", CASES, ids=[f"{name[:2]}-{'-'.join(map(str, case.values())) or 'defaults'}"
                                                  for name, case in CASES])
def test_executed_notebook_holds_every_figure_it_draws(name, case, tmp_path):
    papermill = pytest.importorskip("papermill")
    source = NOTEBOOKS / name
    if not source.is_file():
        pytest.skip(f"notebooks/{name} is not in this checkout")
    executed = tmp_path / name
    parameters = {**case, "out_dir": str(tmp_path / "out")}
    env = {"OMP_NUM_THREADS": os.environ.get("SELAB_TEST_THREADS", "1")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits it: one torch thread, as in the browser tests
    try:
        notebook = papermill.execute_notebook(str(source), str(executed), parameters=parameters,
                                              kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                                              execution_timeout=600)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    errors = [output for cell in notebook["cells"] for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, f"{name}: error output {errors}"
    expected = drawn_figures(source)
    assert expected >= 2, f"{name}: expected the notebook to draw figures (plt.show() calls)"
    assert output_figures(notebook) == expected, (
        f"{name}: {output_figures(notebook)} figures in the outputs, the notebook draws {expected}; "
        f"executed copy {executed}")

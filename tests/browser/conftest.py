"""Fixtures for the browser tests: one JupyterLab and one headless Chromium per session.

JupyterLab serves a temporary copy of ``notebooks/`` (runs never write into the repo) from a
temporary HOME with its own workspaces and settings; Chromium is Debian's, driven by Playwright's
bundled driver (never ``playwright install``). Screenshots and the server log go to
``runs/browser/<timestamp>/`` (git-ignored). Every process started here is stopped by its handle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jlab import CHROMIUM_ARGS, CHROMIUM_CANDIDATES, BrowserErrors, JupyterLab, Notebook, \
    Screenshots, find_chromium, prepare_notebook_copy

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("SELAB_BROWSER_NOTEBOOKS", REPO / "notebooks"))


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium (``ensure_chromium.sh`` installs it); skip, saying why, when there is none."""
    path = find_chromium()
    if path is None:
        tried = os.environ.get("SELAB_CHROMIUM") or ", ".join(CHROMIUM_CANDIDATES)
        pytest.skip(f"browser tests need Chromium: no chromium executable found (tried {tried}); "
                    "run `bash tests/browser/ensure_chromium.sh` as root or set SELAB_CHROMIUM")
    return path


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """``runs/browser/<timestamp>/``: screenshots of each step and the JupyterLab log."""
    base = Path(os.environ.get("SELAB_BROWSER_RUNS", REPO / "runs" / "browser"))
    directory = base / time.strftime("%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory) -> Path:
    """A temporary copy of the repo's notebooks (and any files beside them) for JupyterLab to run."""
    root = tmp_path_factory.mktemp("lab_root")
    if NOTEBOOKS.is_dir():
        for source in NOTEBOOKS.iterdir():
            if source.suffix == ".ipynb":
                prepare_notebook_copy(source, root)
    return root


@pytest.fixture(scope="session")
def lab(chromium_path, lab_root, run_dir, tmp_path_factory, pascal_root_path):
    """A JupyterLab server for the whole session, stopped by its handle at the end."""
    state = tmp_path_factory.mktemp("lab_state")
    extra_env = {}
    # The kernels run in a temp dir: tell them where the real data is (tests/conftest.py decides).
    extra_env["SELAB_PASCAL_ROOT"] = str(pascal_root_path)
    server = JupyterLab.start(root=lab_root, state_dir=state, log_path=run_dir / "jupyterlab.log",
                              env=extra_env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(chromium_path):
    """Headless Chromium through Playwright, closed (and the driver stopped) at the end."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="session")
def lab_page(browser):
    """One JupyterLab page for the session: the front end loads once, notebooks open in tabs."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        shared = context.new_page()
        shared.set_default_timeout(60_000)
        yield shared
    finally:
        context.close()


@pytest.fixture
def page(lab_page):
    """The session's page; ``page.selab_errors`` collects the console and page errors of this test."""
    errors = BrowserErrors().attach(lab_page)
    lab_page.selab_errors = errors
    try:
        yield lab_page
    finally:
        errors.detach(lab_page)


@pytest.fixture(scope="session")
def shots(run_dir) -> Screenshots:
    return Screenshots(run_dir)


@pytest.fixture
def open_notebook(page, lab, lab_root, shots, run_dir):
    """Open a notebook of the temporary lab root (skip if this checkout lacks it); its tab is closed
    and its kernel shut down after the test and the time of each step is appended to the run folder's timings.txt."""
    notebooks = []

    def open_(name: str) -> Notebook:
        if not (lab_root / name).exists():
            pytest.skip(f"notebooks/{name} is not in this checkout")
        notebook = Notebook(page, lab, name, shots)
        notebooks.append(notebook)
        notebook.open()
        return notebook

    yield open_
    with open(run_dir / "timings.txt", "a") as timings:
        for notebook in notebooks:
            try:
                notebook.close()  # the next test's notebook is then the only one open
            finally:
                lab.close_sessions(notebook.name)
            for step, seconds in notebook.timings:
                timings.write(f"{notebook.name}\t{step}\t{seconds:.1f} s\n")

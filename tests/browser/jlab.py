"""Drive JupyterLab in headless Chromium: a server, a browser, and a notebook a test can click through.

The browser tests open selab's notebooks in a real JupyterLab and use the widgets as a person would,
because a widget that works in a kernel can still break in the browser (a missing lab extension, a
callback that raises, an Output that never redraws). This module holds the moving parts; the tests
in ``test_*.py`` say what must happen. The selectors and pitfalls are the ones measured with
JupyterLab 4.6 and ipywidgets 8.1; the comments below say which is which.

Example
-------
>>> lab = JupyterLab.start(root=tmp_dir, log_path=run_dir / "jupyterlab.log")  # doctest: +SKIP
>>> notebook = Notebook(page, lab, "01_superpixel_graphs.ipynb", shots=Screenshots(run_dir))  # doctest: +SKIP
>>> notebook.open(); notebook.run_all()  # doctest: +SKIP
>>> notebook.assert_no_errors()  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

VISIBLE_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
KERNEL_IDLE = '.jp-StatusBar-TextItem:text-matches("[|] Idle$")'

# Browser console lines that are harmless noise here, not failures (Chromium's /dev/shm and dbus messages,
# "not trusted", failed resource loads).
CONSOLE_NOISE = re.compile(
    r"dev/shm|dbus|not trusted|Failed to load resource|favicon|"
    r"ERR_CONNECTION_REFUSED|net::ERR_|WebSocket connection to .* failed|"
    # the debugger sidebar of a notebook whose kernel the previous test shut down on purpose
    r"Could not restore the debugger state",
    re.IGNORECASE,
)


def find_chromium() -> str | None:
    """The Chromium executable to drive, or None; ``SELAB_CHROMIUM`` overrides the search."""
    override = os.environ.get("SELAB_CHROMIUM")
    candidates = (override,) if override else CHROMIUM_CANDIDATES
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_lab_settings(settings_dir: Path) -> None:
    """User settings that make runs deterministic.

    No news/update toast covering the page (pitfall 3), and every cell kept in the DOM
    (``windowingMode: none``) so that prompts and outputs of cells below the fold can be read.
    """
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for relative, content in files.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


def prepare_notebook_copy(source: Path, target_dir: Path) -> Path:
    """Copy a notebook for JupyterLab to run, with the ``python3`` kernelspec set (pitfall 4)."""
    notebook = json.loads(source.read_text())
    notebook.setdefault("metadata", {})["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    target = target_dir / source.name
    target.write_text(json.dumps(notebook, indent=1))
    return target


# How a notebook draws a figure (plotting cells end with plt.show(); an explorer shows its one
# figure as an image widget through app.display()).
_SHOWN_FIGURE = re.compile(r"\bplt\.show\(\)")
_SHOWN_EXPLORER = re.compile(r"^\s*\w+\.display\(\)", re.MULTILINE)


def drawn_figures(notebook: Path | dict) -> int:
    """How many figures a notebook draws, read from its source (not from running it): one per
    ``plt.show()`` and one per explorer ``app.display()`` in its code cells.

    Counted from the source, so that a notebook whose figures silently vanish (a library switching the
    kernel's backend to Agg, an explorer that never renders) shows fewer figures than this. Comment
    lines do not count.

    Example
    -------
    >>> drawn_figures({"cells": [{"cell_type": "code", "source": "plt.plot([1])\\nplt.show()"},
    ...                          {"cell_type": "code", "source": "# plt.show()\\napp.display()"}]})
    2
    """
    if not isinstance(notebook, dict):
        notebook = json.loads(Path(notebook).read_text())
    total = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        total += len(_SHOWN_FIGURE.findall(code)) + len(_SHOWN_EXPLORER.findall(code))
    return total


def output_figures(notebook: Path | dict) -> int:
    """Figures in the outputs of an executed notebook (papermill, nbclient): ``image/png`` outputs plus
    explorer image widgets (each explorer's widget view counts once)."""
    if not isinstance(notebook, dict):
        notebook = json.loads(Path(notebook).read_text())
    total = 0
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                total += 1
            elif "application/vnd.jupyter.widget-view+json" in data:
                total += 1  # an explorer: its VBox holds one image widget
    return total


@dataclass
class JupyterLab:
    """A JupyterLab server on a free local port, serving ``root``, with its own HOME and settings."""

    process: subprocess.Popen
    url: str
    root: Path
    log_path: Path
    _log_file: object = None

    @classmethod
    def start(cls, root: Path, state_dir: Path, log_path: Path, env: dict | None = None,
              timeout: float = 90.0) -> "JupyterLab":
        """Start the server and wait until ``/lab`` answers; stop it again if it never does."""
        home, workspaces, settings = state_dir / "home", state_dir / "workspaces", state_dir / "settings"
        for directory in (home, workspaces, settings):
            directory.mkdir(parents=True, exist_ok=True)
        write_lab_settings(settings)
        port = free_port()
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ip", "127.0.0.1", "--port", str(port), "--port-retries", "0",
            f"--ServerApp.root_dir={root}",
            "--IdentityProvider.token=", "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            f"--LabApp.workspaces_dir={workspaces}",
            f"--LabApp.user_settings_dir={settings}",
            "--LabApp.news_url=",
            "--ServerApp.open_browser=False",
        ]
        environment = {
            **os.environ,
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "IPYTHONDIR": str(home / ".ipython"),
            "MPLCONFIGDIR": str(home / ".matplotlib"),
            # One torch thread in the kernels, as tests/conftest.py does for pytest: on a busy 2-core
            # machine two threads make small ops stall.
            "OMP_NUM_THREADS": os.environ.get("SELAB_TEST_THREADS", "1"),
            **(env or {}),
        }
        log_file = open(log_path, "w")
        process = subprocess.Popen(command, cwd=root, env=environment, stdout=log_file,
                                   stderr=subprocess.STDOUT)
        lab = cls(process=process, url=f"http://127.0.0.1:{port}", root=root, log_path=log_path,
                  _log_file=log_file)
        try:
            lab._wait_ready(timeout)
        except BaseException:
            lab.stop()
            raise
        return lab

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode} before it "
                                   f"answered; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/lab", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"JupyterLab did not answer at {self.url}/lab within {timeout:.0f} s; "
                           f"log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def running_kernels(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/kernels", timeout=5) as response:
            return json.loads(response.read())

    def kernel_state(self, notebook_name: str) -> str | None:
        """The server's ``execution_state`` of this notebook's kernel (``idle``, ``busy``,
        ``starting``, ...), or None while the notebook has no session."""
        with urllib.request.urlopen(f"{self.url}/api/sessions", timeout=5) as response:
            sessions = json.loads(response.read())
        for session in sessions:
            if session.get("path", "").endswith(notebook_name) and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def close_sessions(self, notebook_name: str) -> None:
        """Ask the server to shut down the kernel(s) of one notebook (DELETE its sessions), freeing
        their memory; no waiting for it (``stop`` shuts down whatever is left)."""
        with urllib.request.urlopen(f"{self.url}/api/sessions", timeout=5) as response:
            sessions = json.loads(response.read())
        for session in sessions:
            if session.get("path", "").endswith(notebook_name):
                request = urllib.request.Request(f"{self.url}/api/sessions/{session['id']}",
                                                 method="DELETE")
                try:
                    urllib.request.urlopen(request, timeout=0.5).close()
                except (TimeoutError, urllib.error.URLError, OSError):
                    pass  # the server goes on shutting the kernel down

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by its handle; SIGTERM makes it shut its kernels down first."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
        finally:
            if self._log_file and not self._log_file.closed:
                self._log_file.close()


@dataclass
class Screenshots:
    """Numbered screenshots of each step, written into one run folder."""

    directory: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, page, name: str, locator=None) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}_{name}.png"
        (locator.screenshot if locator is not None else page.screenshot)(path=str(path))
        self.taken.append(path)
        return path


@dataclass
class BrowserErrors:
    """Console errors and uncaught page errors seen by one page."""

    messages: list[str] = field(default_factory=list)

    def attach(self, page) -> "BrowserErrors":
        page.on("pageerror", self._on_pageerror)
        page.on("console", self._on_console)
        return self

    def detach(self, page) -> None:
        page.remove_listener("pageerror", self._on_pageerror)
        page.remove_listener("console", self._on_console)

    def _on_pageerror(self, error) -> None:
        self.messages.append(f"pageerror: {error}")

    def _on_console(self, message) -> None:
        if message.type == "error" and not CONSOLE_NOISE.search(message.text):
            self.messages.append(f"console.error: {message.text}")

    def assert_none(self) -> None:
        assert not self.messages, "browser reported errors:\n" + "\n".join(self.messages)


def _tail(text: str, chars: int = 1500) -> str:
    """The end of a traceback, where the exception and the user's frame are."""
    return text if len(text) <= chars else "..." + text[-chars:]


def _label_regex(description: str) -> re.Pattern:
    """A widget description, matched whole, case-insensitive, with an optional trailing ':'."""
    return re.compile(rf"^\s*{re.escape(description)}\s*:?\s*$", re.IGNORECASE)


class Notebook:
    """One notebook opened in JupyterLab; the steps a person takes, each waiting for its effect."""

    def __init__(self, page, lab: JupyterLab, name: str, shots: Screenshots,
                 cell_timeout_ms: float = 120_000):
        self.page, self.lab, self.name, self.shots = page, lab, name, shots
        self.cell_timeout_ms = cell_timeout_ms
        self.panel = page.locator(VISIBLE_NOTEBOOK)
        self.timings: list[tuple[str, float]] = []  # (step, seconds since the previous mark)
        self._last_mark = time.monotonic()

    def mark(self, step: str) -> None:
        """Note how long the step that just ended took (written to the run folder's timings.txt)."""
        now = time.monotonic()
        self.timings.append((step, now - self._last_mark))
        self._last_mark = now

    # --- opening and running -------------------------------------------------------------------
    def open(self) -> None:
        """Open the notebook and wait for an idle kernel.

        On a fresh page: load JupyterLab at the notebook with ``?reset`` (drops any restored layout).
        On a page that already shows this JupyterLab: File > Open from Path, which saves reloading
        the whole front end (several seconds per notebook on 2 cores).
        """
        if self.page.url.startswith(f"{self.lab.url}/lab"):
            self.page.locator('.lm-MenuBar-itemLabel:text-is("File")').click()
            self.page.locator('.lm-Menu-itemLabel:text-matches("^Open from Path")').click()
            self.page.locator(".jp-Dialog input").fill(self.name)
            self.page.locator(".jp-Dialog .jp-mod-accept").click()
        else:
            self.page.goto(f"{self.lab.url}/lab/tree/{self.name}?reset")
        self.panel.wait_for(state="visible", timeout=60_000)
        current_tab = self.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current "
                                        ".lm-TabBar-tabLabel")
        current_tab.filter(has_text=self.name).wait_for(timeout=30_000)
        # The status bar can show a stale "Idle" before this notebook's kernel exists (pitfall 1),
        # and Run All then skips every cell: ask the server too.
        self.wait_server_kernel_idle(90)
        self.wait_kernel_idle(60_000)
        self.mark("open (page load, kernel start)")

    def wait_server_kernel_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < deadline:
            state = self.lab.kernel_state(self.name)
            if state == "idle":
                return
            self.page.wait_for_timeout(250)
        raise AssertionError(f"{self.name}: the server reports kernel state {state!r}, not 'idle', "
                             f"{timeout_s:.0f} s after opening; JupyterLab log:\n{self.lab.log_tail()}")

    def close(self, timeout_ms: float = 20_000) -> None:
        """Close this notebook's tab without saving it, so that the next notebook is the only one open
        (Run All acts on JupyterLab's current notebook; a second open one could take the command)."""
        label = self.page.locator(".lm-TabBar-tabLabel", has_text=re.compile(rf"^{re.escape(self.name)}$"))
        tab = self.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has=label)
        if tab.count() == 0:
            return
        tab.first.locator(".lm-TabBar-tabCloseIcon").click()
        discard = self.page.locator(".jp-Dialog button", has_text=re.compile(r"Discard|Don.t Save", re.I))
        deadline = time.monotonic() + timeout_ms / 1000
        while time.monotonic() < deadline:
            if tab.count() == 0:
                return
            if discard.count():
                discard.first.click()
            self.page.wait_for_timeout(100)
        raise AssertionError(f"{self.name}: its tab did not close within {timeout_ms / 1000:.0f} s; "
                             f"dialogs: {self.dialog_texts()}")

    def dialog_texts(self) -> list[str]:
        """The text of every JupyterLab dialog on the page (a kernel-selection or restart dialog
        stops Run All)."""
        return [text.strip() for text in self.page.locator(".jp-Dialog").all_inner_texts()]

    def wait_kernel_idle(self, timeout_ms: float | None = None) -> None:
        # The toolbar's idle indicator says idle before a kernel exists (pitfall 1): use the status bar.
        self.page.locator(KERNEL_IDLE).wait_for(timeout=timeout_ms or self.cell_timeout_ms)

    def run_all(self, start_timeout_ms: float = 30_000) -> None:
        """Run All Cells from the menu and wait until every code cell ran or execution stopped.

        Fails fast, saying what the page shows, when no cell starts (the command went to no kernel or
        another notebook: it is tried once more first) or when a dialog (kernel died, select kernel)
        blocks the run.
        """
        total = self.panel.locator(".jp-CodeCell").count()
        progress = """([selector, total]) => {
            const panel = document.querySelector(selector);
            if (!panel) return null;
            const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .map(p => p.textContent.trim());
            const errors = panel.querySelectorAll(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length;
            return {busy: prompts.some(p => p.includes('*')),
                    done: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
                    errors, dialog: document.querySelector('.jp-Dialog') !== null};
        }"""
        arg = [VISIBLE_NOTEBOOK, total]

        def state() -> dict:
            return self.page.evaluate(progress, arg) or {}

        def wait(condition: str, timeout_ms: float) -> bool:
            try:
                self.page.wait_for_function(
                    f"(arg) => {{ const s = ({progress})(arg); return s && ({condition}); }}",
                    arg=arg, timeout=timeout_ms, polling=250)
                return True
            except Exception as error:  # playwright's TimeoutError
                if "Timeout" not in type(error).__name__:
                    raise
                return False

        def fail(why: str) -> None:
            shot = self.screenshot("run_all_failed")
            raise AssertionError(
                f"{self.name}: {why}; prompts {self.cell_prompts()}, page state {state()}, dialogs "
                f"{self.dialog_texts()}, server kernel state {self.lab.kernel_state(self.name)!r}, "
                f"screenshot {shot}")

        started = "s.busy || s.done > 0 || s.errors > 0 || s.dialog"
        for attempt in range(2):
            # Select the first cell, so that this notebook is JupyterLab's current one.
            self.panel.locator(".jp-CodeCell .jp-InputPrompt").first.click()
            self.page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
            self.page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
            if wait(started, start_timeout_ms):
                break
        else:
            fail(f"Run All Cells started no cell within {start_timeout_ms / 1000:.0f} s, twice")
        finished = "s.dialog || (!s.busy && (s.done === arg[1] || s.errors > 0))"
        if not wait(finished, self.cell_timeout_ms * max(total, 1)):
            fail("the cells did not finish in time")
        if state().get("dialog"):
            fail("a dialog stopped the run")
        self.wait_kernel_idle()
        self.mark("run all cells")
        self.assert_all_cells_ran(total)

    def cell_prompts(self) -> list[str]:
        return [text.strip() for text in
                self.panel.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]

    def assert_all_cells_ran(self, total: int | None = None) -> None:
        prompts = self.cell_prompts()
        not_run = [i for i, prompt in enumerate(prompts) if not re.search(r"\[\d+\]", prompt)]
        assert not not_run, (f"{self.name}: code cells {not_run} did not run (prompts {prompts});"
                             f" errors: {self.error_outputs()}")

    # --- errors ----------------------------------------------------------------------------------
    def error_outputs(self) -> list[str]:
        """Tracebacks anywhere in the notebook: cell outputs and Output widgets alike.

        JupyterLab renders an error output as ``application/vnd.jupyter.stderr``; plain stderr
        (warnings, progress bars) counts only when it holds a traceback or a widget error.
        """
        texts = self.panel.locator(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        ).all_inner_texts()
        widget_errors = self.panel.locator(".jupyter-widgets").filter(
            has_text=re.compile(r"Error displaying widget|Error rendering", re.I)).all_inner_texts()
        return [text for text in texts
                if re.search(r"Traceback|Error\b|Exception\b", text)] + widget_errors

    def log_console_count(self) -> int:
        """Messages JupyterLab logged for this notebook: kernel output that belongs to no cell, such as
        a widget callback that raised outside any Output widget. The status bar shows their number."""
        item = self.page.locator(".jp-LogConsoleStatusItem")
        if item.count() == 0:
            return 0
        numbers = re.findall(r"\d+", item.first.inner_text())
        return int(numbers[0]) if numbers else 0

    def log_console_messages(self) -> list[str]:
        """Open JupyterLab's log console (from its status-bar item) and read what it holds."""
        if self.log_console_count() == 0:
            return []
        self.page.locator(".jp-LogConsoleStatusItem").first.click()
        entries = self.page.locator(".jp-LogConsolePanel .jp-OutputArea-output")
        entries.first.wait_for(timeout=10_000)
        return [text.strip() for text in entries.all_inner_texts()]

    def assert_no_errors(self) -> None:
        errors = self.error_outputs()
        assert not errors, f"{self.name}: error output:\n" + "\n---\n".join(map(_tail, errors))
        logged = self.log_console_messages()
        assert not logged, (f"{self.name}: JupyterLab's log console holds output that belongs to no "
                            "cell (a widget callback printed or raised):\n" + "\n---\n".join(map(_tail, logged)))

    # --- figures ---------------------------------------------------------------------------------
    def rendered_figures(self, settle_ms: float = 1_000) -> int:
        """Figures the page shows in this notebook's outputs: loaded images (inline figures and
        explorers' image widgets alike), counted once two reads ``settle_ms`` apart agree."""
        count = """selector => [...document.querySelectorAll(selector + ' .jp-OutputArea-output img')]
            .filter(image => image.complete && image.naturalWidth > 0).length"""
        before = self.page.evaluate(count, VISIBLE_NOTEBOOK)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(settle_ms)
            now = self.page.evaluate(count, VISIBLE_NOTEBOOK)
            if now == before:
                return now
            before = now
        return before

    def assert_figures_shown(self, expected: int | None = None) -> int:
        """After Run All: the page shows as many figures as the notebook draws (:func:`drawn_figures`
        of its file in the lab root, unless ``expected`` is given). Returns the number."""
        if expected is None:
            expected = drawn_figures(self.lab.root / self.name)
        shown = self.rendered_figures()
        if shown != expected:
            shot = self.screenshot("figures_missing")
            raise AssertionError(f"{self.name}: the page shows {shown} figures, the notebook draws {expected} "
                                 f"(one per plt.show() and per explorer); screenshot {shot}")
        self.mark("figures counted")
        return shown

    # --- widgets ---------------------------------------------------------------------------------
    def widget(self, kind: str, description: str):
        """The ipywidget of CSS class ``kind`` (e.g. ``widget-slider``) whose description matches."""
        label = self.page.locator(".widget-label", has_text=_label_regex(description))
        return self.panel.locator(f".jp-OutputArea .{kind}", has=label).first

    def app(self, control_description: str, kind: str = "widget-slider"):
        """The outermost widget box (an explorer) that holds the control with this description."""
        label = self.page.locator(".widget-label", has_text=_label_regex(control_description))
        control = self.page.locator(f".{kind}", has=label)
        return self.panel.locator(".jp-OutputArea-output .widget-box", has=control).first

    def slider(self, description: str):
        return self.widget("widget-slider", description)

    def slider_value(self, description: str) -> str:
        """The slider's readout, as a person reads it (e.g. ``"2"``)."""
        return self.slider(description).locator(".widget-readout").inner_text().strip()

    def move_slider(self, description: str, steps: int = 1) -> str:
        """Move a slider by keyboard (ArrowRight/ArrowLeft ``|steps|`` times); returns its new readout."""
        slider = self.slider(description)
        handle = slider.locator('[role="slider"]')
        before = handle.get_attribute("aria-valuenow")
        handle.focus()
        for _ in range(abs(steps)):
            handle.press("ArrowRight" if steps > 0 else "ArrowLeft")
        self.page.wait_for_function(
            "([el, before]) => el.getAttribute('aria-valuenow') !== before",
            arg=[handle.element_handle(), before], timeout=10_000)
        return self.slider_value(description)

    def dropdown(self, description: str):
        return self.widget("widget-dropdown", description).locator("select")

    def dropdown_options(self, description: str) -> list[str]:
        return [text.strip() for text in self.dropdown(description).locator("option").all_inner_texts()]

    def pick(self, description: str, option: str) -> None:
        """Pick a dropdown option by its visible label."""
        self.dropdown(description).select_option(label=option)

    def image_sources(self, scope=None) -> list[str]:
        """``src`` of every image (figure) in ``scope`` (a locator) or in the whole notebook."""
        root = scope if scope is not None else self.panel
        return root.locator("img").evaluate_all("images => images.map(i => i.src)")

    def wait_images_change(self, before: list[str], scope=None, timeout_ms: float | None = None
                           ) -> list[str]:
        """Wait until the images in ``scope`` differ from ``before`` and the kernel is idle again."""
        root = scope if scope is not None else self.panel
        root.locator("img").first.wait_for(timeout=timeout_ms or self.cell_timeout_ms)
        deadline = time.monotonic() + (timeout_ms or self.cell_timeout_ms) / 1000
        while time.monotonic() < deadline:
            now = self.image_sources(scope)
            if now and now != before:
                # An Output widget redraws by clear + display, and an app may draw several images:
                # wait for the kernel, then until two reads agree.
                self.wait_kernel_idle()
                settled = self.image_sources(scope)
                while time.monotonic() < deadline:
                    self.page.wait_for_timeout(200)
                    again = self.image_sources(scope)
                    if again == settled:
                        return settled
                    settled = again
                return settled
            self.page.wait_for_timeout(100)
        raise AssertionError(f"{self.name}: images did not change within "
                             f"{(timeout_ms or self.cell_timeout_ms) / 1000:.0f} s")

    def image_bytes(self, scope=None) -> list[bytes]:
        """The bytes behind every image in ``scope`` (blob: or data: URLs alike), fetched by the page."""
        root = scope if scope is not None else self.panel
        encoded = root.locator("img").evaluate_all(
            """async images => Promise.all(images.map(async image => {
                const bytes = new Uint8Array(await (await fetch(image.src)).arrayBuffer());
                let text = '';
                for (let i = 0; i < bytes.length; i += 0x8000)
                    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
                return btoa(text);
            }))""")
        return [base64.b64decode(item) for item in encoded]

    def wait_for_change(self, read, before, timeout_ms: float | None = None):
        """Poll ``read()`` until it returns something other than ``before``; return that."""
        deadline = time.monotonic() + (timeout_ms or self.cell_timeout_ms) / 1000
        while time.monotonic() < deadline:
            now = read()
            if now != before:
                return now
            self.page.wait_for_timeout(100)
        raise AssertionError(f"{self.name}: {getattr(read, '__name__', 'value')} stayed {before!r}")

    def texts(self, selector: str) -> list[str]:
        return [text.strip() for text in self.panel.locator(selector).all_inner_texts()]

    def screenshot(self, step: str, locator=None) -> Path:
        """A numbered screenshot of the page (or of ``locator``); also closes a timing mark."""
        path = self.shots.take(self.page, f"{Path(self.name).stem}_{step}", locator)
        self.mark(step)
        return path


def panel_difference(before: bytes, after: bytes, grid: tuple[int, int], cell: tuple[int, int],
                     margin: float = 0.2) -> float:
    """Mean absolute pixel difference (0..255) between two renders of one figure, inside one panel.

    The figure is cut into a ``grid`` of rows x columns and ``cell`` = (row, column) is compared,
    leaving out ``margin`` of each side so that titles and tick labels (which may change with the
    state) do not count: only the drawing itself does.
    """
    import numpy as np
    from PIL import Image

    first = np.asarray(Image.open(io.BytesIO(before)).convert("RGB"), dtype=np.float32)
    second = np.asarray(Image.open(io.BytesIO(after)).convert("RGB"), dtype=np.float32)
    if first.shape != second.shape:
        raise ValueError(f"before/after: figure sizes differ, {first.shape} vs {second.shape}")
    rows, cols = grid
    height, width = first.shape[0] / rows, first.shape[1] / cols
    row, col = cell
    top, left = int((row + margin) * height), int((col + margin) * width)
    bottom, right = int((row + 1 - margin) * height), int((col + 1 - margin) * width)
    return float(np.abs(first[top:bottom, left:right] - second[top:bottom, left:right]).mean())

"""Sweeps: one papermill run of the training notebook per cell of a grid, each in its own run folder.

A researcher's grid (an ablation ladder over seeds, a learning-rate scan) is a spec, in YAML or JSON:

.. code-block:: yaml

    notebook: notebooks/05_train.ipynb      # the default (this checkout's)
    parameters:                             # papermill parameters shared by every cell
      dataset: pascal_person_part
      epochs: 3
    rows:                                   # named variants (optional); each adds or overrides parameters
      cnn: {variant: cnn}
      se_lstm_none: {variant: se_lstm, evolution_mode: none}
    grid:                                   # crossed with every row (optional)
      seed: [0, 1, 2]

String parameters may name environment variables, ``${NAME}`` (e.g. ``data_root:
${SELAB_PASCAL_ROOT}``), so that a spec holds no machine's paths; an unset one is an error.

The cells are the rows crossed with the grid; cell ``(row, {seed: 1})`` runs in ``SWEEP/row/seed=1/``
(``SWEEP/row/`` without a grid): papermill executes the notebook into ``train.ipynb`` there with the
cell's parameters, ``out_dir`` set to the folder and, unless given, ``cache_dir`` to ``SWEEP/cache``
(the features and superpixels are computed once for the sweep). The sweep is resumable: a cell whose last run
finished is skipped, an interrupted one is continued with ``resume=True`` (the training run's own exact
resume), a failed one is retried. ``SWEEP/sweep.json`` records the spec, the commit and every cell's
status, time and log; :mod:`selab.experiments.compare` and ``notebooks/07_compare_runs.ipynb`` read the folder.

Before the first cell starts, every cell is checked (:func:`check_cells`): each name it sets must be a
parameter of the notebook's ``parameters`` cell, of its type (a float written ``1e-3``, which YAML reads as
text, is taken as the number), and for the training notebook each cell must map to a valid
:class:`~selab.training.config.TrainConfig` (:meth:`~selab.training.config.TrainConfig.from_notebook`); one
error names the row, the cell, the key and the allowed names. A cell folder's name is built from safe
characters only (others become ``_``), so no grid value reaches outside the sweep folder.

One sweep at a time per folder: the sweep holds an exclusive lock on ``SWEEP/.sweep.lock``, and each running
cell on ``CELL/.cell.lock`` (``fcntl.flock``, released by the system when the process ends, so a crashed
sweep leaves no stale lock); a second sweep on the same folder stops with an error naming the lock.
Ctrl-C (also SIGTERM and SIGHUP) interrupts the running notebooks' kernels, so that their training runs
stop as on Ctrl-C and save a checkpoint, records the cells as ``interrupted`` and exits with status 130;
the same command resumes them exactly and skips the finished ones.

selab decision: a thin runner over papermill rather than a workflow engine (Snakemake drives papermill
grids in some projects): cells are independent, so a grid, a skip rule and a process pool are all it
needs, and the cells stay ordinary run folders.

Examples
--------
>>> spec = {"parameters": {"epochs": 1}, "rows": {"cnn": {"variant": "cnn"}}, "grid": {"seed": [0, 1]}}
>>> [(cell.name, cell.parameters["seed"]) for cell in cells_of(spec)]
[('cnn/seed=0', 0), ('cnn/seed=1', 1)]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import inspect
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from selab.files import atomic_write_text, writable_folder

# The training notebook of this checkout (a spec may name another, relative to the working directory).
DEFAULT_NOTEBOOK = str(Path(__file__).resolve().parents[2] / "notebooks" / "05_train.ipynb")
CELL_FILE = "sweep_cell.json"  # in each cell folder: its row, grid values, parameters and status
SPEC_KEYS = {"notebook", "parameters", "rows", "grid"}
SWEEP_LOCK = ".sweep.lock"  # in the sweep folder, held while a sweep runs there
CELL_LOCK = ".cell.lock"  # in each cell folder, held while its notebook runs
SET_BY_SWEEP = ("out_dir", "cache_dir", "resume")  # parameters the sweep gives every cell itself
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # characters left out of a cell folder's name
INTERRUPT_GRACE = 60.0  # seconds a cell's notebook has to stop after Ctrl-C before it is terminated


class SweepInterrupted(Exception):
    """Ctrl-C during a sweep: ``cells`` were stopped and recorded as interrupted."""

    def __init__(self, cells: list[str]):
        super().__init__(f"{len(cells)} running cell(s) recorded as interrupted")
        self.cells = cells


@dataclass
class Cell:
    """One run of a sweep: ``name`` is its folder below the sweep folder."""

    name: str
    row: str
    grid: dict
    parameters: dict


def load_spec(path) -> dict:
    """A sweep spec from a YAML or JSON file, checked (:func:`check_spec`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep: spec file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"sweep: {path} is not valid YAML/JSON: {error}") from None
    return check_spec(spec, str(path))


def check_spec(spec, where: str = "spec") -> dict:
    """Raise ``ValueError`` naming the problem unless ``spec`` is a valid sweep spec; return it."""
    if not isinstance(spec, dict):
        raise ValueError(f"sweep: {where} must be a mapping with keys {sorted(SPEC_KEYS)}, got {type(spec).__name__}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"sweep: {where} has unknown keys {sorted(unknown)} (expected {sorted(SPEC_KEYS)})")
    for key in ("parameters", "rows", "grid"):
        if not isinstance(spec.get(key, {}), dict):
            raise ValueError(f"sweep: {where}: '{key}' must be a mapping")
    for name, row in spec.get("rows", {}).items():
        if not isinstance(row, dict):
            raise ValueError(f"sweep: {where}: row {name!r} must be a mapping of parameters")
        if "/" in str(name) or str(name) in ("", ".", ".."):
            raise ValueError(f"sweep: {where}: row name {name!r} must be a plain folder name")
    for key, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep: {where}: grid '{key}' must be a non-empty list of values")
        if not re.fullmatch(r"[A-Za-z_]\w*", str(key)):
            raise ValueError(f"sweep: {where}: grid key {key!r} must be a parameter name (letters, digits, _)")
    if "out_dir" in spec.get("parameters", {}) or any("out_dir" in r for r in spec.get("rows", {}).values()):
        raise ValueError(f"sweep: {where}: 'out_dir' is set by the sweep (one folder per cell)")
    return spec


def _expand(value, where: str):
    """``${NAME}`` in a string parameter -> the environment variable's value (unset: an error)."""
    if not isinstance(value, str):
        return value

    def lookup(match):
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"sweep: {where} uses ${{{name}}}, but the environment variable {name} is not set")
        return os.environ[name]

    return re.sub(r"\$\{(\w+)\}", lookup, value)


def cells_of(spec: dict) -> list[Cell]:
    """The sweep's cells: every row crossed with every combination of the grid, in spec order."""
    check_spec(spec)
    rows = spec.get("rows") or {"run": {}}
    grid = spec.get("grid") or {}
    keys = list(grid)
    cells = []
    # Grid-major: every row of the first grid point (e.g. seed 0) before the next, so that a sweep
    # stopped part-way holds whole comparisons.
    for values in itertools.product(*(grid[k] for k in keys)):
        for row, row_parameters in rows.items():
            combo = dict(zip(keys, values))
            suffix = ",".join(f"{k}={_UNSAFE.sub('_', str(v))}" for k, v in combo.items())
            name = f"{row}/{suffix}" if suffix else str(row)
            parameters = {key: _expand(value, f"parameter {key!r}")
                          for key, value in {**spec.get("parameters", {}), **row_parameters, **combo}.items()}
            cells.append(Cell(name=name, row=str(row), grid=combo, parameters=parameters))
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.name in seen:
            raise ValueError(f"sweep: grid values {seen[cell.name].grid} and {cell.grid} give the same cell folder "
                             f"{cell.name!r} (unsafe characters become '_'); use rows to tell them apart")
        seen[cell.name] = cell
    return cells


def notebook_parameters(notebook) -> dict[str, dict]:
    """The notebook's ``parameters`` cell: ``{name: {"type": "int"|"float"|"str"|"bool"|..., "default": value}}``."""
    import papermill

    try:
        found = papermill.inspect_notebook(str(notebook))
    except Exception as error:  # nbformat and papermill raise their own kinds for a broken file
        raise ValueError(f"sweep: cannot read the notebook {notebook}: {error}") from None
    result = {}
    for name, entry in found.items():
        try:
            default = ast.literal_eval(entry.get("default") or "None")
        except (ValueError, SyntaxError):
            default = None
        result[name] = {"type": entry.get("inferred_type_name"), "default": default}
    return result


def _typed(value, kind: str | None, where: str):
    """``value`` as the notebook's parameter type ``kind``, or a ValueError naming ``where``."""
    if kind == "float":
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "list":
        if isinstance(value, list):
            return value
    else:  # a parameter without a simple type: as given
        return value
    raise ValueError(f"{where}: expected {kind}, got {value!r} ({type(value).__name__})")


def check_cells(cells: list[Cell], notebook) -> list[Cell]:
    """Check every cell against the notebook before any runs; returns the cells with typed parameters.

    Each name a cell sets must be a parameter of the notebook (``out_dir``, ``cache_dir`` and ``resume``
    are the sweep's), of the parameter's type; a notebook whose parameters are those of
    :meth:`~selab.training.config.TrainConfig.from_notebook` (``notebooks/05_train.ipynb``) must also give
    each cell a valid ``TrainConfig``. The first problem raises a ValueError naming the row, the cell,
    the key and the allowed names.
    """
    declared = notebook_parameters(notebook)
    allowed = sorted(name for name in declared if name not in SET_BY_SWEEP)
    from selab.training.config import TrainConfig

    signature = inspect.signature(TrainConfig.from_notebook).parameters
    required = {name for name, p in signature.items() if p.default is inspect.Parameter.empty}
    trains = required <= set(declared)
    checked = []
    for cell in cells:
        where = f"sweep: row {cell.row!r} (cell {cell.name})"
        for key in cell.parameters:
            if key in SET_BY_SWEEP and key != "cache_dir":
                raise ValueError(f"{where}: '{key}' is set by the sweep itself")
            if key not in declared:
                raise ValueError(f"{where}: unknown parameter {key!r}; the notebook {notebook} takes {allowed}")
        parameters = {key: _typed(value, declared[key]["type"], f"{where}: parameter {key!r}")
                      for key, value in cell.parameters.items()}
        if trains:
            values = {name: entry["default"] for name, entry in declared.items() if name in signature}
            values.update({k: v for k, v in parameters.items() if k in signature})
            values.update(out_dir=values.get("out_dir") or "sweep-cell", resume=False, overwrite=False)
            try:
                TrainConfig.from_notebook(**values)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
        checked.append(Cell(name=cell.name, row=cell.row, grid=cell.grid, parameters=parameters))
    return checked


@contextlib.contextmanager
def folder_lock(path: Path, what: str):
    """Hold an exclusive ``fcntl.flock`` on the file ``path`` (created) for the ``with`` block, which gets the
    open lock file; if another process holds it, a ValueError naming ``what``, the lock file and its holder.
    The system releases the lock when the process ends, however it ends (and only once every process that
    inherited the open file has ended too)."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"sweep: {what} is in use by another selab sweep ({holder}; lock {path}); wait for it "
                         "to finish or use another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield handle
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def cell_status(folder: Path) -> str:
    """``done``, ``failed``, ``partial`` (a checkpoint to resume from), ``interrupted`` (before its first
    checkpoint) or ``todo``."""
    record = folder / CELL_FILE
    try:
        status = json.loads(record.read_text()).get("status") if record.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"sweep: {record} is not valid JSON (truncated?); delete it to run the cell again") from None
    if status == "done":
        return "done"
    if (folder / "checkpoints" / "last.pt").is_file():
        return "partial"
    return status if status in ("failed", "interrupted") else "todo"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(json.dumps(data, indent=2), path)


class _Running:
    """The notebooks a sweep is running, so that Ctrl-C can stop them all (and say which)."""

    def __init__(self):
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.processes: dict[str, subprocess.Popen] = {}

    def interrupt(self) -> list[str]:
        """Ask every running notebook to stop; returns their cells.

        The notebook's kernel gets SIGINT, Jupyter's own kernel interrupt: the training run in it stops as on
        Ctrl-C (saving its checkpoint) and papermill ends with the cell's error. A notebook whose kernel has
        not started yet gets SIGINT itself."""
        self.stop.set()
        with self.lock:
            running = dict(self.processes)
        for process in running.values():
            kernels = []
            with contextlib.suppress(Exception):  # psutil comes with ipykernel; without it, papermill is told
                import psutil

                kernels = psutil.Process(process.pid).children()
            for kernel in kernels:
                with contextlib.suppress(Exception):
                    kernel.send_signal(signal.SIGINT)
            if not kernels:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
        return sorted(running)


def _wait(process: subprocess.Popen, running: _Running) -> int:
    """The notebook's exit status. After Ctrl-C it has INTERRUPT_GRACE seconds to stop, then papermill gets
    SIGINT and 10 more seconds, then SIGTERM, then is killed."""
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if running.stop.is_set():
                break
    for stop, seconds in ((None, INTERRUPT_GRACE), (signal.SIGINT, 10), (signal.SIGTERM, 10)):
        if stop is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop)
        try:
            return process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    return process.wait()


def run_cell(cell: Cell, sweep_dir: Path, notebook: str, threads: int | None, timeout: int,
             running: _Running | None = None) -> dict:
    """Execute one cell with papermill (in a subprocess); returns its record (also in ``CELL_FILE``).

    The cell folder is locked while the notebook runs (:func:`folder_lock`); with ``running``, Ctrl-C in the
    sweep stops the notebook and the cell is recorded as ``interrupted``."""
    running = running or _Running()
    folder = (sweep_dir / cell.name).resolve()
    if not folder.is_relative_to(Path(sweep_dir).resolve()):  # cells_of builds names of safe characters only
        raise ValueError(f"sweep: cell {cell.name!r} would run outside the sweep folder {sweep_dir}")
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder / CELL_LOCK, f"cell {folder}") as lock:
        return _run_locked_cell(cell, folder, sweep_dir, notebook, threads, timeout, running, lock.fileno())


def _run_locked_cell(cell, folder, sweep_dir, notebook, threads, timeout, running: _Running, lock_fd: int) -> dict:
    status = cell_status(folder)
    parameters = dict(cell.parameters, out_dir=str(folder))
    if not parameters.get("cache_dir"):  # one feature and superpixel cache for the whole sweep
        parameters["cache_dir"] = str((sweep_dir / "cache").resolve())
    if status == "partial":
        parameters["resume"] = True
    params_file = folder / "parameters.yaml"
    atomic_write_text(yaml.safe_dump(parameters, sort_keys=False), params_file)
    record = {"row": cell.row, "grid": cell.grid, "parameters": parameters, "status": "running",
              "commit": _commit(), "resumed": status == "partial"}
    _write_json(folder / CELL_FILE, record)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "papermill", "-k", "python3", "--log-output", "--execution-timeout",
               str(timeout), "-f", str(params_file), notebook, str(folder / "train.ipynb")]
    started = time.time()
    log_path = folder / "papermill.log"
    with open(log_path, "a") as log:
        offset = log.tell()
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        # Its own session: a terminal's Ctrl-C reaches the sweep only, which stops each notebook once. The
        # notebook inherits the cell's lock, so that a cell left running by a killed sweep stays locked.
        with running.lock:
            process = None if running.stop.is_set() else subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, pass_fds=(lock_fd,))
            if process is not None:
                running.processes[cell.name] = process
        rc = None
        if process is not None:
            rc = _wait(process, running)
            with running.lock:
                running.processes.pop(cell.name, None)
    interrupted = running.stop.is_set() and rc != 0
    with open(log_path, errors="replace") as log:
        log.seek(offset)
        # The error line of the notebook's traceback (not the source lines it quotes).
        diverged = re.search(r"^(?:[\w.]+\.)?TrainingDiverged: ", log.read(), flags=re.M) is not None
    status = "interrupted" if interrupted else "done" if rc == 0 else "diverged" if diverged else "failed"
    record.update(status=status, returncode=rc, seconds=time.time() - started, log=str(log_path))
    _write_json(folder / CELL_FILE, record)
    return record


def select_cells(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    """The cells whose name starts with one of ``only`` (all without it); a prefix matching none is an error."""
    if not only:
        return cells
    unmatched = [prefix for prefix in only if not any(c.name.startswith(prefix) for c in cells)]
    if unmatched:
        rows = sorted({c.row for c in cells})
        raise ValueError(f"sweep: --only {unmatched[0]!r} matches no cell (rows: {rows}; cells are named like "
                         f"{cells[0].name!r})")
    return [c for c in cells if any(c.name.startswith(p) for p in only)]


def run_sweep(spec: dict, sweep_dir, jobs: int = 1, threads: int | None = None, timeout: int = 86400,
              only: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Run every cell of ``spec`` that is not done into ``sweep_dir``; returns the cells' records.

    Parameters
    ----------
    spec : dict
        See the module docstring; checked by :func:`check_spec`, its cells by :func:`check_cells`.
    sweep_dir : str or Path
        Locked for the duration of the sweep (:func:`folder_lock`).
    jobs : int
        Cells run at the same time (separate processes).
    threads : int, optional
        ``OMP_NUM_THREADS`` of each cell (default: inherited).
    timeout : int
        papermill's per-cell execution timeout, in seconds.
    only : list of str, optional
        Run only the cells whose name starts with one of these prefixes (e.g. a row); each must match.

    Raises
    ------
    SweepInterrupted
        On Ctrl-C, once the running cells are stopped and recorded as ``interrupted``.
    """
    check_spec(spec)
    for name, value, low in (("jobs", jobs, 1), ("timeout", timeout, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"sweep: {name} must be a positive int, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"sweep: threads must be a positive int, got {threads!r} (None: inherited)")
    notebook = spec.get("notebook", DEFAULT_NOTEBOOK)
    if not Path(notebook).is_file():
        raise ValueError(f"sweep: notebook {notebook} does not exist (run from the repository root or give a path)")
    all_cells = check_cells(cells_of(spec), notebook)
    cells = select_cells(all_cells, only)
    sweep_dir = writable_folder(sweep_dir, "sweep: --out")
    with folder_lock(sweep_dir / SWEEP_LOCK, f"sweep folder {sweep_dir}"):
        _write_json(sweep_dir / "sweep.json", {"spec": spec, "commit": _commit(), "cells": [c.name for c in all_cells]})
        todo = [c for c in cells if cell_status(sweep_dir / c.name) != "done"]
        if progress:
            print(f"sweep {sweep_dir}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run "
                  f"({jobs} at a time)", flush=True)
        running = _Running()

        def one(cell: Cell) -> dict | None:
            if running.stop.is_set():
                return None
            record = run_cell(cell, sweep_dir, notebook, threads, timeout, running)
            if progress:
                print(f"  {cell.name}: {record['status']} in {record['seconds'] / 60:.1f} min"
                      + ("" if record["status"] == "done" else f" (log: {record['log']})"), flush=True)
            return record

        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            for future in [pool.submit(one, cell) for cell in todo]:
                future.result()
        except KeyboardInterrupt:
            stopped = running.interrupt()
            pool.shutdown(wait=True, cancel_futures=True)
            raise SweepInterrupted(stopped) from None
        except BaseException:
            running.interrupt()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return [json.loads((sweep_dir / c.name / CELL_FILE).read_text()) for c in cells
            if (sweep_dir / c.name / CELL_FILE).is_file()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selab sweep", description="Run a grid of papermill training runs.")
    parser.add_argument("spec", help="sweep spec (YAML or JSON): notebook, parameters, rows, grid")
    parser.add_argument("--out", required=True, help="sweep folder (one run folder per cell inside)")
    parser.add_argument("--jobs", type=int, default=1, help="cells at the same time")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per cell (a positive int)")
    parser.add_argument("--timeout", type=int, default=86400, help="papermill execution timeout per cell (s)")
    parser.add_argument("--only", action="append", default=None, metavar="PREFIX", help="only cells named PREFIX...")
    parser.add_argument("--list", action="store_true", help="list the cells and their status, run nothing")
    return parser


def _stop_as_on_ctrl_c(number, frame):
    raise KeyboardInterrupt(signal.Signals(number).name)


def main(argv: list[str] | None = None) -> int:
    """``selab sweep``: exit status 0 every cell done, 2 bad input (the spec, a parameter, a folder in use),
    3 a cell's training diverged, 1 a cell failed otherwise (its log is named), 130 interrupted (Ctrl-C, or
    SIGTERM / SIGHUP, which stop the running cells the same way)."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # the notebooks run in sessions of their own; SIGINT too, because a process started with SIGINT ignored
        # (a background job of a script, a child of a process that ignores it) would not stop on Ctrl-C otherwise
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, _stop_as_on_ctrl_c)
    try:
        spec = load_spec(args.spec)
        if args.list:
            for cell in select_cells(cells_of(spec), args.only):
                print(f"{cell_status(Path(args.out) / cell.name):11s} {cell.name}")
            return 0
        records = run_sweep(spec, args.out, jobs=args.jobs, threads=args.threads, timeout=args.timeout,
                            only=args.only)
    except SweepInterrupted as stop:
        print(f"selab sweep: interrupted; {', '.join(stop.cells) or 'no cell was running'}"
              f"{' recorded as interrupted' if stop.cells else ''}; rerun the same command to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("selab sweep: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"selab sweep: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"selab sweep: error: {error}", file=sys.stderr)
        return 1
    failed = [r for r in records if r["status"] != "done"]
    if failed and all(r["status"] == "diverged" for r in failed):
        return 3
    return 1 if failed else 0

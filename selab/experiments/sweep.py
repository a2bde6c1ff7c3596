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
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from selab.files import atomic_write_text

# The training notebook of this checkout (a spec may name another, relative to the working directory).
DEFAULT_NOTEBOOK = str(Path(__file__).resolve().parents[2] / "notebooks" / "05_train.ipynb")
CELL_FILE = "sweep_cell.json"  # in each cell folder: its row, grid values, parameters and status
SPEC_KEYS = {"notebook", "parameters", "rows", "grid"}


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
            suffix = ",".join(f"{k}={v}" for k, v in combo.items())
            name = f"{row}/{suffix}" if suffix else str(row)
            parameters = {key: _expand(value, f"parameter {key!r}")
                          for key, value in {**spec.get("parameters", {}), **row_parameters, **combo}.items()}
            cells.append(Cell(name=name, row=str(row), grid=combo, parameters=parameters))
    return cells


def cell_status(folder: Path) -> str:
    """``done``, ``failed``, ``partial`` (a checkpoint to resume from) or ``todo``."""
    record = folder / CELL_FILE
    status = json.loads(record.read_text()).get("status") if record.is_file() else None
    if status == "done":
        return "done"
    if (folder / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "failed" if status == "failed" else "todo"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(json.dumps(data, indent=2), path)


def run_cell(cell: Cell, sweep_dir: Path, notebook: str, threads: int | None, timeout: int) -> dict:
    """Execute one cell with papermill (in a subprocess); returns its record (also in ``CELL_FILE``)."""
    folder = (sweep_dir / cell.name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    status = cell_status(folder)
    parameters = dict(cell.parameters, out_dir=str(folder))
    if not parameters.get("cache_dir"):  # one feature and superpixel cache for the whole sweep
        parameters["cache_dir"] = str((sweep_dir / "cache").resolve())
    if status == "partial":
        parameters["resume"] = True
    params_file = folder / "parameters.yaml"
    params_file.write_text(yaml.safe_dump(parameters, sort_keys=False))
    record = {"row": cell.row, "grid": cell.grid, "parameters": parameters, "status": "running",
              "commit": _commit(), "resumed": status == "partial"}
    _write_json(folder / CELL_FILE, record)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "papermill", "-k", "python3", "--log-output", "--execution-timeout",
               str(timeout), "-f", str(params_file), notebook, str(folder / "train.ipynb")]
    started = time.time()
    with open(folder / "papermill.log", "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    record.update(status="done" if rc == 0 else "failed", returncode=rc, seconds=time.time() - started,
                  log=str(folder / "papermill.log"))
    _write_json(folder / CELL_FILE, record)
    return record


def run_sweep(spec: dict, sweep_dir, jobs: int = 1, threads: int | None = None, timeout: int = 86400,
              only: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Run every cell of ``spec`` that is not done into ``sweep_dir``; returns the cells' records.

    Parameters
    ----------
    spec : dict
        See the module docstring; checked by :func:`check_spec`.
    sweep_dir : str or Path
    jobs : int
        Cells run at the same time (separate processes).
    threads : int, optional
        ``OMP_NUM_THREADS`` of each cell (default: inherited).
    timeout : int
        papermill's per-cell execution timeout, in seconds.
    only : list of str, optional
        Run only the cells whose name starts with one of these prefixes (e.g. a row).
    """
    check_spec(spec)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"sweep: jobs must be a positive int, got {jobs!r}")
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    notebook = spec.get("notebook", DEFAULT_NOTEBOOK)
    if not Path(notebook).is_file():
        raise ValueError(f"sweep: notebook {notebook} does not exist (run from the repository root or give a path)")
    cells = [c for c in cells_of(spec) if not only or any(c.name.startswith(p) for p in only)]
    _write_json(sweep_dir / "sweep.json", {"spec": spec, "commit": _commit(), "cells": [c.name for c in cells_of(spec)]})
    todo = [c for c in cells if cell_status(sweep_dir / c.name) != "done"]
    if progress:
        print(f"sweep {sweep_dir}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run "
              f"({jobs} at a time)", flush=True)

    def one(cell: Cell) -> dict:
        record = run_cell(cell, sweep_dir, notebook, threads, timeout)
        if progress:
            print(f"  {cell.name}: {record['status']} in {record['seconds'] / 60:.1f} min"
                  + ("" if record["status"] == "done" else f" (log: {record['log']})"), flush=True)
        return record

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    return [json.loads((sweep_dir / c.name / CELL_FILE).read_text()) for c in cells
            if (sweep_dir / c.name / CELL_FILE).is_file()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selab sweep", description="Run a grid of papermill training runs.")
    parser.add_argument("spec", help="sweep spec (YAML or JSON): notebook, parameters, rows, grid")
    parser.add_argument("--out", required=True, help="sweep folder (one run folder per cell inside)")
    parser.add_argument("--jobs", type=int, default=1, help="cells at the same time")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per cell")
    parser.add_argument("--timeout", type=int, default=86400, help="papermill execution timeout per cell (s)")
    parser.add_argument("--only", action="append", default=None, metavar="PREFIX", help="only cells named PREFIX...")
    parser.add_argument("--list", action="store_true", help="list the cells and their status, run nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.list:
            for cell in cells_of(spec):
                print(f"{cell_status(Path(args.out) / cell.name):8s} {cell.name}")
            return 0
        records = run_sweep(spec, args.out, jobs=args.jobs, threads=args.threads, timeout=args.timeout,
                            only=args.only)
    except ValueError as error:
        print(f"selab sweep: error: {error}", file=sys.stderr)
        return 2
    failed = [r for r in records if r["status"] != "done"]
    return 1 if failed else 0

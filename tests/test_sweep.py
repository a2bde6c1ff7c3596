"""selab.experiments.sweep: cells of a spec, checks, and a resumable papermill grid (on a tiny notebook)."""

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from selab.experiments import sweep


def test_cells_are_rows_crossed_with_the_grid_grid_major():
    spec = {"parameters": {"epochs": 1, "lr": 0.1}, "rows": {"a": {"lr": 0.2}, "b": {}},
            "grid": {"seed": [0, 1]}}
    cells = sweep.cells_of(spec)
    assert [c.name for c in cells] == ["a/seed=0", "b/seed=0", "a/seed=1", "b/seed=1"]
    assert cells[0].parameters == {"epochs": 1, "lr": 0.2, "seed": 0}
    assert cells[1].parameters["lr"] == 0.1
    assert [c.name for c in sweep.cells_of({"parameters": {}})] == ["run"]


@pytest.mark.parametrize("spec, message", [
    ({"rows": {}, "grids": {}}, "unknown keys"),
    ({"grid": {"seed": []}}, "non-empty list"),
    ({"parameters": {"out_dir": "x"}}, "set by the sweep"),
    ({"rows": {"a/b": {}}}, "plain folder name"),
    ([1, 2], "must be a mapping"),
])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        sweep.check_spec(spec)


def _tiny_notebook(path):
    """A parameterized notebook that records its parameters, and fails when asked to."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('value: int = 0\nfail: bool = False\nresume: bool = False\nout_dir: str = ""',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import json, pathlib\nassert not fail, 'asked to fail'\n"
            "pathlib.Path(out_dir, 'result.json').write_text(json.dumps({'value': value, 'resume': resume}))"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_sweep_runs_skips_done_and_retries_failed(tmp_path):
    notebook = tmp_path / "tiny.ipynb"
    _tiny_notebook(notebook)
    spec = {"notebook": str(notebook), "rows": {"ok": {}, "bad": {"fail": True}}, "grid": {"value": [1]}}
    out = tmp_path / "sweep"
    records = sweep.run_sweep(spec, out, jobs=2, progress=False)
    status = {r["row"]: r["status"] for r in records}
    assert status == {"ok": "done", "bad": "failed"}
    assert json.loads((out / "ok/value=1/result.json").read_text()) == {"value": 1, "resume": False}
    assert yaml.safe_load((out / "ok/value=1/parameters.yaml").read_text())["out_dir"] == str(out.resolve() / "ok/value=1")
    done_mtime = (out / "ok/value=1/result.json").stat().st_mtime_ns
    # A cell with a checkpoint to continue from is resumed; a done cell is not run again.
    (out / "bad/value=1/checkpoints").mkdir()
    (out / "bad/value=1/checkpoints/last.pt").write_bytes(b"")
    spec["rows"]["bad"] = {}
    records = sweep.run_sweep(spec, out, jobs=1, progress=False)
    assert all(r["status"] == "done" for r in records)
    assert (out / "ok/value=1/result.json").stat().st_mtime_ns == done_mtime
    assert json.loads((out / "bad/value=1/result.json").read_text())["resume"] is True
    assert json.loads((out / "sweep.json").read_text())["cells"] == ["ok/value=1", "bad/value=1"]
    assert sweep.main([str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2


def test_environment_variables_in_parameters(monkeypatch):
    monkeypatch.setenv("SELAB_TEST_ROOT", "/data/here")
    spec = {"parameters": {"data_root": "${SELAB_TEST_ROOT}/pascal", "epochs": 2}}
    assert sweep.cells_of(spec)[0].parameters == {"data_root": "/data/here/pascal", "epochs": 2}
    monkeypatch.delenv("SELAB_TEST_ROOT")
    with pytest.raises(ValueError, match="SELAB_TEST_ROOT is not set"):
        sweep.cells_of(spec)


@pytest.mark.parametrize("spec_path", sorted((Path(__file__).parents[1] / "bench").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_spec_gives_valid_training_configs(spec_path, tmp_path, monkeypatch):
    """Each cell of bench/*.yaml, mapped to a TrainConfig as notebooks/05_train.ipynb maps its parameters
    (TrainConfig.from_notebook), is accepted: a typo in a row's options fails here, not an hour into a sweep."""
    from selab.training.config import TrainConfig

    monkeypatch.setenv("SELAB_PASCAL_ROOT", str(tmp_path))
    monkeypatch.setenv("SELAB_CACHE_DIR", str(tmp_path / "cache"))
    cells = sweep.cells_of(sweep.load_spec(spec_path))
    assert cells
    for cell in cells:
        p = {k: v for k, v in cell.parameters.items() if k != "reevaluate"}  # the notebook's, not the config's
        config = TrainConfig.from_notebook(**p, out_dir=str(tmp_path / cell.name))
        assert config.model.variant == cell.parameters["variant"], cell.name

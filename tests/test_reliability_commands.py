"""Fault injection for the commands around training: predict, export-model, compare, check-data and sweep.

In the style of tests/test_reliability.py: each test provokes one fault (bad input, a hostile file name,
a second process on the same folder, Ctrl-C) and asserts the exit code (or the exception), that the
message names the culprit, that no earlier result was lost and that nothing was written outside the
folder meant for it. docs/reliability.md counts these cases (``FAULT_CASES`` below, checked by the last
test). Exit status everywhere: 0 done, 2 bad input, 3 diverged, 1 an operating-system error, 130 interrupted.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from selab.cli import build_parser, main
from selab.data.datasets import read_image
from selab.experiments import sweep
from selab.model.parser import ModelConfig, SELabModel
from selab.training.metrics import PER_IMAGE_FILE, save_per_image, scores_from_confusion
from selab.training.loop import run
from selab.workbench import pretrained
from selab.workbench.predict import OUTPUT_MARK, predict_images
from test_reliability import cli, digest, one_error_line, tiny

REPO = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``, relative: equal trees mean nothing was written there."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A finished one-epoch cnn run folder: ``selab predict --model RUN``'s model."""
    root = tmp_path_factory.mktemp("model")
    run(tiny(root, "run"))
    return root / "run"


def photo(path: Path, seed: int = 0, size=(40, 48)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def cli_out(capsys, argv):
    """Exit code, stdout and stderr of ``selab ARGV``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def predict(capsys, model_run, *args):
    return cli(capsys, ["predict", *args, "--model", model_run, "--quiet"])


# ---------------------------------------------------------------------------------------------------
# predict: inputs are never overwritten, earlier outputs only with --overwrite, its own never read
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_never_overwrites_an_input_photo(model_run, tmp_path, capsys, overwrite):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "cat.jpg")
    precious = photo(photos / "cat_labels.png", seed=1)  # a photo of the user's, named like an output
    before = digest(photos)
    code, err = predict(capsys, model_run, photos, "--out", photos, *(["--overwrite"] if overwrite else []))
    line = one_error_line(err)
    assert code == 2 and str(precious) in line and "input" in line and "another --out" in line
    assert digest(photos) == before


def test_predict_refuses_earlier_outputs_unless_overwrite(model_run, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    photo(photos / "a.png")
    assert predict(capsys, model_run, photos, "--out", out)[0] == 0
    before = digest(out)
    code, err = predict(capsys, model_run, photos, "--out", out)
    line = one_error_line(err)
    assert code == 2 and "a_labels.png" in line and "--overwrite" in line and str(out) in line
    assert digest(out) == before
    code, _ = predict(capsys, model_run, photos, "--out", out, "--overwrite")
    assert code == 0 and sorted(digest(out)) == sorted(before)


def test_predict_overwrite_never_replaces_a_file_it_did_not_write(model_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    photo(tmp_path / "a.png")
    theirs = photo(out / "a_overlay.png", seed=3)  # another program's picture, by chance of that name
    before = digest(out)
    code, err = predict(capsys, model_run, tmp_path / "a.png", "--out", out, "--overwrite")
    line = one_error_line(err)
    assert code == 2 and str(theirs) in line and "did not write" in line and "another --out" in line
    assert digest(out) == before


def test_predict_does_not_read_its_own_outputs(model_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "a.jpg")
    assert predict(capsys, model_run, folder, "--out", folder)[0] == 0
    assert OUTPUT_MARK in Image.open(folder / "a_labels.png").info
    code, out, _ = cli_out(capsys, ["predict", folder, "--model", model_run, "--out", folder, "--overwrite", "--quiet"])
    report = json.loads(out)
    assert code == 0 and report["images"] == 1 and [f["image"] for f in report["files"]] == [str(folder / "a.jpg")]
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a_labels.png", "a_overlay.png"]
    # a shell glob over the folder names the outputs too: they are left out
    code, out, _ = cli_out(capsys, ["predict", *sorted(folder.iterdir()), "--model", model_run,
                                    "--out", tmp_path / "again", "--quiet"])
    assert code == 0 and json.loads(out)["images"] == 1


def _png16(path: Path, grey: np.ndarray) -> Path:
    Image.fromarray(grey.astype(np.uint16)).save(path)  # Pillow writes mode I;16 as a 16-bit grey PNG
    assert Image.open(path).mode == "I;16"
    return path


def test_predict_reads_a_16_bit_png_by_its_range(model_run, tmp_path, capsys):
    grey8 = np.random.default_rng(0).integers(0, 256, (40, 48)).astype(np.uint8)
    sixteen = _png16(tmp_path / "deep.png", grey8.astype(np.uint16) * 257)  # the same picture in 16 bits
    Image.fromarray(grey8).save(tmp_path / "flat.png")
    torch.testing.assert_close(read_image(sixteen), read_image(tmp_path / "flat.png"), rtol=0, atol=1e-6)
    assert float(read_image(sixteen).mean()) < 0.6  # not read as (almost) white
    code, _ = predict(capsys, model_run, sixteen, tmp_path / "flat.png", "--out", tmp_path / "out")
    assert code == 0
    labels = [np.asarray(Image.open(tmp_path / "out" / f"{s}_labels.png")) for s in ("deep", "flat")]
    np.testing.assert_array_equal(labels[0], labels[1])


def test_predict_refuses_a_float_image_without_a_range(model_run, tmp_path, capsys):
    odd = tmp_path / "depth.tif"
    Image.fromarray(np.random.default_rng(0).random((20, 24), dtype=np.float32) * 1000).save(odd)
    code, err = predict(capsys, model_run, odd, "--out", tmp_path / "out")
    line = one_error_line(err)
    assert code == 2 and str(odd) in line and "no defined range" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("images, image_size, message", [
    ([torch.zeros(3, 8, 8, dtype=torch.uint8)], 32, r"image 0 is torch.uint8.*image.float\(\) / 255"),
    ([torch.rand(3, 8, 8), torch.rand(3, 8, 8) * 255], 32, r"image 1 has values up to .*divide 0-255 pixels by 255"),
    ([], 32, "no images given"),
    ([torch.rand(8, 8)], 32, r"image 0 has shape \[8, 8\], expected \[3, H, W\]"),
    ([torch.rand(3, 8, 8)], 0, "image_size must be a positive int, got 0"),
], ids=["uint8", "0-255 float", "empty list", "2-D", "image_size 0"])
def test_predict_images_checks_dtype_range_shape_and_size(model_run, images, image_size, message):
    from selab.training.checkpoints import load_model

    model, _ = load_model(model_run)
    with pytest.raises(ValueError, match=message):
        predict_images(model, images, image_size)


@pytest.mark.parametrize("device", ["cuda", "bogus"])
def test_predict_device_is_one_line(model_run, tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    photo(tmp_path / "a.png")
    code, err = cli(capsys, ["predict", tmp_path / "a.png", "--model", model_run, "--out", tmp_path / "out",
                             "--device", device, "--quiet"])
    line = one_error_line(err)
    assert code == 2 and "--device" in line and repr(device) in line
    assert not (tmp_path / "out").exists()


def test_predict_out_is_a_file(model_run, tmp_path, capsys):
    photo(tmp_path / "a.png")
    target = tmp_path / "results.txt"
    target.write_text("precious")
    code, err = predict(capsys, model_run, tmp_path / "a.png", "--out", target)
    line = one_error_line(err)
    assert code == 2 and "--out" in line and f"{target} is a file" in line
    assert target.read_text() == "precious"


def test_a_failed_predict_leaves_nothing_behind(model_run, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "a.png")
    broken = photos / "b.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "new" / "out"
    code, err = predict(capsys, model_run, photos, "--out", out, "--batch-size", "1")
    assert code == 2 and str(broken) in one_error_line(err)
    assert not out.exists()  # a.png's outputs, written first, are gone with the folder
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    code, _ = predict(capsys, model_run, photos, "--out", kept, "--batch-size", "1")
    assert code == 2 and tree(kept) == ["notes.txt"]


@pytest.mark.parametrize("case", ["folder without checkpoints", "not a .pt file", "missing path", "bare local name"])
def test_predict_model_path_is_checked_as_a_path(model_run, tmp_path, capsys, monkeypatch, case):
    photo(tmp_path / "a.png")
    if case == "folder without checkpoints":
        model, expected = tmp_path / "empty", "no checkpoint in"
        model.mkdir()
    elif case == "not a .pt file":
        model, expected = tmp_path / "weights.txt", "neither a run folder nor a .pt file"
        model.write_text("x")
    elif case == "missing path":
        model, expected = tmp_path / "nowhere" / "run", "does not exist"
    else:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "myrun").mkdir()
        model, expected = "myrun", "write --model ./myrun"
    code, err = cli(capsys, ["predict", tmp_path / "a.png", "--model", model, "--out", tmp_path / "out", "--quiet"])
    line = one_error_line(err)
    assert code == 2 and expected in line and str(model) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "se_lstm.pt", "~/model"])
def test_pretrained_load_takes_names_only(tmp_path, name):
    with pytest.raises(ValueError, match=r"is a path, not a model name.*--model PATH"):
        pretrained.load(name)


# ---------------------------------------------------------------------------------------------------
# export-model: the user's folder by default, shipped models never replaced, existing files kept
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """A run folder of a frozen-ImageNet-backbone model (exportable), with final metrics."""
    folder = tmp_path_factory.mktemp("lite") / "run"
    torch.manual_seed(0)
    model = SELabModel(ModelConfig(variant="cnn", backbone="efficientnet_lite0", freeze_backbone=True,
                                   feature_channels=8))
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "train_config": {"image_size": 32},
                "epoch": 1, "step": 0, "history": []}, folder / "checkpoints" / "last.pt")
    (folder / "metrics.json").write_text(json.dumps({"final": {"mean_iou": 12.5}}))
    return folder


def _weights_listing():
    return {p.name: sha(p) for p in pretrained.WEIGHTS_DIR.glob("*")}


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_never_replaces_a_shipped_model(lite_run, capsys, overwrite):
    if "se_lstm" not in pretrained.shipped():
        pytest.skip("no shipped models in this checkout")
    before = _weights_listing()
    code, err = cli(capsys, ["export-model", lite_run, "se_lstm", *(["--overwrite"] if overwrite else [])])
    line = one_error_line(err)
    assert code == 2 and "'se_lstm' is the name of a shipped model" in line
    assert _weights_listing() == before and not (pretrained.user_folder() / "se_lstm.pt").exists()


def test_export_goes_to_the_user_folder_and_is_found_by_name(lite_run, tmp_path, capsys):
    before = _weights_listing()
    code, out, _ = cli_out(capsys, ["export-model", lite_run, "mine"])
    written = Path(json.loads(out)["written"])
    assert code == 0 and written == pretrained.user_folder() / "mine.pt"
    assert str(pretrained.user_folder()).startswith(os.environ["SELAB_HOME"])
    assert _weights_listing() == before  # nothing written into the package
    assert "mine" in pretrained.available()
    assert pretrained.load("mine")[1]["metrics"]["mean_iou"] == 12.5
    photo(tmp_path / "a.png")
    code, err = cli(capsys, ["predict", tmp_path / "a.png", "--model", "mine", "--out", tmp_path / "out", "--quiet"])
    assert code == 0, err
    code, err = cli(capsys, ["predict", tmp_path / "a.png", "--model", written, "--out", tmp_path / "by-path", "--quiet"])
    assert code == 0, err  # the exported file, by path


def test_export_refuses_an_existing_name_unless_overwrite(lite_run, tmp_path, capsys):
    folder = tmp_path / "models"
    assert cli(capsys, ["export-model", lite_run, "twice", "--folder", folder])[0] == 0
    before = sha(folder / "twice.pt")
    code, err = cli(capsys, ["export-model", lite_run, "twice", "--folder", folder])
    line = one_error_line(err)
    assert code == 2 and str(folder / "twice.pt") in line and "--overwrite" in line
    assert sha(folder / "twice.pt") == before
    assert cli(capsys, ["export-model", lite_run, "twice", "--folder", folder, "--overwrite"])[0] == 0


def test_export_folder_is_a_file(lite_run, tmp_path, capsys):
    target = tmp_path / "models.txt"
    target.write_text("precious")
    code, err = cli(capsys, ["export-model", lite_run, "x", "--folder", target])
    line = one_error_line(err)
    assert code == 2 and "--folder" in line and f"{target} is a file" in line
    assert target.read_text() == "precious"


@pytest.mark.parametrize("name", ["../escaped", "a/b", "model.pt"])
def test_export_name_is_a_name(lite_run, tmp_path, capsys, name):
    code, err = cli(capsys, ["export-model", lite_run, name, "--folder", tmp_path / "models"])
    assert code == 2 and repr(name) in one_error_line(err)
    assert not (tmp_path / "models").exists() and tree(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# compare: same images or nothing, files named, bootstrap checked
# ---------------------------------------------------------------------------------------------------
def _run_folder(folder: Path, num_images: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    confusion = rng.integers(1, 50, size=(num_images, 7, 7))
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"final": scores_from_confusion(confusion.sum(0))}))
    save_per_image(folder / PER_IMAGE_FILE, [(f"img{i}", torch.from_numpy(c)) for i, c in enumerate(confusion)])
    return folder


def test_compare_refuses_runs_on_different_validation_sets(tmp_path, capsys):
    three, five = _run_folder(tmp_path / "three", 3), _run_folder(tmp_path / "five", 5, seed=1)
    for pair in ("three:five", "five:three"):
        code, err = cli(capsys, ["compare", three, five, "--pairs", pair, "--bootstrap", "50"])
        line = one_error_line(err)
        assert code == 2 and str(three) in line and str(five) in line and "same validation split" in line


@pytest.mark.parametrize("samples", ["0", "-5"])
def test_compare_bootstrap_must_be_positive(tmp_path, capsys, samples):
    a, b = _run_folder(tmp_path / "a", 4), _run_folder(tmp_path / "b", 4, seed=1)
    code, err = cli(capsys, ["compare", a, b, "--pairs", "a:b", "--bootstrap", samples])
    assert code == 2 and f"--bootstrap: expected a positive number of resamples, got {samples}" in one_error_line(err)


def test_compare_names_a_truncated_metrics_json(tmp_path, capsys):
    a = _run_folder(tmp_path / "a", 4)
    text = (a / "metrics.json").read_text()
    (a / "metrics.json").write_text(text[: len(text) // 2])
    code, err = cli(capsys, ["compare", a])
    assert code == 2 and str(a / "metrics.json") in one_error_line(err)


def test_compare_names_a_garbage_per_image_file(tmp_path, capsys):
    a, b = _run_folder(tmp_path / "a", 4), _run_folder(tmp_path / "b", 4, seed=1)
    (b / PER_IMAGE_FILE).write_bytes(b"PK\x03\x04 garbage")
    code, err = cli(capsys, ["compare", a, b, "--pairs", "a:b"])
    assert code == 2 and str(b / PER_IMAGE_FILE) in one_error_line(err)


# ---------------------------------------------------------------------------------------------------
# check-data: bad data is bad input (exit 2), its help says so, --num-classes is checked
# ---------------------------------------------------------------------------------------------------
def test_check_data_exits_2_on_bad_data_and_says_so(tmp_path, capsys):
    from selab.data.synthetic import SyntheticPersonParts, write_pascal_layout

    root = write_pascal_layout(SyntheticPersonParts(4, 32), tmp_path / "pascal", val_fraction=0.25)
    mask = root / "SegmentationPart" / f"{(root / 'train_id.txt').read_text().split()[0]}.png"
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(mask)
    assert main(["check-data", str(root), "--quiet"]) == 2
    assert mask.name in capsys.readouterr().out
    check = build_parser()._subparsers._group_actions[0].choices["check-data"]
    assert "exit status 2 when anything is wrong" in " ".join(check.format_help().split())


def test_check_data_num_classes_zero(tmp_path, capsys):
    code, err = cli(capsys, ["check-data", tmp_path, "--num-classes", "0", "--quiet"])
    assert code == 2 and "--num-classes" in one_error_line(err) and "got 0" in err


# ---------------------------------------------------------------------------------------------------
# sweep: cells checked before the first starts, one sweep per folder, Ctrl-C resumable
# ---------------------------------------------------------------------------------------------------
def _notebook(path: Path) -> Path:
    """A parameterized notebook that records its parameters; it can fail, diverge, or wait for a file
    (after writing a checkpoint, as a training run does) before it finishes."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('value: int = 0\ntag: str = ""\nfail: bool = False\ndiverge: bool = False\n'
                                  'wait: str = ""\nresume: bool = False\nout_dir: str = ""',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import json, pathlib, time\nout = pathlib.Path(out_dir)\n"
            "(out / 'checkpoints').mkdir(exist_ok=True)\n(out / 'checkpoints' / 'last.pt').write_bytes(b'')\n"
            "(out / 'started').write_text('')\n"
            "deadline = time.time() + 120\n"
            "while wait and not pathlib.Path(wait).exists() and time.time() < deadline:\n    time.sleep(0.2)\n"
            "class TrainingDiverged(Exception):\n    pass\n"
            "if diverge:\n    raise TrainingDiverged('epoch 1, step 1: the loss is nan')\n"
            "assert not fail, 'asked to fail'\n"
            "(out / 'result.json').write_text(json.dumps({'value': value, 'tag': tag, 'resume': resume}))"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebook(tmp_path):
    return _notebook(tmp_path / "tiny.ipynb")


def _spec(tmp_path: Path, name: str, spec: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep_process(spec: Path, out: Path, *extra, sigint_ignored: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # a background job of a shell script starts with SIGINT ignored, and so does the child of a process ignoring it
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen([sys.executable, "-m", "selab", "sweep", str(spec), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=ignore)


def _wait_for(path: Path, process: subprocess.Popen | None = None, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended ({process.returncode}) before {path}: {process.communicate()}")
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.parametrize("key", ["epoch", "learning_rate"])
def test_sweep_refuses_a_misspelt_parameter_before_any_cell_runs(tmp_path, capsys, key):
    spec = _spec(tmp_path, "spec", {"parameters": {"epochs": 1}, "rows": {"cnn": {"variant": "cnn", key: 0.5}},
                                    "grid": {"seed": [0, 1]}})
    out = tmp_path / "sweep"
    code, err = cli(capsys, ["sweep", spec, "--out", out])
    line = one_error_line(err)
    assert code == 2 and "row 'cnn'" in line and repr(key) in line and "'epochs'" in line and "'lr'" in line
    assert not out.exists()


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "three", r"parameter 'epochs': expected int, got 'three'"),
    ("feature_strides", 8, r"parameter 'feature_strides': expected list, got 8"),
    ("optimizer", "adamw2", r"TrainConfig.optimizer: expected one of"),
    ("variant", "unet", r"variant"),
], ids=["int as text", "number for a list", "unknown optimizer", "unknown variant"])
def test_sweep_cells_map_to_train_configs_before_the_first_runs(tmp_path, key, value, message):
    spec = {"parameters": {"epochs": 1}, "rows": {"cnn": {"variant": "cnn"}, "odd": {key: value}}}
    with pytest.raises(ValueError, match=message) as caught:
        sweep.check_cells(sweep.cells_of(spec), sweep.DEFAULT_NOTEBOOK)
    assert "row 'odd'" in str(caught.value)


def test_sweep_takes_a_float_yaml_reads_as_text(tmp_path):
    spec = yaml.safe_load("parameters: {epochs: 1}\ngrid:\n  lr: [1e-3]\n")
    assert spec["grid"]["lr"] == ["1e-3"]  # YAML 1.1: no dot, no number
    cells = sweep.check_cells(sweep.cells_of(spec), sweep.DEFAULT_NOTEBOOK)
    assert cells[0].parameters["lr"] == 0.001


@pytest.mark.slow
def test_two_sweeps_on_one_folder_the_second_is_refused(notebook, tmp_path, capsys):
    release, out = tmp_path / "release", tmp_path / "sweep"
    first = _spec(tmp_path, "first", {"notebook": str(notebook), "parameters": {"value": 1, "wait": str(release)}})
    second = _spec(tmp_path, "second", {"notebook": str(notebook), "parameters": {"value": 2}})
    process = _sweep_process(first, out)
    try:
        _wait_for(out / "run" / "started", process)
        params_before = (out / "run" / "parameters.yaml").read_text()
        code, err = cli(capsys, ["sweep", second, "--out", out])
        line = one_error_line(err)
        assert code == 2 and str(out / sweep.SWEEP_LOCK) in line and f"pid {process.pid}" in line
        assert (out / "run" / "parameters.yaml").read_text() == params_before
        release.write_text("")
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    assert json.loads((out / "run" / "result.json").read_text())["value"] == 1  # its own settings
    assert json.loads((out / "sweep.json").read_text())["spec"]["parameters"]["value"] == 1


def test_a_locked_cell_is_refused(notebook, tmp_path, capsys):
    out = tmp_path / "sweep"
    (out / "run").mkdir(parents=True)
    spec = _spec(tmp_path, "spec", {"notebook": str(notebook)})
    with sweep.folder_lock(out / "run" / sweep.CELL_LOCK, "cell"):  # another process's notebook, running
        code, err = cli(capsys, ["sweep", spec, "--out", out])
    assert code == 2 and str(out / "run" / sweep.CELL_LOCK) in one_error_line(err)
    assert not (out / "run" / "result.json").exists()


def test_a_crashed_sweep_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / sweep.SWEEP_LOCK
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
                               "from selab.experiments.sweep import folder_lock\n"
                               "with folder_lock(__import__('pathlib').Path(sys.argv[1]), 'x'):\n"
                               "    print('held', flush=True); time.sleep(300)", str(lock), str(REPO)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"lock {lock}"):
            with sweep.folder_lock(lock, "x"):
                pass
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with sweep.folder_lock(lock, "x"):  # the system released it
        pass


@pytest.mark.slow
def test_a_cell_left_running_by_a_killed_sweep_stays_locked(notebook, tmp_path, capsys):
    release, out = tmp_path / "release", tmp_path / "sweep"
    spec = _spec(tmp_path, "spec", {"notebook": str(notebook), "parameters": {"wait": str(release)}})
    process = _sweep_process(spec, out)
    try:
        _wait_for(out / "run" / "started", process)
        process.send_signal(signal.SIGKILL)  # the sweep crashes; its notebook runs on
        process.wait(timeout=30)
        code, err = cli(capsys, ["sweep", spec, "--out", out])
        assert code == 2 and str(out / "run" / sweep.CELL_LOCK) in one_error_line(err)
        release.write_text("")
        deadline = time.time() + 120
        while True:  # the notebook ends, and with it the lock
            try:
                with sweep.folder_lock(out / "run" / sweep.CELL_LOCK, "cell"):
                    break
            except ValueError:
                assert time.time() < deadline, "the cell stayed locked"
                time.sleep(0.5)
    finally:
        process.kill()
    assert cli(capsys, ["sweep", spec, "--out", out])[0] == 0
    assert json.loads((out / "run" / "result.json").read_text())["resume"] is True  # continued from its checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGINT, started with SIGINT ignored"])  # Ctrl-C, a kill
def test_ctrl_c_during_a_sweep_records_interrupted_and_the_rerun_resumes(notebook, tmp_path, stop):
    release, out = tmp_path / "release", tmp_path / "sweep"
    spec = _spec(tmp_path, "spec", {"notebook": str(notebook), "rows": {"first": {}, "second": {"wait": str(release)}},
                                    "grid": {"value": [1]}})
    process = _sweep_process(spec, out, sigint_ignored="ignored" in stop)
    try:
        _wait_for(out / "second/value=1/started", process)
        process.send_signal(getattr(signal, stop.split(",")[0]))
        # the interrupt path allows a notebook INTERRUPT_GRACE + 20 s to stop; on a loaded 2-core machine kernel
        # start-up and shutdown come on top, so the limit is generous (the test is about what happens, not when)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130
    line = one_error_line(err)
    assert "interrupted" in line and "second/value=1" in line and "rerun" in line
    record = json.loads((out / "second/value=1" / sweep.CELL_FILE).read_text())
    assert record["status"] == "interrupted"
    assert sweep.cell_status(out / "first/value=1") == "done"
    assert sweep.cell_status(out / "second/value=1") == "partial"  # its checkpoint is kept
    done = (out / "first/value=1/result.json").stat().st_mtime_ns
    release.write_text("")
    records = sweep.run_sweep(yaml.safe_load(spec.read_text()), out, progress=False)
    assert [r["status"] for r in records] == ["done", "done"]
    assert (out / "first/value=1/result.json").stat().st_mtime_ns == done  # the finished cell is skipped
    assert json.loads((out / "second/value=1/result.json").read_text())["resume"] is True


@pytest.mark.slow
def test_a_grid_value_cannot_escape_the_sweep_folder(notebook, tmp_path):
    out = tmp_path / "deep" / "er" / "sweep"
    spec = {"notebook": str(notebook), "grid": {"tag": ["0/../../../../escaped_cell", ".."]}}
    before = tree(tmp_path)
    records = sweep.run_sweep(spec, out, progress=False)
    assert [r["status"] for r in records] == ["done", "done"]
    outside = [p for p in tree(tmp_path) if p not in before and not p.startswith("deep/er/sweep")]
    assert outside == ["deep", "deep/er"]
    assert sorted(p.name for p in (out / "run").iterdir()) == ["tag=..", "tag=0_.._.._.._.._escaped_cell"]
    assert json.loads((out / "run/tag=0_.._.._.._.._escaped_cell/result.json").read_text())["tag"] == \
        "0/../../../../escaped_cell"  # the value itself reaches the notebook unchanged


def test_sweep_out_is_a_file(notebook, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("precious")
    code, err = cli(capsys, ["sweep", _spec(tmp_path, "spec", {"notebook": str(notebook)}), "--out", target])
    line = one_error_line(err)
    assert code == 2 and "--out" in line and f"{target} is a file" in line and target.read_text() == "precious"


def test_sweep_only_with_a_typo_runs_nothing_and_says_so(notebook, tmp_path, capsys):
    spec = _spec(tmp_path, "spec", {"notebook": str(notebook), "rows": {"cnn": {}, "se_lstm": {}}})
    code, err = cli(capsys, ["sweep", spec, "--out", tmp_path / "sweep", "--only", "se_lsmt"])
    line = one_error_line(err)
    assert code == 2 and "'se_lsmt' matches no cell" in line and "'cnn'" in line and "'se_lstm'" in line
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("flag", ["--threads", "--jobs", "--timeout"])
def test_sweep_counts_must_be_positive(notebook, tmp_path, capsys, flag):
    spec = _spec(tmp_path, "spec", {"notebook": str(notebook)})
    code, err = cli(capsys, ["sweep", spec, "--out", tmp_path / "sweep", flag, "0"])
    assert code == 2 and f"{flag[2:]} must be a positive int, got 0" in one_error_line(err)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_sweep_exit_status_follows_its_cells(notebook, tmp_path, capsys):
    diverging = _spec(tmp_path, "diverging", {"notebook": str(notebook), "parameters": {"diverge": True}})
    assert cli(capsys, ["sweep", diverging, "--out", tmp_path / "a"])[0] == 3
    assert sweep.cell_status(tmp_path / "a" / "run") == "partial"  # resumable from its checkpoint
    failing = _spec(tmp_path, "failing", {"notebook": str(notebook), "parameters": {"fail": True}})
    assert cli(capsys, ["sweep", failing, "--out", tmp_path / "b"])[0] == 1
    assert json.loads((tmp_path / "b" / "run" / sweep.CELL_FILE).read_text())["status"] == "failed"


# The fault cases above (each parametrized case counts once); docs/reliability.md quotes this number.
FAULT_CASES = 60


def test_fault_case_count_matches_the_docs(request, whole_module_selected):
    from test_reliability import FAULT_CASES as TRAINING_CASES

    page = " ".join((REPO / "docs" / "reliability.md").read_text().split())
    assert f"{FAULT_CASES} for the commands around it" in page and f"{TRAINING_CASES + FAULT_CASES} fault cases" in page
    mine = [i for i in request.session.items if i.path == request.node.path and i is not request.node]
    if not whole_module_selected:
        pytest.skip("only some tests of this module were selected")
    assert len(mine) == FAULT_CASES

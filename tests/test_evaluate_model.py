"""``selab evaluate --model NAME``: a named model (shipped or exported) scored like its run folder."""

import json

import pytest

from selab.cli import main
from selab.training.loop import run
from test_reliability import cli, one_error_line, tiny


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """A finished one-epoch run on a frozen ImageNet backbone (exportable without it)."""
    root = tmp_path_factory.mktemp("evaluate_model")
    config = tiny(root, "run", backbone="efficientnet_lite0", model={"feature_channels": 8})
    run(config)
    return root / "run"


def _json(capsys, argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_a_named_model_scores_as_its_run_folder(lite_run, capsys):
    assert main(["export-model", str(lite_run), "mine"]) == 0
    capsys.readouterr()
    common = ["--dataset", "synthetic", "--split", "val", "--limit", "2", "--quiet",
              "--cache-dir", str(lite_run.parent / "cache")]
    by_run = _json(capsys, ["evaluate", lite_run, *common])
    by_name = _json(capsys, ["evaluate", "--model", "mine", *common])
    assert by_name["model"] == "mine" and "checkpoint" not in by_name
    assert by_name["mean_iou"] == pytest.approx(by_run["mean_iou"], abs=1e-9)
    assert by_name["per_class_iou"] == pytest.approx(by_run["per_class_iou"], abs=1e-9)
    flipped = _json(capsys, ["evaluate", "--model", "mine", "--tta", "flip", *common])
    assert flipped["test_time_augmentation"] == "flip"


@pytest.mark.parametrize("argv, culprit", [
    (["evaluate"], "give a run folder or checkpoint, or --model NAME"),
    (["evaluate", "RUN", "--model", "mine"], "give a run folder or checkpoint, or --model NAME"),
    (["evaluate", "--model", "no_such_model"], "no_such_model"),
    (["evaluate", "--model", "mine", "--model-option", "eval_samples=2"], "--model-option"),
])
def test_evaluate_model_errors_are_one_line(lite_run, capsys, argv, culprit):
    main(["export-model", str(lite_run), "mine", "--overwrite"])
    capsys.readouterr()
    argv = [str(lite_run) if a == "RUN" else a for a in argv]
    code, err = cli(capsys, argv)
    assert code == 2 and culprit in one_error_line(err)


def test_a_shipped_model_needs_its_data_folder(capsys):
    code, err = cli(capsys, ["evaluate", "--model", "se_lstm", "--limit", "1"])
    assert code == 2 and "--data-root" in one_error_line(err)


def test_a_shipped_model_on_the_real_data(pascal_root, capsys, tmp_path):
    result = _json(capsys, ["evaluate", "--model", "se_lstm", "--data-root", pascal_root, "--limit", "2",
                            "--batch-size", "2", "--quiet", "--cache-dir", tmp_path / "cache"])
    assert result["model"] == "se_lstm" and result["num_images"] == 2 and 0 < result["mean_iou"] <= 100

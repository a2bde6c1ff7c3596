"""Tests for selab.cli: the commands end to end, and the train flags derived from TrainConfig."""

import dataclasses
import inspect
import json
import re

import pytest

from selab.cli import TRAIN_CHOICES, build_parser, main, parameter_docs, train_config
from selab.training.config import TrainConfig


def test_train_then_evaluate(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--variant", "cnn", "--dataset", "synthetic", "--limit", "2", "--val-limit", "2",
                 "--epochs", "1", "--image-size", "32", "--batch-size", "2", "--out", str(run_dir),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    out = tmp_path / "metrics.json"
    code = main(["evaluate", str(run_dir), "--dataset", "synthetic", "--split", "val", "--limit", "2",
                 "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert len(metrics["per_class_iou"]) == 7 and 0 <= metrics["pixel_accuracy"] <= 100


def test_bad_value_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--dataset", "pascal_person_part", "--out", str(tmp_path / "x")]) == 2
    assert "data_root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--variant", "unet", "--out", "x"])


def test_model_options_reach_the_config():
    args = build_parser().parse_args(["train", "--out", "x", "--hidden-channels", "32",
                                      "--model-option", 'evolution={"mode": "greedy"}'])
    from selab.cli import _model_options

    assert _model_options(args) == {"hidden_channels": 32, "evolution": {"mode": "greedy"}}


def test_check_data_prints_the_histogram_and_fails_on_problems(tmp_path, capsys):
    from selab.data.synthetic import SyntheticPersonParts, write_pascal_layout

    root = write_pascal_layout(SyntheticPersonParts(4, 32), tmp_path / "pascal", val_fraction=0.25)
    assert main(["check-data", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train 3, val 1 ids" in out and "head" in out and "no problems found" in out
    assert main(["check-data", str(root), "--split", "val", "--quiet"]) == 0
    assert "val 1 ids" in capsys.readouterr().out
    (root / "SegmentationPart" / f"{(root / 'val_id.txt').read_text().split()[0]}.png").unlink()
    assert main(["check-data", str(root), "--quiet"]) == 2  # bad data is bad input
    assert "mask file missing" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "absent"), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_every_train_config_field_has_a_documented_flag():
    """The command line is derived from TrainConfig: a new field gets its flag and help without a CLI edit."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {action.dest: action for action in train._actions}
    docs = parameter_docs(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name == "model":
            assert "model_option" in by_dest
            continue
        assert field.name in by_dest, f"no flag for TrainConfig.{field.name}"
        assert docs.get(field.name) and by_dest[field.name].help, f"TrainConfig.{field.name} has no help text"
    for name, choices in TRAIN_CHOICES.items():  # the docstring's {"a", "b"} says the same as the code
        documented = inspect.getdoc(TrainConfig).split(f"\n{name} : ", 1)[1].split("\n", 1)[0]
        assert set(re.findall(r'"(\w+)"', documented)) == set(choices), name


def test_train_flags_reach_the_config():
    args = build_parser().parse_args([
        "train", "--out", "runs/x", "--momentum", "0.5", "--backbone-lr-scale", "0.2", "--num-figures", "1",
        "--val-split", "none", "--no-augment", "--quiet", "--freeze-backbone", "false", "--limit", "3",
        "--n-segments", "30", "--resume", "--order", "bfs", "--model-option", "dropout=0.0"])
    config = train_config(args)
    assert (config.momentum, config.backbone_lr_scale, config.num_figures) == (0.5, 0.2, 1)
    assert config.val_split is None and not config.augment and not config.progress and config.resume
    assert config.freeze_backbone is False and config.limit == 3 and config.n_segments == 30
    assert config.out_dir == "runs/x" and (config.model.order, config.model.dropout) == ("bfs", 0.0)
    defaults = train_config(build_parser().parse_args(["train", "--out", "runs/x"]))
    assert defaults.to_dict() == {**TrainConfig(out_dir="runs/x").to_dict()}
    with pytest.raises(SystemExit):  # --out stays required
        build_parser().parse_args(["train"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--limit", "many"])

import json

import pytest

from selab.cli import build_parser, main


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
    from selab.synthetic import SyntheticPersonParts, write_pascal_layout

    root = write_pascal_layout(SyntheticPersonParts(4, 32), tmp_path / "pascal", val_fraction=0.25)
    assert main(["check-data", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train 3, val 1 ids" in out and "head" in out and "no problems found" in out
    assert main(["check-data", str(root), "--split", "val", "--quiet"]) == 0
    assert "val 1 ids" in capsys.readouterr().out
    (root / "SegmentationPart" / f"{(root / 'val_id.txt').read_text().split()[0]}.png").unlink()
    assert main(["check-data", str(root), "--quiet"]) == 1
    assert "mask file missing" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "absent"), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err

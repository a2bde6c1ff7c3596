"""Tests for the hierarchy measurement (selab.experiments.hierarchy and ``selab hierarchy``)."""
import json
import math

import pytest
import torch

from selab.cli import main
from selab.experiments.hierarchy import (BASELINES, METHODS, hierarchy_markdown, image_partitions, measure_hierarchy,
                                         parse_counts)
from selab.workbench import pretrained


@pytest.fixture(scope="module")
def shipped():
    return pretrained.load("se_lstm_deep")


@pytest.fixture(scope="module")
def pascal_layout(tmp_path_factory):
    from selab.data.synthetic import SyntheticPersonParts, write_pascal_layout

    return write_pascal_layout(SyntheticPersonParts(6, 96, seed=3), tmp_path_factory.mktemp("layout") / "pascal",
                               val_fraction=0.5)


def _check_result(result, counts, levels):
    rows = result["rows"]
    assert [r["row"] for r in rows] == [f"level {i}" for i in range(levels)] + [f"{c} nodes" for c in counts]
    for row in rows:
        methods = row["methods"]
        assert set(methods) == (set(METHODS) if row["level"] is not None else set(BASELINES))
        if row["level"] is not None:  # the baselines are stopped at the level's own node counts
            for name in BASELINES:
                assert methods[name]["nodes_per_image"] == pytest.approx(methods["learned"]["nodes_per_image"])
        for name, scores in methods.items():
            assert 0 <= scores["achievable_miou"] <= 100 and 0 < scores["asa"] <= 1
            # the oracle is an upper bound of every other partition at the same count
            assert methods["oracle"]["achievable_miou"] >= scores["achievable_miou"] - 1e-9, (row["row"], name)
            assert methods["oracle"]["asa"] >= scores["asa"] - 1e-9, (row["row"], name)
    level0 = rows[0]["methods"]
    assert len({json.dumps(s, sort_keys=True) for s in level0.values()}) == 1  # level 0: the superpixels, for all
    # coarser means fewer nodes, less pure
    for method in BASELINES:
        fixed = [r["methods"][method] for r in rows if r["level"] is None]
        assert all(a["nodes_per_image"] >= b["nodes_per_image"] for a, b in zip(fixed, fixed[1:]))
        assert all(a["asa"] >= b["asa"] - 1e-12 for a, b in zip(fixed, fixed[1:]))


def test_measure_hierarchy_on_generated_data_in_the_pascal_layout(shipped, pascal_layout, tmp_path):
    model, record = shipped
    counts = (40, 12, 3)
    out = tmp_path / "hierarchy.json"
    result = measure_hierarchy(model, record["train_config"], dataset="pascal_person_part", data_root=pascal_layout,
                               split="val", counts=counts, image_size=96, batch_size=2, progress=False, out=out,
                               source="se_lstm_deep")
    assert result["num_images"] == 3 and result["image_size"] == 96 and result["source"] == "se_lstm_deep"
    _check_result(result, counts, levels=len(model.layers))
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    table = hierarchy_markdown(result)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| row | learned: nodes | mIoU | ASA | BR | UE | mean colour: nodes")
    assert len([line for line in lines if line.startswith("| level") or line.endswith("|") and "nodes |" in line
                and line.startswith("| ") and line[2].isdigit()]) == len(model.layers) + len(counts)
    assert "3 images of 'val'" in table


def test_image_partitions_match_the_models_levels(shipped, synthetic_batch):
    model, _ = shipped
    data = synthetic_batch(64, 0, 120)
    found = image_partitions(model, data, counts=(20, 5))
    output, level0 = found["output"], found["level0"]
    for index, level in enumerate(output.levels):
        learned = found["partitions"][f"level {index}"]["learned"]
        # the level's assignment is its superpixels' clusters, pixel by pixel
        assert torch.equal(learned[level0.assignment], level.assignment)
    for name in BASELINES:
        cluster = found["partitions"]["5 nodes"][name]
        assert [len(set(cluster[level0.batch == b].tolist())) for b in range(level0.num_graphs)] == \
            [5] * level0.num_graphs


def test_selab_hierarchy_command(pascal_layout, tmp_path, capsys):
    out = tmp_path / "table.json"
    code = main(["hierarchy", "se_lstm_deep", "--data-root", str(pascal_layout), "--dataset", "pascal_person_part",
                 "--split", "val", "--limit", "2", "--image-size", "64", "--counts", "20,5", "--quiet",
                 "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "| 5 nodes |" in printed.out and "ground-truth oracle: nodes" in printed.out
    assert json.loads(out.read_text())["num_images"] == 2


@pytest.mark.parametrize("argv, message", [
    (["hierarchy", "no/such/run"], "hierarchy MODEL: no/such/run does not exist"),
    (["hierarchy", "no_such_model"], "no shipped model named 'no_such_model'"),
    (["hierarchy", "se_lstm", "--data-root", "/no/such/folder"], "is not a folder"),
    (["hierarchy", "se_lstm", "--dataset", "pascal_person_part"], "needs its folder"),
])
def test_selab_hierarchy_bad_input_is_one_line_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_parse_counts():
    assert parse_counts("200,100,50,25,12") == (200, 100, 50, 25, 12)
    for bad in ("200,0", "a,b", "1.5"):
        with pytest.raises(ValueError, match="counts"):
            parse_counts(bad)
    with pytest.raises(SystemExit):
        main(["hierarchy", "se_lstm", "--counts", "12,-1"])


def test_measure_hierarchy_on_the_real_data(shipped, pascal_root):
    model, record = shipped
    result = measure_hierarchy(model, record["train_config"], data_root=pascal_root, split="val", limit=2,
                               counts=(100, 25), batch_size=2, progress=False)
    _check_result(result, (100, 25), levels=len(model.layers))
    top = result["rows"][len(model.layers) - 1]["methods"]["learned"]
    superpixels = result["rows"][0]["methods"]["learned"]["nodes_per_image"]
    assert math.isfinite(top["boundary_recall"]) and 1 <= top["nodes_per_image"] < superpixels


def test_compare_shows_the_achievable_miou_of_runs_that_recorded_it():
    from selab.experiments.compare import hierarchy_markdown as compare_hierarchy

    old = {"label": "old", "runs": 1, "hierarchy": {"mean_nodes_per_image": [900, 600], "purity": [0.97, 0.96]}}
    new = {"label": "new", "runs": 2, "hierarchy": {"mean_nodes_per_image": [900, 300], "purity": [0.97, 0.95],
                                                     "achievable_miou": [82.51, 80.04]}}
    table = compare_hierarchy([new])
    assert "achievable mIoU" in table.splitlines()[0] and "| new | 2 | 900 → 300 | 97.0 → 95.0 | 82.5 → 80.0 |" in table
    assert "achievable mIoU" not in compare_hierarchy([old, new])  # only where every row has it
    assert "| old | 1 | 900 → 600 | 97.0 → 96.0 |" in compare_hierarchy([old, new])


def test_a_model_without_graph_levels_is_refused():
    from selab.model.parser import ModelConfig, build_model

    cnn = build_model(ModelConfig(variant="cnn", backbone="small", feature_channels=8))
    with pytest.raises(ValueError, match="no graph levels"):
        measure_hierarchy(cnn, {"dataset": "synthetic"}, progress=False)

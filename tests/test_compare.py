"""selab.experiments.compare: the ladder's mean ± sd and the paired per-image bootstrap."""

import json

import numpy as np
import pytest
import torch

from selab.experiments import compare
from selab.training.metrics import PER_IMAGE_FILE, save_per_image, scores_from_confusion


def _confusions(rng, n=40, k=4, accuracy=0.7):
    """Per-image confusion matrices with about ``accuracy`` of each image's pixels on the diagonal."""
    total = rng.integers(50, 200, size=(n, k))
    right = (total * accuracy).astype(int)
    confusion = np.zeros((n, k, k), dtype=np.int64)
    for c in range(k):
        confusion[:, c, c] = right[:, c]
        confusion[:, c, (c + 1) % k] = total[:, c] - right[:, c]
    return confusion


def _run(label, confusion, seed=0, ids=None):
    ids = np.arange(len(confusion)).astype(str) if ids is None else ids
    names = [str(i) for i in range(confusion.shape[1])]
    final = scores_from_confusion(confusion.sum(0), names)
    return compare.RunResult(folder=f"{label}-{seed}", label=label, final=final, seed=seed, per_image=(ids, confusion))


def test_difference_is_the_split_level_miou_gap():
    rng = np.random.default_rng(0)
    a, b = _confusions(rng, accuracy=0.8), _confusions(rng, accuracy=0.6)
    result = compare.paired_bootstrap([_run("a", a)], [_run("b", b)], num_samples=500)
    names = [str(i) for i in range(4)]
    expected = scores_from_confusion(a.sum(0), names)["mean_iou"] - scores_from_confusion(b.sum(0), names)["mean_iou"]
    assert result["difference"] == pytest.approx(expected, abs=1e-9)
    assert 0 < result["low"] <= result["difference"] <= result["high"]
    assert result["p_le_zero"] == 0.0


def test_a_row_against_itself_is_zero_and_pairing_matters():
    rng = np.random.default_rng(1)
    a = _confusions(rng)
    same = compare.paired_bootstrap([_run("a", a)], [_run("a", a.copy())], num_samples=300)
    assert same["difference"] == 0.0 and same["low"] == same["high"] == 0.0
    # B: A with a small, consistent loss on every image. Paired resampling sees it clearly; a gap this
    # small would be lost among the images' own variation without the pairing.
    b = a.copy()
    b[:, 0, 0] -= 3
    b[:, 0, 1] += 3
    paired = compare.paired_bootstrap([_run("a", a)], [_run("b", b)], num_samples=500)
    assert paired["low"] > 0


def test_rows_average_their_seeds():
    rng = np.random.default_rng(2)
    a0, a1, b = _confusions(rng, accuracy=0.9), _confusions(rng, accuracy=0.5), _confusions(rng, accuracy=0.7)
    result = compare.paired_bootstrap([_run("a", a0, 0), _run("a", a1, 1)], [_run("b", b)], num_samples=200)
    names = [str(i) for i in range(4)]
    miou = lambda c: scores_from_confusion(c.sum(0), names)["mean_iou"]  # noqa: E731
    assert result["difference"] == pytest.approx((miou(a0) + miou(a1)) / 2 - miou(b), abs=1e-9)
    assert result["runs_a"] == 2 and result["runs_b"] == 1


def test_images_are_aligned_by_id_and_missing_ones_are_named():
    rng = np.random.default_rng(3)
    a = _confusions(rng, n=10)
    ids = np.arange(10).astype(str)
    shuffled = rng.permutation(10)
    b = _run("b", a[shuffled], ids=ids[shuffled])
    assert compare.paired_bootstrap([_run("a", a)], [b], num_samples=50)["difference"] == 0.0
    short = _run("c", a[:5], ids=ids[:5])
    with pytest.raises(ValueError, match="not evaluated on 5 images"):
        compare.paired_bootstrap([_run("a", a)], [short])


def test_ladder_mean_sd_and_markdown():
    rng = np.random.default_rng(4)
    runs = [_run("x", _confusions(rng, accuracy=acc), seed) for seed, acc in enumerate((0.6, 0.7, 0.8))]
    row = compare.ladder(runs)[0]
    values = [r.final["mean_iou"] for r in runs]
    assert row["runs"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["mean_iou"] == pytest.approx(np.mean(values))
    assert row["mean_iou_sd"] == pytest.approx(np.std(values, ddof=1))
    assert "| x | 3 |" in compare.ladder_markdown(compare.ladder(runs), per_class=False)


def test_load_runs_from_run_folders(tmp_path):
    rng = np.random.default_rng(5)
    confusion = _confusions(rng, n=6, k=7)
    folder = tmp_path / "run"
    folder.mkdir()
    final = scores_from_confusion(confusion.sum(0))
    (folder / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 1, "seconds": 60.0}], "final": final}))
    (folder / "config.json").write_text(json.dumps({"train": {"seed": 3}}))
    save_per_image(folder / PER_IMAGE_FILE, [(str(i), torch.from_numpy(c)) for i, c in enumerate(confusion)])
    run = compare.load_runs([folder])[0]
    assert run.label == "run" and run.seed == 3 and run.train_minutes == 1.0
    np.testing.assert_array_equal(run.per_image[1], confusion)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(ValueError, match="no metrics.json"):
        compare.load_runs([unfinished])



def _run_folder(folder, confusion, seed, row):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 1, "seconds": 30.0}],
                                                     "final": scores_from_confusion(confusion.sum(0))}))
    (folder / "config.json").write_text(json.dumps({"train": {"seed": seed}}))
    (folder / "sweep_cell.json").write_text(json.dumps({"row": row}))  # the label, as in a sweep's cell
    save_per_image(folder / PER_IMAGE_FILE, [(str(i), torch.from_numpy(c)) for i, c in enumerate(confusion)])
    return str(folder)


def test_selab_compare_prints_the_ladder_and_the_paired_intervals(tmp_path, capsys):
    from selab.cli import main

    rng = np.random.default_rng(6)
    folders = [_run_folder(tmp_path / row / f"seed={seed}", _confusions(rng, n=12, k=7, accuracy=accuracy), seed, row)
               for row, accuracy in (("good", 0.8), ("poor", 0.5)) for seed in (0, 1)]
    runs = compare.load_runs(folders)
    expected = compare.paired_bootstrap(runs[:2], runs[2:], num_samples=300)
    assert main(["compare", *folders, "--pairs", "good:poor", "--bootstrap", "300"]) == 0
    out = capsys.readouterr().out
    rows = compare.ladder(runs)
    assert f"| good | 2 | {rows[0]['mean_iou']:.2f} ± {rows[0]['mean_iou_sd']:.2f} |" in out
    assert "| background |" in out and "clique label purity" not in out  # no graph runs, no hierarchy table
    assert (f"| good | poor | {expected['difference']:+.2f} | 95% [{expected['low']:+.2f}, {expected['high']:+.2f}] "
            f"| {expected['p_le_zero']:.3f} | 12 | 2 vs 2 |") in out
    assert main(["compare", *folders, "--no-per-class"]) == 0
    assert "background" not in capsys.readouterr().out
    assert main(["compare", *folders, "--pairs", "good-poor"]) == 2
    assert "expected 'A:B'" in capsys.readouterr().err
    assert main(["compare", *folders, "--pairs", "good:nope"]) == 2
    assert "no finished runs labelled 'nope'" in capsys.readouterr().err

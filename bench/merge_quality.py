"""What a trained se_lstm's merge probabilities know: how well they tell same-part edges from cross-part ones.

For every evolution of the model (at test time, with its own test-time structure), over the validation images:
the edges of the level the evolution coarsens, their targets (1 where both ends have the same majority
ground-truth label, :func:`selab.model.loss.merge_targets`) and their merge probabilities. Per level it reports the
share of same-part edges, the mean p of same-part and of cross-part edges, the share of cross-part edges with
p > 0.5 (what the paper's greedy test-time merge would join), the area under the ROC curve (ranking quality,
0.5 = chance) and the share of same-part edges among the top quarter by p (what the default merge budget joins).
Prints a table and writes JSON.

Usage: python bench/merge_quality.py RUN_DIR [--limit N] [--cache-dir DIR] [--out JSON]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from selab.model.loss import merge_targets
from selab.data.prepare import to_device
from selab.training.loaders import evaluation_loader
from selab.training.checkpoints import load_model
from selab.training.config import TrainConfig


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties get their mean rank."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, ranks) / counts)[inverse]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def level_quality(prob: np.ndarray, same: np.ndarray) -> dict:
    top = prob >= np.quantile(prob, 0.75)
    return {"edges": int(len(prob)), "same_part_share": float(same.mean()),
            "mean_p_same": float(prob[same].mean()), "mean_p_cross": float(prob[~same].mean()),
            "cross_above_half": float((prob[~same] > 0.5).mean()), "auc": roc_auc(prob, same),
            "top_quarter_same_share": float(same[top].mean())}


def main(run_dir: str, limit: int | None, cache_dir: str | None) -> dict:
    model, checkpoint = load_model(run_dir)
    if model.config.variant != "se_lstm":
        raise SystemExit(f"merge_quality: {run_dir} is a {model.config.variant!r} run; merge probabilities need se_lstm")
    overrides = {"resume": False, "progress": False, "device": "cpu", "val_limit": limit}
    if cache_dir:
        overrides["cache_dir"] = cache_dir
    config = TrainConfig.from_dict(dict(checkpoint["train_config"], **overrides))
    model.eval()
    probs, targets = {}, {}
    with torch.no_grad():
        for data in evaluation_loader(config, model):
            data = to_device(data, "cpu")
            output = model(data)
            for level, (prob, target) in enumerate(zip(output.merge_prob, merge_targets(output.levels, data["mask"],
                                                                                       model.config.num_classes))):
                probs.setdefault(level, []).append(prob.float().numpy())
                targets.setdefault(level, []).append(target.numpy() > 0.5)
    levels = {level: level_quality(np.concatenate(probs[level]), np.concatenate(targets[level])) for level in probs}
    return {"run": run_dir, "num_images": limit, "levels": levels}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--limit", type=int, default=None, help="first N validation images (default: all)")
    parser.add_argument("--cache-dir", default=None, help="the run's feature/superpixel cache, if it moved")
    parser.add_argument("--out", default="bench/results/merge_quality.json")
    args = parser.parse_args()
    result = main(args.run_dir, args.limit, args.cache_dir)
    print(f"{'level':>5} {'edges':>8} {'same-part':>9} {'p same':>7} {'p cross':>7} {'cross p>0.5':>11} "
          f"{'AUC':>6} {'top-25% same':>12}")
    for level, q in result["levels"].items():
        print(f"{level:>5} {q['edges']:>8} {q['same_part_share']:>9.3f} {q['mean_p_same']:>7.3f} "
              f"{q['mean_p_cross']:>7.3f} {q['cross_above_half']:>11.3f} {q['auc']:>6.3f} "
              f"{q['top_quarter_same_share']:>12.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")

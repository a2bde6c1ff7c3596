"""Test-time ablation of a trained graph model: its validation mIoU with and without the graph path.

The graph variants add node logits (one linear classifier per level, copied to the pixels) to the CNN's
logits. Zeroing the node classifiers leaves the CNN path of the same trained model: the difference says how
much of the prediction the graph layers carry. Prints one JSON line (mIoU and per-class IoU, both ways).

Usage: python bench/ablate_graph_path.py RUN_DIR   (a graph_lstm or se_lstm run folder; its data and cache)
"""
import json
import sys

import torch

from selab.training.checkpoints import load_model
from selab.training.config import TrainConfig
from selab.training.evaluation import evaluate_model
from selab.training.loaders import evaluation_loader


def main(run_dir: str) -> dict:
    model, checkpoint = load_model(run_dir)
    if not model.config.uses_graph:
        raise SystemExit(f"ablate_graph_path: {run_dir} is a {model.config.variant!r} run, it has no graph path")
    config = TrainConfig.from_dict(dict(checkpoint["train_config"], resume=False, progress=False, device="cpu"))
    loader = evaluation_loader(config, model)
    full, _ = evaluate_model(model, loader, "cpu")
    with torch.no_grad():
        for classifier in model.node_classifiers:
            classifier.weight.zero_()
    cnn_path, _ = evaluate_model(model, loader, "cpu")
    return {"run": run_dir, "mean_iou": full["mean_iou"], "mean_iou_without_graph_path": cnn_path["mean_iou"],
            "per_class_iou": full["per_class_iou"], "per_class_iou_without_graph_path": cnn_path["per_class_iou"]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(json.dumps(main(sys.argv[1])))

"""Benchmark: one SE-LSTM training step, the levels' logits unpooled once versus once per level.

The ``se_lstm`` model sums every level's node logits on the level-0 superpixels and copies the sum to
the pixels once (exact: a level's node covers its superpixels' pixels). Without the level-0 map
(``Graph.superpixel_assignment = None``) it unpools each level to the pixels on its own, as it did
before. Both take turns on the same batch (synthetic person images, SLIC superpixels, frozen backbone
with cached features, forward + backward of the pixel cross-entropy, MH structure sampling), and the
logits are checked equal. Prints a table and writes bench/results/train_step.json.

Run: ``.venv/bin/python bench/train_step.py [--size 320] [--batch 4] [--repeats 8] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from selab.graph import graph_from_superpixels
from selab.model import build_model
from selab.superpixels import slic
from selab.synthetic import SyntheticPersonParts

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--n-segments", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = SyntheticPersonParts(args.batch, args.size, seed=3)
    samples = [dataset[i] for i in range(args.batch)]
    image = torch.stack([s["image"] for s in samples])
    mask = torch.stack([s["mask"] for s in samples])
    superpixels = torch.stack([torch.from_numpy(slic(s["image"], n_segments=args.n_segments)) for s in samples])
    once = graph_from_superpixels(superpixels)
    per_level = dataclasses.replace(once, superpixel_assignment=None)
    torch.manual_seed(0)
    model = build_model({"variant": "se_lstm", "backbone": "small", "freeze_backbone": True, "dropout": 0.0}).train()
    with torch.no_grad():
        features = model.backbone(image)

    def step(graph):
        out = model({"image": image, "mask": mask, "graph": graph, "features": features},
                    generator=torch.Generator().manual_seed(0))
        F.cross_entropy(out.logits, mask).backward()
        return out.logits.detach()

    torch.testing.assert_close(step(once), step(per_level), rtol=1e-4, atol=1e-4)
    variants = {"unpool once (summed on superpixels)": once, "unpool once per level": per_level}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # the variants take turns, so that a slow spell hits both
        for name, graph in variants.items():
            start = time.perf_counter()
            step(graph)
            times[name].append(1000 * (time.perf_counter() - start))
    medians = {name: statistics.median(spent) for name, spent in times.items()}
    reference = medians["unpool once per level"]
    print(f"\nse_lstm train step: batch {args.batch}, {args.size} px, {once.num_nodes} superpixels, "
          f"{model.config.num_layers} levels, torch threads {torch.get_num_threads()}")
    print(f"{'variant':40s} {'ms':>8s} {'/ per level':>12s}")
    for name, ms in medians.items():
        print(f"{name:40s} {ms:8.1f} {ms / reference:12.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                   "args": vars(args), "num_nodes": once.num_nodes, "median_ms": medians}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()

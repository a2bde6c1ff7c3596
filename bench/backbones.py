"""The EfficientNet-Lite backbones side by side: forward time, padding, and an ImageNet sanity check.

For each of Lite0, Lite1, Lite2 at S px (default 320), one thread:

- ``forward_ms`` / ``forward_cpu_ms``: the median wall / CPU time of the backbone (strides 8/16/32) on
  one image (the backbones taking turns, in a shuffled order, in every repeat), and the ratio to Lite0:
  what filling the feature cache costs per image, and what an uncached (trained-backbone) step pays per
  forward;
- ``padding_rel_diff_S``: how far the features of "static" padding (the library's, computed for the
  native 224/240/260 px input) are from "dynamic" padding (computed for the actual input), as
  ||static - dynamic|| / ||dynamic|| per stride (8, 16, 32) over the first N validation images of
  PASCAL-Person-Part, at S px and at S+1 px (the paper's 321 when S=320); the two shapes where they differ;
- ``params_m``: parameters of the MBConv blocks, in millions (the backbone's weights less the 3x3 stem's);
- ``top1``: the ImageNet class (index) of the full classifier with the backbone's default padding on
  skimage's astronaut and chelsea, at S px.

Prints a table and writes JSON (``--out``).

Usage: python bench/backbones.py DATA_ROOT [--size 320] [--images 4] [--repeats 5] [--out bench/results/backbones.json]
"""
import argparse
import json
import time

import numpy as np
import torch

from selab.model.backbones import (DEFAULT_PADDING, IMAGENET_MEAN, IMAGENET_STD, EfficientNetLiteBackbone,
                             load_efficientnet_lite)
from selab.data.datasets import make_dataset, resize_image


def forward_ms(nets, image, repeats):
    """Median wall and CPU (process) time of one forward of each net, in ms, the nets taking turns in a
    shuffled order in every repeat (ratios within one run); on a shared machine CPU time is the steadier."""
    wall, cpu = ([[] for _ in nets] for _ in range(2))
    order = np.random.default_rng(0)
    with torch.no_grad():
        for net in nets:
            net(image)  # warm-up
        for _ in range(repeats):
            for i in order.permutation(len(nets)):
                start, start_cpu = time.perf_counter(), time.process_time()
                nets[i](image)
                wall[i].append(time.perf_counter() - start)
                cpu[i].append(time.process_time() - start_cpu)
    return [(1000 * float(np.median(w)), 1000 * float(np.median(c))) for w, c in zip(wall, cpu)]


def padding_diff(level, images):
    """Per stride (8, 16, 32): ||static - dynamic|| / ||dynamic|| over ``images``, or the two shapes."""
    nets = {p: EfficientNetLiteBackbone(level, padding=p).eval() for p in ("static", "dynamic")}
    num, den = np.zeros(3), np.zeros(3)
    with torch.no_grad():
        for image in images:
            static, dynamic = (nets[p](image[None]) for p in ("static", "dynamic"))
            for i, (a, b) in enumerate(zip(static, dynamic)):
                if a.shape != b.shape:
                    return f"shapes {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])} at stride {8 << i}"
                num[i] += float((a - b).square().sum())
                den[i] += float(b.square().sum())
    return [round(float(x), 4) for x in np.sqrt(num / den)]


def top1(level, size):
    from skimage import data as skimage_data

    net = load_efficientnet_lite(level, padding=DEFAULT_PADDING[level]).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    result = {}
    for name in ("astronaut", "chelsea"):
        image = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            logits = net((resize_image(image, size)[None] - mean) / std)
        result[name] = int(logits.argmax())
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/backbones.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = make_dataset("pascal_person_part", args.data_root, split="val", limit=args.images)
    photos = [dataset[i]["image"] for i in range(len(dataset))]
    backbones = [EfficientNetLiteBackbone(level).eval() for level in (0, 1, 2)]
    times = forward_ms(backbones, resize_image(photos[0], args.size)[None], args.repeats)
    rows = []
    for level, backbone, (wall, cpu) in zip((0, 1, 2), backbones, times):
        row = {"backbone": f"efficientnet_lite{level}", "padding": backbone.padding,
               "out_channels": backbone.out_channels,
               "params_m": sum(p.numel() for p in backbone.net._blocks.parameters()) / 1e6,
               "forward_ms": wall, "forward_cpu_ms": cpu, "forward_cpu_vs_lite0": cpu / times[0][1]}
        for size in (args.size, args.size + 1):
            row[f"padding_rel_diff_{size}"] = padding_diff(level, [resize_image(p, size) for p in photos])
        row["top1"] = top1(level, args.size)
        rows.append(row)
    header = ["backbone", "padding", "out_channels", "params_m", "forward_ms", "forward_cpu_ms", "forward_cpu_vs_lite0",
              f"padding_rel_diff_{args.size}", f"padding_rel_diff_{args.size + 1}", "top1"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in header))
    record = {"size": args.size, "images": len(photos), "threads": 1, "repeats": args.repeats, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()

"""Benchmark: training images per second of cnn, graph_lstm and se_lstm, cached features vs end-to-end, 1 vs N processes.

A step is what :func:`selab.training.loop.run` does per batch: forward (through ``DistributedDataParallel`` when
there are several processes, :func:`selab.training.distributed.wrap_model`), :func:`selab.model.loss.compute_loss`,
zero_grad, backward (DDP all-reduces the gradients here), AdamW step. Two ways to train:

* ``cached``: the frozen ImageNet EfficientNet-Lite0's features computed once (float16, like the
  feature cache), the heads train on them: selab's CPU default;
* ``partial16`` / ``partial8``: partial fine-tuning (``finetune_after_stride``): the cached maps up to
  stride 16 (or 8) are read, the backbone's later blocks run forward and backward in every step;
* ``end_to_end``: ``freeze_backbone=False``, the backbone runs forward and backward in every step (the
  paper's way; the backbone learns with ``backbone_lr_scale``).

The global batch (``--batch`` images, SLIC superpixels of each computed once at start) is the same for
every layout ``PxT`` (P processes with T torch threads each); P processes take ``batch / P`` images each
(:func:`selab.training.distributed.shard`), joined by gloo on the CPU (NCCL on CUDA, one GPU per process). A
step's time is the slowest process's; images/s = batch / median step time. All layouts run in one
invocation, so their ratios come from the same machine state; on a shared machine, read ratios.

Run: ``.venv/bin/python bench/train_throughput.py [--size 64] [--batch 4] [--steps 3] [--layouts 1x1,1x2,2x1]
[--device cpu]``; prints a table and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import PASCAL, load_images  # noqa: E402  (the same images as bench/train_step.py)

from selab.training import distributed  # noqa: E402
from selab.model.parser import build_model  # noqa: E402
from selab.method.superpixels import slic  # noqa: E402
from selab.model.loss import compute_loss
from selab.training.config import TrainConfig
from selab.training.optim import build_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
VARIANTS = ("cnn", "graph_lstm", "se_lstm")
MODES = ("cached", "partial16", "partial8", "end_to_end")


def make_batch(size: int, count: int) -> tuple[dict, str]:
    """The global batch: images, masks, superpixels and the frozen backbone's float16 features."""
    image, mask, source = load_images(count, size, PASCAL)
    segments = TrainConfig(image_size=size).segments
    superpixels = torch.stack([torch.from_numpy(slic(i, n_segments=segments)) for i in image])
    torch.manual_seed(0)
    backbone = build_model({"variant": "cnn", "backbone": "efficientnet_lite0", "freeze_backbone": True}).backbone.eval()
    with torch.no_grad():
        features = [f.to(torch.float16) for f in backbone(image)]
    return {"image": image, "mask": mask, "superpixels": superpixels, "features": features,
            "ids": [str(i) for i in range(count)]}, source


def local_part(batch: dict, device) -> dict:
    """This process's images of the global batch, on ``device`` (all of them in one process)."""
    mine = distributed.shard(list(range(len(batch["ids"]))))
    part = {key: batch[key][mine].to(device) for key in ("image", "mask", "superpixels")}
    part["features"] = [f[mine].to(device) for f in batch["features"]]
    part["ids"] = [batch["ids"][i] for i in mine]
    return part


def measure(batch: dict, args, device) -> list[dict]:
    """Median step times of every (mode, variant) in this process group (one process: no group)."""
    rows = []
    for mode in args.modes:
        part = local_part(batch, device)
        if mode == "end_to_end":
            part.pop("features")
        for variant in args.variants:
            partial = {"finetune_after_stride": int(mode[len("partial"):])} if mode.startswith("partial") else {}
            config = TrainConfig(variant=variant, backbone="efficientnet_lite0", image_size=args.size,
                                 batch_size=args.batch, freeze_backbone=(mode != "end_to_end"), model=partial,
                                 device=str(device))
            torch.manual_seed(0)
            model = build_model(config.model).to(device).train()
            optimizer = build_optimizer(model, config)
            network = distributed.wrap_model(model, device)
            generator = distributed.per_rank(torch.Generator().manual_seed(0))

            def step():
                output = network(part, generator=generator)
                parts = compute_loss(output, part, model.config)
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                optimizer.step()

            times = []
            for turn in range(args.warmup + args.steps):
                distributed.any_rank(False)  # a barrier: every process starts the step together
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                if distributed.is_distributed():  # the step takes as long as its slowest process
                    value = torch.tensor([elapsed], dtype=torch.float64)
                    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
                    elapsed = float(value.item())
                if turn >= args.warmup:
                    times.append(1000 * elapsed)
            median = statistics.median(times)
            rows.append({"mode": mode, "variant": variant, "step_ms": median, "times_ms": times,
                         "images_per_s": args.batch / (median / 1000)})
    return rows


def _worker(rank, processes, threads, port, batch, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(processes),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(processes))
    torch.set_num_threads(threads)
    try:
        device = distributed.setup(TrainConfig(device=args.device, batch_size=args.batch))
        rows = measure(batch, args, device)
        distributed.cleanup()
        if rank == 0:
            queue.put(("ok", rows))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def run_layout(processes: int, threads: int, batch: dict, args) -> list[dict]:
    if processes == 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure(batch, args, torch.device(args.device))
        finally:
            torch.set_num_threads(previous)
    # fork: the workers inherit the prepared batch and the imported modules (spawn would re-import them)
    context = multiprocessing.get_context("fork" if args.device == "cpu" else "spawn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(r, processes, threads, port, batch, args, queue))
               for r in range(processes)]
    for worker in workers:
        worker.start()
    try:
        status, payload = queue.get(timeout=3600)
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    if status != "ok":
        raise RuntimeError(f"a benchmark process failed:\n{payload}")
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=4, help="global batch (a multiple of every layout's processes)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--layouts", default="1x1,1x2,2x1", help="PxT: P processes with T torch threads each")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: one GPU per process)")
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    args.modes = [m for m in args.modes.split(",") if m]
    layouts = []
    for layout in args.layouts.split(","):
        try:
            processes, threads = (int(part) for part in layout.lower().split("x"))
        except ValueError:
            parser.error(f"--layouts: expected PxT items such as 2x1, got {layout!r}")
        if processes < 1 or threads < 1 or args.batch % processes:
            parser.error(f"--layouts {layout}: P and T must be >= 1 and P must divide --batch {args.batch}")
        layouts.append((processes, threads))

    batch, source = make_batch(args.size, args.batch)
    results = {}
    for processes, threads in layouts:
        started = time.perf_counter()
        results[f"{processes}x{threads}"] = run_layout(processes, threads, batch, args)
        print(f"layout {processes}x{threads}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    print(f"\ntraining step: global batch {args.batch}, {args.size} px, EfficientNet-Lite0, device {args.device}, "
          f"median of {args.steps} steps after {args.warmup} warm-up; {source}")
    names = list(results)
    print(f"\n{'variant':12s} {'mode':12s}" + "".join(f"{name + ' img/s':>14s}" for name in names)
          + "".join(f"{name + '/' + names[0]:>12s}" for name in names[1:]))
    for mode in args.modes:
        for variant in args.variants:
            cells = [next(r for r in results[name] if r["mode"] == mode and r["variant"] == variant) for name in names]
            print(f"{variant:12s} {mode:12s}" + "".join(f"{c['images_per_s']:14.2f}" for c in cells)
                  + "".join(f"{c['images_per_s'] / cells[0]['images_per_s']:12.2f}" for c in cells[1:]))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "device": args.device, "args": {k: v for k, v in vars(args).items()}, "source": source,
        "layouts": results}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()

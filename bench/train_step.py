"""Benchmark: one training step of cnn, graph_lstm and se_lstm on the same batch, split by stage.

The PASCAL setting of ``make run``: 8 images of PASCAL-Person-Part resized to 320 x 320 (skimage sample
images without the data), SLIC with about 1000 superpixels each, the frozen EfficientNet-Lite0 run once
at start for the stride-8/16/32 features (kept in float16 like the feature cache), hidden 64 and the
default ModelConfig of each variant, AdamW. A step is what :func:`selab.training.loop.run` does per batch:
forward, :func:`selab.model.loss.compute_loss`, zero_grad, backward, optimizer step. The variants take turns
in a new shuffled order every repeat (a slow spell of the shared machine hits all alike); the table
gives medians and the ratios se_lstm / cnn and graph_lstm / cnn.

A second pass runs every variant under ``torch.profiler`` with ``record_function`` ranges around the
stages (installed by wrapping the model's modules and functions, so the model code is unchanged) and
charges every backward node to the stage whose forward op created it (autograd sequence numbers).
Profiling adds a per-op overhead, so the per-stage table is read as shares; the step totals come from
the unprofiled turns. The floor is the CNN step plus the Graph LSTM layers' own forward+backward,
taken from the same profile.

``--baseline REV`` adds the graph variants' step with ``selab/`` as it was at git revision REV
(imported beside the current package), timed in the same shuffled turns, and prints every variant's
first-step loss: a speed-up that changes no result gives the same loss as its baseline.

Run: ``.venv/bin/python bench/train_step.py [--repeats 5] [--batch 8] [--size 320] [--threads 2]
[--device cpu] [--baseline REV]``; prints the tables and writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import types
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import selab.model.loss
import selab.model.parser
from selab.method.graph import graph_from_superpixels
from selab.model.loss import compute_loss
from selab.model.parser import build_model
from selab.method.superpixels import slic
from selab.training.config import TrainConfig
from selab.training.optim import build_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
PASCAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pascal_person_part"
VARIANTS = ("cnn", "graph_lstm", "se_lstm")
NECK, OTHER = "neck + classifier", "other (graph to device, glue)"


def load_images(count: int, size: int, root: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``count`` images [B,3,S,S] and masks [B,S,S] resized like selab.data.prepare.PreparedSplit."""
    images, masks = [], []
    if (root / "JPEGImages").is_dir():
        from selab.data.datasets import read_image, read_mask

        ids = (root / "train_id.txt").read_text().split()[:count]
        for image_id in ids:
            images.append(read_image(root / "JPEGImages" / f"{image_id}.jpg"))
            masks.append(read_mask(root / "SegmentationPart" / f"{image_id}.png"))
        source = f"PASCAL-Person-Part train ids {ids[0]}..{ids[-1]}"
    else:
        from skimage import data

        from selab.data.synthetic import SyntheticPersonParts

        names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle_left")
        synthetic = SyntheticPersonParts(count, size, seed=3)
        for index in range(count):
            picture = getattr(data, names[index % len(names)])()
            images.append(torch.from_numpy(np.ascontiguousarray(picture[..., :3].transpose(2, 0, 1))).float() / 255)
            masks.append(synthetic[index]["mask"])  # a part-like mask; only its class counts matter here
        source = "skimage sample images with synthetic masks (PASCAL-Person-Part not found)"
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        out_images.append(F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)[0].clamp(0, 1))
        out_masks.append(F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long())
    return torch.stack(out_images), torch.stack(out_masks), source


def _model_config(config):
    """A TrainConfig's ModelConfig, in this layout (a field) or an earlier one (a method)."""
    return config.model if callable(getattr(config, "model_config", None)) else config.model


def load_revision(revision: str):
    """The parser, loss and training modules as they were at git ``revision``, beside the current package.

    The revision's ``selab/`` is extracted to a temporary folder and imported with the current
    ``selab`` modules set aside, then those are put back; the old modules keep their own globals, so
    the old code runs as it was (the hot path has no imports inside functions).
    """
    folder = Path(tempfile.mkdtemp(prefix="selab-baseline-"))
    root = Path(__file__).resolve().parents[1]
    try:
        archive = subprocess.run(["git", "archive", revision, "selab"], cwd=root, check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"--baseline {revision}: git archive failed ({error.stderr.decode().strip()})") from None
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    ours = lambda name: name == "selab" or name.startswith("selab.")  # noqa: E731
    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        # the package was laid out by stage later; a revision of either layout can be the baseline
        if (folder / "selab" / "training" / "optim.py").is_file():
            names = ("model.parser", "model.loss", "training.config", "training.optim")
        elif (folder / "selab" / "model" / "parser.py").is_file():
            names = ("model.parser", "model.loss", "training.train", "training.train")
        else:
            names = ("model", "loss", "train", "train")
        parser, loss, config, optim = (importlib.import_module(f"selab.{name}") for name in names)
        return parser, loss, types.SimpleNamespace(TrainConfig=config.TrainConfig, build_optimizer=optim.build_optimizer)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


# -- stage ranges --------------------------------------------------------------------------------------
class Stages:
    """Wrap the model's parts in ``record_function`` ranges named after the stages (undone on exit)."""

    def __init__(self, model):
        self.model, self.undo, self.stack = model, [], []

    def _wrap(self, owner, attribute, name, skip_inside=()):
        original = getattr(owner, attribute)
        stack = self.stack

        def wrapped(*args, **kwargs):
            if stack and stack[-1] in skip_inside:
                return original(*args, **kwargs)
            stack.append(name)
            try:
                with torch.autograd.profiler.record_function("stage: " + name):
                    return original(*args, **kwargs)
            finally:
                stack.pop()

        setattr(owner, attribute, wrapped)
        self.undo.append((owner, attribute, original))

    def __enter__(self):
        model = self.model
        for part in ("neck", "dropout", "classifier", "confidence"):
            if hasattr(model, part):
                self._wrap(getattr(model, part), "forward", NECK)
        self._wrap(F, "interpolate", "upsampling + unpooling to pixels", skip_inside=(NECK,))
        self._wrap(selab.model.parser, "unpool_to_pixels", "upsampling + unpooling to pixels")
        if model.config.uses_graph:
            self._wrap(selab.model.parser, "upsample_and_pool", "pooling to nodes")
            self._wrap(model.node_input, "forward", "pooling to nodes")
            self._wrap(selab.model.parser, "graph_from_superpixels", "graph from superpixels")
            if getattr(model, "structures", None) is not None:
                self._wrap(model.structures, "graph", "graph from superpixels")
            self._wrap(model, "update_rank", "update order")
            for index, layer in enumerate(model.layers):
                self._wrap(layer, "forward", f"Graph LSTM layer {index}")
            for classifier in model.node_classifiers:
                self._wrap(classifier, "forward", "node classifiers")
            for owner, name in ((selab.model.parser, "node_label_histogram"), (selab.model.parser, "level_majority_labels"),
                                (selab.model.loss, "merge_targets")):
                self._wrap(owner, name, "majority labels + merge targets")
            for evolution in getattr(model, "evolutions", []):
                self._wrap(evolution, "forward", "coarsening")
                self._wrap(evolution.merge_probability, "forward", "merge probabilities")
                self._wrap(evolution, "sample", "MH sampling")
        return self

    def __exit__(self, *exc):
        for owner, attribute, original in reversed(self.undo):
            if isinstance(owner, (torch.nn.Module, selab.model.parser.SuperpixelStructures)):
                delattr(owner, attribute)  # back to the class's method
            else:
                setattr(owner, attribute, original)
        self.undo.clear()


def stage_times(events) -> dict:
    """Forward and backward microseconds per stage from a profile's events.

    A stage range's own time excludes the stage ranges nested in it; a backward node is charged to the
    stage of the forward op with the same sequence number, or else of the latest op before it
    (sequence numbers grow in forward order).
    """
    forward, backward = collections.Counter(), collections.Counter()
    seq_stage = {}

    def stage_of(event):
        while event is not None:
            if event.name.startswith("stage: "):
                return event.name[7:]
            event = event.cpu_parent
        return None

    for event in events:
        if event.name.startswith("stage: "):
            nested = 0
            todo = list(event.cpu_children)
            while todo:
                child = todo.pop()
                if child.name.startswith("stage: ") or child.name.startswith("autograd::engine::evaluate_function"):
                    nested += child.cpu_time_total  # a nested stage, or backward run inside a range
                else:
                    todo.extend(child.cpu_children)
            forward[event.name[7:]] += event.cpu_time_total - nested
        elif event.sequence_nr >= 0 and not event.name.startswith("autograd::engine"):
            stage = stage_of(event)
            if stage is not None and event.sequence_nr not in seq_stage:
                seq_stage[event.sequence_nr] = stage
    known = np.array(sorted(seq_stage))
    for event in events:
        if not event.name.startswith("autograd::engine::evaluate_function"):
            continue
        if event.cpu_parent is not None and event.cpu_parent.name.startswith("autograd::engine::evaluate_function"):
            continue
        if "AccumulateGrad" in event.name:
            backward["gradient accumulation"] += event.cpu_time_total
            continue
        stage = seq_stage.get(event.sequence_nr)
        if stage is None and known.size:
            position = np.searchsorted(known, event.sequence_nr, side="right") - 1
            stage = seq_stage[int(known[max(position, 0)])]
        backward[stage or OTHER] += event.cpu_time_total
    return {"forward": dict(forward), "backward": dict(backward)}


# -- the benchmark -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed turns of every variant")
    parser.add_argument("--profile-repeats", type=int, default=2, help="profiled steps of every variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-backbone", action="store_true",
                        help="features from a randomly initialised EfficientNet-Lite0 (same shapes)")
    parser.add_argument("--baseline", default="", help="also time the graph variants' step with selab/ as it was "
                        "at this git revision, in the same turns (e.g. the commit before a speed-up)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    train_config = TrainConfig(variant="se_lstm", backbone="efficientnet_lite0", image_size=args.size,
                               batch_size=args.batch)
    image, mask, source = load_images(args.batch, args.size, PASCAL)
    started = time.perf_counter()
    superpixels = torch.stack([torch.from_numpy(slic(i, n_segments=train_config.segments)) for i in image])
    slic_s = time.perf_counter() - started
    torch.manual_seed(0)
    backbone = build_model({"variant": "cnn", "backbone": "efficientnet_lite0", "freeze_backbone": True,
                            "pretrained": not args.random_backbone}).backbone.eval()
    with torch.no_grad():
        features = [f.to(torch.float16) for f in backbone(image)]  # the feature cache's dtype
    batch = {"image": image.to(device), "mask": mask.to(device), "superpixels": superpixels.to(device),
             "features": [f.to(device) for f in features], "ids": [str(i) for i in range(args.batch)]}
    num_nodes = graph_from_superpixels(superpixels).num_nodes

    steps = {}
    models = {}
    first_loss = {}
    baseline = {}
    if args.baseline:
        old_model, old_loss, old_train = load_revision(args.baseline)
        baseline = {f"{v}@{args.baseline}": (v, old_model.build_model, old_loss.compute_loss, old_train)
                    for v in VARIANTS[1:]}
    timed = VARIANTS + tuple(baseline)
    for variant in timed:
        base, build, loss_of, train_module = baseline.get(variant, (variant, build_model, compute_loss, None))
        config_class = TrainConfig if train_module is None else train_module.TrainConfig
        config = config_class(variant=base, backbone="efficientnet_lite0", image_size=args.size,
                              batch_size=args.batch)
        torch.manual_seed(0)
        model = build(_model_config(config)).to(device).train()
        optimizer = (build_optimizer if train_module is None else train_module.build_optimizer)(model, config)
        generator = torch.Generator().manual_seed(0)

        def step(model=model, optimizer=optimizer, generator=generator, model_config=_model_config(config),
                 loss_of=loss_of):
            output = model(batch, generator=generator, energy_labels=batch["mask"])
            parts = loss_of(output, batch, model_config)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            return parts

        if variant in baseline:
            steps[variant] = step
            continue

        def wrapped_step(step=step, model=model):
            # the loss and optimizer as stages of their own
            output = model(batch, generator=model._bench_generator, energy_labels=batch["mask"])
            with torch.autograd.profiler.record_function("stage: loss"):
                parts = compute_loss(output, batch, model.config)
            with torch.autograd.profiler.record_function("stage: optimizer"):
                model._bench_optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            with torch.autograd.profiler.record_function("stage: optimizer"):
                model._bench_optimizer.step()

        model._bench_generator, model._bench_optimizer = generator, optimizer
        steps[variant] = step
        models[variant] = (model, wrapped_step)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for variant in timed:  # warm-up; the first step's loss: a baseline revision must give the same
        torch.manual_seed(1)  # the same dropout masks
        first_loss[variant] = float(steps[variant]()["loss"].detach())
    times = {variant: [] for variant in timed}
    cpu_times = {variant: [] for variant in timed}  # process CPU time: robust to waiting for a core
    shuffle = np.random.default_rng(0)
    for _ in range(args.repeats):
        for index in shuffle.permutation(len(timed)):
            variant = timed[index]
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[variant]()
            sync()
            times[variant].append(1000 * (time.perf_counter() - start))
            cpu_times[variant].append(1000 * (time.process_time() - cpu_start))
    medians = {variant: statistics.median(spent) for variant, spent in times.items()}
    cpu_medians = {variant: statistics.median(spent) for variant, spent in cpu_times.items()}

    # -- per-stage profile ------------------------------------------------------------------------
    profiles = {}
    for variant in VARIANTS:
        model, wrapped_step = models[variant]
        totals = {"forward": collections.Counter(), "backward": collections.Counter()}
        wall = []
        for _ in range(args.profile_repeats):
            with Stages(model), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                sync()
                start = time.perf_counter()
                with torch.autograd.profiler.record_function("stage: " + OTHER):
                    wrapped_step()
                sync()
                wall.append(1000 * (time.perf_counter() - start))
            split = stage_times(prof.events())
            for part in totals:
                totals[part].update(split[part])
        profiles[variant] = {
            "profiled_step_ms": statistics.median(wall),
            "forward_ms": {k: v / 1000 / args.profile_repeats for k, v in totals["forward"].items()},
            "backward_ms": {k: v / 1000 / args.profile_repeats for k, v in totals["backward"].items()},
        }

    order = [NECK, "graph from superpixels", "pooling to nodes", "update order"] + [f"Graph LSTM layer {i}" for i in range(3)] + [
        "node classifiers", "majority labels + merge targets", "merge probabilities", "MH sampling", "coarsening",
        "upsampling + unpooling to pixels", "loss", "gradient accumulation", "optimizer", OTHER]
    names = [n for n in order if any(n in p["forward_ms"] or n in p["backward_ms"] for p in profiles.values())]
    names += sorted({n for p in profiles.values() for n in (*p["forward_ms"], *p["backward_ms"])} - set(names))

    print(f"\ntraining step: batch {args.batch}, {args.size} px, {num_nodes} superpixels "
          f"({num_nodes / args.batch:.0f} per image, SLIC {slic_s:.1f} s), hidden 64, device {device}, "
          f"torch threads {torch.get_num_threads()}; {source}")
    print(f"\n{'variant':12s} {'step ms (median)':>17s} {'/ cnn':>7s} {'CPU ms':>9s} {'/ cnn':>7s}   turns (wall ms)")
    for variant in timed:
        print(f"{variant:12s} {medians[variant]:17.1f} {medians[variant] / medians['cnn']:7.2f} "
              f"{cpu_medians[variant]:9.1f} {cpu_medians[variant] / cpu_medians['cnn']:7.2f}   "
              + " ".join(f"{t:.0f}" for t in times[variant]) + f"   (first loss {first_loss[variant]:.9g})")

    print(f"\nper stage, profiled (ms forward / backward; profiling overhead included, read the shares)")
    print(f"{'stage':34s}" + "".join(f"{v:>20s}" for v in VARIANTS))
    for name in names:
        cells = []
        for variant in VARIANTS:
            f, b = profiles[variant]["forward_ms"].get(name), profiles[variant]["backward_ms"].get(name)
            cells.append("-" if f is None and b is None else f"{f or 0:8.1f} / {b or 0:7.1f}")
        print(f"{name:34s}" + "".join(f"{c:>20s}" for c in cells))
    print(f"{'sum (profiled step)':34s}" + "".join(
        f"{sum(profiles[v]['forward_ms'].values()) + sum(profiles[v]['backward_ms'].values()):10.1f} "
        f"({profiles[v]['profiled_step_ms']:6.1f})" for v in VARIANTS))

    # The floor: the CNN step plus the Graph LSTM layers' own forward+backward (scaled from the profile
    # to unprofiled time by the variant's unprofiled / profiled step ratio).
    floor = {}
    for variant in ("graph_lstm", "se_lstm"):
        p = profiles[variant]
        layers = sum(p["forward_ms"].get(n, 0) + p["backward_ms"].get(n, 0) for n in names if n.startswith("Graph LSTM"))
        scale = medians[variant] / p["profiled_step_ms"]
        floor[variant] = {"layers_ms": layers * scale, "floor_ms": medians["cnn"] + layers * scale}
        floor[variant]["floor_ratio_to_cnn"] = floor[variant]["floor_ms"] / medians["cnn"]
        floor[variant]["step_over_floor"] = medians[variant] / floor[variant]["floor_ms"]
        share = layers / p["profiled_step_ms"]  # the same floor in CPU time
        floor[variant]["cpu_floor_ms"] = cpu_medians["cnn"] + share * cpu_medians[variant]
        floor[variant]["cpu_floor_ratio_to_cnn"] = floor[variant]["cpu_floor_ms"] / cpu_medians["cnn"]
        floor[variant]["cpu_step_over_floor"] = cpu_medians[variant] / floor[variant]["cpu_floor_ms"]
    print("\nfloor = cnn step + the Graph LSTM layers' own forward+backward")
    for variant, f in floor.items():
        print(f"{variant:12s} layers {f['layers_ms']:7.1f} ms, floor {f['floor_ms']:7.1f} ms "
              f"({f['floor_ratio_to_cnn']:.2f}x cnn); step {medians[variant]:7.1f} ms = {f['step_over_floor']:.2f}x floor; "
              f"CPU time: floor {f['cpu_floor_ratio_to_cnn']:.2f}x cnn, step {f['cpu_step_over_floor']:.2f}x floor")
    ratios = {f"{v}/cnn": medians[v] / medians["cnn"] for v in ("se_lstm", "graph_lstm") + tuple(baseline)}
    cpu_ratios = {f"{v}/cnn": cpu_medians[v] / cpu_medians["cnn"] for v in ("se_lstm", "graph_lstm") + tuple(baseline)}
    print("ratios (wall): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + " (targets 2.5 and 2); "
          "CPU time: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_ratios.items()))

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "args": vars(args), "source": source, "num_nodes": num_nodes,
        "median_ms": medians, "times_ms": times, "ratios": ratios,
        "first_loss": first_loss, "cpu_median_ms": cpu_medians, "cpu_times_ms": cpu_times, "cpu_ratios": cpu_ratios, "floor": floor, "stages": profiles}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()

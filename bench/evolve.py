"""Cost of structure evolution against one Graph LSTM layer, and how much it merges with defaults.

Times (medians, the variants taking turns in a shuffled order in every repeat), in one run on the same batch of 4 SLIC graphs (about 1000 superpixels each): one Graph LSTM
layer (wavefront schedule, forward and forward+backward), one Metropolis-Hastings step with 8
proposals per image (one chain per image: merge budget, drawing, connected components, energies,
accept/reject) with the energy in ground-truth mode (as in training, where the sampler runs) and in
prediction mode, the whole ``StructureEvolution`` forward in training (merge probabilities + MH +
coarsening of f, h, m and the pixel map), and greedy merging (test time). Target: the sampler costs at
most 10% of the layer (ratios to the layer's forward, and to its forward+backward, the cost of the
layer in a training step). Then reports the fraction of nodes merged per layer with the default
energy on PASCAL-Person-Part images in ground-truth mode (skipped without the data). Run:
``.venv/bin/python bench/evolve.py [--device cuda] [--repeats 7] [--threads 1] [--baseline REV]``;
prints tables and writes bench/results/evolve.json. ``--baseline REV`` adds the MH step of
``selab/evolve.py`` as it was at git revision REV (one before the sampler moved to selab/mh.py, when the package was still flat), timed in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from selab.method.energy import PartitionEnergy
from selab.method.evolve import StructureEvolution
from selab.method.mh import metropolis_hastings
from selab.method.superpixels import node_majority_labels
from selab.model.loss import merge_target
from selab.method.graph import batch_graphs, graph_from_superpixels
from selab.method.graph_lstm import GraphLSTM
from selab.method.orders import confidence_order
from selab.method.superpixels import pool_to_nodes, slic

IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
# A PASCAL-Person-Part copy (docs/data.md); the merge fractions are skipped without one.
PASCAL = Path(os.environ["SELAB_PASCAL_ROOT"]) if os.environ.get("SELAB_PASCAL_ROOT") else None
TARGET_ROW = "MH step, 8 proposals/image, ground truth (training)"


def timed_interleaved(fns: list, repeats: int, device: torch.device) -> list[float]:
    """Median wall time in ms of each function; the functions take turns in every repeat (after one
    warm-up each), so that a slow spell of a shared machine hits all of them alike, in a new random
    order every repeat, so that none always runs with the caches another one left."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    shuffle = np.random.default_rng(0)
    for _ in range(repeats):
        for index in shuffle.permutation(len(fns)):
            fn, spent = fns[index], times[index]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent.append(1000 * (time.perf_counter() - start))
    return [statistics.median(spent) for spent in times]


def load_baseline(revision: str):
    """selab/evolve.py as it was at a git revision (of the flat package), imported as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    try:
        text = subprocess.run(["git", "show", f"{revision}:selab/evolve.py"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"--baseline {revision}: cannot read selab/evolve.py at that revision ({error})")
    if "from selab.mh import" in text:
        raise SystemExit(f"--baseline {revision}: selab/evolve.py there imports the sampler from selab/mh.py "
                         f"(the sampler in a module of its own); a baseline must be a revision before it, where evolve.py holds it all")
    path = Path(tempfile.mkdtemp()) / f"evolve_{revision}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def build_batch(n_segments: int, channels: int, device: torch.device):
    graphs, features = [], []
    for name in IMAGES:
        image = getattr(data, name)()[:300, :400]  # one size: a batch shares assignment [B, H, W]
        labels = slic(image, n_segments=n_segments)
        graphs.append(graph_from_superpixels(labels))
        pixels = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255
        features.append(pool_to_nodes(pixels, labels).x)
    graph = batch_graphs(graphs).to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.cat(features) @ torch.randn(3, channels, generator=generator)
    confidence = torch.softmax((graph.pos.cpu() / 100) @ torch.randn(2, 7, generator=generator)
                               + 0.5 * torch.randn(graph.num_nodes, 7, generator=generator), dim=1)
    graph.x = x.to(device)
    return graph, confidence.to(device)


def timing(args, device):
    graph, confidence = build_batch(args.n_segments, args.channels, device)
    torch.manual_seed(0)
    layer = GraphLSTM(args.channels, args.hidden).to(device)
    evolution = StructureEvolution(args.hidden).to(device).train()
    rank = confidence_order(confidence, graph.pos, graph.batch)

    def layer_forward():
        with torch.no_grad():
            return layer(graph.x, graph.edge_index, rank)

    def layer_forward_backward():
        out = layer(graph.x, graph.edge_index, rank)
        (out.h.sum() + out.edge_forget.sum()).backward()

    out = layer_forward()
    with torch.no_grad():
        merge_prob = evolution.merge_probability(edge_forget=out.edge_forget)
    # In training the energy is in ground-truth mode (node labels; here: the argmax of the synthetic
    # confidences, spatially coherent like part labels); prediction mode scores soft class distributions.
    labels = confidence.argmax(1)
    training_energy = PartitionEnergy(node_labels=labels, num_classes=7, size=graph.size, batch=graph.batch)
    prediction_energy = PartitionEnergy(node_prob=confidence, size=graph.size, batch=graph.batch)

    def mh_step(energy, budget=0.25):
        def run():
            generator = torch.Generator(device=device).manual_seed(0)
            evolution.merge_budget = budget
            evolution.sample(graph.edge_index, merge_prob, graph.batch, energy, generator, mode="mh")
            evolution.merge_budget = 0.25
        return run

    def evolution_forward():
        with torch.no_grad():
            evolution(graph, out, confidence, node_labels=labels, generator=torch.Generator(device=device).manual_seed(0))

    def greedy():
        evolution.sample(graph.edge_index, merge_prob, graph.batch, None, mode="greedy")

    baseline_rows = []
    if args.baseline:  # the same MH step with selab/method/evolve.py as it was at another git revision
        old = load_baseline(args.baseline)
        old_evolution = old.StructureEvolution(args.hidden).to(device).train()
        old_energy = old.PartitionEnergy(node_labels=labels, num_classes=7, size=graph.size, batch=graph.batch)

        def old_mh_step():
            generator = torch.Generator(device=device).manual_seed(0)
            old_evolution.sample(graph.edge_index, merge_prob, graph.batch, old_energy, generator, mode="mh")

        baseline_rows = [(f"MH step, ground truth, evolve.py at {args.baseline}", old_mh_step)]

    rows = [
        ("Graph LSTM layer, wavefront, forward", layer_forward),
        ("Graph LSTM layer, wavefront, forward+backward", layer_forward_backward),
        (TARGET_ROW, mh_step(training_energy)),
        ("MH step, 8 proposals, prediction energy", mh_step(prediction_energy)),
        ("MH step, 8 proposals, ground truth, no budget", mh_step(training_energy, None)),
        ("StructureEvolution fwd, training (p+MH+coarsen)", evolution_forward),
        ("greedy merge (p > 0.5, test time)", greedy),
    ] + baseline_rows
    results = list(zip([name for name, _ in rows], timed_interleaved([fn for _, fn in rows], args.repeats, device)))
    reference, training_reference = results[0][1], results[1][1]
    print(f"\nbatch: {graph.num_graphs} graphs, {graph.num_nodes} nodes, {graph.edge_index.shape[1]} edges, "
          f"{out.num_wavefronts} wavefront levels, hidden {args.hidden}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':50s} {'ms':>9s} {'/ layer fwd':>12s} {'/ layer fwd+bwd':>16s}")
    for name, ms in results:
        print(f"{name:50s} {ms:9.2f} {ms / reference:12.3f} {ms / training_reference:16.3f}")
    mh = dict(results)[TARGET_ROW]
    print(f"target (the sampler <= 10% of the layer), training configuration: {mh / reference:.1%} of the "
          f"layer's forward, {mh / training_reference:.1%} of its forward+backward")
    return {"num_nodes": graph.num_nodes, "num_edges": int(graph.edge_index.shape[1]),
            "rows": [{"variant": name, "ms": ms, "ratio_to_layer_forward": ms / reference,
                      "ratio_to_layer_forward_backward": ms / training_reference} for name, ms in results]}


def merge_fractions(args):
    """Fraction of nodes merged by one MH step with default settings, ground-truth energy."""
    if PASCAL is None or not (PASCAL / "JPEGImages").is_dir():
        print(f"\nPASCAL-Person-Part not found at SELAB_PASCAL_ROOT={PASCAL or '(unset)'}: merge fractions skipped")
        return None
    ids = (PASCAL / "val_id.txt").read_text().split()[: args.images]
    settings = {
        "untrained (p = 0.5)": lambda t, g: torch.full_like(t, 0.5),
        "calibrated (p = 0.8 / 0.2)": lambda t, g: 0.2 + 0.6 * t,
        "noisy (sigmoid(+-2.5 + N(0, 1.5)))": lambda t, g: torch.sigmoid(2.5 * (2 * t - 1) + 1.5 * torch.randn(t.shape, generator=g)),
    }
    table = {name: {"merged": [], "impurity": [], "accepted": []} for name in settings}
    for image_id in ids:
        image = np.asarray(Image.open(PASCAL / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        mask = torch.from_numpy(np.array(Image.open(PASCAL / "SegmentationPart" / f"{image_id}.png"))).long()
        graph = graph_from_superpixels(slic(image, n_segments=args.n_segments))
        n = graph.num_nodes
        labels = node_majority_labels(mask[None], graph.assignment, n)
        target = merge_target(graph.edge_index, labels)
        energy = PartitionEnergy(node_labels=labels, size=graph.size, num_classes=7)
        for name, make in settings.items():
            generator = torch.Generator().manual_seed(0)
            cluster, trace = metropolis_hastings(graph.edge_index, make(target, generator), energy, 8,
                                                 generator=generator, num_nodes=n, merge_budget=0.25)
            k = int(cluster.max()) + 1
            counts = torch.zeros(k, 7).index_add_(0, cluster, torch.nn.functional.one_hot(labels, 7).float())
            table[name]["merged"].append(1 - k / n)
            table[name]["impurity"].append(1 - float(counts.max(1).values.sum()) / n)
            table[name]["accepted"].append(sum(step.accepted for step in trace.steps))
    print(f"\nmerge per layer, defaults (beta 0.1, scale 100, T 1, budget 0.25, 8 proposals), ground-truth "
          f"energy, {len(ids)} PASCAL val images, ~{args.n_segments} superpixels")
    print(f"{'merge probabilities':38s} {'merged nodes':>13s} {'label impurity':>15s} {'accepted/8':>11s}")
    for name, row in table.items():
        print(f"{name:38s} {np.mean(row['merged']):13.3f} {np.mean(row['impurity']):15.4f} {np.mean(row['accepted']):11.2f}")
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-segments", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--baseline", default="", help="also time the MH step of selab/method/evolve.py at this git "
                        "revision, in the same run (e.g. a5c1807, before the numpy sampler)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "timing": timing(args, device), "merge": merge_fractions(args)}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "evolve.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'evolve.json'}")


if __name__ == "__main__":
    main()

"""Graph LSTM schedules side by side: forward + backward of one layer on a batch of SLIC graphs.

The main table is a layer that starts from zero states (the layer's default, every layer of the
Graph LSTM model and the first of SE-LSTM); a second table repeats it with given old states.

Compares the exact wavefront schedule with the one-node-at-a-time oracle (same numbers) and the
synchronous step (a different model; the cost floor), and counts the wavefront levels of every update
order. Run: ``.venv/bin/python bench/graph_lstm.py [--device cuda] [--repeats 5] [--threads 1]``; prints a table and
writes bench/results/graph_lstm.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

from selab.method.graph_lstm import GraphLSTM, wavefront_levels
from selab.method.orders import (bfs_order, confidence_order, dfs_order, leftmost_node, most_confident_node,
                                 random_order, stochastic_order)
from selab.method.superpixels import adjacency, pool_to_nodes, slic

IMAGES = ("astronaut", "chelsea", "coffee", "rocket")


def build_batch(n_segments: int, device: torch.device):
    """4 photos -> one disjoint graph with global node ids, node positions and a toy confidence."""
    edges, positions, sizes, offset = [], [], [], 0
    for name in IMAGES:
        image = getattr(data, name)()
        labels = slic(image, n_segments=n_segments)
        edges.append(torch.as_tensor(adjacency(labels)) + offset)
        pixels = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)
        positions.append(pool_to_nodes(pixels, labels).pos)
        sizes.append(int(labels.max()) + 1)
        offset += sizes[-1]
    edge_index = torch.cat(edges, 1).to(device)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pos = torch.cat(positions)
    generator = torch.Generator().manual_seed(0)
    # A spatially smooth toy confidence map: a random mix of node coordinates, softmax over 7 classes.
    confidence = torch.softmax((pos / 100) @ torch.randn(2, 7, generator=generator)
                               + 0.5 * torch.randn(len(pos), 7, generator=generator), dim=1)
    return edge_index, batch.to(device), pos.to(device), confidence.to(device)


def orders(edge_index, batch, pos, confidence):
    generator = torch.Generator().manual_seed(0)
    left = leftmost_node(pos, batch)
    confident = most_confident_node(confidence, batch, pos)
    return {
        "confidence": confidence_order(confidence, pos, batch),
        "bfs_location": bfs_order(edge_index, left, batch),
        "bfs_confidence": bfs_order(edge_index, confident, batch),
        "dfs_location": dfs_order(edge_index, left, batch),
        "dfs_confidence": dfs_order(edge_index, confident, batch),
        "random": random_order(batch, generator),
        "stochastic": stochastic_order(confidence, pos, batch, noise=0.1, generator=generator),
    }


def time_forward_backward(layer, x, edge_index, rank, schedule, repeats, device, states=None):
    """Wall and process-CPU seconds of forward+backward; minima, since the machine may be shared.
    ``states`` = (h0, m0) of a layer that continues from earlier states (default: zero states)."""
    h0, m0 = states if states is not None else (None, None)

    def step():
        layer.zero_grad(set_to_none=True)
        out = layer(x, edge_index, rank, update_schedule=schedule, h0=h0, m0=m0)
        (out.h.square().sum() + out.m.sum()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_min": min(wall), "wall_median": statistics.median(wall), "cpu_min": min(cpu)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; 1 gives steadier numbers on a busy shared machine")
    parser.add_argument("--sequential-repeats", type=int, default=1)
    parser.add_argument("--n-segments", type=int, default=1000)
    parser.add_argument("--in-channels", type=int, default=64)
    parser.add_argument("--hidden-channels", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    edge_index, batch, pos, confidence = build_batch(args.n_segments, device)
    N = batch.numel()
    counts = torch.bincount(batch).tolist()
    torch.manual_seed(0)
    layer = GraphLSTM(args.in_channels, args.hidden_channels).to(device)
    x = torch.randn(N, args.in_channels, device=device)
    ranks = orders(edge_index, batch, pos, confidence)
    levels = {name: int(wavefront_levels(edge_index, rank, N).max()) + 1 for name, rank in ranks.items()}

    rank = ranks["confidence"]
    seconds = {
        "synchronous": time_forward_backward(layer, x, edge_index, rank, "synchronous", args.repeats, device),
        "wavefront": time_forward_backward(layer, x, edge_index, rank, "wavefront", args.repeats, device),
        "sequential": time_forward_backward(layer, x, edge_index, rank, "sequential",
                                            args.sequential_repeats, device),
    }
    # A layer that continues from earlier states (as SE-LSTM's later layers do) also pays U h^old.
    states = (0.5 * torch.randn(N, args.hidden_channels, device=device),
              0.5 * torch.randn(N, args.hidden_channels, device=device))
    with_states = {
        name: time_forward_backward(layer, x, edge_index, rank, name, args.repeats, device, states)
        for name in ("synchronous", "wavefront")
    }
    wavefront_by_order = {
        name: time_forward_backward(layer, x, edge_index, r, "wavefront", args.repeats, device)
        for name, r in ranks.items()
    }

    sync = seconds["synchronous"]
    print(f"Graph LSTM forward+backward, {len(counts)} SLIC graphs ({counts} nodes, {edge_index.shape[1]} "
          f"edges), {args.in_channels}->{args.hidden_channels} channels, float32, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; min over repeats")
    print(f"{'schedule (confidence order)':<28}{'wall ms':>9}{'cpu ms':>9}{'x sync (cpu)':>14}"
          f"{'x sync (wall)':>15}{'sequential / this (cpu)':>25}")
    for name, t in seconds.items():
        print(f"{name:<28}{1000 * t['wall_min']:>9.1f}{1000 * t['cpu_min']:>9.1f}"
              f"{t['cpu_min'] / sync['cpu_min']:>14.2f}{t['wall_min'] / sync['wall_min']:>15.2f}"
              f"{seconds['sequential']['cpu_min'] / t['cpu_min']:>25.1f}")
    print(f"\n{'given h0, m0 (confidence)':<28}{'wall ms':>9}{'cpu ms':>9}{'x sync (cpu)':>14}")
    for name, t in with_states.items():
        print(f"{name:<28}{1000 * t['wall_min']:>9.1f}{1000 * t['cpu_min']:>9.1f}"
              f"{t['cpu_min'] / with_states['synchronous']['cpu_min']:>14.2f}")
    print(f"\n{'order (wavefront)':<28}{'levels':>9}{'wall ms':>9}{'cpu ms':>9}{'x sync (cpu)':>14}")
    for name in ranks:
        t = wavefront_by_order[name]
        print(f"{name:<28}{levels[name]:>9}{1000 * t['wall_min']:>9.1f}{1000 * t['cpu_min']:>9.1f}"
              f"{t['cpu_min'] / sync['cpu_min']:>14.2f}")

    results = {
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "nodes_per_graph": counts,
        "edges": int(edge_index.shape[1]),
        "in_channels": args.in_channels,
        "hidden_channels": args.hidden_channels,
        "seconds": seconds,
        "wavefront_over_synchronous_cpu": seconds["wavefront"]["cpu_min"] / sync["cpu_min"],
        "wavefront_over_synchronous_wall": seconds["wavefront"]["wall_min"] / sync["wall_min"],
        "sequential_over_wavefront_cpu": seconds["sequential"]["cpu_min"] / seconds["wavefront"]["cpu_min"],
        "seconds_given_states": with_states,
        "wavefront_over_synchronous_given_states_cpu":
            with_states["wavefront"]["cpu_min"] / with_states["synchronous"]["cpu_min"],
        "levels": levels,
        "wavefront_seconds_by_order": wavefront_by_order,
    }
    out = Path(__file__).resolve().parent / "results" / "graph_lstm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    np.random.seed(0)
    main()

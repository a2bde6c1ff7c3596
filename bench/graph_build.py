"""Benchmark: building the superpixel region graph, selab versus scikit-image, in one run.

For a 512x512 photo at 250, 1000 and 4000 SLIC segments it times SLIC, selab's vectorised
``adjacency`` and ``pool_to_nodes`` (mean colour, counts, centroids), and, on the same labels,
``skimage.graph.rag_mean_color`` (adjacency plus mean colour, looping over pixels). It checks both give
the same edges, prints a table with ratios and writes bench/results/graph_build.json.

Run: ``.venv/bin/python bench/graph_build.py [--repeats 5] [--threads 1]``; times are the best of
several calls, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data
from skimage import graph as skgraph

from selab.method.superpixels import adjacency, pool_to_nodes, slic

RESULTS = Path(__file__).resolve().parent / "results" / "graph_build.json"


def best_time(fn, repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (best is kept)")
    parser.add_argument("--segments", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: rag_mean_color is single-threaded, and the shared "
                             "2-core machine thrashes with more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    image = data.astronaut()  # 512x512x3 uint8
    features = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    rows = []
    for n_segments in args.segments:
        labels = slic(image, n_segments=n_segments)
        t_slic = best_time(lambda: slic(image, n_segments=n_segments), max(1, args.repeats // 2))
        t_adj = best_time(lambda: adjacency(labels), args.repeats * 4)
        t_pool = best_time(lambda: pool_to_nodes(features, labels), args.repeats * 4)
        t_rag = best_time(lambda: skgraph.rag_mean_color(image, labels), max(1, args.repeats // 2))
        t_rag_plain = best_time(lambda: skgraph.RAG(labels, connectivity=1), max(1, args.repeats // 2))
        rag = skgraph.rag_mean_color(image, labels, connectivity=1)
        rag_edges = np.array(sorted((min(a, b), max(a, b)) for a, b in rag.edges())).T
        same_edges = bool(np.array_equal(rag_edges, adjacency(labels)))
        rows.append({
            "n_segments": n_segments,
            "num_nodes": int(labels.max()) + 1,
            "num_edges": int(adjacency(labels).shape[1]),
            "slic_s": t_slic,
            "adjacency_s": t_adj,
            "pool_s": t_pool,
            "selab_adjacency_plus_pool_s": t_adj + t_pool,
            "skimage_rag_mean_color_s": t_rag,
            "skimage_RAG_connectivity1_s": t_rag_plain,
            "speedup_adjacency_plus_pool_vs_rag_mean_color": t_rag / (t_adj + t_pool),
            "speedup_adjacency_vs_RAG": t_rag_plain / t_adj,
            "same_edges_as_skimage": same_edges,
        })

    header = (f"{'segments':>8} {'nodes':>6} {'edges':>6} {'slic ms':>8} {'adj ms':>7} {'pool ms':>8} "
              f"{'rag_mean_color ms':>17} {'RAG ms':>7} {'adj+pool x':>10} {'adj x':>7} {'same':>5}")
    print(header)
    for r in rows:
        print(f"{r['n_segments']:>8} {r['num_nodes']:>6} {r['num_edges']:>6} {1e3 * r['slic_s']:>8.1f} "
              f"{1e3 * r['adjacency_s']:>7.2f} {1e3 * r['pool_s']:>8.2f} "
              f"{1e3 * r['skimage_rag_mean_color_s']:>17.1f} {1e3 * r['skimage_RAG_connectivity1_s']:>7.1f} "
              f"{r['speedup_adjacency_plus_pool_vs_rag_mean_color']:>10.0f} {r['speedup_adjacency_vs_RAG']:>7.0f} "
              f"{str(r['same_edges_as_skimage']):>5}")
    target = all(r["speedup_adjacency_plus_pool_vs_rag_mean_color"] >= 100 for r in rows)
    print(f"target (adjacency+pool >= 100x faster than rag_mean_color at every size): {'met' if target else 'NOT met'}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "image": "skimage.data.astronaut (512x512)",
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "target_met": target,
    }, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

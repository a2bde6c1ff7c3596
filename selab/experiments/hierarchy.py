"""A trained model's hierarchy against hand-crafted ones from the same superpixels, at matched node counts.

The Structure-evolving LSTM (Liang et al., CVPR 2017) promises a hierarchy whose coarse nodes are the
object's parts. :func:`measure_hierarchy` runs a model over a split with its deterministic test-time
structure and scores (:mod:`selab.training.partition_scores`) every level of every image, and beside
each the baselines of :mod:`selab.method.agglomeration` built from the same level-0 superpixels and
stopped at the same per-image node counts, then at fixed counts (200, 100, 50, 25, 12 by default):

- ``learned``: the model's own levels;
- ``colour``: greedy agglomeration by mean Lab colour (scikit-image's ``merge_hierarchical`` on
  ``rag_mean_color``);
- ``features``: by the backbone's feature maps (those the model's neck reads) pooled to the nodes,
  nothing learned on top of the backbone; by cosine distance (``rule="unit_mean"`` of
  :func:`selab.method.agglomeration.merge_sequence`), selab decision: the plain mean of unit vectors
  shrinks as a region grows, so a large region comes near every neighbour and swallows the image
  (measured on 24 PASCAL-Person-Part validation images at 25 nodes per image: achievable mIoU 32.5 with the
  plain mean, 51.6 with the unit mean);
- ``prediction``: by the model's own predicted class distribution per node;
- ``oracle``: by the ground-truth class distribution per node (an upper bound of greedy agglomeration).

Scores are computed at the model's input size (where the superpixels and every level are defined, on the
masks resized there by nearest neighbour), summed over the split. :func:`hierarchy_markdown` prints the
table; ``selab hierarchy RUN_DIR|MODEL --data-root ... --split val`` runs both and writes the JSON.

Examples
--------
>>> from selab.workbench import pretrained  # doctest: +SKIP
>>> model, record = pretrained.load("se_lstm")  # doctest: +SKIP
>>> result = measure_hierarchy(model, record["train_config"], dataset="synthetic", limit=4)  # doctest: +SKIP
>>> print(hierarchy_markdown(result))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from selab.data.prepare import to_device
from selab.files import atomic_write_text, writable_folder
from selab.method.agglomeration import (agglomerate_batch, class_distribution, mean_lab, pooled_maps,
                                        pooled_probabilities)
from selab.model.parser import SELabModel
from selab.training.partition_scores import PartitionScores, score_partition
from selab.training.config import TrainConfig, check_device
from selab.training.loaders import evaluation_loader

__all__ = ["METHODS", "BASELINES", "RULES", "DEFAULT_COUNTS", "method_label", "parse_counts", "baseline_descriptors",
           "image_partitions", "partitions_of_image", "evaluation_batches", "measure_hierarchy", "hierarchy_markdown"]

#: The baselines, in table order; ``learned`` (the model's levels) comes first.
BASELINES = ("colour", "features", "prediction", "oracle")
METHODS = ("learned",) + BASELINES
DEFAULT_COUNTS = (200, 100, 50, 25, 12)
#: The merged-descriptor rule of every baseline (:data:`selab.method.agglomeration.RULES`).
RULES = {"colour": "mean", "features": "unit_mean", "prediction": "mean", "oracle": "mean"}
_LABELS = {"learned": "learned", "colour": "mean colour", "features": "backbone features",
           "prediction": "predicted classes", "oracle": "ground-truth oracle"}


def method_label(method: str) -> str:
    """A method's name in tables and legends, e.g. ``"colour"`` -> ``"mean colour"``."""
    return _LABELS.get(method, method)


def parse_counts(text) -> tuple[int, ...]:
    """``"200,100,50"`` (or a sequence of ints) -> ``(200, 100, 50)``; every count an int >= 1.

    Examples
    --------
    >>> parse_counts("200, 100,12")
    (200, 100, 12)
    """
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        counts = tuple(int(p) for p in parts if p != "")
    except (TypeError, ValueError):
        raise ValueError(f"counts: expected comma-separated ints >= 1, e.g. 200,100,50,25,12, got {text!r}") from None
    if any(c < 1 for c in counts) or any(isinstance(p, (bool, float)) for p in parts):
        raise ValueError(f"counts: expected comma-separated ints >= 1, e.g. 200,100,50,25,12, got {text!r}")
    return counts


def baseline_descriptors(model: SELabModel, data: dict, output, level0, maps) -> dict:
    """The node descriptor of every baseline on the level-0 graph of a batch: ``{method: [N0, D]}``.

    ``maps`` are the backbone's feature maps of the batch (all of them; the neck's are used).
    """
    used = [maps[i] for i in model.neck.used]
    descriptors = {"colour": mean_lab(data["image"], level0), "features": pooled_maps(used, level0),
                   "prediction": pooled_probabilities(output.logits, level0),
                   "oracle": class_distribution(data["mask"], level0, model.config.num_classes)}
    return {name: descriptors[name] for name in BASELINES}


def image_partitions(model: SELabModel, data: dict, counts=DEFAULT_COUNTS) -> dict:
    """Every partition of every image of a batch, as level-0 cluster vectors.

    The model runs in ``eval()`` (its deterministic test-time structure). Rows: ``"level <l>"`` for each
    of the model's levels, then ``"<c> nodes"`` for each count ``c`` of ``counts``.

    Returns
    -------
    dict
        ``level0`` (the superpixel Graph), ``output`` (the ModelOutput), ``rows`` (names) and
        ``partitions``: ``{row: {method: LongTensor [N0]}}``, the node of every superpixel (``learned``
        only on the level rows). A level row's baselines have that level's node count in every image.
    """
    model.eval()
    with torch.no_grad():
        inputs = dict(data)
        maps = inputs.get("features")
        if maps is None:
            maps = model.backbone_features(data["image"])
            if model.config.finetune_after_stride is None:
                inputs["features"] = maps  # the forward pass reuses them instead of running the backbone again
        else:
            maps = model.finish_features([f.float() for f in maps])
        output = model(inputs)
    if not output.levels:
        raise ValueError(f"hierarchy: a {model.config.variant!r} model has no graph levels to measure "
                         f"(use graph_lstm or se_lstm)")
    level0 = output.levels[0]
    level_counts = torch.stack([torch.bincount(level.batch, minlength=level0.num_graphs) for level in output.levels], 1)
    per_image = [row + list(counts) for row in level_counts.tolist()]
    rows = [f"level {index}" for index in range(len(output.levels))] + [f"{c} nodes" for c in counts]
    partitions = {row: {} for row in rows}
    for index, level in enumerate(output.levels):
        partitions[rows[index]]["learned"] = level.superpixel_assignment
    for name, descriptor in baseline_descriptors(model, data, output, level0, maps).items():
        for row, cluster in zip(rows, agglomerate_batch(level0, descriptor, per_image, RULES[name])):
            partitions[row][name] = cluster
    return {"level0": level0, "output": output, "rows": rows, "partitions": partitions}


def partitions_of_image(found: dict, image: int) -> tuple[torch.Tensor, dict]:
    """One image's share of :func:`image_partitions`: ``(superpixels [H,W], {row: {method: cluster [N_b]}})``,
    superpixel and cluster ids from 0 within the image."""
    level0 = found["level0"]
    lo, hi = level0.ptr[image].item(), level0.ptr[image + 1].item()
    superpixels = level0.assignment[image] - lo
    partitions = {}
    for row, methods in found["partitions"].items():
        partitions[row] = {}
        for method, cluster in methods.items():
            local = cluster[lo:hi]
            partitions[row][method] = local - local.min()
    return superpixels, partitions


def evaluation_batches(model: SELabModel, train_config: dict, dataset=None, data_root=None, split: str = "val",
                       limit: int | None = None, image_size: int | None = None, batch_size: int = 4, device="cpu",
                       cache_dir=None, progress: bool = False):
    """``(loader, TrainConfig)``: the evaluation batches :func:`measure_hierarchy` reads (see its parameters;
    ``cache_dir`` is required here, the superpixel cache)."""
    if cache_dir is None:
        raise ValueError("hierarchy: cache_dir (a folder for the superpixel cache) is required")
    config = dict(train_config)
    dataset = dataset or config["dataset"]
    own = dataset == config["dataset"] and config.get("data_root") and Path(config["data_root"]).is_dir()
    if dataset != "synthetic" and not (data_root or own):
        raise ValueError(f"hierarchy: dataset {dataset!r} needs its folder: pass data_root (--data-root)")
    if data_root is not None and not Path(data_root).is_dir():
        raise ValueError(f"hierarchy: data root {data_root} is not a folder")
    config.update({"dataset": dataset, "val_split": split, "val_limit": limit, "resume": False, "device": str(device),
                   "batch_size": batch_size, "progress": progress, "cache_features": False, "cache_dir": cache_dir,
                   "num_workers": 0})
    if data_root is not None or dataset != train_config["dataset"]:
        config["data_root"] = None if dataset == "synthetic" else str(data_root)
    if image_size is not None:
        config["image_size"] = image_size
    config = TrainConfig.from_dict(config)
    return evaluation_loader(config, model), config


def measure_hierarchy(model: SELabModel, train_config: dict, dataset: str | None = None, data_root=None,
                      split: str = "val", limit: int | None = None, counts=DEFAULT_COUNTS,
                      image_size: int | None = None, batch_size: int = 4, device: str = "cpu",
                      cache_dir=None, tolerance: int = 2, progress: bool = True, out=None,
                      source: str | None = None) -> dict:
    """Score a model's test-time hierarchy and the baselines over a split.

    Parameters
    ----------
    model : SELabModel
        A ``graph_lstm`` or ``se_lstm`` model (run folder: :func:`selab.training.checkpoints.load_model`;
        shipped: :func:`selab.workbench.pretrained.load`).
    train_config : dict
        The model's training configuration (its dataset, data root, image size, superpixels).
    dataset, data_root, split, limit, image_size
        The data, by default the run's own dataset at its training size (``limit``: the first images).
    counts : sequence of int
        The fixed node counts per image of the baselines' extra rows.
    batch_size, device : int, str
    cache_dir : path, optional
        Superpixel cache; by default a temporary folder removed afterwards.
    tolerance : int
        Of the boundary recall, in pixels at the model's input size.
    progress : bool
        A progress bar over the batches.
    out : path, optional
        Write the result there as JSON.
    source : str, optional
        What the model is (recorded), e.g. a run folder or a shipped model's name.

    Returns
    -------
    dict
        ``rows``: one per level and count, each ``{"row", "level" (or None), "count" (or None),
        "methods": {method: PartitionScores.summary()}}``; and ``source``, ``dataset``, ``split``,
        ``num_images``, ``image_size``, ``tolerance``, ``counts``, ``seconds``.
    """
    counts = parse_counts(counts)
    if not isinstance(model, SELabModel):
        raise ValueError(f"hierarchy: model must be a SELabModel, got {type(model).__name__}")
    if not model.config.uses_graph:
        raise ValueError(f"hierarchy: a {model.config.variant!r} model has no graph levels to measure "
                         f"(use graph_lstm or se_lstm)")
    if out is not None:
        writable_folder(Path(out).parent, "hierarchy: out")
    torch_device = check_device(device, "hierarchy: device")
    model = model.to(torch_device).eval()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selab-hierarchy-") as scratch:
        loader, config = evaluation_batches(model, train_config, dataset, data_root, split, limit, image_size,
                                            batch_size, torch_device, cache_dir or scratch, progress)
        totals: dict = {}
        order: list = []
        for data in tqdm(loader, desc=f"hierarchy ({split})", disable=not progress, leave=False):
            data = to_device(data, torch_device)
            found = image_partitions(model, data, counts)
            if order and found["rows"] != order:
                raise ValueError("hierarchy: the model's number of levels changed between batches")
            order = found["rows"]
            superpixels = found["level0"].assignment
            for row, methods in found["partitions"].items():
                for method, cluster in methods.items():
                    scores = score_partition(cluster.to(superpixels.device)[superpixels], data["mask"],
                                             model.config.num_classes, tolerance)
                    key = (row, method)
                    totals[key] = totals[key] + scores if key in totals else scores
    levels = sum(row.startswith("level ") for row in order)
    rows = []
    for index, row in enumerate(order):
        methods = {m: _summary(totals[(row, m)]) for m in METHODS if (row, m) in totals}
        rows.append({"row": row, "level": index if index < levels else None,
                     "count": None if index < levels else counts[index - levels], "methods": methods})
    result = {"source": source, "dataset": config.dataset, "split": split, "num_images": len(loader.dataset),
              "image_size": config.image_size, "tolerance": tolerance, "counts": list(counts), "rows": rows,
              "seconds": time.perf_counter() - start}
    if out is not None:
        atomic_write_text(json.dumps(result, indent=2), Path(out))
    return result


def _summary(scores: PartitionScores) -> dict:
    return {key: value for key, value in scores.summary().items() if key != "images"}


def _cell(value: float, scale: float = 1.0) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value * scale:.1f}"


def hierarchy_markdown(result: dict) -> str:
    """One Markdown table of :func:`measure_hierarchy`'s result: a row per level and count, per method its
    nodes per image, achievable mIoU, ASA, boundary recall and undersegmentation error (all in percent).

    Examples
    --------
    >>> scores = {"nodes_per_image": 12.0, "achievable_miou": 80.0, "asa": 0.95, "boundary_recall": 0.5,
    ...           "undersegmentation_error": 0.1}
    >>> result = {"rows": [{"row": "12 nodes", "methods": {"oracle": scores}}], "num_images": 1, "split": "val",
    ...           "tolerance": 2}
    >>> print(hierarchy_markdown(result).splitlines()[2])
    | 12 nodes | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | 12.0 | 80.0 | 95.0 | 50.0 | 10.0 |
    """
    head, rule = ["| row |"], ["|---|"]
    for method in METHODS:
        name = method_label(method)
        head.append(f" {name}: nodes | mIoU | ASA | BR | UE |")
        rule.append("---|---|---|---|---|")
    lines = ["".join(head), "".join(rule)]
    for row in result["rows"]:
        cells = [row["row"]]
        for method in METHODS:
            s = row["methods"].get(method)
            if s is None:
                cells += ["–"] * 5
            else:
                cells += [_cell(s["nodes_per_image"]), _cell(s["achievable_miou"]), _cell(s["asa"], 100),
                          _cell(s["boundary_recall"], 100), _cell(s["undersegmentation_error"], 100)]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\n{result['num_images']} images of {result['split']!r}; achievable mIoU (%), ASA (%), boundary recall "
            f"within {result['tolerance']} px (%), undersegmentation error (%).")
    return "\n".join(lines) + "\n" + note + "\n"

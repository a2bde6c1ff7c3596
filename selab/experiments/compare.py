"""Comparing runs: a ladder of mean ± sd over seeds, and paired per-image bootstrap intervals.

A comparison of two variants has two sources of doubt: the seed (weights, data order, MH draws) and
the validation images (a gap may come from a handful of images). The ladder shows the first as the
standard deviation over the runs of a row; :func:`paired_bootstrap` the second, by resampling the
validation images with replacement, the same images for both rows, and recomputing each row's mIoU
from the resampled images' summed confusion matrices (the benchmark's split-level mIoU, not a mean of
per-image scores). A row's mIoU is the mean over its runs, so the interval is that of the difference
of the rows' seed-averaged scores.

Run folders come from ``selab train`` or a sweep (:mod:`selab.experiments.sweep`); a sweep cell's row name is its
label. Each run needs ``metrics.json``; the paired comparison also needs ``val_per_image.npz`` (written
by training after its last epoch, or by ``selab evaluate --per-image``), and every run of a pair must have
been evaluated on the same images: runs on different validation sets are refused, naming both, rather
than compared on part of their images. A file that cannot be read is named in the error.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> confusion = rng.integers(0, 50, size=(30, 3, 3))
>>> a = RunResult(folder="a", label="a", final={"mean_iou": 0.0}, per_image=(np.arange(30).astype(str), confusion))
>>> paired_bootstrap([a], [a], num_samples=200)["difference"]
0.0
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selab.classes import CLASS_NAMES
from selab.training.metrics import PER_IMAGE_FILE, iou, load_per_image
from selab.experiments.sweep import CELL_FILE


@dataclass
class RunResult:
    """One finished run: where it is, its row label, its final metrics and per-image confusions."""

    folder: str
    label: str
    final: dict
    seed: int | None = None
    epochs: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    per_image: tuple | None = None  # (ids [N], confusion [N,K,K])

    @property
    def train_minutes(self) -> float:
        """Sum of the epoch times (validation included), in minutes."""
        return sum(r.get("seconds", 0.0) for r in self.epochs) / 60.0


def load_run(folder, label: str | None = None) -> RunResult:
    """A finished run from its folder; ``label`` defaults to its sweep row, else the folder name."""
    folder = Path(folder)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise ValueError(f"compare: {folder} is not a finished run (no metrics.json)")
    metrics = _read_json(metrics_path)
    if not metrics.get("final"):
        raise ValueError(f"compare: {metrics_path} has no final validation metrics (unfinished or no validation)")
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if label is None:
        cell = folder / CELL_FILE
        label = str(_read_json(cell).get("row", folder.name)) if cell.is_file() else folder.name
    per_image = _read_per_image(folder / PER_IMAGE_FILE) if (folder / PER_IMAGE_FILE).is_file() else None
    return RunResult(folder=str(folder), label=label, final=metrics["final"], epochs=metrics.get("epochs", []),
                     seed=config.get("train", {}).get("seed"), config=config, per_image=per_image)


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; a ValueError naming the file when it is truncated or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"compare: {path} is not valid JSON (truncated?): {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"compare: {path} does not hold a JSON object")
    return data


def _read_per_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~selab.training.metrics.load_per_image`, with a ValueError naming the file when it is unreadable."""
    try:
        ids, confusion = load_per_image(path)
    except Exception as error:  # numpy raises many kinds for a damaged archive; none of them name the file
        raise ValueError(f"compare: {path} is unreadable (truncated or not a per-image file): "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if confusion.ndim != 3 or confusion.shape[1] != confusion.shape[2] or len(ids) != len(confusion):
        raise ValueError(f"compare: {path} holds {len(ids)} ids and confusions of shape {list(confusion.shape)}; "
                         "expected N ids and [N, K, K]")
    return ids, confusion


def load_runs(paths) -> list[RunResult]:
    """Finished runs from run folders and sweep folders (every finished cell of a sweep).

    Unfinished cells of a sweep are skipped; a plain folder that is not a finished run is an error.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs = []
    for path in map(Path, paths):
        index = path / "sweep.json"
        if index.is_file():
            for name in _read_json(index).get("cells", []):
                cell = path / name
                if (cell / "metrics.json").is_file() and _read_json(cell / "metrics.json").get("final"):
                    runs.append(load_run(cell))
        else:
            runs.append(load_run(path))
    return runs


def group_runs(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by label, labels in order of first appearance."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def _mean_sd(values) -> tuple[float, float]:
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")


def ladder(runs: list[RunResult]) -> list[dict]:
    """One row per label: the number of runs, mean and sd over them of mIoU, per-class IoU, pixel
    accuracy and training minutes, and the mean of any per-level hierarchy statistics in ``final``.

    Examples
    --------
    >>> runs = [RunResult("a", "cnn", {"mean_iou": 50.0}), RunResult("b", "cnn", {"mean_iou": 52.0})]
    >>> row = ladder(runs)[0]
    >>> row["label"], row["runs"], row["mean_iou"], round(row["mean_iou_sd"], 3)
    ('cnn', 2, 51.0, 1.414)
    """
    rows = []
    for label, members in group_runs(runs).items():
        row = {"label": label, "runs": len(members), "seeds": [m.seed for m in members]}
        row["mean_iou"], row["mean_iou_sd"] = _mean_sd(m.final.get("mean_iou") for m in members)
        row["pixel_accuracy"], row["pixel_accuracy_sd"] = _mean_sd(m.final.get("pixel_accuracy") for m in members)
        row["train_minutes"], _ = _mean_sd(m.train_minutes for m in members)
        for name in CLASS_NAMES:
            row[name], row[f"{name}_sd"] = _mean_sd(m.final.get("per_class_iou", {}).get(name) for m in members)
        hierarchies = [m.final["hierarchy"] for m in members if m.final.get("hierarchy")]
        if hierarchies:
            row["hierarchy"] = {key: np.mean([h[key] for h in hierarchies], axis=0).tolist()
                                for key in hierarchies[0] if all(key in h for h in hierarchies)}
        rows.append(row)
    return rows


def _miou_of_samples(confusion: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mIoU (percent) of each resample: ``weights`` [S,N] image counts, ``confusion`` [N,K,K]."""
    n, k, _ = confusion.shape
    summed = (weights @ confusion.reshape(n, k * k).astype(np.float64)).reshape(-1, k, k)
    return np.nanmean(iou(summed), axis=1)


def _aligned_confusions(runs: list[RunResult], ids: np.ndarray, reference: str = "the other runs") -> np.ndarray:
    stacks = []
    wanted = set(ids.tolist())
    for run in runs:
        if run.per_image is None:
            raise ValueError(f"compare: {run.folder} has no {PER_IMAGE_FILE} (rerun, or `selab evaluate --per-image`)")
        run_ids, confusion = run.per_image
        position = {i: p for p, i in enumerate(run_ids)}
        missing = [i for i in ids if i not in position]
        extra = [i for i in run_ids if i not in wanted]
        if missing:
            raise ValueError(f"compare: {run.folder} was not evaluated on {len(missing)} images of {reference} "
                             f"(e.g. {str(missing[0])!r}; {len(position)} against {len(wanted)} images); compare "
                             "runs on the same validation split")
        if extra or len(position) != len(run_ids):
            raise ValueError(f"compare: {run.folder} was evaluated on {len(extra) or len(run_ids) - len(position)} "
                             f"images {reference} was not (e.g. {str((extra or list(run_ids))[0])!r}; "
                             f"{len(run_ids)} against {len(wanted)} images); compare runs on the same validation split")
        stacks.append(confusion[[position[i] for i in ids]])
    return np.stack(stacks)


def paired_bootstrap(runs_a: list[RunResult], runs_b: list[RunResult], num_samples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Bootstrap interval of mIoU(A) - mIoU(B) over the validation images, resampled in pairs.

    Parameters
    ----------
    runs_a, runs_b : list of RunResult
        The runs (seeds) of two rows, each with per-image confusions on the same images.
    num_samples : int
        Bootstrap resamples.
    seed : int
        Seeds the resampling (the interval is reproducible).
    level : float
        Coverage of the percentile interval.

    Returns
    -------
    dict
        ``difference`` (on all images, percent points), ``low``, ``high``, ``level``, ``num_images``,
        ``runs_a``, ``runs_b``, ``num_samples``, and ``p_le_zero``: the fraction of resamples in which A
        does not beat B.
    """
    if not runs_a or not runs_b:
        raise ValueError("compare: paired_bootstrap needs at least one run on each side")
    if not 0 < level < 1:
        raise ValueError(f"compare: level must be in (0, 1), got {level}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"compare: num_samples (--bootstrap) must be a positive int, got {num_samples!r}")
    ids = np.asarray(runs_a[0].per_image[0] if runs_a[0].per_image is not None else [])
    reference = runs_a[0].folder
    conf_a, conf_b = _aligned_confusions(runs_a, ids, reference), _aligned_confusions(runs_b, ids, reference)
    if len(ids) == 0:
        raise ValueError(f"compare: {reference} holds no per-image results to resample")
    n = len(ids)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(num_samples, n))
    weights = np.zeros((num_samples, n))
    np.add.at(weights, (np.repeat(np.arange(num_samples), n), draws.reshape(-1)), 1.0)
    ones = np.ones((1, n))

    def row_miou(confusions, w):
        return np.mean([_miou_of_samples(c, w) for c in confusions], axis=0)

    difference = float(row_miou(conf_a, ones)[0] - row_miou(conf_b, ones)[0])
    samples = row_miou(conf_a, weights) - row_miou(conf_b, weights)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return {"difference": round(difference, 10), "low": float(low), "high": float(high), "level": level,
            "num_images": n, "runs_a": len(runs_a), "runs_b": len(runs_b), "num_samples": num_samples,
            "p_le_zero": float(np.mean(samples <= 0))}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"A:B,C:D"`` -> ``[("A", "B"), ("C", "D")]``, each pair two row labels.

    Examples
    --------
    >>> parse_pairs("se_lstm_mh:se_lstm_none, graph_lstm:cnn")
    [('se_lstm_mh', 'se_lstm_none'), ('graph_lstm', 'cnn')]
    """
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip() or ":" in b:
            raise ValueError(f"compare: pairs: expected 'A:B' (two row labels), got {item!r}")
        pairs.append((a.strip(), b.strip()))
    return pairs


def report(paths, pairs: list[tuple[str, str]] | None = None, per_class: bool = True, **kwargs) -> str:
    """The ladder, the hierarchy and the paired comparisons of the finished runs under ``paths``, as Markdown
    (what ``selab compare`` prints and docs/results.md quotes); ``kwargs`` go to :func:`paired_bootstrap`."""
    runs = load_runs(paths)
    if not runs:
        raise ValueError(f"compare: no finished runs under {', '.join(map(str, paths))}")
    rows = ladder(runs)
    parts = [ladder_markdown(rows, per_class=per_class)]
    if any(row.get("hierarchy") for row in rows):
        parts.append(hierarchy_markdown(rows))
    if pairs:
        parts.append(pairs_markdown(compare_rows(runs, pairs, **kwargs)))
    return "\n\n".join(parts) + "\n"


def compare_rows(runs: list[RunResult], pairs: list[tuple[str, str]], **kwargs) -> list[dict]:
    """:func:`paired_bootstrap` for each ``(label_a, label_b)`` of ``pairs``; adds the labels."""
    groups = group_runs(runs)
    results = []
    for a, b in pairs:
        for label in (a, b):
            if label not in groups:
                raise ValueError(f"compare: no finished runs labelled {label!r} (have {sorted(groups)})")
        results.append({"a": a, "b": b, **paired_bootstrap(groups[a], groups[b], **kwargs)})
    return results


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def ladder_markdown(rows: list[dict], per_class: bool = True) -> str:
    """The ladder as a Markdown table (mean ± sd over the runs of each row)."""
    head = ["row", "runs", "mIoU"] + (list(CLASS_NAMES) if per_class else []) + ["pixel acc.", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], str(row["runs"]), _pm(row["mean_iou"], row["mean_iou_sd"])]
        if per_class:
            cells += [_pm(row[name], row[f"{name}_sd"], 1) for name in CLASS_NAMES]
        cells += [_pm(row["pixel_accuracy"], row["pixel_accuracy_sd"], 1), f"{row['train_minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs_markdown(results: list[dict]) -> str:
    """Paired comparisons as a Markdown table."""
    lines = ["| A | B | mIoU(A) - mIoU(B) | interval | P(A ≤ B) | images | runs |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['a']} | {r['b']} | {r['difference']:+.2f} | {r['level']:.0%} [{r['low']:+.2f}, {r['high']:+.2f}] | "
                     f"{r['p_le_zero']:.3f} | {r['num_images']} | {r['runs_a']} vs {r['runs_b']} |")
    return "\n".join(lines)


def hierarchy_markdown(rows: list[dict]) -> str:
    """Per level at test time, for the rows that have a hierarchy: nodes per image, clique label purity and,
    for runs that recorded it, achievable mIoU (:func:`selab.training.partition_scores.hierarchy_stats`), each
    the mean over the row's runs."""
    shown = [row for row in rows if row.get("hierarchy")]
    achievable = bool(shown) and all("achievable_miou" in row["hierarchy"] for row in shown)
    lines = ["| row | runs | nodes per image, level 0 → top | clique label purity (%), level 0 → top |"
             + (" achievable mIoU, level 0 → top |" if achievable else ""),
             "|---|---|---|---|" + ("---|" if achievable else "")]
    for row in shown:
        h = row["hierarchy"]
        nodes = " → ".join(f"{v:.0f}" for v in h["mean_nodes_per_image"])
        purity = " → ".join(f"{100 * v:.1f}" for v in h["purity"])
        extra = (" " + " → ".join(f"{v:.1f}" for v in h["achievable_miou"]) + " |") if achievable else ""
        lines.append(f"| {row['label']} | {row['runs']} | {nodes} | {purity} |" + extra)
    return "\n".join(lines)

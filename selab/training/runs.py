"""Run folders: where a run writes, what it refuses to overwrite, what may change when it resumes.

:class:`RunFolder` never destroys an earlier run; :func:`changed_fields` lists what a resumed run would
change against the saved one; :func:`write_config` and :func:`write_metrics` write ``config.json``,
``metrics.json`` and ``metrics.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import sys
from pathlib import Path

from selab.classes import CLASS_NAMES
from selab.files import atomic_write_text, writable_folder
from selab.training.config import RENAMED_FIELDS, RUN_FIELDS, TrainConfig, complete_model
from selab.training.metrics import PER_IMAGE_FILE


def _run_files(folder: Path) -> list[str]:
    """Files under ``folder`` (relative paths), leaving out selab's own temporary files."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")))


# What a run writes into its folder. selab decision: only these make a folder "taken"; other files beside
# them (the executed notebook papermill writes before the run starts, a sweep cell's parameters and log)
# are not a run's results and are never overwritten by one.
RUN_OUTPUTS = ("metrics.json", "metrics.csv", PER_IMAGE_FILE, "eval.json")
RUN_OUTPUT_FOLDERS = ("checkpoints", "figures")


def _is_run_output(relative: str) -> bool:
    parts = Path(relative).parts
    return relative in RUN_OUTPUTS or (len(parts) > 1 and parts[0] in RUN_OUTPUT_FOLDERS)


def _listing(files: list[str], limit: int = 4) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


class RunFolder:
    """Where a run writes, such that an earlier run in ``out_dir`` is never destroyed.

    * ``out_dir`` missing, empty, or holding none of a run's outputs (:data:`RUN_OUTPUTS`, ``checkpoints/``,
      ``figures/``; a ``config.json`` alone is a run that never wrote a checkpoint): the run writes there.
    * ``resume=True`` and ``checkpoints/last.pt`` present: the run continues there.
    * anything else: refused with a message naming what is there and what to do, unless
      ``overwrite=True``; then the run writes into a hidden sibling folder and :meth:`commit`
      swaps it in after its first checkpoint (:meth:`abandon` removes it if the run fails before).
    """

    def __init__(self, config: TrainConfig):
        self.final = Path(config.out_dir)
        writable_folder(self.final, "TrainConfig.out_dir")
        last = self.final / "checkpoints" / "last.pt"
        results = [f for f in _run_files(self.final) if _is_run_output(f)]
        self.resuming = bool(config.resume and last.is_file())
        self.path, self.pending = self.final, False
        if results and not self.resuming:
            if not config.overwrite:
                if config.resume:
                    hint = (f"it has no checkpoints/last.pt to resume from; pick another --out (out_dir) or "
                            f"replace it with --overwrite (overwrite=True)")
                elif last.is_file():
                    hint = ("continue that run with --resume (resume=True), pick another --out (out_dir), or "
                            "replace it with --overwrite (overwrite=True)")
                else:
                    hint = "pick another --out (out_dir) or replace its contents with --overwrite (overwrite=True)"
                raise ValueError(f"TrainConfig.out_dir: {self.final} is not empty (it holds {_listing(results)}); "
                                 f"{hint}")
            cache = config.cache_root.resolve()
            if cache == self.final.resolve() or self.final.resolve() in cache.parents:
                raise ValueError(f"TrainConfig.cache_dir: {cache} lies inside out_dir {self.final}, which "
                                 f"overwrite=True replaces; put the cache elsewhere")
            self.path, self.pending = self.final.with_name(f".{self.final.name}.new-{os.getpid()}"), True
            if self.path.exists():
                shutil.rmtree(self.path)
            writable_folder(self.path, "TrainConfig.out_dir")

    def commit(self) -> Path:
        """After a checkpoint: with ``overwrite``, put the new run in place of the old one (once)."""
        if self.pending:
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
            self.path, self.pending = self.final, False
            print(f"run: the new run replaced the previous contents of {self.final} (overwrite=True)", file=sys.stderr)
        return self.path

    def abandon(self) -> None:
        """The run failed before its first checkpoint: drop its hidden folder, the old run stays."""
        if self.pending:
            shutil.rmtree(self.path, ignore_errors=True)
            print(f"run: {self.final} was left as it was (the new run wrote no checkpoint)", file=sys.stderr)


# What may differ between a run and its resumption: how and where it runs, not what it computes.
RESUME_FREE_FIELDS = ("resume", "overwrite", "progress", "device", "num_workers", "num_figures", "out_dir",
                      "cache_dir", "epochs")


def changed_fields(saved: dict, config: TrainConfig) -> list[str]:
    """Fields of a saved run's config (``config.json``'s ``train``) that ``config`` changes, so that resuming
    would be wrong; a changed model field is named ``model.<field>``.

    The saved model options are compared as the ModelConfig they make (a field left out is its default).
    """
    mine = config.to_dict()
    saved = {RENAMED_FIELDS.get(key, key): value for key, value in saved.items()}
    changed = []
    for key, value in saved.items():
        if key in RESUME_FREE_FIELDS or key == "model" or key not in mine or value == mine[key]:
            continue
        if key == "data_root" and value and mine[key] and Path(value).is_dir() and Path(mine[key]).is_dir() \
                and os.path.samefile(value, mine[key]):
            continue
        changed.append(key)
    try:
        model = complete_model(saved.get("model", {}), **{key: getattr(config.model, key) for key in RUN_FIELDS})
    except ValueError:
        return sorted(changed + ["model"])
    changed += [f"model.{f.name}" for f in dataclasses.fields(model)
                if getattr(model, f.name) != getattr(config.model, f.name)]
    return sorted(changed)


def write_config(run_dir: Path, config: TrainConfig) -> None:
    """``config.json``: the run's config (``train``) and the whole model config (``model``)."""
    atomic_write_text(json.dumps({"train": config.to_dict(), "model": config.model.to_dict()}, indent=2),
                      run_dir / "config.json")


def write_metrics(run_dir: Path, history: list, final: dict | None) -> None:
    """``metrics.json`` (the per-epoch records and the final scores) and ``metrics.csv`` (one row per epoch)."""
    atomic_write_text(json.dumps({"epochs": history, "final": final}, indent=2), run_dir / "metrics.json")
    if not history:
        return
    columns = ["epoch", "train_loss", "val_mean_iou", "val_pixel_accuracy", "lr", "seconds"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns + [f"val_iou_{name}" for name in CLASS_NAMES])
    writer.writeheader()
    writer.writerows({**{k: record.get(k) for k in columns},
                      **{f"val_iou_{n}": record.get("val_per_class_iou", {}).get(n) for n in CLASS_NAMES}}
                     for record in history)
    atomic_write_text(text.getvalue(), run_dir / "metrics.csv")

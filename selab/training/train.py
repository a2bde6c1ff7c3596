r"""Training and evaluation: :class:`TrainConfig`, one :func:`run` for the notebook (papermill) and the
``selab`` command, checkpoints and run folders, and :func:`evaluate`.

Trains the three variants of :mod:`selab.model.parser` (``cnn``, ``graph_lstm`` of Liang et al., ECCV 2016,
``se_lstm`` of Liang et al., CVPR 2017) on PASCAL-Person-Part, an image/mask folder or the built-in
synthetic data (prepared by :mod:`selab.data.prepare`), and evaluates them with the benchmark's metric (IoU
from a confusion matrix accumulated over the split, at each mask's full resolution). The paper's recipe
is SGD (momentum 0.9, weight decay 5e-4, lr 1e-3 for new layers and 1e-4 for pretrained ones, batch 2)
and a two-step schedule (first the confidence layer, then all): ``TrainConfig(optimizer="sgd", lr=1e-3,
backbone_lr_scale=0.1, weight_decay=5e-4, batch_size=2, two_step_epochs=E1)``, and the whole network
fine-tuned with the paper's augmentation: add ``backbone="efficientnet_lite0", freeze_backbone=False,
augmentation="paper"`` (:mod:`selab.data.augment`). selab's defaults (AdamW, poly schedule, batch 8, a frozen
pretrained backbone with cached features) train faster on a CPU.

A run folder holds ``config.json``, ``checkpoints/last.pt`` (+ ``best.pt``), ``metrics.json``
(per-epoch list + final), ``metrics.csv`` and ``figures/*.png``. Checkpoints are written atomically
and carry the model, optimizer, scheduler, epoch, step and every RNG state, so ``resume=True``
continues an interrupted run (Ctrl-C saves one mid-epoch) to the same result as an uninterrupted one:
the shuffling, augmentation and Metropolis-Hastings draws of an epoch come from generators seeded by
``(seed, epoch)`` (:mod:`selab.seeds`), not from a global stream.

Examples
--------
>>> result = run(TrainConfig(epochs=1, limit=4, val_limit=2, image_size=32,
...                          out_dir="/tmp/selab-doctest"))  # doctest: +SKIP
>>> sorted(result)  # doctest: +SKIP
['epochs', 'final', 'paths']
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm.auto import tqdm

from selab.training import distributed
from selab.data.augment import renumber
from selab.classes import CLASS_COLORS, CLASS_NAMES, colorize
from selab.data.datasets import DATASETS, resize_image
from selab.method.evolve import StructureEvolution
from selab.files import atomic_save, atomic_write_text, writable_folder
from selab.model.loss import _cross_entropy, compute_loss  # noqa: F401  (_cross_entropy: tests reach it here)
from selab.training.partition_scores import combine_hierarchy_stats, hierarchy_stats
from selab.training.metrics import PER_IMAGE_FILE, ConfusionMatrix, confusion_matrix, save_per_image
from selab.model.parser import ModelConfig, SELabModel, build_model
# PreparedSplit is imported for the notebooks that build a split from a run's config (03, 06).
from selab.data.prepare import PreparedSplit, TrainingData, check_data, evaluation_loader, to_device  # noqa: F401
from selab.seeds import MODEL, epoch_generator, rng_state, seed_everything, set_rng_state

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("poly", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
AUGMENTATIONS = ("flip", "paper")
#: The allowed values of TrainConfig's named options (``selab train``'s choices, beside ModelConfig's).
CHOICES = {"dataset": DATASETS, "optimizer": OPTIMIZERS, "schedule": LR_SCHEDULES, "precision": PRECISIONS,
           "augmentation": AUGMENTATIONS}
# What validation adds to an epoch's record (as ``val_<key>``); metrics.json's ``final`` is the last one's.
VALIDATION_KEYS = ("mean_iou", "pixel_accuracy", "per_class_iou", "hierarchy")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run folder.

    ``selab train`` has one flag per field (``--image-size`` for ``image_size``), with the help text
    below (:func:`selab.cli.build_parser`).

    Parameters
    ----------
    variant : {"cnn", "graph_lstm", "se_lstm"}
        The model (:class:`selab.model.parser.ModelConfig`).
    backbone : {"small", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
        ``small``: a CNN trained from scratch; ``efficientnet_lite0/1/2``: ImageNet-pretrained
        (:data:`selab.model.backbones.BACKBONES`).
    dataset : {"synthetic", "pascal_person_part", "folder"}
        Built-in generated data, PASCAL-Person-Part, or an image/mask folder (:mod:`selab.data.datasets`).
    data_root : str, optional
        Dataset folder (not needed for ``synthetic``).
    split : str
        Training split (``train_id.txt`` for PASCAL-Person-Part).
    val_split : str, optional
        Validation split; ``None`` (``none`` on the command line) skips validation.
    limit : int, optional
        Use the first N images of the training split (``synthetic``: the number generated, default 256).
    val_limit : int, optional
        Use the first N images of the validation split (``synthetic``: default 32).
    image_size : int
        Images (and masks, superpixels) are resized to S x S for training.
    epochs : int
        Training length.
    batch_size : int
        Images per step.
    lr : float
        Learning rate of the new layers.
    optimizer : {"adamw", "sgd"}
        The optimiser (paper: SGD).
    momentum : float
        SGD momentum (paper: 0.9).
    weight_decay : float
        Weight decay (paper: 5e-4).
    backbone_lr_scale : float
        Learning rate of the pretrained backbone relative to ``lr`` (paper: 0.1).
    schedule : {"poly", "cosine", "constant"}
        Per-iteration learning-rate schedule (poly: DeepLab's (1 - t/T)^0.9).
    two_step_epochs : int
        The paper's two-step training: for the first epochs only the CNN features and the confidence
        layer learn (on the confidence maps), then everything.
    freeze_backbone : bool, optional
        Default: frozen for the pretrained ``efficientnet_lite*``, trained for ``small``.
    cache_features : bool, optional
        Cache the frozen backbone's features on disk (default: whenever the backbone is frozen).
    cache_dir : str, optional
        Feature and superpixel cache; default ``<out_dir>/../cache`` (shared by runs in one folder).
    n_segments : int, optional
        SLIC superpixels per image; default ``1000 * (S / 321)^2`` but at least 64 (the paper's 1000
        at 321 x 321, scaled with the image area; selab decision). The one place to set it: the model
        records it (``ModelConfig.n_segments``) for prediction.
    augment : bool
        Augment the training images (see ``augmentation``); off: no augmentation at all.
    augmentation : {"flip", "paper"}
        ``flip``: random horizontal flips (the only augmentation cached features can follow). ``paper``:
        the paper's random crops around the people, scale, rotation, flips and colour-intensity scaling
        (:mod:`selab.data.augment`), on uncached features only (``freeze_backbone=False`` or
        ``cache_features=False``). selab decision: ``flip`` by default, so that earlier runs keep their results.
    model : dict
        Further :class:`~selab.model.parser.ModelConfig` fields (``hidden_channels``, ``num_layers``, ...).
    seed : int
        Seeds the weights and every random draw of training (:mod:`selab.seeds`).
    out_dir : str
        Run folder.
    resume : bool
        Continue from ``out_dir/checkpoints/last.pt`` if present.
    overwrite : bool
        Replace a previous run in ``out_dir`` (without it a non-empty ``out_dir`` is refused). The old
        files are replaced only once the new run has written its first checkpoint: until then it trains
        in a hidden sibling folder, which is removed if the new run fails.
    ignore_index : int, optional
        Mask value that is neither trained on nor scored (e.g. 255, the PASCAL VOC "void"); ``None``:
        every mask value must be a class id.
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
    precision : {"fp32", "bf16"}
        ``bf16``: the forward pass and the loss (in training and validation) run under ``torch.autocast``
        in bfloat16, on the CPU or CUDA; weights, gradients and optimizer state stay float32 (selab
        decision: no loss scaling, which bfloat16's exponent range does not need).
    num_workers : int
        DataLoader workers.
    num_figures : int
        Validation predictions drawn in ``figures/predictions.png``.
    val_every : int
        Validate every N epochs (and always after the last one).
    progress : bool
        tqdm progress bars.
    """

    variant: str = "cnn"
    backbone: str = "small"
    dataset: str = "synthetic"
    data_root: str | None = None
    split: str = "train"
    val_split: str | None = "val"
    limit: int | None = None
    val_limit: int | None = None
    image_size: int = 96
    epochs: int = 6
    batch_size: int = 8
    lr: float = 3e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    backbone_lr_scale: float = 0.1
    schedule: str = "poly"
    two_step_epochs: int = 0
    freeze_backbone: bool | None = None
    cache_features: bool | None = None
    cache_dir: str | None = None
    n_segments: int | None = None
    augment: bool = True
    augmentation: str = "flip"
    model: dict = field(default_factory=dict)
    seed: int = 0
    out_dir: str = "runs/default"
    resume: bool = False
    overwrite: bool = False
    ignore_index: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    num_figures: int = 4
    val_every: int = 1
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, expected):
            raise ValueError(f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                bad(name, f"one of {allowed}")
        if self.dataset != "synthetic" and not self.data_root:
            bad("data_root", f"a folder for dataset {self.dataset!r}")
        if self.data_root and not Path(self.data_root).is_dir():
            bad("data_root", "an existing folder")
        for names, low, expected in ((("limit", "val_limit", "n_segments"), 1, "None or a positive int"),
                                     (("image_size", "batch_size", "val_every"), 1, "a positive int"),
                                     (("epochs",), 1, "an int >= 1 (a run of 0 epochs would write nothing)"),
                                     (("two_step_epochs", "num_workers", "num_figures", "seed"), 0, "an int >= 0")):
            for name in names:
                value = getattr(self, name)
                if not (value is None and expected.startswith("None")) and (not isinstance(value, int) or value < low):
                    bad(name, expected)
        if self.image_size < 16:
            bad("image_size", "at least 16 pixels")
        for name in ("lr", "backbone_lr_scale", "weight_decay", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(name, "a finite number >= 0")
        if self.augment and self.augmentation == "paper" and self.use_feature_cache:
            bad("augmentation", "'flip' with cached features (a cached feature map cannot follow a crop or a "
                "rotation): for 'paper' train the backbone (freeze_backbone=False) or set cache_features=False")
        if not isinstance(self.model, dict):
            bad("model", "a dict of ModelConfig fields")
        for key in ("variant", "backbone", "freeze_backbone", "n_segments"):
            if key in self.model:
                raise ValueError(f"TrainConfig.model: set {key!r} on TrainConfig itself, not in model")
        if self.device != "auto":
            check_device(self.device, "TrainConfig.device")
        model_config = self.model_config()  # validates variant, backbone and the model options
        if self.ignore_index is not None and (isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int)
                                              or not model_config.num_classes <= self.ignore_index <= 255):
            bad("ignore_index", f"None or an int in {model_config.num_classes}..255 (e.g. 255), not a class id")

    # -- derived settings ---------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        if self.freeze_backbone is not None:
            return bool(self.freeze_backbone)
        return self.backbone != "small"

    @property
    def use_feature_cache(self) -> bool:
        return self.frozen and (self.cache_features if self.cache_features is not None else True)

    @property
    def segments(self) -> int:
        if self.n_segments is not None:
            return self.n_segments
        return max(64, int(round(1000 * (self.image_size / 321) ** 2)))

    def model_config(self) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(self.model) - known
        if unknown:
            raise ValueError(f"TrainConfig.model: unknown ModelConfig fields {sorted(unknown)}")
        evolution = self.model.get("evolution")
        if isinstance(evolution, dict):
            accepted = set(inspect.signature(StructureEvolution.__init__).parameters) - {"self", "hidden_channels"}
            if set(evolution) - accepted:
                raise ValueError(f"TrainConfig.model: unknown evolution options {sorted(set(evolution) - accepted)}; "
                                 f"StructureEvolution accepts {sorted(accepted)}")
        return ModelConfig(variant=self.variant, backbone=self.backbone, freeze_backbone=self.frozen,
                           n_segments=self.segments, **self.model)

    def resolved_device(self) -> torch.device:
        return check_device(self.device, "TrainConfig.device")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir)

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.run_dir.resolve().parent / "cache"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_notebook(cls, variant: str, backbone: str, dataset: str, data_root: str, epochs: int, image_size: int,
                      num_images: int, val_images: int, batch_size: int, lr: float, num_layers: int,
                      hidden_channels: int, seed: int, out_dir: str, n_segments: int = 0, model_options: str = "{}",
                      train_options: str = "{}", cache_dir: str = "", resume: bool = False,
                      overwrite: bool = False) -> "TrainConfig":
        """The config of ``notebooks/05_train.ipynb``'s ``parameters`` cell (what a sweep cell sets): 0 and ""
        mean selab's default, ``model_options`` / ``train_options`` are JSON of further fields."""
        model = {name: value for name, value in (("num_layers", num_layers), ("hidden_channels", hidden_channels)) if value}
        return cls(variant=variant, backbone=backbone, dataset=dataset, data_root=data_root or None,
                   limit=num_images or None, val_limit=val_images or None, image_size=image_size, epochs=epochs,
                   batch_size=batch_size, lr=lr, n_segments=n_segments or None, seed=seed, out_dir=out_dir,
                   resume=resume, overwrite=overwrite, progress=False, cache_dir=cache_dir or None,
                   model={**model, **json.loads(model_options)}, **json.loads(train_options))


# ---------------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------------
def check_device(device: str, what: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` (``"auto"``: CUDA if available), or a ValueError naming ``what``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}: expected 'auto', 'cpu', 'cuda' or another torch device string, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}: {device!r} asked for, but CUDA is not available on this machine "
                         f"(use 'cpu' or 'auto')")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"{what}: {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


# ---------------------------------------------------------------------------------------------------
# optimisation
# ---------------------------------------------------------------------------------------------------
def build_optimizer(model: SELabModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the new layers (``lr``), then the trained backbone.

    The backbone learns at ``lr * backbone_lr_scale`` when it starts from pretrained weights (the paper:
    1e-3 for new layers, 1e-4 for pretrained ones); a backbone trained from scratch (``small``, or
    ``efficientnet_lite0`` with ``model={"pretrained": False}``) is a new layer and learns at ``lr``. A
    frozen backbone has no group.

    Examples
    --------
    >>> config = TrainConfig(backbone="efficientnet_lite0", freeze_backbone=False, lr=1e-3)  # doctest: +SKIP
    >>> [g["lr"] for g in build_optimizer(SELabModel(config.model_config()), config).param_groups]  # doctest: +SKIP
    [0.001, 0.0001]
    """
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
    pretrained = config.backbone != "small" and model.config.pretrained
    scale = config.backbone_lr_scale if pretrained else 1.0
    groups = [{"params": new, "lr": config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr * scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def load_schedule(scheduler, state: dict) -> None:
    """Continue a saved schedule, over this run's length (a resumed run may be given more epochs).

    The same length continues bit for bit. Another length (or a schedule saved by an earlier selab, a
    ``LambdaLR``) sets the learning rates from the schedule's closed form at the saved step: the
    chained per-step updates alone would continue from the current rate, which the old length may
    already have brought to 0.
    """
    length = {k: v for k, v in scheduler.state_dict().items() if k in ("total_iters", "T_max")}
    changed = any(state.get(k) != v for k, v in length.items())
    scheduler.load_state_dict({**state, **length})
    if changed:
        rates = scheduler._get_closed_form_lr()
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule over ``epochs * steps_per_epoch`` steps (see :data:`LR_SCHEDULES`)."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "poly":  # DeepLab's lr * (1 - t/T)^0.9
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


# ---------------------------------------------------------------------------------------------------
# checkpoints and run folders
# ---------------------------------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer, scheduler, config: TrainConfig, epoch: int, step: int,
                    history: list, accumulators: dict | None = None, best: float | None = None,
                    rng: dict | None = None) -> None:
    """Write a checkpoint atomically: tensors and plain data only (``rng``: default the current states)."""
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "train_config": config.to_dict(),
            "model_config": model.config.to_dict(),
            "epoch": epoch,  # epochs completed
            "step": step,  # batches done in epoch `epoch` (0 at an epoch boundary)
            "history": history,
            "accumulators": accumulators or {},
            "best": best,
            "rng": rng if rng is not None else rng_state(),
        },
        path,
    )


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely: unreadable, not selab's, or holding code."""


# Checkpoints of earlier selab versions held the numpy RNG state as an ndarray: these numpy names only
# rebuild arrays and scalars (their contents still go through the restricted unpickler), so such
# files load without running code. selab decision: allow exactly these and nothing else.
_LEGACY_NUMPY_GLOBALS = ("numpy.dtype", "numpy.ndarray", "numpy._core.multiarray._reconstruct",
                         "numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
                         "numpy.core.multiarray.scalar")
CHECKPOINT_KEYS = ("model", "model_config", "train_config", "epoch", "step", "history")


def _legacy_numpy_globals() -> list:
    multiarray = np._core.multiarray
    dtype_classes = [v for v in vars(np.dtypes).values() if isinstance(v, type) and issubclass(v, np.dtype)]
    return [np.dtype, np.ndarray, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


def load_checkpoint(path) -> dict:
    """Read a selab checkpoint without running any code from it (``torch.load(weights_only=True)``).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        (a ``ValueError``) naming ``path``: the file is truncated or corrupt, is not a selab checkpoint,
        or asks to import something other than tensors and plain data (a crafted file: nothing of
        it is executed).

    Examples
    --------
    >>> checkpoint = load_checkpoint("runs/quick/checkpoints/last.pt")  # doctest: +SKIP
    >>> checkpoint["epoch"]  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = None
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint: the error text below names the global
            pass
        if unsafe and set(unsafe) <= set(_LEGACY_NUMPY_GLOBALS):
            try:
                with torch.serialization.safe_globals(_legacy_numpy_globals()):
                    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as legacy_error:
                raise CheckpointError(f"checkpoint {path} (earlier selab format) is unreadable: "
                                      f"{_first_line(legacy_error)}") from None
        else:
            detail = f"it imports {sorted(unsafe)}" if unsafe else _unsafe_detail(error)
            raise CheckpointError(
                f"checkpoint {path} was not loaded: {detail}, but a selab checkpoint holds only tensors and "
                f"plain data; nothing in it was executed. Do not use a file you did not write yourself"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt?): {_first_line(error)}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a selab checkpoint (it lacks {missing})")
    return checkpoint


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _unsafe_detail(error: BaseException) -> str:
    """What torch's long weights_only message says the file asked for."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks for {found.group(1)}"
    found = re.search(r"Unsupported operand \d+", text)
    if found:
        return f"it uses pickle instructions a checkpoint does not need ({found.group(0)})"
    return f"it holds objects other than tensors ({_first_line(error)})"


def load_model(checkpoint_or_run_dir, device="cpu", which: str = "best",
               model_options: dict | None = None) -> tuple[SELabModel, dict]:
    """A model from a checkpoint file or a run folder (``best.pt`` if present, else ``last.pt``).

    ``model_options`` overrides ModelConfig fields that hold no weights, to test a trained model another
    way (e.g. ``{"eval_samples": 4, "evolution": {"eval_mode": "mh"}}``: the ``evolution`` dict is
    merged into the saved one); options that change the weights' shapes fail to load.

    In a run folder an unreadable checkpoint is reported on stderr and the other one is used;
    ``checkpoint["path"]`` says which file was loaded. Loading never runs code from the file
    (:func:`load_checkpoint`).

    Examples
    --------
    >>> model, checkpoint = load_model("runs/quick")  # doctest: +SKIP
    """
    if which not in ("best", "last"):
        raise ValueError(f"load_model: which must be 'best' or 'last', got {which!r}")
    path = Path(checkpoint_or_run_dir)
    if path.is_dir():
        folder = path / "checkpoints"
        order = [f"{which}.pt", "last.pt" if which == "best" else "best.pt"]
        found = [folder / name for name in order if (folder / name).is_file()]
        if not found:
            raise ValueError(f"load_model: no checkpoint in {folder} (expected best.pt or last.pt)")
        errors = []
        for candidate in found:
            try:
                checkpoint = load_checkpoint(candidate)
            except CheckpointError as error:
                errors.append(str(error))
                continue
            if errors:
                print(f"selab: {errors[0]}\nselab: using {candidate} instead", file=sys.stderr)
            path = candidate
            break
        else:
            raise CheckpointError("; ".join(errors))
    elif not path.is_file():
        raise ValueError(f"load_model: {path} is neither a run folder nor a checkpoint file")
    else:
        checkpoint = load_checkpoint(path)
    model_config = dict(checkpoint["model_config"])
    # The weights come from the checkpoint: skip loading ImageNet weights first.
    model_config["pretrained"] = False
    for key, value in (model_options or {}).items():
        if key == "evolution" and isinstance(value, dict):
            value = {**model_config.get("evolution", {}), **value}
        model_config[key] = value
    try:
        model = build_model(model_config)
        model.load_state_dict(checkpoint["model"])
    except (TypeError, RuntimeError, KeyError) as error:
        if model_options:
            raise ValueError(f"load_model: the weights of {path} do not fit the model with options "
                             f"{sorted(model_options)} (only options without weights can change): "
                             f"{_first_line(error)}") from None
        raise CheckpointError(f"checkpoint {path} does not fit its model config: {_first_line(error)}") from None
    checkpoint["path"] = str(path)
    return model.to(device).eval(), checkpoint


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
    """Fields of a saved run's config that ``config`` changes (so that resuming would be wrong)."""
    mine = config.to_dict()
    changed = []
    for key, value in saved.items():
        if key in RESUME_FREE_FIELDS or key not in mine or value == mine[key]:
            continue
        if key == "data_root" and value and mine[key] and Path(value).is_dir() and Path(mine[key]).is_dir() \
                and os.path.samefile(value, mine[key]):
            continue
        changed.append(key)
    return sorted(changed)


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or the weights became non-finite (NaN or inf)."""


def _divergence(config: TrainConfig, epoch: int, step: int | None, what: str, last_path: Path) -> TrainingDiverged:
    where = f"epoch {epoch + 1}, step {step + 1}" if step is not None else f"the end of epoch {epoch + 1}"
    kept = (f"the last good checkpoint {last_path} is kept" if last_path.is_file()
            else "no checkpoint had been written yet")
    return TrainingDiverged(
        f"training diverged at {where}: {what}. The likely cause is a learning rate "
        f"too high for this model (lr={config.lr:g}, optimizer={config.optimizer}): try a smaller --lr; {kept}, "
        f"and best.pt holds no non-finite weights"
    )


def _non_finite(tensors) -> bool:
    """Whether any of ``tensors`` holds a NaN or inf (one fused norm per dtype, one host sync)."""
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return False
    norms = torch._foreach_norm(tensors, ord=float("inf"))
    return not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


class _NonFiniteOutput(Exception):
    pass


def _non_finite_culprit(model: SELabModel, replay) -> str | None:
    """After a failed forward: the weights, or the first module whose output, holding NaN or inf.

    ``replay()`` repeats the failed computation (without gradients) while a hook on every module
    stops at the first non-finite output. Only run after a failure: the hooks cost a sync each.
    """
    named = list(model.named_parameters())
    if _non_finite([p for _, p in named]):
        return f"the weights ({_first_non_finite(named)})"
    found = []

    def hook(name):
        def check(module, inputs, output):
            outputs = output if isinstance(output, (tuple, list)) else [output]
            if _non_finite([t for t in outputs if isinstance(t, torch.Tensor)]):
                found.append(name)
                raise _NonFiniteOutput(name)
        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            replay()
    except Exception:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return f"the output of layer {found[0]}" if found else None


def _replay_step(model, data, generator, mh_state, confidence_only, precision):
    """Repeats a failed step's forward pass with the same draws (a copy of ``generator`` at ``mh_state``)."""
    def replay():
        again = torch.Generator(device=generator.device)
        again.set_state(mh_state)
        with autocast(precision, generator.device):
            model(data, generator=again, confidence_only=confidence_only, energy_labels=data.get("mask"))
    return replay


def _restore_generator(generator: torch.Generator, state: torch.Tensor, path: Path) -> None:
    """A mid-epoch checkpoint's model generator state, or a clear error when it is another device kind's."""
    try:
        generator.set_state(state)
    except RuntimeError:
        raise ValueError(f"run: {path} was interrupted mid-epoch on another kind of device than "
                         f"{generator.device.type!r} (its random-number state does not fit); resume it there, "
                         f"or from an epoch boundary") from None


def _first_non_finite(named) -> str:
    for name, tensor in named:
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return "?"


def write_metrics(run_dir: Path, history: list, final: dict | None) -> None:
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


def plot_curves(run_dir: Path, history: list) -> Path | None:
    """Write the loss and validation-mIoU curves of ``history`` to ``run_dir/figures/curves.png``.

    Draws on a :class:`matplotlib.figure.Figure` of its own, never through pyplot: a library must not
    change the caller's backend or current figure (a notebook that calls :func:`run` keeps its inline
    figures).
    """
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker="o")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    if any(r.get("val_mean_iou") is not None for r in history):
        axes[1].plot(epochs, [r.get("val_mean_iou") for r in history], marker="o", color="C1")
    axes[1].set(xlabel="epoch", ylabel="mIoU (%)", title="validation mean IoU")
    return _save_figure(fig, run_dir, "curves.png")


def _save_figure(fig, run_dir: Path, name: str) -> Path:
    """Lay out ``fig`` (a pyplot-free ``Figure``), write it to ``run_dir/figures/name``.

    The figure belongs to no pyplot manager, so nothing needs closing: it is freed with its last
    reference.
    """
    fig.tight_layout()
    path = run_dir / "figures" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_predictions(run_dir: Path, examples: list) -> Path | None:
    """``examples``: (image [3,H,W], mask [H,W], prediction [H,W]) triples, one row each, with a
    legend of the classes present; written to ``run_dir/figures/predictions.png`` (no pyplot)."""
    if not examples:
        return None
    fig = Figure(figsize=(8.2, 2.4 * len(examples)))
    axes = fig.subplots(len(examples), 3, squeeze=False)
    for row, (image, mask, prediction) in enumerate(examples):
        for col, (title, picture) in enumerate((
            ("image", image.permute(1, 2, 0).clamp(0, 1).numpy()),
            ("ground truth", colorize(mask.numpy())),
            ("prediction", colorize(prediction.numpy())),
        )):
            axes[row, col].imshow(picture)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    # which colour is which part: every class that occurs in a mask or a prediction
    present = np.unique(np.concatenate([np.unique(m.numpy()) for _, *pair in examples for m in pair]))
    present = [int(c) for c in present if 0 <= c < len(CLASS_NAMES)]
    handles = [Patch(color=CLASS_COLORS[c] / 255.0, label=CLASS_NAMES[c]) for c in present]
    axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
                       frameon=False)
    return _save_figure(fig, run_dir, "predictions.png")


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------
def autocast(precision: str, device) -> torch.autocast:
    """The autocast context of ``precision`` (see :data:`PRECISIONS`) on ``device``'s kind; off for fp32."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def mirrored(data: dict) -> dict:
    """The model's inputs for the mirror images of a batch: image and superpixels mirrored left to right.

    Cached features are left out, so the backbone computes the mirror image's own features: mirrored
    cached features (what training's flips use) would be nearly the same features again, and the flip
    would add nothing (measured: +0.00 mIoU on PASCAL-Person-Part, docs/results.md).
    """
    return {key: data[key].flip(-1) for key in ("image", "superpixels") if data.get(key) is not None}


TTA_MODES = ("flip", "scale", "flip,scale")
TTA_SCALES = (0.75, 1.0, 1.25)


def tta_sizes(size: int, scales, multiple: int) -> list[int]:
    """The image sizes of the test-time scales: ``size * scale`` rounded to the nearest multiple of ``multiple``.

    selab decision: ``multiple`` is the backbone's coarsest stride (32 for EfficientNet-Lite), so that every
    stride-2 convolution sees an even input: EfficientNet-Lite0's static padding (computed for 224 px) is
    then exactly the padding of the rescaled input (:func:`selab.model.backbones.load_efficientnet_lite`), and
    the feature grids of every scale line up with the image. Scale 1 keeps ``size`` as it is (the
    single-scale pass). Ties round up. A scale that rounds to a size already listed is dropped (at small
    sizes scales collapse: 0.75 x 64 px rounds to 64), so no pass is counted twice in the average.

    Examples
    --------
    >>> tta_sizes(320, (0.75, 1.0, 1.25), 32)
    [256, 320, 416]
    >>> tta_sizes(64, (0.75, 1.0, 1.25), 32)
    [64, 96]
    """
    rounded = [size if scale == 1 else max(multiple, int(math.floor(size * scale / multiple + 0.5)) * multiple)
               for scale in scales]
    return list(dict.fromkeys(rounded))


def rescaled(data: dict, size: int) -> dict:
    """The model's inputs for a batch's images at ``size`` x ``size`` (multi-scale test-time augmentation).

    Each image is resized from its full-resolution original (``full_images``, with the antialiased
    resize of :mod:`selab.data.prepare`), so a larger scale sees real detail rather than an upsampled
    S x S image. selab decision: the superpixels are the batch's own S x S map resized with nearest
    neighbour and :func:`~selab.data.augment.renumber`-ed (as the paper's scaling augmentation treats them in
    training), not SLIC run again at the new size: every scale then parses the same partition (the graph
    only changes where a tiny superpixel vanishes or splits), the scales differ in their CNN features
    alone, and evaluation runs no SLIC. Cached features are left out (the backbone computes the
    rescaled image's own).

    Examples
    --------
    >>> data = {"image": torch.rand(1, 3, 8, 8), "full_images": [torch.rand(3, 20, 30)],
    ...         "superpixels": torch.arange(4).repeat_interleave(16).view(1, 8, 8)}
    >>> small = rescaled(data, 4)
    >>> tuple(small["image"].shape), small["superpixels"].unique().tolist()
    ((1, 3, 4, 4), [0, 1, 2, 3])
    """
    device = data["image"].device
    out = {"image": torch.stack([resize_image(image, size) for image in data["full_images"]]).to(device)}
    superpixels = data.get("superpixels")
    if superpixels is not None:
        nearest = F.interpolate(superpixels[:, None].double(), size=(size, size), mode="nearest-exact")[:, 0]
        out["superpixels"] = torch.stack([renumber(s.long()) for s in nearest.cpu()]).to(superpixels.device)
    return out


def _check_tta_scales(scales) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"tta_scales: expected a list of positive numbers, got {scales!r}") from None
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales) or 1.0 not in scales:
        raise ValueError(f"tta_scales: expected positive numbers including 1 (the single-scale pass), got {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"tta_scales: each scale once, got {scales!r}")
    return scales


@torch.no_grad()
def evaluate_model(model: SELabModel, loader, device, progress: bool = False, num_examples: int = 0,
                   description: str = "evaluate", per_image: list | None = None,
                   ignore_index: int | None = None, precision: str = "fp32",
                   flip: bool = False, scales=None) -> tuple[dict, list]:
    """Scores over a loader of evaluation batches (each holds the full-resolution ``full_masks``).

    Logits [B,K,S,S] are upsampled (bilinear) to each mask's own size before the argmax, and the
    confusion matrix accumulates over the whole split (pixels labelled ``ignore_index`` left out).
    ``per_image``, a list, receives one ``(id, confusion [K,K])`` pair per image (for paired
    comparisons of runs, :mod:`selab.experiments.compare`). ``precision="bf16"``: the forward pass under autocast.
    ``flip=True``: test-time augmentation, the mean of the logits of each image and of its mirror image
    (mirrored back). ``scales`` (e.g. ``(0.75, 1, 1.25)``, must include 1): multi-scale test-time
    augmentation, the whole model run again on each image at every other scale (:func:`tta_sizes`,
    :func:`rescaled`), every scale's logits upsampled to the mask's resolution and averaged there with the
    single-scale ones (with ``flip``, every scale also with its mirror image). The hierarchy statistics
    are those of the single-scale, unmirrored pass.
    """
    if scales is not None:
        scales = _check_tta_scales(scales)
    model.eval()
    distributed.broadcast_buffers(model)  # distributed: every process evaluates rank 0's model
    matrix = ConfusionMatrix(model.config.num_classes, ignore_index=ignore_index)
    examples, hierarchy = [], []

    def logits_of(inputs, output=None):
        logits = (model(inputs) if output is None else output).logits.float()
        if flip:
            logits = (logits + model(mirrored(inputs)).logits.float().flip(-1)) / 2
        return logits

    for data in tqdm(loader, desc=description, disable=not progress, leave=False):
        data = to_device(data, device)
        scaled = []  # the batch at the other scales, resized outside autocast (in float32)
        if scales is not None:
            single = data["image"].shape[-1]
            scaled = [rescaled(data, size) for size in tta_sizes(single, scales, max(model.backbone.strides))
                      if size != single]
        with autocast(precision, device):
            output = model(data)
            logits = logits_of(data, output)
            passes = [logits] + [logits_of(inputs) for inputs in scaled]
        if output.levels and "mask" in data:
            hierarchy.append(hierarchy_stats(output.levels, data["mask"], model.config.num_classes))
        for b, full_mask in enumerate(data["full_masks"]):
            size = tuple(full_mask.shape)
            upsampled = sum(F.interpolate(p[b : b + 1], size=size, mode="bilinear", align_corners=False)
                            for p in passes) / len(passes)
            prediction = upsampled[0].argmax(0)
            image_matrix = confusion_matrix(prediction, full_mask.to(prediction.device), model.config.num_classes,
                                            ignore_index)
            matrix.matrix += image_matrix
            if per_image is not None:
                per_image.append((data["ids"][b], image_matrix))
            if len(examples) < num_examples:
                examples.append((data["full_images"][b].cpu(), full_mask.cpu(), prediction.cpu()))
    # distributed: each process scored its shard of the split; sum and gather them (one process: as is)
    matrix.matrix = distributed.all_reduce_sum(matrix.matrix)
    hierarchy, examples = distributed.gather_shards(hierarchy), distributed.gather_shards(examples)[:num_examples]
    if per_image is not None:
        per_image[:] = distributed.gather_shards(per_image)
    scores = matrix.compute()
    if hierarchy:
        # The evolved hierarchy at test time, per level: nodes per image, clique label purity (ASA) and the
        # other partition scores (selab.training.partition_scores.hierarchy_stats, on the masks at the training size).
        levels = combine_hierarchy_stats(hierarchy)
        scores["hierarchy"] = {key: [s[key] for s in levels] for key in (
            "mean_nodes_per_image", "purity", "achievable_miou", "boundary_recall", "undersegmentation_error")}
    return scores, examples


def evaluate(checkpoint_or_run_dir, dataset: str | None = None, data_root: str | None = None,
             split: str = "val", image_size: int | None = None, limit: int | None = None,
             out: str | None = None, device: str = "auto", batch_size: int = 8, progress: bool = True,
             cache_dir: str | None = None, per_image_out: str | None = None,
             model_options: dict | None = None, tta: str | None = None, tta_scales=TTA_SCALES) -> dict:
    """Evaluate a trained model on a split; optionally write the metrics to ``out`` (JSON).

    ``model_options`` tests the model another way (:func:`load_model`); ``per_image_out`` (an ``.npz``
    path) also saves every image's confusion matrix
    (:func:`selab.training.metrics.save_per_image`), for paired comparisons with :mod:`selab.experiments.compare`.
    ``tta``: test-time augmentation (:func:`evaluate_model`), one of :data:`TTA_MODES`: ``"flip"``, each
    image and its mirror image; ``"scale"``, each image at every scale of ``tta_scales`` (default
    0.75, 1, 1.25; must include 1); ``"flip,scale"``, both. Recorded as ``test_time_augmentation`` in the
    result (with ``tta_scales`` and the image sizes run, ``tta_sizes``, both ``None`` without
    ``"scale"``), so that it is reported apart from single-pass scores.

    Returns ``{"mean_iou", "per_class_iou" (by class name), "pixel_accuracy"}`` in percent, plus
    ``checkpoint``, ``checkpoint_file`` (the file used: in a run folder ``best.pt``, or ``last.pt`` when
    ``best.pt`` is missing or unreadable), ``dataset`` (default: the run's own), ``split``,
    ``num_images``, ``image_size``.

    Examples
    --------
    >>> evaluate("runs/quick", dataset="synthetic", split="val")["mean_iou"]  # doctest: +SKIP
    """
    if tta not in (None, *TTA_MODES):
        raise ValueError(f"evaluate: tta must be None or one of {TTA_MODES}, got {tta!r}")
    scales = _check_tta_scales(tta_scales) if tta is not None and "scale" in tta else None
    torch_device = check_device(device, "evaluate: device")
    if out:
        writable_folder(Path(out).parent, "evaluate: out")
    model, checkpoint = load_model(checkpoint_or_run_dir, torch_device, model_options=model_options)
    train_config = dict(checkpoint["train_config"])
    dataset = dataset or train_config["dataset"]
    if dataset != "synthetic" and not (data_root or (dataset == train_config["dataset"] and train_config["data_root"])):
        raise ValueError(f"evaluate: dataset {dataset!r} needs its folder: pass data_root (--data-root)")
    overrides = {"dataset": dataset, "val_split": split, "val_limit": limit, "resume": False,
                 "device": str(torch_device), "batch_size": batch_size, "progress": progress}
    if dataset != train_config["dataset"] or data_root is not None:
        overrides["data_root"] = data_root
    if dataset == "synthetic" and train_config["dataset"] != "synthetic":
        overrides["data_root"] = None
    if image_size is not None:
        overrides["image_size"] = image_size
    if cache_dir is not None:
        overrides["cache_dir"] = cache_dir
    train_config.update(overrides)
    config = TrainConfig.from_dict(train_config)
    loader = evaluation_loader(config, model)
    per_image = [] if per_image_out else None
    scores, _ = evaluate_model(model, loader, torch_device, progress=progress, per_image=per_image,
                               ignore_index=config.ignore_index, precision=config.precision,
                               flip=tta is not None and "flip" in tta, scales=scales)
    if per_image_out:
        save_per_image(Path(per_image_out), per_image)
    result = dict(scores)
    result.update({"checkpoint": str(checkpoint_or_run_dir), "checkpoint_file": checkpoint["path"],
                   "dataset": dataset, "split": split,
                   "num_images": len(loader.dataset), "image_size": config.image_size,
                   "test_time_augmentation": tta, "tta_scales": None if scales is None else list(scales),
                   "tta_sizes": None if scales is None else tta_sizes(config.image_size, scales,
                                                                      max(model.backbone.strides))})
    if out:
        atomic_write_text(json.dumps(result, indent=2), Path(out))
    return result


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
class _Interrupt:
    """Turns SIGINT into a flag checked between batches, so a checkpoint can be written first."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread (e.g. some notebook runners): plain KeyboardInterrupt
            self.previous = None
        return self

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def run(config: TrainConfig | dict) -> dict:
    """Train (or resume) a run into ``config.out_dir`` and evaluate it on the validation split.

    Every image and mask of both splits is checked before the first step (one error naming every bad
    file). An earlier run in ``out_dir`` is never destroyed (see :class:`RunFolder`).

    Returns
    -------
    dict
        ``final``: the last epoch's validation metrics (``mean_iou``, ``per_class_iou``,
        ``pixel_accuracy``, in percent; ``None`` without validation), ``epochs``: per-epoch records,
        ``paths``: run folder, config, checkpoints, metrics and figures.

    Raises
    ------
    KeyboardInterrupt
        After writing ``checkpoints/last.pt`` (resume with ``resume=True``).
    TrainingDiverged
        A non-finite loss, gradient or weight; nothing non-finite is saved, the last good checkpoint is kept.
    ValueError
        Bad configuration, data or run folder (naming the culprit). Any other error in the middle of an
        epoch first saves a mid-epoch ``last.pt`` (when the state is consistent) and says where.

    Examples
    --------
    >>> run(TrainConfig(epochs=1, limit=8, image_size=48, out_dir="runs/tiny"))["final"]["mean_iou"]  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run: config must be a TrainConfig or dict, got {type(config).__name__}")
    device = distributed.setup(config)  # torchrun: join the process group, take this process's device
    if not distributed.is_main():
        config = dataclasses.replace(config, progress=False)  # one set of progress bars, rank 0's
    if config.dataset != "synthetic" or config.model_config().uses_graph or config.use_feature_cache:
        writable_folder(config.cache_root, "TrainConfig.cache_dir")
    folder = distributed.run_folder(RunFolder, config)  # rank 0 alone inspects and writes out_dir
    try:
        return _train(config, folder, device)
    except BaseException:
        folder.abandon()
        raise
    finally:
        distributed.cleanup()


def _train(config: TrainConfig, folder: RunFolder, device) -> dict:
    run_dir = folder.path
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    check_data(config)
    seed_everything(config.seed)
    model_config = config.model_config()
    model = SELabModel(model_config).to(device)
    distributed.seed_rank(config.seed)  # distributed: own dropout draws per process (rank 0: the one-process ones)

    with distributed.main_first():  # distributed: one process per machine fills the caches, then the others
        train_loader_factory = TrainingData(config, model)
        val_loader = evaluation_loader(config, model) if config.val_split else None
    steps_per_epoch = train_loader_factory.steps_per_epoch
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    history, start_epoch, start_step, accumulators, best = [], 0, 0, {}, None
    if folder.resuming:
        checkpoint = distributed.from_main(load_checkpoint, last_path)  # distributed: rank 0 reads, sends it
        changed = changed_fields(dict(checkpoint["train_config"]), config)
        if changed:
            raise ValueError(f"run: resume=True but the config differs from the saved run in {changed} "
                             f"({last_path})")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        load_schedule(scheduler, checkpoint["scheduler"])
        history, best = checkpoint["history"], checkpoint["best"]
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step"]
        accumulators = checkpoint.get("accumulators") or {}
        set_rng_state(checkpoint["rng"])
        # distributed: each process takes its own RNG and sampler state back (one process: as is)
        accumulators = distributed.restore_rank_state(accumulators, start_step > 0, config.seed, start_epoch)
    if distributed.is_main():
        atomic_write_text(json.dumps({"train": config.to_dict(), "model": model_config.to_dict()}, indent=2),
                          run_dir / "config.json")
    trained = [p for p in model.parameters() if p.requires_grad]
    network = distributed.wrap_model(model, device)  # distributed: DDP runs the training forward; else `model`

    def saved(epoch, step, state, rng=None):
        """Write last.pt (and, with overwrite, put the new run in place); returns the run folder."""
        nonlocal run_dir, last_path, best_path
        state = distributed.with_rank_states(state, rng)  # distributed: every process's RNG and sampler state
        if distributed.is_main():
            save_checkpoint(last_path, model, optimizer, scheduler, config, epoch, step, history, state, best, rng)
        run_dir = folder.commit()
        last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
        return run_dir

    with _Interrupt() as interrupt:
        for epoch in range(start_epoch, config.epochs):
            started = time.time() - accumulators.get("seconds", 0.0)
            confidence_only = epoch < config.two_step_epochs and model_config.uses_graph
            model.train()
            order = train_loader_factory.order(epoch)
            mh_generator = distributed.per_rank(epoch_generator(config.seed, epoch, MODEL, device))  # independent chains per rank, drawn on the model's device
            if start_step:
                _restore_generator(mh_generator, accumulators["mh_generator"], last_path)
            loss_sum, count = accumulators.get("loss_sum", 0.0), accumulators.get("count", 0)
            batches = train_loader_factory.loader(epoch, order, start_step)
            bar = tqdm(batches, total=steps_per_epoch, initial=start_step, disable=not config.progress,
                       desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
            step, consistent, ids = start_step, True, None
            mh_state, rng_before = mh_generator.get_state(), rng_state()
            try:
                for data in bar:
                    ids = data["ids"]
                    # A failing step must count neither its random draws nor its batch-norm statistics.
                    mh_state, rng_before = mh_generator.get_state(), rng_state()
                    buffers = [b.clone() for b in model.buffers()]
                    data = to_device(data, device)
                    try:
                        with autocast(config.precision, device):
                            output = network(data, generator=mh_generator, confidence_only=confidence_only,
                                             energy_labels=data.get("mask"))
                            parts = compute_loss(output, data, model_config, confidence_only, config.ignore_index)
                    except Exception as error:
                        culprit = _non_finite_culprit(model, _replay_step(model, data, mh_generator, mh_state,
                                                                          confidence_only, config.precision))
                        torch._foreach_copy_(list(model.buffers()), buffers)
                        if culprit:
                            raise _divergence(config, epoch, step, f"non-finite values in {culprit} ({error})",
                                              last_path) from error
                        raise
                    loss = float(parts["loss"].detach())
                    if not math.isfinite(loss):
                        raise _divergence(config, epoch, step, f"the loss is {loss}", last_path)
                    optimizer.zero_grad(set_to_none=True)
                    parts["loss"].backward()
                    if _non_finite([p.grad for p in trained]):
                        named = ((n, p.grad) for n, p in model.named_parameters() if p.requires_grad)
                        raise _divergence(config, epoch, step, f"the gradient of {_first_non_finite(named)} is "
                                          f"not finite", last_path)
                    consistent = False  # until the step is fully counted
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    loss_sum += float(parts["loss"].detach()) * len(data["ids"])
                    count += len(data["ids"])
                    consistent = True
                    bar.set_postfix(loss=f"{loss_sum / max(count, 1):.3f}")
                    # distributed: a Ctrl-C seen by any process stops all of them after this same step
                    if distributed.any_rank(interrupt.requested) and step < steps_per_epoch:
                        state = {"loss_sum": loss_sum, "count": count, "seconds": time.time() - started,
                                 "mh_generator": mh_generator.get_state()}
                        saved(epoch, step, state)
                        if distributed.is_main():
                            write_metrics(run_dir, history, None)
                            print(f"\ninterrupted: checkpoint saved to {last_path} (epoch {epoch + 1}, step {step}); "
                                  f"continue with resume=True / --resume")
                        raise KeyboardInterrupt
            except (KeyboardInterrupt, TrainingDiverged):
                raise
            except Exception as error:
                where = f"epoch {epoch + 1}, step {step + 1} of {steps_per_epoch}"
                if ids is not None:
                    where += f" (last batch loaded: ids {ids})"
                # distributed: no mid-epoch save, the other processes are not at a collective to gather their state
                if consistent and step > start_step and not distributed.is_distributed():
                    state = {"loss_sum": loss_sum, "count": count, "seconds": time.time() - started,
                             "mh_generator": mh_state}
                    saved(epoch, step, state, rng_before)
                    write_metrics(run_dir, history, None)
                    kept = (f"checkpoint saved to {last_path} after {step} steps of epoch {epoch + 1}; "
                            f"fix the cause and continue with resume=True / --resume")
                elif last_path.is_file():
                    kept = f"the last checkpoint {last_path} is kept; continue with resume=True / --resume"
                else:
                    kept = "no checkpoint had been written yet"
                print(f"\nrun: {type(error).__name__} at {where}: {error}\nrun: {kept}", file=sys.stderr)
                raise
            bar.close()
            loss_sum, count = distributed.sum_numbers(loss_sum, count)  # distributed: the global batch's mean loss
            start_step, accumulators = 0, {}
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                      "lr": optimizer.param_groups[0]["lr"], "stage": "confidence" if confidence_only else "all"}
            if _non_finite(list(model.state_dict().values())):
                raise _divergence(config, epoch, None, "non-finite weights or statistics in "
                                  f"{_first_non_finite(model.state_dict().items())}", last_path)
            examples = []
            if val_loader is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                # The last epoch's per-image confusions let runs be compared image by image (selab.experiments.compare).
                per_image = [] if epoch + 1 == config.epochs else None
                try:
                    scores, examples = evaluate_model(model, val_loader, device, progress=config.progress,
                                                      num_examples=config.num_figures, description="validate",
                                                      per_image=per_image, ignore_index=config.ignore_index,
                                                      precision=config.precision)
                except Exception as error:
                    culprit = _non_finite_culprit(model, lambda: evaluate_model(model, val_loader, device,
                                                                                precision=config.precision))
                    if culprit:
                        raise _divergence(config, epoch, None, f"validation met non-finite values "
                                          f"in {culprit} ({error})", last_path) from error
                    raise
                if per_image is not None and distributed.is_main():
                    save_per_image(run_dir / PER_IMAGE_FILE, per_image)
                record.update({f"val_{key}": scores[key] for key in VALIDATION_KEYS if key in scores})
            record["seconds"] = time.time() - started
            history.append(record)
            score = record.get("val_mean_iou")
            improved = score is not None and math.isfinite(score) and (best is None or score > best)
            if improved:
                best = score
            saved(epoch + 1, 0, None)
            if distributed.is_main():  # distributed: rank 0 alone writes the run folder
                if improved:
                    save_checkpoint(best_path, model, None, None, config, epoch + 1, 0, history, None, best)
                write_metrics(run_dir, history, None)
                plot_curves(run_dir, history)
                plot_predictions(run_dir, examples)
            if distributed.any_rank(interrupt.requested) and epoch + 1 < config.epochs:
                if distributed.is_main():
                    print(f"\ninterrupted: checkpoint saved to {last_path} (end of epoch {epoch + 1}); "
                          f"continue with resume=True / --resume")
                raise KeyboardInterrupt
            # One line per epoch, also without progress bars: papermill's --log-output shows it while a
            # notebook trains (make run), and a sweep cell's log keeps it.
            shown = f", val mIoU {score:.2f}" if score is not None else ""
            line = (f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f}{shown} "
                    f"({record['seconds']:.0f} s)")
            if distributed.is_main():
                tqdm.write(line) if config.progress else print(line, flush=True)

    last = history[-1] if history and "val_mean_iou" in history[-1] else None
    final_keys = ("mean_iou", "per_class_iou", "pixel_accuracy", "hierarchy")  # evaluate()'s order
    final = None if last is None else {key: last[f"val_{key}"] for key in final_keys if f"val_{key}" in last}
    if distributed.is_main():
        write_metrics(run_dir, history, final)
    paths = {"run_dir": str(run_dir), "config": str(run_dir / "config.json"), "last": str(last_path),
             "best": str(best_path) if best_path.is_file() else None,
             "metrics_json": str(run_dir / "metrics.json"), "metrics_csv": str(run_dir / "metrics.csv"),
             "figures": sorted(str(p) for p in (run_dir / "figures").glob("*.png"))}
    return {"final": final, "epochs": history, "paths": paths}

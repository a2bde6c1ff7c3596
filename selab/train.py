r"""Training and evaluation: one :func:`run` for the notebook (papermill) and the ``selab`` command.

Trains the three variants of :mod:`selab.model` (``cnn``, ``graph_lstm`` of Liang et al., ECCV 2016,
``se_lstm`` of Liang et al., CVPR 2017) on PASCAL-Person-Part, an image/mask folder or the built-in
synthetic data, and evaluates them with the benchmark's metric (IoU from a confusion matrix
accumulated over the split, at each mask's full resolution). The paper's recipe is SGD (momentum 0.9,
weight decay 5e-4, lr 1e-3 for new layers and 1e-4 for pretrained ones, batch 2) and a two-step
schedule (first the confidence layer, then all): ``TrainConfig(optimizer="sgd", lr=1e-3,
backbone_lr_scale=0.1, weight_decay=5e-4, batch_size=2, two_step_epochs=E1)``. selab's defaults
(AdamW, poly schedule, batch 8) train faster on a CPU.

A run folder holds ``config.json``, ``checkpoints/last.pt`` (+ ``best.pt``), ``metrics.json``
(per-epoch list + final), ``metrics.csv`` and ``figures/*.png``. Checkpoints are written atomically
and carry the model, optimizer, scheduler, epoch, step and every RNG state, so ``resume=True``
continues an interrupted run (Ctrl-C saves one mid-epoch) to the same result as an uninterrupted one:
the shuffling, flips and Metropolis-Hastings draws of an epoch come from generators seeded by
``(seed, epoch)``, not from a global stream.

A frozen backbone's multi-scale features can be cached on disk (float16, one file per image id and
size; ``cache_features``). selab decision: with cached features the only augmentation is a horizontal
flip, applied to the image, the mask, the superpixels and every feature map alike.

Example
-------
>>> result = run(TrainConfig(epochs=1, limit=4, val_limit=2, image_size=32,
...                          out_dir="/tmp/selab-doctest"))  # doctest: +SKIP
>>> sorted(result)  # doctest: +SKIP
['epochs', 'final', 'paths']
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from selab.classes import CLASS_NAMES, NUM_CLASSES
from selab.data import SuperpixelCache
from selab.evolve import combine_hierarchy_stats, hierarchy_stats
from selab.metrics import PER_IMAGE_FILE, ConfusionMatrix, confusion_matrix, save_per_image
from selab.model import ModelConfig, SELabModel, build_model

DATASETS = ("synthetic", "pascal_person_part", "folder")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine", "constant")
SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_VAL_IMAGES = 256, 32


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run folder.

    Parameters
    ----------
    variant, backbone : see :class:`selab.model.ModelConfig`.
    dataset : {"synthetic", "pascal_person_part", "folder"}
    data_root : str, optional
        Dataset folder (not needed for ``synthetic``).
    split, val_split : str
        Training and validation splits (``train_id.txt`` / ``val_id.txt`` for PASCAL-Person-Part);
        ``val_split=None`` skips validation.
    limit, val_limit : int, optional
        Use the first N images of each split (``synthetic``: the number of images generated, default 256
        and 32).
    image_size : int
        Images (and masks, superpixels) are resized to S x S for training.
    epochs, batch_size, lr : training length, batch and base learning rate.
    optimizer : {"adamw", "sgd"}
    momentum, weight_decay : optimizer options.
    backbone_lr_scale : float
        Learning rate of the pretrained backbone relative to ``lr`` (paper: 0.1).
    schedule : {"poly", "cosine", "constant"}
        Per-iteration learning-rate schedule (poly: DeepLab's (1 - t/T)^0.9).
    two_step_epochs : int
        The paper's two-step training: for the first epochs only the CNN features and the confidence
        layer learn (on the confidence maps), then everything.
    freeze_backbone : bool, optional
        Default: frozen for ``efficientnet_lite0``, trained for ``small``.
    cache_features : bool, optional
        Cache the frozen backbone's features on disk (default: whenever the backbone is frozen).
    cache_dir : str, optional
        Feature and superpixel cache; default ``<out_dir>/../cache`` (shared by runs in one folder).
    n_segments : int, optional
        SLIC superpixels per image; default ``1000 * (S / 321)^2`` but at least 64 (the paper's 1000
        at 321 x 321, scaled with the image area; selab decision).
    augment : bool
        Random horizontal flips in training.
    model : dict
        Further :class:`~selab.model.ModelConfig` fields (``hidden_channels``, ``num_layers``, ...).
    seed : int
    out_dir : str
        Run folder.
    resume : bool
        Continue from ``out_dir/checkpoints/last.pt`` if present.
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
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
    model: dict = field(default_factory=dict)
    seed: int = 0
    out_dir: str = "runs/default"
    resume: bool = False
    device: str = "auto"
    num_workers: int = 0
    num_figures: int = 4
    val_every: int = 1
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, expected):
            raise ValueError(f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.dataset not in DATASETS:
            bad("dataset", f"one of {DATASETS}")
        if self.dataset != "synthetic" and not self.data_root:
            bad("data_root", f"a folder for dataset {self.dataset!r}")
        if self.data_root and not Path(self.data_root).is_dir():
            bad("data_root", "an existing folder")
        for name in ("limit", "val_limit", "n_segments"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                bad(name, "None or a positive int")
        for name in ("image_size", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive int")
        if not isinstance(self.val_every, int) or self.val_every < 1:
            bad("val_every", "a positive int")
        if self.image_size < 16:
            bad("image_size", "at least 16 pixels")
        for name in ("epochs", "two_step_epochs", "num_workers", "num_figures", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an int >= 0")
        for name in ("lr", "backbone_lr_scale", "weight_decay", "momentum"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                bad(name, "a number >= 0")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"one of {SCHEDULES}")
        if not isinstance(self.model, dict):
            bad("model", "a dict of ModelConfig fields")
        for key in ("variant", "backbone", "freeze_backbone", "n_segments"):
            if key in self.model:
                raise ValueError(f"TrainConfig.model: set {key!r} on TrainConfig itself, not in model")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                bad("device", "'auto' or a torch device string")
        self.model_config()  # validates variant, backbone and the model options

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
        return ModelConfig(variant=self.variant, backbone=self.backbone, freeze_backbone=self.frozen,
                           n_segments=self.segments, **self.model)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

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


# ---------------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------------
def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace`` (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): resuming replays the same draws."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 1009 + stream)


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
def _dataset_key(config: TrainConfig, split: str) -> str:
    """Names a dataset split in cache paths: changes whenever its pixels could."""
    if config.dataset == "synthetic":
        return f"synthetic-{split}-{config.image_size}"
    root = str(Path(config.data_root).resolve())
    return f"{config.dataset}-{hashlib.sha1(root.encode()).hexdigest()[:10]}"


def base_dataset(config: TrainConfig, split: str, limit: int | None):
    """The split's full-resolution samples (dicts with ``image`` [3,H,W], ``mask`` [H,W], ``id``).

    :func:`selab.data.make_dataset` without transforms; ``synthetic`` renders ``limit`` images
    (default 256 for training, 32 otherwise) at ``image_size``, with disjoint ``train``/``val``/``test``.
    """
    from selab.data import make_dataset

    if config.dataset == "synthetic" and limit is None:
        # selab decision: enough synthetic images that the default quick run learns visibly.
        limit = SYNTHETIC_TRAIN_IMAGES if split == config.split else SYNTHETIC_VAL_IMAGES
    return make_dataset(config.dataset, root=config.data_root, split=split, limit=limit,
                        image_size=config.image_size, transform=None)


class PreparedSplit(torch.utils.data.Dataset):
    """One split resized to S x S, with cached superpixels and (frozen backbone) cached features.

    Items: ``image`` [3,S,S], ``mask`` [S,S], ``superpixels`` [S,S] (graph variants), ``features`` (list of
    [C_i,h_i,w_i] float16, cached), ``id``, and for evaluation ``full_mask`` / ``full_image`` at the
    original resolution. ``flips`` (a bool tensor per index) mirrors a sample horizontally: image, mask,
    superpixels and every feature map alike.
    """

    def __init__(self, config: TrainConfig, split: str, limit: int | None, keep_full: bool):
        self.config, self.split, self.keep_full = config, split, keep_full
        self.base = base_dataset(config, split, limit)
        model_config = config.model_config()
        self.needs_superpixels = model_config.uses_graph
        self.size = config.image_size
        key = _dataset_key(config, split)
        self.cache_key = key
        self.superpixel_cache = SuperpixelCache(config.cache_root / "superpixels", config.segments,
                                                model_config.compactness)
        self.feature_dir = None
        if config.use_feature_cache:
            tag = f"{config.backbone}-os{model_config.output_stride}-{'imagenet' if model_config.pretrained else 'random'}"
            self.feature_dir = config.cache_root / "features" / key / f"{tag}-s{self.size}"
        self.flips = None

    def __len__(self) -> int:
        return len(self.base)

    def _id(self, index: int) -> str:
        ids = getattr(self.base, "ids", None)
        return str(ids[index]) if ids is not None else str(self.base[index]["id"])

    def resized(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = sample["image"], sample["mask"]
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image.float(), mask.long()
        image = F.interpolate(image[None].float(), size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)[0].clamp(0, 1)
        mask = F.interpolate(mask[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
        return image, mask

    def superpixel_path(self, index: int) -> Path:
        return self.superpixel_cache.path(self.cache_key, self._id(index), (self.size, self.size))

    def superpixels(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """SLIC of the resized ``image`` of item ``index``, computed once (:class:`selab.data.SuperpixelCache`)."""
        return torch.from_numpy(self.superpixel_cache.get(self.cache_key, self._id(index), image))

    def feature_path(self, index: int) -> Path:
        return self.feature_dir / f"{self._id(index)}.pt"

    def __getitem__(self, index: int) -> dict:
        sample = self.base[index]
        image, mask = self.resized(sample)
        item = {"image": image, "mask": mask, "id": self._id(index)}
        if self.needs_superpixels:
            item["superpixels"] = self.superpixels(index, image)
        if self.feature_dir is not None:
            item["features"] = torch.load(self.feature_path(index), weights_only=True)
        if self.keep_full:
            item["full_mask"] = sample["mask"].long()
            item["full_image"] = sample["image"].float()
        if self.flips is not None and bool(self.flips[index]):
            for key in ("image", "mask", "superpixels"):
                if key in item:
                    item[key] = item[key].flip(-1)
            if "features" in item:
                item["features"] = [f.flip(-1) for f in item["features"]]
        return item

    def prepare(self, model: SELabModel, device, batch_size: int, num_workers: int, progress: bool) -> None:
        """Fill the superpixel and feature caches for every missing image (once per dataset and size)."""
        missing_sp = [i for i in range(len(self)) if self.needs_superpixels
                      and not self.superpixel_path(i).is_file()]
        missing_ft = [i for i in range(len(self)) if self.feature_dir is not None and not self.feature_path(i).is_file()]
        todo = sorted(set(missing_sp) | set(missing_ft))
        if not todo:
            return
        saved_dir, self.feature_dir = self.feature_dir, None  # load items without features while filling
        keep_full, self.keep_full = self.keep_full, False
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self, todo), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(0))
        try:
            position = 0
            for batch in tqdm(loader, desc=f"caching {self.split} superpixels/features", disable=not progress,
                              leave=False):
                indices = todo[position : position + len(batch["ids"])]
                position += len(batch["ids"])
                if saved_dir is None:
                    continue
                with torch.no_grad():
                    model.backbone.eval()
                    features = model.backbone(batch["image"].to(device))
                for b, index in enumerate(indices):
                    path = saved_dir / f"{self._id(index)}.pt"
                    atomic_save([f[b].detach().to("cpu", torch.float16).clone() for f in features], path)
        finally:
            self.feature_dir, self.keep_full = saved_dir, keep_full


def collate(items: list[dict]) -> dict:
    """Stack a list of :class:`PreparedSplit` items into a batch dict (``ids`` a list)."""
    batch = {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
             "ids": [i["id"] for i in items]}
    if "superpixels" in items[0]:
        batch["superpixels"] = torch.stack([i["superpixels"] for i in items])
    if "features" in items[0]:
        batch["features"] = [torch.stack([i["features"][k] for i in items]) for k in range(len(items[0]["features"]))]
    if "full_mask" in items[0]:
        batch["full_masks"] = [i["full_mask"] for i in items]
        batch["full_images"] = [i["full_image"] for i in items]
    return batch


# Every DataLoader gets its own generator: creating an iterator draws a seed from it, and drawing from
# the global torch RNG instead would make a run depend on whether the caches were already filled.


def to_device(batch: dict, device) -> dict:
    moved = dict(batch)
    for key in ("image", "mask", "superpixels"):
        if key in moved:
            moved[key] = moved[key].to(device, non_blocking=True)
    if "features" in moved:
        moved["features"] = [f.to(device, non_blocking=True) for f in moved["features"]]
    return moved


class TrainingData:
    """The training split, with a shuffling and flipping that depend only on (seed, epoch)."""

    def __init__(self, config: TrainConfig, model: SELabModel):
        self.config = config
        self.dataset = PreparedSplit(config, config.split, config.limit, keep_full=False)
        if len(self.dataset) == 0:
            raise ValueError(f"TrainConfig.split: split {config.split!r} of {config.dataset!r} holds no images")
        self.dataset.prepare(model, config.resolved_device(), config.batch_size, config.num_workers, config.progress)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.dataset) / self.config.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.dataset), generator=epoch_generator(self.config.seed, epoch, 0))

    def loader(self, epoch: int, order: torch.Tensor, start_step: int = 0):
        flips = torch.rand(len(self.dataset), generator=epoch_generator(self.config.seed, epoch, 1)) < 0.5
        self.dataset.flips = flips if self.config.augment else None
        remaining = order[start_step * self.config.batch_size :].tolist()
        return torch.utils.data.DataLoader(torch.utils.data.Subset(self.dataset, remaining),
                                           batch_size=self.config.batch_size, shuffle=False,
                                           num_workers=self.config.num_workers, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(0))


def evaluation_loader(config: TrainConfig, model: SELabModel):
    """Loader over ``config.val_split`` (first ``val_limit`` images) with full-resolution masks."""
    dataset = PreparedSplit(config, config.val_split, config.val_limit, keep_full=True)
    if len(dataset) == 0:
        raise ValueError(f"TrainConfig.val_split: split {config.val_split!r} of {config.dataset!r} holds no images")
    dataset.prepare(model, config.resolved_device(), config.batch_size, config.num_workers, config.progress)
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                                       num_workers=config.num_workers, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# optimisation
# ---------------------------------------------------------------------------------------------------
def build_optimizer(model: SELabModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the pretrained backbone (``lr * backbone_lr_scale``) and the new layers."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
    scale = config.backbone_lr_scale if (config.backbone != "small") else 1.0
    groups = [{"params": new, "lr": config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr * scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        t = min(step, total) / total
        if config.schedule == "poly":
            return (1.0 - t) ** 0.9
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def compute_loss(output, batch: dict, model_config: ModelConfig, confidence_only: bool = False) -> dict:
    """Pixel cross-entropy + weighted confidence-map cross-entropy + weighted merge-probability L2.

    Returns a dict of scalar tensors: ``loss`` (the total) and its parts.
    """
    mask = batch["mask"].to(output.confidence_logits.device if output.logits is None else output.logits.device)
    parts = {}
    if confidence_only:
        parts["confidence"] = F.cross_entropy(output.confidence_logits, mask)
        parts["loss"] = parts["confidence"]
        return parts
    parts["pixel"] = F.cross_entropy(output.logits, mask)
    total = parts["pixel"]
    if output.confidence_logits is not None and model_config.confidence_loss_weight > 0:
        parts["confidence"] = F.cross_entropy(output.confidence_logits, mask)
        total = total + model_config.confidence_loss_weight * parts["confidence"]
    if output.merge_target:
        from selab.evolve import merge_loss

        parts["merge"] = torch.stack([merge_loss(p, t) for p, t in zip(output.merge_prob, output.merge_target)]).mean()
        total = total + model_config.merge_loss_weight * parts["merge"]
    parts["loss"] = total
    return parts


# ---------------------------------------------------------------------------------------------------
# checkpoints and run folders
# ---------------------------------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer, scheduler, config: TrainConfig, epoch: int, step: int,
                    history: list, accumulators: dict | None = None, best: float | None = None) -> None:
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
            "rng": rng_state(),
        },
        path,
    )


def read_checkpoint(path) -> dict:
    """A checkpoint dict read with ``torch.load(weights_only=True)``: tensors and plain data only, no code runs.

    The numpy RNG state of selab's checkpoints (an array and its dtype) is allowed explicitly.
    """
    path = Path(path)
    allowed = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from None


def load_model(checkpoint_or_run_dir, device="cpu", which: str = "best",
               model_options: dict | None = None) -> tuple[SELabModel, dict]:
    """A model from a checkpoint file or a run folder (``best.pt`` if present, else ``last.pt``).

    ``model_options`` overrides ModelConfig fields that hold no weights, to test a trained model another
    way (e.g. ``{"eval_samples": 4, "evolution": {"eval_mode": "mh"}}``: the ``evolution`` dict is
    merged into the saved one); options that change the weights' shapes fail to load.

    Example
    -------
    >>> model, checkpoint = load_model("runs/quick")  # doctest: +SKIP
    """
    path = Path(checkpoint_or_run_dir)
    if path.is_dir():
        folder = path / "checkpoints"
        candidates = [folder / f"{which}.pt", folder / "last.pt"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ValueError(f"load_model: no checkpoint in {folder} (expected best.pt or last.pt)")
        path = found[0]
    if not path.is_file():
        raise ValueError(f"load_model: {path} is neither a run folder nor a checkpoint file")
    checkpoint = read_checkpoint(path)
    model_config = dict(checkpoint["model_config"])
    # The weights come from the checkpoint: skip loading ImageNet weights first.
    model_config["pretrained"] = False
    for key, value in (model_options or {}).items():
        if key == "evolution" and isinstance(value, dict):
            value = {**model_config.get("evolution", {}), **value}
        model_config[key] = value
    model = build_model(model_config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        if not model_options:
            raise
        raise ValueError(f"load_model: the weights of {path} do not fit the model with options "
                         f"{sorted(model_options)} (only options without weights can change): {error}") from None
    return model.to(device).eval(), checkpoint


def write_metrics(run_dir: Path, history: list, final: dict | None) -> None:
    atomic_write_text(json.dumps({"epochs": history, "final": final}, indent=2), run_dir / "metrics.json")
    if not history:
        return
    columns = ["epoch", "train_loss", "val_mean_iou", "val_pixel_accuracy", "lr", "seconds"]
    columns += [f"val_iou_{name}" for name in CLASS_NAMES]
    rows = []
    for record in history:
        row = {k: record.get(k) for k in columns[:6]}
        for name in CLASS_NAMES:
            row[f"val_iou_{name}"] = record.get("val_per_class_iou", {}).get(name)
        rows.append(row)
    tmp = run_dir / ".metrics.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, run_dir / "metrics.csv")


def plot_curves(run_dir: Path, history: list) -> Path | None:
    """Write the loss and validation-mIoU curves of ``history`` to ``run_dir/figures/curves.png``.

    Draws on a :class:`matplotlib.figure.Figure` of its own, never through pyplot: a library must not
    change the caller's backend or current figure (a notebook that calls :func:`run` keeps its inline
    figures).
    """
    if not history:
        return None
    from matplotlib.figure import Figure

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
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from selab.classes import CLASS_COLORS, CLASS_NAMES, colorize

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
@torch.no_grad()
def evaluate_model(model: SELabModel, loader, device, progress: bool = False, num_examples: int = 0,
                   description: str = "evaluate", per_image: list | None = None) -> tuple[dict, list]:
    """Scores over a loader of evaluation batches (each holds the full-resolution ``full_masks``).

    Logits [B,K,S,S] are upsampled (bilinear) to each mask's own size before the argmax, and the
    confusion matrix accumulates over the whole split. ``per_image``, a list, receives one
    ``(id, confusion [K,K])`` pair per image (for paired comparisons of runs, :mod:`selab.compare`).
    """
    model.eval()
    matrix = ConfusionMatrix(model.config.num_classes)
    examples, hierarchy = [], []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        batch = to_device(batch, device)
        output = model(batch)
        logits = output.logits
        if output.levels and "mask" in batch:
            hierarchy.append(hierarchy_stats(output.levels, batch["mask"], model.config.num_classes))
        for b, full_mask in enumerate(batch["full_masks"]):
            upsampled = F.interpolate(logits[b : b + 1], size=tuple(full_mask.shape), mode="bilinear",
                                      align_corners=False)
            prediction = upsampled[0].argmax(0)
            if per_image is None:
                matrix.update(prediction, full_mask.to(prediction.device))
            else:
                image_matrix = confusion_matrix(prediction, full_mask.to(prediction.device), model.config.num_classes)
                matrix.matrix += image_matrix
                per_image.append((batch["ids"][b], image_matrix))
            if len(examples) < num_examples:
                examples.append((batch["full_images"][b].cpu(), full_mask.cpu(), prediction.cpu()))
    scores = matrix.compute()
    if hierarchy:
        # The evolved hierarchy at test time, per level: nodes per image and clique label purity
        # (selab.evolve.hierarchy_stats, on the masks at the training size).
        levels = combine_hierarchy_stats(hierarchy)
        scores["hierarchy"] = {"mean_nodes_per_image": [s["mean_nodes_per_image"] for s in levels],
                               "purity": [s["purity"] for s in levels]}
    return scores, examples


def evaluate(checkpoint_or_run_dir, dataset: str = "pascal_person_part", data_root: str | None = None,
             split: str = "val", image_size: int | None = None, limit: int | None = None,
             out: str | None = None, device: str = "auto", batch_size: int = 8, progress: bool = True,
             cache_dir: str | None = None, per_image_out: str | None = None,
             model_options: dict | None = None) -> dict:
    """Evaluate a trained model on a split; optionally write the metrics to ``out`` (JSON).

    ``model_options`` tests the model another way (:func:`load_model`); ``per_image_out`` (an ``.npz``
    path) also saves every image's confusion matrix
    (:func:`selab.metrics.save_per_image`), for paired comparisons with :mod:`selab.compare`.

    Returns ``{"mean_iou", "per_class_iou" (by class name), "pixel_accuracy"}`` in percent, plus
    ``checkpoint``, ``dataset``, ``split``, ``num_images``, ``image_size``.

    Example
    -------
    >>> evaluate("runs/quick", dataset="synthetic", split="val")["mean_iou"]  # doctest: +SKIP
    """
    torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    model, checkpoint = load_model(checkpoint_or_run_dir, torch_device, model_options=model_options)
    train_config = dict(checkpoint["train_config"])
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
    scores, _ = evaluate_model(model, loader, torch_device, progress=progress, per_image=per_image)
    if per_image_out:
        save_per_image(Path(per_image_out), per_image)
    result = dict(scores)
    result.update({"checkpoint": str(checkpoint_or_run_dir), "dataset": dataset, "split": split,
                   "num_images": len(loader.dataset), "image_size": config.image_size})
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

    Example
    -------
    >>> run(TrainConfig(epochs=1, limit=8, image_size=48, out_dir="runs/tiny"))["final"]["mean_iou"]  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run: config must be a TrainConfig or dict, got {type(config).__name__}")
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    device = config.resolved_device()
    seed_everything(config.seed)
    model_config = config.model_config()
    model = SELabModel(model_config).to(device)

    train_loader_factory = TrainingData(config, model)
    val_loader = evaluation_loader(config, model) if config.val_split else None
    steps_per_epoch = train_loader_factory.steps_per_epoch
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    history, start_epoch, start_step, accumulators, best = [], 0, 0, {}, None
    if config.resume and last_path.is_file():
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=False)
        saved = dict(checkpoint["train_config"])
        for key in ("resume", "progress", "device", "num_workers"):
            saved.pop(key, None)
        mine = {k: v for k, v in config.to_dict().items() if k in saved}
        changed = sorted(k for k in saved if saved[k] != mine.get(k) and k not in ("epochs",))
        if changed:
            raise ValueError(f"run: resume=True but the config differs from the saved run in {changed}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history, best = checkpoint["history"], checkpoint["best"]
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step"]
        accumulators = checkpoint.get("accumulators") or {}
        set_rng_state(checkpoint["rng"])
    elif last_path.is_file():
        # A fresh run into an old folder: stale checkpoints must not be mistaken for this run's.
        print(f"run: starting afresh in {run_dir} (resume=False); its old checkpoints are replaced")
        for stale in (last_path, best_path):
            stale.unlink(missing_ok=True)
    atomic_write_text(json.dumps({"train": config.to_dict(), "model": model_config.to_dict()}, indent=2),
                      run_dir / "config.json")

    with _Interrupt() as interrupt:
        for epoch in range(start_epoch, config.epochs):
            started = time.time() - accumulators.get("seconds", 0.0)
            confidence_only = epoch < config.two_step_epochs and model_config.uses_graph
            model.train()
            order = train_loader_factory.order(epoch)
            mh_generator = epoch_generator(config.seed, epoch, 2)
            if start_step:
                mh_generator.set_state(accumulators["mh_generator"])
            loss_sum, count = accumulators.get("loss_sum", 0.0), accumulators.get("count", 0)
            batches = train_loader_factory.loader(epoch, order, start_step)
            bar = tqdm(batches, total=steps_per_epoch, initial=start_step, disable=not config.progress,
                       desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
            step = start_step
            for batch in bar:
                batch = to_device(batch, device)
                output = model(batch, generator=mh_generator, confidence_only=confidence_only)
                parts = compute_loss(output, batch, model_config, confidence_only)
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                optimizer.step()
                scheduler.step()
                step += 1
                loss_sum += float(parts["loss"].detach()) * len(batch["ids"])
                count += len(batch["ids"])
                bar.set_postfix(loss=f"{loss_sum / max(count, 1):.3f}")
                if interrupt.requested and step < steps_per_epoch:
                    state = {"loss_sum": loss_sum, "count": count, "seconds": time.time() - started,
                             "mh_generator": mh_generator.get_state()}
                    save_checkpoint(last_path, model, optimizer, scheduler, config, epoch, step, history, state, best)
                    write_metrics(run_dir, history, None)
                    print(f"\ninterrupted: checkpoint saved to {last_path} (epoch {epoch + 1}, step {step}); "
                          f"continue with resume=True / --resume")
                    raise KeyboardInterrupt
            bar.close()
            start_step, accumulators = 0, {}
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                      "lr": optimizer.param_groups[0]["lr"], "stage": "confidence" if confidence_only else "all"}
            examples = []
            if val_loader is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                # The last epoch's per-image confusions let runs be compared image by image (selab.compare).
                per_image = [] if epoch + 1 == config.epochs else None
                scores, examples = evaluate_model(model, val_loader, device, progress=config.progress,
                                                  num_examples=config.num_figures, description="validate",
                                                  per_image=per_image)
                if per_image is not None:
                    save_per_image(run_dir / PER_IMAGE_FILE, per_image)
                record.update({"val_mean_iou": scores["mean_iou"], "val_pixel_accuracy": scores["pixel_accuracy"],
                               "val_per_class_iou": scores["per_class_iou"]})
                if "hierarchy" in scores:
                    record["val_hierarchy"] = scores["hierarchy"]
            record["seconds"] = time.time() - started
            history.append(record)
            score = record.get("val_mean_iou")
            improved = score is not None and (best is None or score > best)
            if improved:
                best = score
            save_checkpoint(last_path, model, optimizer, scheduler, config, epoch + 1, 0, history, None, best)
            if improved:
                save_checkpoint(best_path, model, None, None, config, epoch + 1, 0, history, None, best)
            write_metrics(run_dir, history, None)
            plot_curves(run_dir, history)
            plot_predictions(run_dir, examples)
            if interrupt.requested and epoch + 1 < config.epochs:
                print(f"\ninterrupted: checkpoint saved to {last_path} (end of epoch {epoch + 1}); "
                      f"continue with resume=True / --resume")
                raise KeyboardInterrupt
            if config.progress:
                shown = f", val mIoU {score:.2f}" if score is not None else ""
                tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f}{shown} "
                           f"({record['seconds']:.0f} s)")

    final = None
    if history and "val_mean_iou" in history[-1]:
        final = {"mean_iou": history[-1]["val_mean_iou"], "per_class_iou": history[-1]["val_per_class_iou"],
                 "pixel_accuracy": history[-1]["val_pixel_accuracy"]}
        if "val_hierarchy" in history[-1]:
            final["hierarchy"] = history[-1]["val_hierarchy"]
    write_metrics(run_dir, history, final)
    paths = {"run_dir": str(run_dir), "config": str(run_dir / "config.json"), "last": str(last_path),
             "best": str(best_path) if best_path.is_file() else None,
             "metrics_json": str(run_dir / "metrics.json"), "metrics_csv": str(run_dir / "metrics.csv"),
             "figures": sorted(str(p) for p in (run_dir / "figures").glob("*.png"))}
    return {"final": final, "epochs": history, "paths": paths}

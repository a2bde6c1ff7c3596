"""The configuration of a training run: :class:`TrainConfig`, with the model's :class:`~selab.model.config.ModelConfig` inside.

:class:`TrainConfig` holds everything a run needs and is saved as ``config.json`` in the run folder (and in
every checkpoint); ``selab train`` has one flag per field, notebook 05 maps its typed parameters onto it
(:meth:`TrainConfig.from_notebook`, with the named setups of :data:`PRESETS`). Also here: the allowed
values of the named options (:data:`CHOICES`), :func:`check_device` and :func:`autocast`, what
``precision`` means.

Examples
--------
>>> config = TrainConfig(variant="se_lstm", model={"hidden_channels": 32})
>>> config.model.variant, config.model.hidden_channels, config.model.num_layers
('se_lstm', 32, 3)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selab.data.datasets import DATASETS
from selab.data.prepare import DataConfig
from selab.model.config import ModelConfig

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("poly", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
AUGMENTATIONS = ("flip", "paper")
#: The allowed values of TrainConfig's named options (``selab train``'s choices, beside ModelConfig's).
CHOICES = {"dataset": DATASETS, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES, "precision": PRECISIONS,
           "augmentation": AUGMENTATIONS}
#: ModelConfig fields that a TrainConfig sets itself (they decide the data preparation too).
RUN_FIELDS = ("variant", "backbone", "freeze_backbone", "n_segments")
#: Fields of a saved ``config.json`` under their former names: read as the present ones.
RENAMED_FIELDS = {"schedule": "lr_schedule"}


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run folder.

    ``selab train`` has one flag per field (``--image-size`` for ``image_size``), with the help text
    below (:func:`selab.cli.build_parser`).

    Parameters
    ----------
    variant : {"cnn", "graph_lstm", "se_lstm"}
        The model (:class:`selab.model.config.ModelConfig`).
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
    lr_schedule : {"poly", "cosine", "constant"}
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
        ``cache_features=False``). selab decision: ``flip`` by default, the augmentation every recorded result used.
    model : ModelConfig or dict
        The model (:class:`~selab.model.config.ModelConfig`); its ``variant``, ``backbone``,
        ``freeze_backbone`` and ``n_segments`` are this config's (set them here). Given as a dict, the
        ModelConfig fields set (``hidden_channels``, ``num_layers``, ...), the others at their defaults.
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
    lr_schedule: str = "poly"
    two_step_epochs: int = 0
    freeze_backbone: bool | None = None
    cache_features: bool | None = None
    cache_dir: str | None = None
    n_segments: int | None = None
    augment: bool = True
    augmentation: str = "flip"
    model: ModelConfig | dict = field(default_factory=dict)
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
        if self.device != "auto":
            check_device(self.device, "TrainConfig.device")
        self.model = complete_model(self.model, self.variant, self.backbone, self.frozen, self.segments)
        model_config = self.model
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

    def resolved_device(self) -> torch.device:
        return check_device(self.device, "TrainConfig.device")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir)

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.run_dir.resolve().parent / "cache"

    def data_config(self) -> DataConfig:
        """What :mod:`selab.data.prepare` needs to know of this run: the data, its size and its caches."""
        model = self.model
        tag = None
        if self.use_feature_cache:
            tag = f"{self.backbone}-os{model.output_stride}-{'imagenet' if model.pretrained else 'random'}"
        return DataConfig(dataset=self.dataset, data_root=self.data_root, image_size=self.image_size,
                          ignore_index=self.ignore_index, cache_root=self.cache_root, train_split=self.split,
                          superpixels=model.uses_graph, n_segments=model.n_segments, compactness=model.compactness,
                          feature_tag=tag)

    def to_dict(self) -> dict:
        """The config as ``config.json`` and the checkpoints hold it: the fields, ``model`` as a dict of the
        ModelConfig fields that are not this config's own (``variant``, ... stand once, at the top)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model"] = {key: value for key, value in self.model.to_dict().items() if key not in RUN_FIELDS}
        return copy.deepcopy(data)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from :meth:`to_dict`'s dict (as saved in a run folder), fields renamed since read by
        their present names (:data:`RENAMED_FIELDS`)."""
        data = {RENAMED_FIELDS.get(key, key): value for key, value in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_notebook(cls, variant: str, backbone: str, dataset: str, data_root: str, epochs: int, image_size: int,
                      num_images: int, val_images: int, batch_size: int, lr: float, num_layers: int,
                      hidden_channels: int, seed: int, out_dir: str, n_segments: int = 0, preset: str = "",
                      update_order: str = "", evolution_mode: str = "", evolution_eval_mode: str = "",
                      energy_source: str = "", merge_budget: float = 0.0, merge_source: str = "",
                      target_nodes: float = 0.0, merge_loss_balanced: bool = False, top_down: bool = False,
                      readout: str = "",
                      next_input: str = "", next_state: str = "", finetune_after_stride: int = 0,
                      feature_strides: list | None = None, optimizer: str = "", two_step_epochs: int = 0,
                      val_every: int = 0, cache_dir: str = "", resume: bool = False,
                      overwrite: bool = False) -> "TrainConfig":
        """The config of ``notebooks/05_train.ipynb``'s ``parameters`` cell (what a sweep cell sets).

        0, ``""`` and ``None`` mean selab's default; the evolution's options (``evolution_mode``,
        ``evolution_eval_mode``, ``energy_source``, ``merge_budget``, ``merge_source`` (the merge
        probabilities' ``source``), ``target_nodes``) fill ``ModelConfig.evolution``.
        ``preset`` (one of :data:`PRESETS`) first sets the settings of a named setup; every other
        parameter still applies on top where it is not its default (:func:`notebook_parameters`).
        """
        values = notebook_parameters(preset, dict(
            variant=variant, backbone=backbone, dataset=dataset, data_root=data_root, epochs=epochs,
            image_size=image_size, num_images=num_images, val_images=val_images, batch_size=batch_size, lr=lr,
            num_layers=num_layers, hidden_channels=hidden_channels, n_segments=n_segments))
        evolution = {key: value for key, value in (("mode", evolution_mode), ("eval_mode", evolution_eval_mode),
                                                   ("energy_source", energy_source), ("merge_budget", merge_budget),
                                                   ("source", merge_source), ("target_nodes", target_nodes)) if value}
        model = {key: value for key, value in (
            ("num_layers", values["num_layers"]), ("hidden_channels", values["hidden_channels"]),
            ("order", update_order), ("evolution", evolution), ("merge_loss_balanced", merge_loss_balanced),
            ("top_down", top_down), ("readout", readout),
            ("next_input", next_input), ("next_state", next_state), ("finetune_after_stride", finetune_after_stride),
            ("feature_strides", list(feature_strides) if feature_strides else None)) if value}
        train = {key: value for key, value in (("optimizer", optimizer), ("two_step_epochs", two_step_epochs),
                                               ("val_every", val_every)) if value}
        config = cls(variant=values["variant"], backbone=values["backbone"], dataset=values["dataset"],
                     data_root=values["data_root"] or None, limit=values["num_images"] or None,
                     val_limit=values["val_images"] or None, image_size=values["image_size"],
                     epochs=values["epochs"], batch_size=values["batch_size"], lr=values["lr"],
                     n_segments=values["n_segments"] or None, seed=seed, out_dir=out_dir, resume=resume,
                     overwrite=overwrite, progress=False, cache_dir=cache_dir or None, model=model, **train)
        check_scratch_on_real_data(config, preset)
        return config


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


def complete_model(model: ModelConfig | dict, variant: str, backbone: str, freeze_backbone: bool,
                   n_segments: int) -> ModelConfig:
    """The run's ModelConfig: ``model`` (a ModelConfig, or a dict of the ModelConfig fields set) with the
    run's own four fields (:data:`RUN_FIELDS`), or a ValueError naming the field that disagrees.

    Examples
    --------
    >>> complete_model({"hidden_channels": 16}, "graph_lstm", "small", False, 100).n_segments
    100
    """
    run = {"variant": variant, "backbone": backbone, "freeze_backbone": freeze_backbone, "n_segments": n_segments}
    if isinstance(model, ModelConfig):
        for key, value in run.items():
            if getattr(model, key) != value:
                raise ValueError(f"TrainConfig.model: its {key} is {getattr(model, key)!r} but the run's is "
                                 f"{value!r}; set {key} on TrainConfig itself")
        return model
    if not isinstance(model, dict):
        raise ValueError(f"TrainConfig.model: expected a ModelConfig or a dict of its fields, got {model!r}")
    options = ModelConfig.upgrade_options(model)
    for key in RUN_FIELDS:
        if key in options:
            raise ValueError(f"TrainConfig.model: set {key!r} on TrainConfig itself, not in model")
    unknown = set(options) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"TrainConfig.model: unknown ModelConfig fields {sorted(unknown)}")
    return ModelConfig(**options, **run)


def autocast(precision: str, device) -> torch.autocast:
    """The autocast context of ``precision`` (see :data:`PRECISIONS`) on ``device``'s kind; off for fp32."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---------------------------------------------------------------------------------------------------
# notebook 05's parameters
# ---------------------------------------------------------------------------------------------------
#: The defaults of notebook 05's ``parameters`` cell that a preset may replace: sized for a test run
#: on synthetic data (tests/test_docs.py checks that the notebook says the same).
NOTEBOOK_DEFAULTS = {"dataset": "synthetic", "data_root": "", "variant": "se_lstm", "backbone": "small", "epochs": 3,
                     "image_size": 64, "num_images": 32, "val_images": 8, "batch_size": 8, "lr": 3e-3,
                     "num_layers": 2, "hidden_channels": 32, "n_segments": 0}
#: Named setups of notebook 05 (``-p preset NAME``): the parameters they set. ``pascal_person_part``:
#: the real data as ``selab train`` trains it in docs/data.md: frozen ImageNet EfficientNet-Lite0
#: features at 320 px, the whole training and validation splits, selab's model sizes (0: the
#: ModelConfig defaults, 3 evolving layers of 64 channels), 12 epochs.
PRESETS = {"pascal_person_part": {"dataset": "pascal_person_part", "backbone": "efficientnet_lite0",
                                  "image_size": 320, "num_images": 0, "val_images": 0, "num_layers": 0,
                                  "hidden_channels": 0, "epochs": 12}}


def notebook_parameters(preset: str, values: dict) -> dict:
    """``values`` (notebook 05's parameters) with ``preset``'s settings where a value is the notebook's default.

    A parameter set to anything but its default wins over the preset (``-p preset pascal_person_part
    -p epochs 30`` trains 30 epochs).

    Examples
    --------
    >>> notebook_parameters("pascal_person_part", {**NOTEBOOK_DEFAULTS, "epochs": 30})["image_size"]
    320
    >>> notebook_parameters("pascal_person_part", {**NOTEBOOK_DEFAULTS, "epochs": 30})["epochs"]
    30
    """
    if preset and preset not in PRESETS:
        raise ValueError(f"notebook 05: preset must be \"\" or one of {sorted(PRESETS)}, got {preset!r}")
    chosen = PRESETS.get(preset, {})
    return {key: chosen[key] if key in chosen and value == NOTEBOOK_DEFAULTS.get(key) else value
            for key, value in values.items()}


def check_scratch_on_real_data(config: TrainConfig, preset: str) -> None:
    """Refuse notebook 05's test-sized defaults on real data: a CNN trained from scratch on 32 images.

    Raises a ValueError naming the parameters to set when the ``small`` backbone meets a real dataset
    and ``num_images`` is still the notebook's default.
    """
    if config.dataset == "synthetic" or config.backbone != "small" or preset:
        return
    if config.limit == NOTEBOOK_DEFAULTS["num_images"]:
        raise ValueError(
            f"notebook 05: dataset {config.dataset!r} with backbone 'small' and num_images="
            f"{config.limit} (the notebook's test-sized defaults) would train a CNN from scratch on "
            f"{config.limit} images; pass -p preset pascal_person_part (EfficientNet-Lite0 features, 320 px, "
            f"the whole splits), or set backbone (e.g. efficientnet_lite0), num_images and val_images "
            f"(0: the whole split)")

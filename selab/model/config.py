"""The model's configuration: :class:`ModelConfig`, everything that defines a parser, and its allowed values.

Saved in every run's ``config.json`` and checkpoint (:meth:`ModelConfig.to_dict`) and read back with the
fields renamed since then under their present names (:meth:`ModelConfig.from_dict`).

Examples
--------
>>> config = ModelConfig(variant="se_lstm")
>>> config.num_layers, config.effective_train_order
(3, 'stochastic')
>>> ModelConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

from selab.classes import NUM_CLASSES
from selab.method.evolve import StructureEvolution
from selab.method.graph_lstm import UPDATE_SCHEDULES
from selab.method.orders import ORDERS
from selab.model.backbones import BACKBONES

VARIANTS = ("cnn", "graph_lstm", "se_lstm")
NEXT_INPUTS = ("output", "input", "level0")
NEXT_STATES = ("output", "hidden", "zero")
READOUTS = ("every_level", "level0")
BATCHNORMS = ("batch", "sync", "frozen")
#: ModelConfig fields of a saved config under their former names: read as the present ones.
RENAMED_FIELDS = {"schedule": "update_schedule"}
RENAMED_EVOLUTION_OPTIONS = {"energy": "energy_source"}


@dataclass
class ModelConfig:
    """Everything that defines a model; saved in each run's ``config.json``.

    Parameters
    ----------
    variant : {"cnn", "graph_lstm", "se_lstm"}
    backbone : {"small", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    pretrained : bool
        ImageNet weights for ``efficientnet_lite0`` (ignored by ``small``).
    output_stride : {8, 16}
        Finest backbone stride used.
    freeze_backbone : bool
        Keep the backbone fixed (eval mode, no gradients); lets :mod:`selab.training.loop` cache its features.
    finetune_after_stride : int, optional
        Partial fine-tuning of a frozen pretrained EfficientNet-Lite: the backbone stays
        frozen up to the last block at this stride (8 or 16) and the blocks after it train with the head
        (at ``lr * backbone_lr_scale``, their BatchNorm in training mode). The frozen part's maps are a
        prefix of the full feature cache, so a cached run reads them from it and computes the rest at
        every step. ``None`` (default): the whole backbone follows ``freeze_backbone``. selab option: the
        paper fine-tunes the whole network (``freeze_backbone=False``); this is the CPU-sized middle.
    feature_channels : int
        Channels of the fused CNN features (the two-layer conv neck).
    feature_strides : list of int, optional
        The backbone's feature maps the neck reads, by stride (``None``, the default: all of them, e.g.
        8, 16 and 32 for EfficientNet-Lite0). ``[8]`` keeps only the finest map, whose receptive field is
        local: an ablation that asks whether the graph layers supply the context the coarse maps otherwise
        bring (selab option, not in the papers).
    hidden_channels : int
        Graph LSTM hidden size (paper: not given; selab decision 64-256).
    num_layers : int, optional
        Graph LSTM layers (``graph_lstm``: default 2, the paper's) or evolving layers L (``se_lstm``:
        default 3, selab decision; an evolution follows every layer but the last).
    residual : bool
        Residual connections between Graph LSTM layers (paper: on).
    identical_forget_gates : bool
        The paper's ablation with one forget gate per node.
    order : str
        Update order at test time (and in training for ``graph_lstm``): ``confidence`` (paper),
        ``random``, ``bfs``, ``dfs`` (from the most confident node).
    train_order : str or None
        Order in training; default ``stochastic`` for ``se_lstm`` (confidence plus noise, the paper's
        "stochastic node updating") and ``order`` otherwise.
    update_schedule : {"wavefront", "sequential", "synchronous"}
        How the Graph LSTM computes its update order (:class:`selab.method.graph_lstm.GraphLSTM`): ``wavefront`` is the paper's
        sequential update computed level by level; ``synchronous`` is a selab ablation (every neighbour
        read in its old state, all nodes in one step).
    order_noise : float
        Noise scale of the stochastic order.
    n_segments, compactness : SLIC parameters of the superpixels (used by the data pipeline).
    evolution : dict
        Keyword arguments for :class:`selab.method.evolve.StructureEvolution` (``se_lstm`` only). A list value
        gives one value per evolution, in order (length ``num_layers - 1``), e.g.
        ``{"merge_budget": [0.25, 0.5, 0.75]}``; any other value is shared by all evolutions. With
        ``{"mode": "none"}`` nothing ever merges (``eval_mode`` follows ``mode``, see
        :class:`~selab.method.evolve.StructureEvolution`) and the model is the same network as with merging:
        the same parameters, carried states and per-level classifiers, and the merge probabilities
        still get their L2 loss (``merge_loss_weight=0`` drops it). ``{"energy_source": "prediction"}``
        scores the training chains by the predicted node classes instead of the ground truth.
    next_input : {"output", "input", "level0"}
        ``se_lstm``: the input f of the next level (selab decision). ``"output"`` (default, the
        original selab behaviour): the clique mean of this layer's output ``h`` (hidden state plus the
        residual input), stacked like ``graph_lstm``; from the second evolving layer on, f and the
        initial state h0 are then the same tensor with ``next_state="output"``. ``"input"``: the clique
        mean of this level's input f (each member node weighs the same). ``"level0"``: the mean of the
        level-0 node features (the ``node_input`` output) over the superpixels the node covers (each
        superpixel weighs the same), so every level reads the CNN features, never the LSTM states.
    next_state : {"output", "hidden", "zero"}
        ``se_lstm``: the initial hidden state h0 of the next level (selab decision).
        ``"output"`` (default): the clique mean of this layer's output ``h`` (with the residual term,
        not tanh-bounded); ``"hidden"``: the clique mean of the hidden state proper ``tanh(g^o * m)``
        (``GraphLSTMOutput.hidden``, in [-1, 1]); both carry the clique mean of
        the memory m. ``"zero"``: h and m restart at zero in every layer, like ``graph_lstm``.
    eval_samples : int
        Graph variants in ``eval()``: the number K of structures sampled per image; the logits are the
        mean of the K forward passes of the graph part (the CNN and the node features once). Useful
        with a stochastic test-time structure (``se_lstm`` with ``evolution={"eval_mode": "mh"}``) or
        update order (``order="random"``); default 1.
    eval_seed : int
        Seed of the generator used in ``eval()`` when ``forward`` gets none and the test-time graph
        part is stochastic (``eval_samples > 1`` or an evolution in MH mode), so that evaluation is
        reproducible (selab decision).
    top_down : bool
        ``se_lstm``: a top-down pass after the top level (selab option, not in the paper). The top level's
        states are copied down to the level-0 nodes they cover, concatenated with the level-0 node
        features and read by one more Graph LSTM layer on the level-0 graph, whose states get a
        classifier of their own. The other levels still reach the pixels as before; the top-down layer
        lets each superpixel weigh the coarse context by its own features, so that a coarse node that
        spans two parts need not blur the pixels under it. Default ``False``.
    readout : {"every_level", "level0"}
        ``se_lstm``: which layers' states reach the pixels (selab option, not in the paper).
        ``"every_level"`` (default, selab's original form): every layer has a classifier on its own level,
        so an impure coarse node adds the same logits to every pixel under it. ``"level0"`` (needs
        ``top_down``): only the first layer and the top-down layer, both on the level-0 graph; the coarse
        levels reach the pixels through the top-down layer alone, which each superpixel reads with its own
        features.
    merge_loss_weight : float
        Weight of the merge-probability L2 loss (``se_lstm``).
    merge_loss_balanced : bool
        ``se_lstm``: the L2 loss weighs the edges to merge and the edges to keep half and half
        (:func:`selab.model.loss.merge_loss`) instead of every edge alike (default, the paper's plain L2). selab
        option: with the plain loss the merge probabilities rank well but sit above 0.5 on
        nearly every edge, because most edges join one part.
    confidence_loss_weight : float
        Weight of a cross-entropy on the initial confidence maps. selab decision: on by default for the
        graph variants, so that the confidences that drive the update order stay meaningful.
    dropout : float
        Dropout on the fused features before the classifier.
    batchnorm : {"batch", "sync", "frozen"}
        How the BatchNorm layers normalise in training. ``"batch"`` (PyTorch's default): with the
        statistics of the batch, in a data-parallel run (:mod:`selab.training.distributed`) of each process's
        part of it. ``"sync"``: of the global batch, all processes together (``torch.nn.SyncBatchNorm``,
        GPUs only; the same as ``"batch"`` in one process). ``"frozen"``: with the running statistics,
        never updated (eval-mode BatchNorm, the scale and shift still learn), so that the result does not
        depend on how a batch is split; meant for fine-tuning a pretrained backbone with small batches
        (selab decision: an option, the papers' DeepLab VGG-16 has no BatchNorm).
    num_classes : int
    """

    variant: str = "cnn"
    backbone: str = "small"
    pretrained: bool = True
    output_stride: int = 8
    freeze_backbone: bool = False
    finetune_after_stride: int | None = None
    feature_channels: int = 128
    feature_strides: list[int] | None = None
    hidden_channels: int = 64
    num_layers: int | None = None
    residual: bool = True
    identical_forget_gates: bool = False
    order: str = "confidence"
    train_order: str | None = None
    update_schedule: str = "wavefront"
    order_noise: float = 0.1
    n_segments: int = 1000
    compactness: float = 10.0
    evolution: dict = field(default_factory=dict)
    next_input: str = "output"
    next_state: str = "output"
    eval_samples: int = 1
    eval_seed: int = 0
    top_down: bool = False
    readout: str = "every_level"
    merge_loss_weight: float = 1.0
    merge_loss_balanced: bool = False
    confidence_loss_weight: float = 0.4
    dropout: float = 0.1
    batchnorm: str = "batch"
    num_classes: int = NUM_CLASSES

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.num_layers is None:
            self.num_layers = 3 if self.variant == "se_lstm" else 2

        def bad(name, expected):
            raise ValueError(f"ModelConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.variant not in VARIANTS:
            bad("variant", f"one of {VARIANTS}")
        if self.backbone not in BACKBONES:
            bad("backbone", f"one of {BACKBONES}")
        if self.output_stride not in (8, 16):
            bad("output_stride", "8 or 16")
        if self.finetune_after_stride is not None:
            if self.backbone == "small" or not self.freeze_backbone or not self.pretrained:
                bad("finetune_after_stride", "None unless the backbone is a frozen pretrained EfficientNet-Lite "
                    f"(backbone={self.backbone!r}, freeze_backbone={self.freeze_backbone}, pretrained={self.pretrained})")
            if self.finetune_after_stride not in (8, 16) or self.finetune_after_stride < self.output_stride:
                bad("finetune_after_stride", f"None, 8 or 16 and at least output_stride ({self.output_stride})")
        for name in ("feature_channels", "hidden_channels", "num_classes", "n_segments"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive int")
        if not isinstance(self.num_layers, int) or self.num_layers < (0 if self.variant == "cnn" else 1):
            bad("num_layers", "an int >= 1")
        if self.order not in ORDERS:
            bad("order", f"one of {ORDERS}")
        if self.update_schedule not in UPDATE_SCHEDULES:
            bad("update_schedule", f"one of {UPDATE_SCHEDULES}")
        if self.train_order is not None and self.train_order not in ORDERS:
            bad("train_order", f"None or one of {ORDERS}")
        for name in ("order_noise", "merge_loss_weight", "confidence_loss_weight", "compactness"):
            if getattr(self, name) < 0:
                bad(name, "a number >= 0")
        if not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")
        if self.batchnorm not in BATCHNORMS:
            bad("batchnorm", f"one of {BATCHNORMS}")
        if not isinstance(self.evolution, dict):
            bad("evolution", "a dict of StructureEvolution keyword arguments")
        accepted = set(inspect.signature(StructureEvolution.__init__).parameters) - {"self", "hidden_channels",
                                                                                      "num_classes"}
        if set(self.evolution) - accepted:
            raise ValueError(f"ModelConfig.evolution: unknown options {sorted(set(self.evolution) - accepted)}; "
                             f"StructureEvolution accepts {sorted(accepted)}")
        num_evolutions = max(self.num_layers - 1, 0)
        for key, value in self.evolution.items():
            if isinstance(value, (list, tuple)) and len(value) != num_evolutions:
                raise ValueError(f"ModelConfig.evolution[{key!r}]: a list gives one value per evolution, expected "
                                 f"{num_evolutions} (num_layers - 1) values, got {len(value)}: {value!r}")
        if self.next_input not in NEXT_INPUTS:
            bad("next_input", f"one of {NEXT_INPUTS}")
        if self.next_state not in NEXT_STATES:
            bad("next_state", f"one of {NEXT_STATES}")
        if isinstance(self.eval_samples, bool) or not isinstance(self.eval_samples, int) or self.eval_samples < 1:
            bad("eval_samples", "an int >= 1")
        if isinstance(self.eval_seed, bool) or not isinstance(self.eval_seed, int):
            bad("eval_seed", "an int")
        if not isinstance(self.merge_loss_balanced, bool):
            bad("merge_loss_balanced", "True or False")
        if not isinstance(self.top_down, bool) or (self.top_down and self.variant != "se_lstm"):
            bad("top_down", "True or False, and True only for variant 'se_lstm'")
        if self.readout not in READOUTS or (self.readout == "level0" and not self.top_down):
            bad("readout", f"one of {READOUTS}, and 'level0' only with top_down=True (variant 'se_lstm')")

    @property
    def uses_graph(self) -> bool:
        return self.variant != "cnn"

    @property
    def effective_train_order(self) -> str:
        if self.train_order is not None:
            return self.train_order
        return "stochastic" if self.variant == "se_lstm" else self.order

    def to_dict(self) -> dict:
        """The config as plain data (what ``config.json`` and the checkpoints hold)."""
        return dataclasses.asdict(self)

    @staticmethod
    def upgrade_options(options: dict) -> dict:
        """ModelConfig fields (or some of them) as a saved config holds them, under their present names.

        Reads the names a run folder may hold from before a field was renamed (:data:`RENAMED_FIELDS`,
        and ``evolution``'s ``energy``, now ``energy_source``).

        Examples
        --------
        >>> ModelConfig.upgrade_options({"schedule": "sequential", "evolution": {"energy": "prediction"}})
        {'update_schedule': 'sequential', 'evolution': {'energy_source': 'prediction'}}
        """
        options = {RENAMED_FIELDS.get(key, key): value for key, value in options.items()}
        if isinstance(options.get("evolution"), dict):
            options["evolution"] = {RENAMED_EVOLUTION_OPTIONS.get(key, key): value
                                    for key, value in options["evolution"].items()}
        return options

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """A ModelConfig from :meth:`to_dict`'s dict (as saved in ``config.json`` and the checkpoints)."""
        data = cls.upgrade_options(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {sorted(unknown)}")
        return cls(**data)

    def evolution_kwargs(self, index: int) -> dict:
        """Keyword arguments of evolution ``index`` (0-based): list values of ``evolution`` picked per index.

        Examples
        --------
        >>> ModelConfig(variant="se_lstm", evolution={"merge_budget": [0.25, 0.5], "mode": "greedy"}).evolution_kwargs(1)
        {'merge_budget': 0.5, 'mode': 'greedy'}
        """
        return {key: value[index] if isinstance(value, (list, tuple)) else value
                for key, value in self.evolution.items()}

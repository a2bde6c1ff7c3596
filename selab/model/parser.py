r"""The parsing model: backbone -> [superpixel graph -> Graph LSTM / SE-LSTM layers] -> pixel classifier.

One :class:`ModelConfig` builds the three variants compared in selab:

- ``cnn``: backbone features and a pixel classifier (the DeepLab-like baseline of both papers);
- ``graph_lstm``: "Semantic Object Parsing with Graph LSTM" (Liang et al., ECCV 2016): two Graph LSTM
  layers on the fixed superpixel graph with residual connections, nodes updated in the confidence-driven
  order; ``ModelConfig(variant="graph_lstm")`` is the paper's configuration (``num_layers=2``,
  ``residual=True``, ``order="confidence"``);
- ``se_lstm``: "Interpretable Structure-Evolving LSTM" (Liang et al., CVPR 2017): ``num_layers`` evolving
  layers (Graph LSTM -> merge probabilities -> Metropolis-Hastings -> coarsen), a stochastic update
  order in training, a deterministic structure at test time by default; every level's node states are
  copied back to the pixels and fused with the CNN features before the classifier.

The data flow is one way: image [B,3,S,S] -> multi-scale backbone features, fused at the finest stride
by a two-layer conv neck [B,C,h,w] -> a 1x1 conv gives the initial class confidences (K maps) -> both are
bilinearly upsampled to S x S and averaged over each superpixel (node features and node confidences) ->
Graph LSTM layers -> node states back to pixels -> 1x1 classifier over [CNN features, states of every
level] -> logits [B,K,S,S].

Two exact shortcuts keep this cheap on a CPU (they change no result, up to float rounding):
upsampling then averaging over a superpixel is linear, so it is done as one sparse-like [N, h*w]
matrix product per image instead of materialising [B,C,S,S]; and the final 1x1 classifier is linear,
so it is applied at the feature resolution and on the nodes, and only the K-channel logits are
upsampled / copied back to pixels.

Examples
--------
>>> import torch
>>> model = SELabModel(ModelConfig(variant="cnn", backbone="small"))
>>> out = model({"image": torch.rand(2, 3, 64, 64)})
>>> tuple(out.logits.shape)
(2, 7, 64, 64)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selab.model.backbones import BACKBONES, build_backbone
from selab.classes import NUM_CLASSES
from selab.method.evolve import StructureEvolution
from selab.method.graph import Graph, SuperpixelStructures, graph_from_superpixels, level_majority_labels, scatter_mean
from selab.method.graph_lstm import GraphLSTM
from selab.method.orders import ORDERS, update_rank
from selab.method.superpixels import node_label_histogram, unpool_to_pixels, upsample_and_pool

VARIANTS = ("cnn", "graph_lstm", "se_lstm")
NEXT_INPUTS = ("output", "input", "level0")
NEXT_STATES = ("output", "hidden", "zero")
BATCHNORMS = ("batch", "sync", "frozen")


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
        Keep the backbone fixed (eval mode, no gradients); lets :mod:`selab.training.train` cache its features.
    finetune_after_stride : int, optional
        Partial fine-tuning of a frozen pretrained EfficientNet-Lite (issue 19): the backbone stays
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
    schedule : {"wavefront", "sequential", "synchronous"}
        Graph LSTM schedule (:class:`selab.method.graph_lstm.GraphLSTM`): ``wavefront`` is the paper's
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
        still get their L2 loss (``merge_loss_weight=0`` drops it). ``{"energy": "prediction"}``
        scores the training chains by the predicted node classes instead of the ground truth.
    next_input : {"output", "input", "level0"}
        ``se_lstm``: the input f of the next level (selab decision, issue 19). ``"output"`` (default, the
        original selab behaviour): the clique mean of this layer's output ``h`` (hidden state plus the
        residual input), stacked like ``graph_lstm``; from the second evolving layer on, f and the
        initial state h0 are then the same tensor with ``next_state="output"``. ``"input"``: the clique
        mean of this level's input f (each member node weighs the same). ``"level0"``: the mean of the
        level-0 node features (the ``node_input`` output) over the superpixels the node covers (each
        superpixel weighs the same), so every level reads the CNN features, never the LSTM states.
    next_state : {"output", "hidden", "zero"}
        ``se_lstm``: the initial hidden state h0 of the next level (selab decision, issue 19).
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
    merge_loss_weight : float
        Weight of the merge-probability L2 loss (``se_lstm``).
    merge_loss_balanced : bool
        ``se_lstm``: the L2 loss weighs the edges to merge and the edges to keep half and half
        (:func:`selab.model.loss.merge_loss`) instead of every edge alike (default, the paper's plain L2). selab
        option (issue 19): with the plain loss the merge probabilities rank well but sit above 0.5 on
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
    schedule: str = "wavefront"
    order_noise: float = 0.1
    n_segments: int = 1000
    compactness: float = 10.0
    evolution: dict = field(default_factory=dict)
    next_input: str = "output"
    next_state: str = "output"
    eval_samples: int = 1
    eval_seed: int = 0
    top_down: bool = False
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
        if self.schedule not in ("wavefront", "sequential", "synchronous"):
            bad("schedule", "'wavefront', 'sequential' or 'synchronous'")
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

    @property
    def uses_graph(self) -> bool:
        return self.variant != "cnn"

    @property
    def effective_train_order(self) -> str:
        if self.train_order is not None:
            return self.train_order
        return "stochastic" if self.variant == "se_lstm" else self.order

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def evolution_kwargs(self, index: int) -> dict:
        """Keyword arguments of evolution ``index`` (0-based): list values of ``evolution`` picked per index.

        Examples
        --------
        >>> ModelConfig(variant="se_lstm", evolution={"merge_budget": [0.25, 0.5], "mode": "greedy"}).evolution_kwargs(1)
        {'merge_budget': 0.5, 'mode': 'greedy'}
        """
        return {key: value[index] if isinstance(value, (list, tuple)) else value
                for key, value in self.evolution.items()}


@dataclass
class ModelOutput:
    """What :class:`SELabModel` returns; the notebooks draw ``levels``, ``merge_prob`` and ``traces``.

    Attributes
    ----------
    logits : Tensor [B,K,S,S]
    confidence_logits : Tensor [B,K,S,S]
        The initial confidence maps (1x1 conv on CNN features), upsampled.
    levels : list of Graph
        Level 0 is the superpixel graph; ``se_lstm`` adds one per evolving layer.
    states : list of Tensor [N_l,H]
        Node hidden states of each Graph LSTM layer (on the graph of the level it ran on).
    ranks : list of Tensor [N_l]
        The update order used in each layer.
    merge_prob : list of Tensor [E_l]
        ``se_lstm``: merge probabilities of the edges of every level but the last (their targets are
        :func:`selab.model.loss.merge_targets`).
    traces : list
        ``se_lstm``: the Metropolis-Hastings trace of each layer.
    samples : list of ModelOutput
        With ``eval_samples = K > 1`` in ``eval()``: the K structures (their ``levels``, ``states``,
        ``ranks``, ``merge_prob``, ``traces``; no logits); the fields above are those of the first.
    level_labels : list of LongTensor [N_l]
        ``se_lstm`` given ``energy_labels``: the majority labels of every evolved level (those the chains'
        energy read), counted on ``labels_mask``; :func:`selab.model.loss.compute_loss` takes its merge
        targets from them when its mask is that one, instead of counting again (issue 18).
    labels_mask : Tensor [B,S,S], optional
    top_down : Tensor [N_0,H], optional
        ``se_lstm`` with ``ModelConfig.top_down``: the states of the top-down layer on the level-0 graph.
    """

    logits: torch.Tensor
    confidence_logits: torch.Tensor | None = None
    levels: list = field(default_factory=list)
    states: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    merge_prob: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    level_labels: list = field(default_factory=list)
    labels_mask: torch.Tensor | None = None
    top_down: torch.Tensor | None = None


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FeatureNeck(nn.Module):
    """Fuse multi-scale features at the finest stride: upsample, concatenate, 1x1 then 3x3 conv.

    With :class:`~selab.model.backbones.EfficientNetLite0Backbone` this is the "two-layer conv head on stride-8
    features" of the DESIGN reference, fed richer concatenated stride-8/16/32 features.
    """

    def __init__(self, in_channels: list[int], out_channels: int, used: list[int] | None = None):
        super().__init__()
        # `used`: the indices of the backbone's maps the neck reads (ModelConfig.feature_strides); all by default.
        self.used = list(range(len(in_channels))) if used is None else list(used)
        self.reduce = conv_bn_relu(sum(in_channels[i] for i in self.used), out_channels, 1)
        self.refine = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = [features[i] for i in self.used]
        size = features[0].shape[-2:]
        fused = torch.cat(
            [features[0]]
            + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
            dim=1,
        )
        return self.refine(self.reduce(fused))


class SELabModel(nn.Module):
    """The three variants of selab behind one forward.

    ``forward(inputs)`` takes a dict (a batch of the data loader) with ``image`` [B,3,S,S] (values in [0,1])
    or precomputed backbone ``features`` (a list of [B,C_i,h_i,w_i], from the feature cache) plus ``image``
    for the output size;
    the graph variants also need ``superpixels`` [B,S,S] (per-image ids from 0) or a level-0 ``graph``.
    Returns a :class:`ModelOutput`: predictions only; their supervision is :func:`selab.model.loss.compute_loss`.

    Examples
    --------
    >>> model = SELabModel(ModelConfig(variant="cnn", backbone="small", feature_channels=16))
    >>> model({"image": torch.rand(1, 3, 32, 32)}).logits.shape
    torch.Size([1, 7, 32, 32])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"SELabModel: config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = build_backbone(config.backbone, pretrained=config.pretrained, output_stride=config.output_stride)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
        if config.finetune_after_stride is not None:
            self.backbone.blocks_after(config.finetune_after_stride).requires_grad_(True)
        strides = list(self.backbone.strides)
        if config.feature_strides is not None and not set(config.feature_strides) <= set(strides):
            raise ValueError(f"ModelConfig.feature_strides: expected strides of the {config.backbone!r} backbone "
                             f"({strides}), got {config.feature_strides!r}")
        used = None if config.feature_strides is None else [strides.index(s) for s in sorted(set(config.feature_strides))]
        self.neck = FeatureNeck(self.backbone.out_channels, config.feature_channels, used)
        self.dropout = nn.Dropout2d(config.dropout)
        K, C, H = config.num_classes, config.feature_channels, config.hidden_channels
        # The CNN part of the final 1x1 classifier; for the graph variants its node part is `node_classifiers`.
        self.classifier = nn.Conv2d(C, K, 1)
        if config.uses_graph:
            self.confidence = nn.Conv2d(C, K, 1)
            # selab decision: node features are the pooled CNN features and initial confidences, projected to
            # H channels so that residual connections between layers have matching sizes.
            self.node_input = nn.Sequential(nn.Linear(C + K, H), nn.ReLU(inplace=True))
            self.layers = nn.ModuleList(
                GraphLSTM(H, H, residual=config.residual, identical_forget_gates=config.identical_forget_gates)
                for _ in range(config.num_layers)
            )
            # One classifier slice per layer whose states reach the pixels (classified_layers).
            self.node_classifiers = nn.ModuleList(nn.Linear(H, K, bias=False) for _ in self.classified_layers)
            # selab decision (issue 18): the level-0 graph and pooling matrix of every superpixel map seen,
            # kept (not a parameter or buffer, never saved); `model.structures = None` turns it off.
            self.structures = SuperpixelStructures()
            if config.variant == "se_lstm":
                # One evolution (with its own merge-probability weights) after every layer but the last.
                self.evolutions = nn.ModuleList(
                    StructureEvolution(H, **config.evolution_kwargs(index)) for index in range(config.num_layers - 1)
                )
            if config.top_down:
                self.top_down_input = nn.Sequential(nn.Linear(2 * H, H), nn.ReLU(inplace=True))
                self.top_down_layer = GraphLSTM(H, H, residual=config.residual,
                                                identical_forget_gates=config.identical_forget_gates)
                self.top_down_classifier = nn.Linear(H, K, bias=False)

    # -- what differs between the graph variants, as data ------------------------------------------------
    @property
    def classified_layers(self) -> list[int]:
        """The layers whose node states reach the pixels, in the order of ``node_classifiers``.

        ``graph_lstm``: the last layer (the paper's 1x1 conv after the stacked layers); ``se_lstm``: every
        layer, each on its own level; ``cnn``: none.
        """
        if not self.config.uses_graph:
            return []
        if self.config.variant == "graph_lstm":
            return [self.config.num_layers - 1]
        return list(range(self.config.num_layers))

    @property
    def carry(self) -> tuple[str, str]:
        """``(next_input, next_state)``: what the next layer reads and starts from.

        ``graph_lstm`` stacks its layers on one graph: the next layer reads this layer's output and starts
        from zero states. ``se_lstm`` follows ``ModelConfig.next_input`` / ``next_state`` (issue 19).
        """
        if self.config.variant == "graph_lstm":
            return "output", "zero"
        return self.config.next_input, self.config.next_state

    def layer_level(self, index: int) -> int:
        """The level layer ``index`` runs on: ``se_lstm``'s layer l on level l, ``graph_lstm``'s all on level 0."""
        return index if self.config.variant == "se_lstm" else 0

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # frozen batch-norm statistics too
            if self.config.finetune_after_stride is not None:
                self.backbone.blocks_after(self.config.finetune_after_stride).train(mode)
        if self.config.batchnorm == "frozen":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()  # normalise with the running statistics, also in training
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def backbone_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        if not self.config.freeze_backbone:
            return self.backbone(image)
        with torch.no_grad():
            frozen = self.backbone(image, until_stride=self.config.finetune_after_stride) \
                if self.config.finetune_after_stride is not None else self.backbone(image)
        return self.finish_features(frozen)

    def finish_features(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The backbone's maps from the frozen part's (all maps, or cached ones: a longer list is cut): the
        trained blocks of partial fine-tuning run on the last frozen map; without it ``maps`` unchanged."""
        stride = self.config.finetune_after_stride
        return maps if stride is None else self.backbone.forward_from(maps, stride)

    def forward(self, inputs: dict, generator: torch.Generator | None = None, confidence_only: bool = False,
                energy_labels: torch.Tensor | None = None) -> ModelOutput:
        """Logits of a batch of images (see the class docstring for ``inputs``).

        Parameters
        ----------
        inputs : dict
        generator : torch.Generator, optional
            Draws the stochastic update orders and the Metropolis-Hastings chains.
        confidence_only : bool
            Only the initial confidence maps (step one of the paper's two-step training).
        energy_labels : LongTensor [B,S,S], optional
            ``se_lstm``: ground-truth labels the chains' energy may read (the batch's ``mask`` in
            training). With them every evolution scores partitions with its ``energy`` option
            (``"ground_truth"`` by default, ``"mixed"`` or ``"prediction"``); without them (test time)
            with the predicted node classes.
        """
        if not isinstance(inputs, dict):
            raise TypeError(f"SELabModel.forward: inputs must be a dict, got {type(inputs).__name__}")
        if "image" not in inputs:
            raise ValueError("SELabModel.forward: inputs needs 'image' [B,3,S,S]")
        image = inputs["image"]
        device = next(self.parameters()).device
        size = tuple(image.shape[-2:])
        features = inputs.get("features")
        if features is None:
            features = self.backbone_features(image.to(device))
        else:
            features = self.finish_features([f.to(device=device, dtype=torch.float32) for f in features])
        fused = self.dropout(self.neck(features))
        cnn_logits = self.classifier(fused)
        if not self.config.uses_graph:
            return ModelOutput(logits=F.interpolate(cnn_logits, size=size, mode="bilinear", align_corners=False))
        if confidence_only:  # step one of the paper's two-step training
            confidence = F.interpolate(self.confidence(fused), size=size, mode="bilinear", align_corners=False)
            return ModelOutput(logits=None, confidence_logits=confidence)
        # selab decision: under bf16 autocast the backbone and neck compute in bfloat16, the graph part in
        # float32: the pooling's sparse product has no bfloat16 CPU kernel, and the Graph LSTM's gates and the
        # sampler's log-probabilities want the range (the graph part is a small share of the FLOPs).
        with torch.autocast(device.type, enabled=False):
            return self._graph_forward(inputs, fused.float(), cnn_logits.float(), size, generator, energy_labels)

    # -- graph variants ---------------------------------------------------------------------------------
    def update_rank(self, order_name: str, confidence: torch.Tensor, graph: Graph,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Rank ``[N]`` of every node of ``graph`` in the update order ``order_name`` (:func:`selab.method.orders.update_rank`)."""
        return update_rank(order_name, graph.edge_index, graph.pos, graph.batch, confidence,
                           noise=self.config.order_noise, generator=generator)

    def _graph_forward(self, inputs, fused, cnn_logits, size, generator, energy_labels) -> ModelOutput:
        graph, matrix = inputs.get("graph"), None
        if graph is None:
            if inputs.get("superpixels") is None:
                raise ValueError(
                    f"SELabModel.forward: variant {self.config.variant!r} needs inputs['superpixels'] [B,S,S]"
                )
            superpixels = torch.as_tensor(inputs["superpixels"])
            if getattr(self, "structures", None) is not None and fused.dtype == torch.float32:
                graph, matrix = self.structures.graph(superpixels, tuple(fused.shape[-2:]))
            else:
                graph = graph_from_superpixels(superpixels)
        if tuple(graph.assignment.shape[-2:]) != size:
            raise ValueError(
                f"SELabModel.forward: superpixels {tuple(graph.assignment.shape)} must match the image size {size}"
            )
        device = fused.device
        graph = graph.to(device)
        confidence_lowres = self.confidence(fused)
        node_in = upsample_and_pool(torch.cat([fused, confidence_lowres], 1), graph.assignment,
                                    graph.num_nodes, graph.ptr, None if matrix is None else matrix.to(device))
        # selab decision: a node's confidence is the softmax of its mean confidence logits.
        node_confidence = node_in[:, -self.config.num_classes:].detach().softmax(1)
        x = self.node_input(node_in)
        order_name = self.config.effective_train_order if self.training else self.config.order
        node_labels_of = None
        if energy_labels is not None and self.config.variant == "se_lstm":
            mask = energy_labels.to(device)
            on_superpixels = _on_superpixels(graph)
            histogram = (node_label_histogram(mask, graph.assignment, graph.num_nodes, self.config.num_classes)
                         if on_superpixels else None)

            def node_labels_of(level):  # each level's majority labels, from the superpixels' histograms
                return level_majority_labels(level, mask, self.config.num_classes, histogram)

        out = ModelOutput(logits=None, levels=[graph], confidence_logits=F.interpolate(
            confidence_lowres, size=size, mode="bilinear", align_corners=False))
        if node_labels_of is not None:
            out.labels_mask = mask
        cnn_logits = F.interpolate(cnn_logits, size=size, mode="bilinear", align_corners=False)

        num_samples = 1 if self.training else self.config.eval_samples
        if generator is None and not self.training and self._stochastic_at_test():
            generator = torch.Generator(device=device).manual_seed(self.config.eval_seed)
        # selab decision (issue 19): with eval_samples = K > 1, K structures per image and the mean of their
        # logits; the CNN part and the node features are computed once, the Graph LSTM layers and
        # evolutions K times.
        sums = []
        for k in range(num_samples):
            record = out if k == 0 else ModelOutput(logits=None, levels=[graph],
                                                    confidence_logits=out.confidence_logits)
            sums.append(_PixelLogits(cnn_logits, graph))
            self._graph_layers(record, x, node_confidence, order_name, generator, sums[-1], node_labels_of)
            if num_samples > 1:
                out.samples.append(record)
        out.logits = _PixelLogits.mean(sums)
        return out

    def _stochastic_at_test(self) -> bool:
        """Whether the test-time graph part draws random numbers (then a seeded generator is used)."""
        if self.config.eval_samples > 1:
            return True
        return any(evo.current_mode() == "mh" for evo in getattr(self, "evolutions", []))

    def _graph_layers(self, out, x, node_confidence, order_name, generator, pixels, node_labels_of) -> None:
        """The Graph LSTM layers (and evolutions) of one structure, from the level-0 graph ``out.levels[0]``.

        Records levels, states, ranks, merge probabilities and traces in ``out``; adds the classified
        layers' node logits to ``pixels``. ``node_labels_of(level)`` gives the energy's labels, if any.
        """
        graph = out.levels[0]
        h = m = None
        last = len(self.layers) - 1
        confidence0 = node_confidence
        x0, to_level = x, None  # level-0 node features; level-0 node -> node of the current level
        next_input, next_state = self.carry
        classifiers = dict(zip(self.classified_layers, self.node_classifiers))
        for index, layer in enumerate(self.layers):
            rank = self.update_rank(order_name, node_confidence, graph, generator)
            result = layer(x, graph.edge_index, rank, schedule=self.config.schedule, h0=h, m0=m)
            out.states.append(result.h)
            out.ranks.append(rank)
            if index in classifiers:
                pixels.add(classifiers[index](result.h), graph)
            if index == last:
                break
            # selab decision (issue 19): what the next level reads (next_input) and starts from (next_state);
            # the defaults ("output", "output") stack the layers and carry the layer output as h0.
            features = result.h if next_input == "output" else x
            state = result.hidden if next_state == "hidden" else result.h
            x, h, m = features, state, result.m
            if hasattr(self, "evolutions"):
                evolution = self.evolutions[index]
                node_labels = None if node_labels_of is None else node_labels_of(graph)
                if node_labels is not None:
                    out.level_labels.append(node_labels)
                evolved = evolution(graph, result, node_confidence, node_labels=node_labels,
                                    energy=evolution.energy if node_labels is not None else "prediction",
                                    generator=generator, features=features, state=state)
                out.merge_prob.append(evolved.merge_prob)
                out.traces.append(evolved.trace)
                graph, x, h, m = evolved.graph, evolved.graph.x, evolved.h, evolved.m
                node_confidence = evolved.confidence
                to_level = evolved.cluster if to_level is None else evolved.cluster[to_level]
                if next_input == "level0":
                    # the mean over the level-0 nodes the node covers, not a mean of the previous level's means
                    x = scatter_mean(x0, to_level, graph.num_nodes)
                    graph = dataclasses.replace(graph, x=x)
                out.levels.append(graph)
            if next_state == "zero":
                h = m = None
        if self.config.top_down:
            self._top_down(out, x0, confidence0, to_level, order_name, generator, pixels)

    def _top_down(self, out, x0, confidence0, to_level, order_name, generator, pixels) -> None:
        """The top-down layer (``ModelConfig.top_down``): the top level's states read on the level-0 graph."""
        level0, top = out.levels[0], out.states[-1]
        context = top if to_level is None else top.index_select(0, to_level)
        z = self.top_down_input(torch.cat([x0, context], 1))
        rank = self.update_rank(order_name, confidence0, level0, generator)
        out.top_down = self.top_down_layer(z, level0.edge_index, rank, schedule=self.config.schedule).h
        pixels.add(self.top_down_classifier(out.top_down), level0)

    def level_logits(self, output: ModelOutput) -> list[tuple[torch.Tensor, Graph]]:
        """The node logits that reach the pixels, with the level they are on: one pair per classified layer.

        The model's logits are the CNN's logits plus these copied to the pixels of their level (for the
        first structure of ``output``).
        """
        shares = [(classifier(output.states[index]), output.levels[self.layer_level(index)])
                  for index, classifier in zip(self.classified_layers, self.node_classifiers)]
        if output.top_down is not None:
            shares.append((self.top_down_classifier(output.top_down), output.levels[0]))
        return shares


def _on_superpixels(level0: Graph) -> bool:
    """Whether the level-0 nodes are the superpixels (then every level can be summed on them)."""
    sp = level0.superpixel_assignment
    return sp is not None and torch.equal(sp, torch.arange(level0.num_nodes, device=sp.device))


class _PixelLogits:
    """The logits of one structure: the CNN's logits plus every classified layer's node logits on the pixels.

    Where the level-0 nodes are the superpixels, each level's node logits are gathered onto the
    superpixels and summed there, so that one unpooling to the pixels (the costly gather and its
    backward) serves all levels. Exact: each node covers its superpixels' pixels.
    """

    def __init__(self, cnn_logits: torch.Tensor, level0: Graph):
        self.level0, self.on_superpixels = level0, _on_superpixels(level0)
        self.direct = cnn_logits  # the CNN's logits plus the shares copied to the pixels directly
        self.superpixels = 0  # the shares summed on the level-0 superpixels [N0, K]

    def add(self, node_logits: torch.Tensor, graph: Graph) -> None:
        if self.on_superpixels:
            self.superpixels = self.superpixels + node_logits.index_select(0, graph.superpixel_assignment)
        else:
            self.direct = self.direct + unpool_to_pixels(node_logits, graph.assignment)

    @staticmethod
    def mean(sums: list) -> torch.Tensor:
        """The mean logits ``[B,K,S,S]`` of one or more structures' sums (the superpixels unpooled once)."""
        if len(sums) == 1:
            direct, superpixels = sums[0].direct, sums[0].superpixels
        else:
            direct = sum(s.direct for s in sums) / len(sums)
            superpixels = sum(s.superpixels for s in sums) / len(sums)
        if isinstance(superpixels, torch.Tensor):
            direct = direct + unpool_to_pixels(superpixels, sums[0].level0.assignment)
        return direct


def build_model(config: ModelConfig | dict) -> SELabModel:
    """A model from a :class:`ModelConfig` or its dict (as saved in ``config.json``).

    Examples
    --------
    >>> build_model({"variant": "cnn", "backbone": "small"}).config.variant
    'cnn'
    """
    if isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"build_model: unknown ModelConfig fields {sorted(unknown)}")
        config = ModelConfig(**config)
    return SELabModel(config)

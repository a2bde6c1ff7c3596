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

Example
-------
>>> import torch
>>> model = SELabModel(ModelConfig(variant="cnn", backbone="small"))
>>> out = model({"image": torch.rand(2, 3, 64, 64)})
>>> tuple(out.logits.shape)
(2, 7, 64, 64)
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selab.backbones import BACKBONES, build_backbone
from selab.classes import NUM_CLASSES

VARIANTS = ("cnn", "graph_lstm", "se_lstm")
ORDERS = ("confidence", "stochastic", "random", "bfs", "dfs")
NEXT_INPUTS = ("output", "input", "level0")
NEXT_STATES = ("output", "hidden", "zero")
BATCHNORMS = ("batch", "sync", "frozen")


@dataclass
class ModelConfig:
    """Everything that defines a model; saved in each run's ``config.json``.

    Parameters
    ----------
    variant : {"cnn", "graph_lstm", "se_lstm"}
    backbone : {"small", "efficientnet_lite0"}
    pretrained : bool
        ImageNet weights for ``efficientnet_lite0`` (ignored by ``small``).
    output_stride : {8, 16}
        Finest backbone stride used.
    freeze_backbone : bool
        Keep the backbone fixed (eval mode, no gradients); lets :mod:`selab.train` cache its features.
    feature_channels : int
        Channels of the fused CNN features (the two-layer conv neck).
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
        Graph LSTM schedule (:class:`selab.graph_lstm.GraphLSTM`): ``wavefront`` is the paper's
        sequential update computed level by level; ``synchronous`` is a selab ablation (every neighbour
        read in its old state, all nodes in one step).
    order_noise : float
        Noise scale of the stochastic order.
    n_segments, compactness : SLIC parameters of the superpixels (used by the data pipeline).
    evolution : dict
        Keyword arguments for :class:`selab.evolve.StructureEvolution` (``se_lstm`` only). A list value
        gives one value per evolution, in order (length ``num_layers - 1``), e.g.
        ``{"merge_budget": [0.25, 0.5, 0.75]}``; any other value is shared by all evolutions. With
        ``{"mode": "none"}`` nothing ever merges (``eval_mode`` follows ``mode``, see
        :class:`~selab.evolve.StructureEvolution`) and the model is the same network as with merging:
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
    merge_loss_weight : float
        Weight of the merge-probability L2 loss (``se_lstm``).
    confidence_loss_weight : float
        Weight of a cross-entropy on the initial confidence maps. selab decision: on by default for the
        graph variants, so that the confidences that drive the update order stay meaningful.
    dropout : float
        Dropout on the fused features before the classifier.
    batchnorm : {"batch", "sync", "frozen"}
        How the BatchNorm layers normalise in training. ``"batch"`` (PyTorch's default): with the
        statistics of the batch, in a data-parallel run (:mod:`selab.distributed`) of each process's
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
    feature_channels: int = 128
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
    merge_loss_weight: float = 1.0
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

        Example
        -------
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
    merge_prob, merge_target : list of Tensor [E_l]
        ``se_lstm``: merge probabilities of each layer's edges and their targets (when a mask is given).
    traces : list
        ``se_lstm``: the Metropolis-Hastings trace of each layer.
    samples : list of ModelOutput
        With ``eval_samples = K > 1`` in ``eval()``: the K structures (their ``levels``, ``states``,
        ``ranks``, ``merge_prob``, ``traces``; no logits); the fields above are those of the first.
    """

    logits: torch.Tensor
    confidence_logits: torch.Tensor | None = None
    levels: list = field(default_factory=list)
    states: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    merge_prob: list = field(default_factory=list)
    merge_target: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    samples: list = field(default_factory=list)


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FeatureNeck(nn.Module):
    """Fuse multi-scale features at the finest stride: upsample, concatenate, 1x1 then 3x3 conv.

    With :class:`~selab.backbones.EfficientNetLite0Backbone` this is the "two-layer conv head on stride-8
    features" of the DESIGN reference, fed richer concatenated stride-8/16/32 features.
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.reduce = conv_bn_relu(sum(in_channels), out_channels, 1)
        self.refine = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        fused = torch.cat(
            [features[0]]
            + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
            dim=1,
        )
        return self.refine(self.reduce(fused))


def _bilinear_taps(out_size: int, in_size: int, device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` on one axis."""
    src = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5)
    src = src.clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    w_high = src - low
    return low, high, 1.0 - w_high, w_high


def upsample_and_pool(features: torch.Tensor, labels: torch.Tensor, num_nodes: int, ptr: torch.Tensor) -> torch.Tensor:
    """Mean over each superpixel of the bilinearly upsampled ``features``, without upsampling.

    Equal (up to float rounding) to ``pool_to_nodes(F.interpolate(features, size=labels.shape[-2:],
    mode="bilinear"), labels).x`` but costs O(S^2 + nnz*C) instead of O(C*S^2): the composition of the
    two linear maps is a sparse [N, B*h*w] matrix (:func:`pooling_matrix`; a node touches about a dozen
    feature cells), applied as one CSR matrix product (and its transpose in the backward).

    Parameters
    ----------
    features : Tensor [B,C,h,w]
    labels : LongTensor [B,S,S]
        Global node ids (image b's nodes are ``ptr[b] .. ptr[b+1]-1``).
    num_nodes : int
    ptr : LongTensor [B+1]

    Returns
    -------
    Tensor [N,C]

    Examples
    --------
    >>> f = torch.rand(1, 3, 4, 4); lab = torch.zeros(1, 8, 8, dtype=torch.long)
    >>> x = upsample_and_pool(f, lab, 1, torch.tensor([0, 1]))
    >>> torch.allclose(x, F.interpolate(f, size=(8, 8), mode="bilinear").mean((2, 3)))
    True
    """
    batch, channels, h, w = features.shape
    rows, cols, weights = pooling_matrix(labels.to(features.device), num_nodes, ptr, (h, w), features.dtype)
    cells = features.permute(0, 2, 3, 1).reshape(batch * h * w, channels)
    return _SparseRows.apply(rows, cols, weights, (num_nodes, batch * h * w), cells)


def _compressed(sorted_rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """CSR row pointers [num_rows + 1] of sorted COO row indices."""
    counts = torch.bincount(sorted_rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _SparseRows(torch.autograd.Function):
    """``M @ dense`` for a COO matrix with sorted rows, as a CSR product; the backward is ``M^T @ grad``."""

    @staticmethod
    def forward(ctx, rows, cols, weights, shape, dense):
        ctx.save_for_backward(rows, cols, weights)
        ctx.shape = shape
        if rows.numel() == 0:
            return dense.new_zeros(shape[0], dense.shape[1])
        crow = _compressed(rows, shape[0])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product itself is plain
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(crow, cols, weights, shape, check_invariants=False)
        return matrix @ dense.contiguous()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[4]:
            return None, None, None, None, None
        rows, cols, weights = ctx.saved_tensors
        if rows.numel() == 0:
            return None, None, None, None, grad.new_zeros(ctx.shape[1], grad.shape[1])
        order = torch.argsort(cols, stable=True)
        crow = _compressed(cols[order], ctx.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            transposed = torch.sparse_csr_tensor(crow, rows[order], weights[order], ctx.shape[::-1],
                                                 check_invariants=False)
        return None, None, None, None, transposed @ grad.contiguous()


def pooling_matrix(labels: torch.Tensor, num_nodes: int, ptr: torch.Tensor, feature_size: tuple[int, int],
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse matrix of :func:`upsample_and_pool`: ``(rows, cols, weights)`` in COO form.

    ``rows`` are global node ids, ``cols`` global feature cells ``b*h*w + i*w + j`` of a [B,C,h,w] map,
    and ``weights`` the mean over the node's pixels of their bilinear weight on the cell
    (``F.interpolate(mode="bilinear", align_corners=False)``); sorted by row, then col. It depends
    only on the superpixels.

    Examples
    --------
    >>> r, c, wt = pooling_matrix(torch.zeros(1, 4, 4, dtype=torch.long), 1, torch.tensor([0, 1]), (2, 2))
    >>> r.tolist(), c.tolist(), wt.tolist()
    ([0, 0, 0, 0], [0, 1, 2, 3], [0.25, 0.25, 0.25, 0.25])
    """
    h, w = feature_size
    size_y, size_x = labels.shape[-2:]
    device = labels.device
    taps_y = _bilinear_taps(size_y, h, device)
    taps_x = _bilinear_taps(size_x, w, device)
    count = torch.bincount(labels.reshape(-1), minlength=num_nodes).to(dtype).clamp(min=1)
    # The four (cell, weight) taps of every pixel of an [S,S] image, the same for all images.
    taps = []
    for r_index, r_weight in ((taps_y[0], taps_y[2]), (taps_y[1], taps_y[3])):
        for c_index, c_weight in ((taps_x[0], taps_x[2]), (taps_x[1], taps_x[3])):
            taps.append(((r_index[:, None] * w + c_index[None, :]).reshape(-1),
                         (r_weight[:, None] * c_weight[None, :]).to(dtype).reshape(-1)))
    ptr = ptr.tolist()
    sizes = [stop - start for start, stop in zip(ptr[:-1], ptr[1:])]
    # One dense scratch block of N_b x h*w, reused by every image and cleared only where it was written.
    block = torch.zeros(max(sizes, default=0) * h * w, device=device, dtype=dtype)
    rows, cols, weights = [], [], []
    for b, (start, n) in enumerate(zip(ptr[:-1], sizes)):  # a loop over images, not pixels or nodes
        local = (labels[b].reshape(-1) - start) * (h * w)
        for cell, weight in taps:
            block.index_add_(0, local + cell, weight)
        key = block[: n * h * w].nonzero().squeeze(1)
        node = torch.div(key, h * w, rounding_mode="floor")
        rows.append(node + start)
        cols.append(key - node * (h * w) + b * h * w)
        weights.append(block[key] / count[start + node])
        block[key] = 0
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty, torch.zeros(0, dtype=dtype, device=device)
    return torch.cat(rows), torch.cat(cols), torch.cat(weights)


class SELabModel(nn.Module):
    """The three variants of selab behind one forward.

    ``forward(batch)`` takes a dict with ``image`` [B,3,S,S] (values in [0,1]) or precomputed backbone
    ``features`` (a list of [B,C_i,h_i,w_i], from the feature cache) plus ``image`` for the output size;
    the graph variants also need ``superpixels`` [B,S,S] (per-image ids from 0); ``se_lstm`` uses ``mask``
    [B,S,S] in training for the merge targets. Returns a :class:`ModelOutput`.

    Example
    -------
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
        self.neck = FeatureNeck(self.backbone.out_channels, config.feature_channels)
        self.dropout = nn.Dropout2d(config.dropout)
        K, C, H = config.num_classes, config.feature_channels, config.hidden_channels
        # The CNN part of the final 1x1 classifier; for the graph variants its node part is `node_classifiers`.
        self.classifier = nn.Conv2d(C, K, 1)
        if config.uses_graph:
            from selab.graph_lstm import GraphLSTM

            self.confidence = nn.Conv2d(C, K, 1)
            # selab decision: node features are the pooled CNN features and initial confidences, projected to
            # H channels so that residual connections between layers have matching sizes.
            self.node_input = nn.Sequential(nn.Linear(C + K, H), nn.ReLU(inplace=True))
            self.layers = nn.ModuleList(
                GraphLSTM(H, H, residual=config.residual, identical_forget_gates=config.identical_forget_gates)
                for _ in range(config.num_layers)
            )
            # One classifier slice per level whose states reach the pixels (graph_lstm: the last layer;
            # se_lstm: every level).
            levels_out = config.num_layers if config.variant == "se_lstm" else 1
            self.node_classifiers = nn.ModuleList(nn.Linear(H, K, bias=False) for _ in range(levels_out))
            if config.variant == "se_lstm":
                from selab.evolve import StructureEvolution

                # One evolution (with its own merge-probability weights) after every layer but the last.
                self.evolutions = nn.ModuleList(
                    StructureEvolution(H, **config.evolution_kwargs(index)) for index in range(config.num_layers - 1)
                )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # frozen batch-norm statistics too
        if self.config.batchnorm == "frozen":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()  # normalise with the running statistics, also in training
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def backbone_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        if self.config.freeze_backbone:
            with torch.no_grad():
                return self.backbone(image)
        return self.backbone(image)

    def forward(self, batch: dict, generator: torch.Generator | None = None,
                confidence_only: bool = False) -> ModelOutput:
        if not isinstance(batch, dict):
            raise TypeError(f"SELabModel.forward: batch must be a dict, got {type(batch).__name__}")
        if "image" not in batch:
            raise ValueError("SELabModel.forward: batch needs 'image' [B,3,S,S]")
        image = batch["image"]
        device = next(self.parameters()).device
        size = tuple(image.shape[-2:])
        features = batch.get("features")
        if features is None:
            features = self.backbone_features(image.to(device))
        else:
            features = [f.to(device=device, dtype=torch.float32) for f in features]
        fused = self.dropout(self.neck(features))
        cnn_logits = self.classifier(fused)
        if not self.config.uses_graph:
            return ModelOutput(logits=F.interpolate(cnn_logits, size=size, mode="bilinear", align_corners=False))
        if confidence_only:  # step one of the paper's two-step training
            confidence = F.interpolate(self.confidence(fused), size=size, mode="bilinear", align_corners=False)
            return ModelOutput(logits=None, confidence_logits=confidence)
        return self._graph_forward(batch, fused, cnn_logits, size, generator)

    # -- graph variants ---------------------------------------------------------------------------------
    def _order(self, name, confidence, graph, generator):
        from selab import graph_lstm as gl

        if name == "confidence":
            return gl.confidence_order(confidence, graph.pos, graph.batch)
        if name == "stochastic":
            return gl.stochastic_order(confidence, graph.pos, graph.batch, noise=self.config.order_noise,
                                       generator=generator)
        if name == "random":
            return gl.random_order(graph.batch, generator=generator)
        start = gl.most_confident_node(confidence, graph.batch, graph.pos)
        if name == "bfs":
            return gl.bfs_order(graph.edge_index, start, graph.batch)
        return gl.dfs_order(graph.edge_index, start, graph.batch)

    def _graph_forward(self, batch, fused, cnn_logits, size, generator) -> ModelOutput:
        from selab.graph import graph_from_superpixels
        from selab.superpixels import unpool_to_pixels

        graph = batch.get("graph")
        if graph is None:
            if batch.get("superpixels") is None:
                raise ValueError(
                    f"SELabModel.forward: variant {self.config.variant!r} needs batch['superpixels'] [B,S,S]"
                )
            graph = graph_from_superpixels(torch.as_tensor(batch["superpixels"]))
        if tuple(graph.assignment.shape[-2:]) != size:
            raise ValueError(
                f"SELabModel.forward: superpixels {tuple(graph.assignment.shape)} must match the image size {size}"
            )
        device = fused.device
        graph = graph.to(device)
        confidence_lowres = self.confidence(fused)
        node_in = upsample_and_pool(torch.cat([fused, confidence_lowres], 1), graph.assignment,
                                    graph.num_nodes, graph.ptr)
        # selab decision: a node's confidence is the softmax of its mean confidence logits.
        node_confidence = node_in[:, -self.config.num_classes:].detach().softmax(1)
        x = self.node_input(node_in)
        order = self.config.effective_train_order if self.training else self.config.order
        mask = batch.get("mask")
        # Merge targets (and the ground-truth energy) need the labels: only in training (the explorer in
        # selab.widgets sets the training flag alone to show the ground-truth energy at test time).
        mask = mask.to(device) if mask is not None and self.training else None
        out = ModelOutput(logits=None, levels=[graph], confidence_logits=F.interpolate(
            confidence_lowres, size=size, mode="bilinear", align_corners=False))
        logits = F.interpolate(cnn_logits, size=size, mode="bilinear", align_corners=False)
        # se_lstm: every level's node logits are gathered onto the level-0 superpixels and summed there, so
        # that one unpooling to the pixels (the costly gather and its backward) serves all levels. Exact:
        # each level's node covers its superpixels' pixels. Needs the level-0 nodes to be the superpixels.
        sp0 = graph.superpixel_assignment
        on_superpixels = sp0 is not None and torch.equal(sp0, torch.arange(graph.num_nodes, device=sp0.device))

        num_samples = 1 if self.training else self.config.eval_samples
        if generator is None and not self.training and self._stochastic_at_test():
            generator = torch.Generator(device=device).manual_seed(self.config.eval_seed)
        if num_samples == 1:
            logits, superpixel_logits = self._graph_layers(out, graph, x, node_confidence, mask, order,
                                                           generator, logits, on_superpixels)
        else:
            # selab decision (issue 19): K structures per image, the mean of their logits; the CNN part and
            # the node features are computed once, only the Graph LSTM layers and evolutions repeat.
            total, superpixel_logits = 0, 0
            for k in range(num_samples):
                record = out if k == 0 else ModelOutput(logits=None, levels=[graph],
                                                        confidence_logits=out.confidence_logits)
                sample_logits, sample_sp = self._graph_layers(record, graph, x, node_confidence, mask,
                                                              order, generator, logits, on_superpixels)
                total, superpixel_logits = total + sample_logits, superpixel_logits + sample_sp
                out.samples.append(record)
            logits, superpixel_logits = total / num_samples, superpixel_logits / num_samples
        if on_superpixels and self.config.variant == "se_lstm":
            logits = logits + unpool_to_pixels(superpixel_logits, out.levels[0].assignment)
        out.logits = logits
        return out

    def _stochastic_at_test(self) -> bool:
        """Whether the test-time graph part draws random numbers (then a seeded generator is used)."""
        if self.config.eval_samples > 1:
            return True
        return any(evo.current_mode() == "mh" for evo in getattr(self, "evolutions", []))

    def _graph_layers(self, out, graph, x, node_confidence, mask, order, generator, logits, on_superpixels):
        """The Graph LSTM layers (and evolutions) of one structure; records levels, states, ... in ``out``.

        Returns ``(logits, superpixel_logits)``: ``logits`` plus every level's share that went to the pixels
        directly, and the levels' node logits summed on the level-0 superpixels (``0`` when none).
        """
        from selab.evolve import merge_target, node_majority_labels
        from selab.graph import scatter_mean
        from selab.superpixels import unpool_to_pixels

        device = x.device
        h = m = None
        last = len(self.layers) - 1
        x0, to_level = x, None  # level-0 node features; level-0 node -> node of the current level
        next_input, next_state = self.config.next_input, self.config.next_state
        superpixel_logits = 0
        for index, layer in enumerate(self.layers):
            rank = self._order(order, node_confidence, graph, generator)
            result = layer(x, graph.edge_index, rank, schedule=self.config.schedule, h0=h, m0=m)
            out.states.append(result.h)
            out.ranks.append(rank)
            if self.config.variant == "graph_lstm":
                # Stacked layers: the next layer reads this layer's output and starts from zero states.
                x = result.h
                if index == last:
                    logits = logits + unpool_to_pixels(self.node_classifiers[0](result.h), graph.assignment)
                continue
            # se_lstm: this level's states reach the pixels, then (but after the last layer) the structure evolves.
            node_logits = self.node_classifiers[index](result.h)
            if on_superpixels:
                superpixel_logits = superpixel_logits + node_logits.index_select(0, graph.superpixel_assignment.to(device))
            else:
                logits = logits + unpool_to_pixels(node_logits, graph.assignment)
            if index == last:
                break
            evolution = self.evolutions[index]
            node_labels = None
            if mask is not None:
                node_labels = node_majority_labels(mask, graph.assignment, graph.num_nodes, self.config.num_classes)
            # The energy source, explicit: the evolution's own option (ground truth or prediction) where the
            # labels are known (training), the prediction (node_class_prob) at test time.
            energy = evolution.energy if node_labels is not None else "prediction"
            # selab decision (issue 19): what the next level reads (next_input) and starts from (next_state);
            # the defaults ("output", "output") stack the layers and carry the layer output as h0.
            features = result.h if next_input == "output" else x
            state = result.hidden if next_state == "hidden" else result.h
            evolved = evolution(graph, result, node_confidence, node_labels=node_labels, energy=energy,
                                generator=generator, features=features, state=state)
            out.merge_prob.append(evolved.merge_prob)
            if node_labels is not None:
                out.merge_target.append(merge_target(graph.edge_index, node_labels))
            out.traces.append(evolved.trace)
            graph, x, h, m = evolved.graph, evolved.graph.x, evolved.h, evolved.m
            if next_input == "level0":
                # the mean over the level-0 nodes the node covers, not a mean of the previous level's means
                to_level = evolved.cluster if to_level is None else evolved.cluster[to_level]
                x = scatter_mean(x0, to_level, graph.num_nodes)
                graph = dataclasses.replace(graph, x=x)
            if next_state == "zero":
                h = m = None
            node_confidence = evolved.confidence
            out.levels.append(graph)
        return logits, superpixel_logits


def build_model(config: ModelConfig | dict) -> SELabModel:
    """A model from a :class:`ModelConfig` or its dict (as saved in ``config.json``).

    Example
    -------
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

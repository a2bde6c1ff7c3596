r"""The parsing model: backbone -> [superpixel graph -> Graph LSTM / SE-LSTM layers] -> pixel classifier.

One :class:`~selab.model.config.ModelConfig` builds the three variants compared in selab:

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
>>> from selab.model.config import ModelConfig
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

from selab.model.backbones import build_backbone
from selab.method.evolve import StructureEvolution
from selab.method.graph import Graph, SuperpixelStructures, graph_from_superpixels, level_majority_labels, scatter_mean
from selab.method.graph_lstm import GraphLSTM
from selab.method.orders import update_rank
from selab.model.config import ModelConfig
from selab.method.superpixels import node_label_histogram, unpool_to_pixels, upsample_and_pool

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
        targets from them when its mask is that one, instead of counting again.
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

    With :class:`~selab.model.backbones.EfficientNetLiteBackbone` (EfficientNet-Lite0) this is the "two-layer conv head on stride-8
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
            # selab decision: the level-0 graph and pooling matrix of every superpixel map seen,
            # kept (not a parameter or buffer, never saved); `model.structures = None` turns it off.
            self.structures = SuperpixelStructures()
            # se_lstm: one evolution (with its own merge-probability weights) after every layer but the last;
            # graph_lstm: none (an empty list holds no weights).
            evolving = config.num_layers - 1 if config.variant == "se_lstm" else 0
            self.evolutions = nn.ModuleList(StructureEvolution(H, num_classes=K, **config.evolution_kwargs(index))
                                            for index in range(evolving))
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
        layer, each on its own level (with ``readout="level0"`` the first only, beside the top-down layer);
        ``cnn``: none.
        """
        if not self.config.uses_graph:
            return []
        if self.config.variant == "graph_lstm":
            return [self.config.num_layers - 1]
        if self.config.readout == "level0":
            return [0]
        return list(range(self.config.num_layers))

    @property
    def carry(self) -> tuple[str, str]:
        """``(next_input, next_state)``: what the next layer reads and starts from.

        ``graph_lstm`` stacks its layers on one graph: the next layer reads this layer's output and starts
        from zero states. ``se_lstm`` follows ``ModelConfig.next_input`` / ``next_state``.
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
            training). With them every evolution scores partitions with its ``energy_source`` option
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
        # selab decision: with eval_samples = K > 1, K structures per image and the mean of their
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
        return self.config.variant == "se_lstm" and any(evo.current_mode() == "mh" for evo in self.evolutions)

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
            result = layer(x, graph.edge_index, rank, update_schedule=self.config.update_schedule, h0=h, m0=m)
            out.states.append(result.h)
            out.ranks.append(rank)
            if index in classifiers:
                pixels.add(classifiers[index](result.h), graph)
            if index == last:
                break
            # selab decision: what the next level reads (next_input) and starts from (next_state);
            # the defaults ("output", "output") stack the layers and carry the layer output as h0.
            features = result.h if next_input == "output" else x
            state = result.hidden if next_state == "hidden" else result.h
            x, h, m = features, state, result.m
            if self.config.variant == "se_lstm":
                evolution = self.evolutions[index]
                node_labels = None if node_labels_of is None else node_labels_of(graph)
                if node_labels is not None:
                    out.level_labels.append(node_labels)
                evolved = evolution(graph, result, node_confidence, node_labels=node_labels,
                                    energy_source=evolution.energy_source if node_labels is not None else "prediction",
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
        out.top_down = self.top_down_layer(z, level0.edge_index, rank, update_schedule=self.config.update_schedule).h
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
    """A model from a :class:`~selab.model.config.ModelConfig` or its dict (as saved in ``config.json``).

    Examples
    --------
    >>> build_model({"variant": "cnn", "backbone": "small"}).config.variant
    'cnn'
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return SELabModel(config)

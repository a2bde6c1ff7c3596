"""ipywidgets explorers for the Structure-evolving LSTM, testable without a browser.

Each explorer lets a researcher turn one knob of the pipeline of Liang et al. (Graph LSTM, ECCV 2016;
SE-LSTM, CVPR 2017) and see the effect: the number and compactness of SLIC superpixels, the node update
order of a Graph LSTM layer, the temperature of the Metropolis-Hastings merge chain, and the image and
the layer of an evolved hierarchy.

Every explorer follows one pattern, so that it can be unit-tested in pytest by setting ``.value`` on a
control and checking the result (an exception inside a widget callback does not fail papermill):

- ``controls``: a dict of ipywidgets controls with stable, readable descriptions (the slider of the
  evolution explorer is described ``"layer"``), which browser tests can find;
- ``state``: a plain dict recomputed by :meth:`FigureApp.update` from the controls, the readout tests check;
- ``figure``: a matplotlib ``Figure`` (not managed by pyplot, so nothing is drawn twice in a notebook)
  redrawn by :meth:`FigureApp.update` and shown as PNG bytes in ``image`` (an ``ipywidgets.Image``);
  ``renders`` counts the redraws;
- ``readout``: an ``ipywidgets.HTML`` line summarising ``state`` (or the error, if a callback failed),
  field by field: a long line wraps between fields, never inside one;
- ``widget``: the whole app as one ipywidgets box; :meth:`FigureApp.display` and ``_repr_mimebundle_`` show it.

selab decision: the figure is rendered to a PNG ``Image`` widget rather than an ``Output`` widget holding
an inline-backend figure: it looks the same, does not depend on the kernel's matplotlib backend, and
tests can check that the picture changed by comparing bytes.

selab decision: every control shows its whole description (``description_width: initial``), so that
"compactness" and "temperature" are not cut to "compactn…" and "temperat…".
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from selab.method import orders

from selab.workbench import viz
from selab.classes import CLASS_COLORS
from selab.data.datasets import decode_image, read_image, read_mask, resize_image
from selab.method.merge import connected_components
from selab.method.mh import metropolis_hastings
from selab.method.graph import graph_from_superpixels
from selab.method.graph_lstm import GraphLSTM
from selab.method.superpixels import adjacency, node_label_histogram, pool_to_nodes, slic, unpool_to_pixels

__all__ = ["ORDERS", "PEOPLE_PHOTOS", "update_order", "FigureApp", "SuperpixelExplorer", "UpdateOrderExplorer",
           "mh_table", "MHChainExplorer", "merge_colour_floor", "photo_sample", "photo_samples", "as_batch",
           "evolution_forward", "level_inputs", "level_contributions", "level_predictions", "EvolutionExplorer"]

#: scikit-image's sample photos that show a person (shipped with scikit-image: no download).
PEOPLE_PHOTOS = ("astronaut", "camera")

#: The update orders the explorers offer, by name (the paper's Graph LSTM ablations plus a baseline).
ORDERS = ("confidence", "bfs", "dfs", "random")


def update_order(name: str, edge_index: Any, pos: Any, confidence: Any | None = None, batch: Any | None = None,
                 seed: int = 0) -> torch.Tensor:
    """Rank ``[N]`` of every node in the update order called ``name`` (one of :data:`ORDERS`).

    The model's own orders (:func:`selab.method.orders.update_rank`) on array-like inputs: ``confidence`` is
    the paper's confidence-driven order (foreground first, most confident first); ``bfs`` and ``dfs``
    start at the most confident node when ``confidence`` is given (the paper's "BFS/DFS (confidence)"),
    else at the left-most node ("location"); ``random`` uses ``seed``.

    Examples
    --------
    >>> import torch
    >>> update_order("bfs", torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.0, 0], [0, 1], [0, 2]])).tolist()
    [0, 1, 2]
    """
    if name not in ORDERS:
        raise ValueError(f"name: expected one of {ORDERS}, got {name!r}")
    return orders.update_rank(
        name, torch.as_tensor(edge_index, dtype=torch.long), torch.as_tensor(pos, dtype=torch.float32),
        batch=None if batch is None else torch.as_tensor(batch),
        confidence=None if confidence is None else torch.as_tensor(confidence, dtype=torch.float32),
        generator=torch.Generator().manual_seed(seed) if name == "random" else None)


class FigureApp:
    """Base of the explorers: controls -> :meth:`FigureApp.compute` -> :meth:`FigureApp.draw` -> PNG in ``image``.

    Subclasses fill ``self.controls`` before calling ``super().__init__`` and implement ``compute()``
    (returns the new ``state`` dict) and ``draw(figure)``.
    """

    #: what :meth:`FigureApp.summary` puts between the fields of :meth:`summary_fields`
    separator = ", "

    def __init__(self, figsize: tuple[float, float] = (9.0, 4.5), dpi: int = 80,
                 layout: str | None = "constrained") -> None:
        self.controls: dict[str, widgets.ValueWidget] = getattr(self, "controls", {})
        self.figure = Figure(figsize=figsize, dpi=dpi, layout=layout)
        self.image = widgets.Image(format="png")
        self.readout = widgets.HTML()
        self.state: dict[str, Any] = {}
        self.error: str | None = None
        self.renders = 0
        for control in self.controls.values():
            control.style.description_width = "initial"  # whole labels, not "compactn…"
            control.observe(self._on_change, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
             self.readout, self.image]
        )
        self.update()

    # -- the pattern ---------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def draw(self, figure: Figure) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def summary_fields(self) -> list[str]:
        """The readout's fields, each kept on one line; subclasses may override."""
        return [
            f"{key} = {value:.4g}" if isinstance(value, float) else f"{key} = {value}"
            for key, value in self.state.items()
            if isinstance(value, (int, float, str, np.integer, np.floating))
        ]

    def summary(self) -> str:
        """The readout as plain text: the fields joined by :attr:`separator`."""
        return self.separator.join(self.summary_fields())

    def readout_html(self) -> str:
        """The readout as HTML: each field in a no-wrap span, so that lines break only between fields.

        Examples
        --------
        >>> class Two(FigureApp):
        ...     def compute(self): return {"a": 1, "b": "x y"}
        ...     def draw(self, figure): pass
        >>> Two().readout_html()
        '<code><span style="white-space:nowrap">a = 1</span>, <span style="white-space:nowrap">b = x y</span></code>'
        """
        spans = [f'<span style="white-space:nowrap">{html.escape(field)}</span>' for field in self.summary_fields()]
        return f"<code>{html.escape(self.separator).join(spans)}</code>"

    def update(self) -> None:
        """Recompute the state from the controls and redraw. Errors are shown in the readout, then raised."""
        try:
            self.state = self.compute()
            self.figure.clear()
            self.draw(self.figure)
            buffer = io.BytesIO()
            self.figure.savefig(buffer, format="png")
            self.image.value = buffer.getvalue()
            self.renders += 1
            self.error = None
            self.readout.value = self.readout_html()
        except Exception as error:
            self.show_error(error)
            raise

    def show_error(self, error: Exception) -> None:
        """Say in the readout what failed (a failing callback's exception is otherwise lost in a notebook)."""
        self.error = f"{type(error).__name__}: {error}"
        self.readout.value = f"<b style='color:#b00'>error: {html.escape(self.error)}</b>"

    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    # -- showing it ----------------------------------------------------------------------------
    @property
    def png(self) -> bytes:
        """The current picture as PNG bytes."""
        return bytes(self.image.value)

    def display(self) -> None:
        """Show the app in a notebook."""
        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class SuperpixelExplorer(FigureApp):
    """SLIC superpixels of an image and their region graph, with sliders for the two SLIC knobs.

    Controls: ``"superpixels"`` (target number of segments) and ``"compactness"``.
    State: ``n_segments``, ``compactness``, ``num_nodes``, ``num_edges``, ``mean_degree``, plus the
    arrays ``labels [H,W]``, ``edge_index [2,E]`` and ``pos [N,2]``.

    Examples
    --------
    >>> from skimage.data import astronaut
    >>> app = SuperpixelExplorer(astronaut()[::4, ::4], n_segments=100)
    >>> app.controls["n_segments"].value = 200
    >>> app.state["num_nodes"] > 100
    True
    """

    def __init__(self, image: Any, n_segments: int = 300, compactness: float = 10.0,
                 max_segments: int = 2000) -> None:
        self.source = viz.to_image(image)
        self.controls = {
            "n_segments": widgets.IntSlider(value=n_segments, min=25, max=max_segments, step=25,
                                            description="superpixels", continuous_update=False),
            "compactness": widgets.FloatLogSlider(value=compactness, base=10, min=-1, max=2, step=0.1,
                                                  description="compactness", continuous_update=False),
        }
        super().__init__(figsize=(9.0, 4.5))

    def compute(self) -> dict[str, Any]:
        n_segments = int(self.controls["n_segments"].value)
        compactness = float(self.controls["compactness"].value)
        labels = slic(self.source, n_segments=n_segments, compactness=compactness)
        edge_index = adjacency(labels)
        pooled = pool_to_nodes(torch.from_numpy(self.source).permute(2, 0, 1), labels)
        num_nodes, num_edges = int(labels.max()) + 1, int(edge_index.shape[1])
        return {
            "n_segments": n_segments,
            "compactness": compactness,
            "num_nodes": num_nodes,
            "num_edges": num_edges,
            "mean_degree": 2.0 * num_edges / max(num_nodes, 1),
            "labels": labels,
            "edge_index": edge_index,
            "pos": pooled.pos.numpy(),
            "mean_color": pooled.x.numpy(),
        }

    def draw(self, figure: Figure) -> None:
        left, right = figure.subplots(1, 2)
        viz.draw_boundaries(self.source, self.state["labels"], ax=left,
                            title=f"{self.state['num_nodes']} superpixels")
        viz.show_image(self.source, ax=right, title=f"region graph: {self.state['num_edges']} edges")
        viz.draw_graph(self.state["edge_index"], self.state["pos"], ax=right, node_size=4, linewidth=0.7)


class UpdateOrderExplorer(FigureApp):
    """A Graph LSTM layer's update order, its wavefront levels and the gates of one node.

    Controls: ``"order"`` (one of :data:`ORDERS`) and ``"node"`` (the node whose gates are shown).
    State: ``order``, ``num_levels``, ``node``, ``node_rank``, ``node_level``, ``degree``,
    ``neighbours_before`` (neighbours updated before the node: their *new* state enters its update),
    the node's mean ``input_gate`` / ``forget_gate`` / ``output_gate``, and the arrays ``rank [N]``,
    ``levels [N]``, ``neighbours [d]`` and ``neighbour_forget [d]`` (mean adaptive forget gate
    ḡ^f_ij of the node for each neighbour j).

    Parameters
    ----------
    image : array
        The image the superpixels come from.
    labels : int array [H, W]
        Superpixel ids 0..N-1.
    confidence : float array [N, K], optional
        Node class confidences (drive the confidence order and the BFS/DFS start node).
    layer : GraphLSTM, optional
        The layer to run; default an untrained ``GraphLSTM(C, 16)`` seeded with ``seed``.
    x : float tensor [N, C], optional
        Node features; default the mean colour and the normalised centroid of each superpixel.

    Examples
    --------
    >>> from selab.method.superpixels import slic
    >>> image = viz.demo_image("astronaut", 64)
    >>> app = UpdateOrderExplorer(image, slic(image, 60))
    >>> app.controls["order"].value = "dfs"
    >>> app.state["num_levels"] > 1
    True
    """

    def __init__(self, image: Any, labels: Any, confidence: Any | None = None, layer: Any | None = None,
                 x: Any | None = None, order: str = "confidence", node: int | None = None, seed: int = 0) -> None:
        self.source = viz.to_image(image)
        self.labels = viz.to_numpy(labels).astype(np.int64)
        self.graph = graph_from_superpixels(self.labels)
        self.seed = seed
        num_nodes = self.graph.num_nodes
        self.confidence = None if confidence is None else torch.as_tensor(confidence, dtype=torch.float32)
        if self.confidence is not None and self.confidence.shape[0] != num_nodes:
            raise ValueError(f"confidence: expected {num_nodes} rows (one per node), got {self.confidence.shape[0]}")
        if x is None:
            colour = pool_to_nodes(torch.from_numpy(self.source).permute(2, 0, 1), self.labels).x
            x = torch.cat([colour, self.graph.pos / max(self.labels.shape)], dim=1)
        self.x = torch.as_tensor(x, dtype=torch.float32)
        if layer is None:
            torch.manual_seed(seed)
            layer = GraphLSTM(self.x.shape[1], 16)
        self.layer = layer
        if order == "confidence" and self.confidence is None:
            order = "bfs"
        if node is None:  # the node nearest the image centre
            centre = torch.tensor(self.labels.shape, dtype=torch.float32) / 2
            node = int(((self.graph.pos - centre) ** 2).sum(1).argmin())
        options = [name for name in ORDERS if name != "confidence" or self.confidence is not None]
        self.controls = {
            "order": widgets.Dropdown(options=options, value=order, description="order"),
            "node": widgets.IntSlider(value=node, min=0, max=num_nodes - 1, description="node",
                                      continuous_update=False),
        }
        super().__init__(figsize=(12.0, 3.6))

    def compute(self) -> dict[str, Any]:
        order = self.controls["order"].value
        node = int(self.controls["node"].value)
        edge_index = self.graph.edge_index
        rank = update_order(order, edge_index, self.graph.pos, self.confidence, self.graph.batch, self.seed)
        with torch.no_grad():
            out = self.layer(self.x, edge_index, rank)
        # the node's incident edges, and which row of edge_forget holds *its* gate for the neighbour
        at_source, at_target = edge_index[0] == node, edge_index[1] == node
        incident = torch.nonzero(at_source | at_target).flatten()
        neighbours = torch.where(at_source[incident], edge_index[1, incident], edge_index[0, incident])
        row = torch.where(at_source[incident], 0, 1)
        neighbour_forget = out.edge_forget[row, incident].mean(dim=1)
        return {
            "order": order,
            "num_levels": out.num_wavefronts,
            "node": node,
            "node_rank": int(rank[node]),
            "node_level": int(out.wavefront[node]),
            "degree": int(neighbours.numel()),
            "neighbours_before": int((rank[neighbours] < rank[node]).sum()),
            "input_gate": float(out.gates["input"][node].mean()),
            "forget_gate": float(out.gates["forget"][node].mean()),
            "output_gate": float(out.gates["output"][node].mean()),
            "rank": rank.numpy(),
            "levels": out.wavefront.numpy(),
            "neighbours": neighbours.numpy(),
            "neighbour_forget": neighbour_forget.numpy(),
        }

    def draw(self, figure: Figure) -> None:
        state = self.state
        ranks, levels, local, bars = figure.subplots(1, 4, width_ratios=[1, 1, 1, 0.8])
        pos = viz.to_numpy(self.graph.pos)
        viz.paint_nodes(self.labels, state["rank"], ax=ranks, cmap="viridis",
                        title=f"{state['order']} order (rank)", colorbar="rank")
        viz.paint_nodes(self.labels, state["levels"], ax=levels, cmap="turbo",
                        title=f"{state['num_levels']} wavefront levels", colorbar="level")
        for ax in (ranks, levels):
            ax.scatter(pos[state["node"], 1], pos[state["node"], 0], marker="*", s=120, c="white",
                       edgecolors="black", zorder=4)
        # the chosen node and its neighbours: edges coloured by the node's adaptive forget gate
        node, neighbours = state["node"], state["neighbours"]
        viz.draw_boundaries(self.source, self.labels, ax=local, alpha=0.35,
                            title=f"node {node}: rank {state['node_rank']}, level {state['node_level']}")
        star = np.stack([np.full_like(neighbours, node), neighbours])
        viz.draw_graph(star, pos, ax=local, edge_values=state["neighbour_forget"], vmin=None, vmax=None,
                       edge_cmap="magma", linewidth=3, node_size=0, colorbar="ḡᶠ (mean)")
        before = state["rank"][neighbours] < state["node_rank"]
        local.scatter(pos[neighbours, 1], pos[neighbours, 0], c=np.where(before, "lime", "red"), s=25,
                      zorder=4, edgecolors="black")
        radius = 1.6 * np.abs(pos[neighbours] - pos[node]).max() if len(neighbours) else 10
        local.set_xlim(pos[node, 1] - radius, pos[node, 1] + radius)
        local.set_ylim(pos[node, 0] + radius, pos[node, 0] - radius)
        names = ["input gᵘ", "forget gᶠ", "output gᵒ"] + [f"ḡᶠ → {j}" for j in neighbours]
        values = [state["input_gate"], state["forget_gate"], state["output_gate"], *state["neighbour_forget"]]
        colors = ["tab:blue"] * 3 + [("tab:green" if b else "tab:red") for b in before]
        bars.barh(np.arange(len(values)), values, color=colors)
        bars.set_yticks(np.arange(len(values)), names, fontsize="small")
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.set_title("gates (green: updated before)", fontsize="small")


def mh_table(trace: Any) -> dict[str, np.ndarray]:
    """A Metropolis-Hastings trace (:class:`selab.method.mh.MHTrace`) as columns, one row per proposal.

    Columns: ``energy``, ``log_q``, ``alpha``, ``accepted``, ``num_clusters`` of each proposal, and
    ``state_energy``: the energy of the chain's state after the step.

    Examples
    --------
    >>> import torch
    >>> from selab.method.evolve import PartitionEnergy, metropolis_hastings
    >>> energy = PartitionEnergy(node_labels=torch.tensor([0, 0, 1]))
    >>> _, trace = metropolis_hastings(torch.tensor([[0, 1], [1, 2]]), torch.tensor([0.9, 0.1]), energy, 3)
    >>> mh_table(trace)["alpha"].shape
    (3,)
    """
    steps = trace.steps
    columns = {"energy": np.float64, "log_q": np.float64, "alpha": np.float64, "accepted": bool,
               "num_clusters": np.int64}
    table = {key: np.array([getattr(step, key) for step in steps], dtype=dtype) for key, dtype in columns.items()}
    # the state's energy: the last accepted proposal's (or the initial state's) at every step
    accepted_energy = np.where(table["accepted"], table["energy"], np.nan)
    last = np.maximum.accumulate(np.where(table["accepted"], np.arange(len(steps)), -1))
    table["state_energy"] = np.where(last >= 0, accepted_energy[np.maximum(last, 0)], trace.initial_energy)
    return table


class MHChainExplorer(FigureApp):
    """One Metropolis-Hastings chain over the partitions of a superpixel graph, step by step.

    Controls: ``"temperature"`` (reruns the chain with the same seed, so the same proposals are
    judged at another temperature) and ``"step"`` (which proposal to show).
    State: ``temperature``, ``step``, the shown proposal's ``energy``, ``log_q``, ``alpha``,
    ``accepted`` and ``num_clusters``, the chain's ``acceptance_rate`` and ``final_energy``, and
    ``table`` (:func:`mh_table`), ``proposal_cluster [N]`` and ``cluster [N]`` (the chain's result).

    Parameters
    ----------
    image, labels : the image and its superpixels (ids 0..N-1).
    merge_prob : float tensor [E]
        Merge probability of every edge of ``graph_from_superpixels(labels)``.
    energy : callable
        ``energy(cluster [N]) -> float``, e.g. :class:`selab.method.energy.PartitionEnergy`.
    num_steps, merge_budget, seed : the chain's settings (see :func:`selab.method.mh.metropolis_hastings`).

    Examples
    --------
    >>> import torch
    >>> from selab.method.evolve import PartitionEnergy
    >>> from selab.method.superpixels import adjacency, slic
    >>> image = viz.demo_image("astronaut", 48); labels = slic(image, 30)
    >>> energy = PartitionEnergy(node_labels=torch.zeros(int(labels.max()) + 1, dtype=torch.long))
    >>> app = MHChainExplorer(image, labels, torch.full((adjacency(labels).shape[1],), 0.5), energy, 10)
    >>> app.controls["step"].value = 9
    >>> app.state["step"]
    9
    """

    def __init__(self, image: Any, labels: Any, merge_prob: Any, energy: Any, num_steps: int = 30,
                 temperature: float = 1.0, merge_budget: float | int | None = None, seed: int = 0) -> None:
        self.source = viz.to_image(image)
        self.labels = viz.to_numpy(labels).astype(np.int64)
        self.graph = graph_from_superpixels(self.labels)
        self.merge_prob = torch.as_tensor(merge_prob, dtype=torch.float32)
        if self.merge_prob.shape != (self.graph.num_edges,):
            raise ValueError(f"merge_prob: expected {self.graph.num_edges} values (one per edge), "
                             f"got shape {tuple(self.merge_prob.shape)}")
        if num_steps < 1:
            raise ValueError(f"num_steps: expected at least 1, got {num_steps}")
        self.energy, self.num_steps, self.merge_budget, self.seed = energy, num_steps, merge_budget, seed
        self._chain: tuple[float, Any, Any] | None = None
        self.controls = {
            "temperature": widgets.FloatLogSlider(value=temperature, base=10, min=-2, max=3, step=0.25,
                                                  description="temperature", continuous_update=False),
            "step": widgets.IntSlider(value=0, min=0, max=num_steps - 1, description="step"),
        }
        super().__init__(figsize=(12.0, 3.8))

    def chain(self) -> tuple[Any, Any]:
        """``(cluster, trace)`` of the chain at the current temperature (cached per temperature)."""
        temperature = float(self.controls["temperature"].value)
        if self._chain is None or self._chain[0] != temperature:
            generator = torch.Generator().manual_seed(self.seed)
            cluster, trace = metropolis_hastings(
                self.graph.edge_index, self.merge_prob, self.energy, self.num_steps, temperature=temperature,
                generator=generator, num_nodes=self.graph.num_nodes, merge_budget=self.merge_budget)
            self._chain = (temperature, cluster, trace)
        return self._chain[1], self._chain[2]

    def compute(self) -> dict[str, Any]:
        cluster, trace = self.chain()
        table = mh_table(trace)
        step = int(self.controls["step"].value)
        proposal = trace.steps[step]
        proposal_cluster = connected_components(self.graph.edge_index, proposal.proposal_edges, self.graph.num_nodes)
        return {
            "temperature": float(self.controls["temperature"].value),
            "step": step,
            "energy": float(proposal.energy),
            "log_q": float(proposal.log_q),
            "alpha": float(proposal.alpha),
            "accepted": bool(proposal.accepted),
            "num_clusters": int(proposal.num_clusters),
            "acceptance_rate": float(trace.acceptance_rate),
            "final_energy": float(trace.energy),
            "table": table,
            "proposal_cluster": viz.to_numpy(proposal_cluster),
            "cluster": viz.to_numpy(cluster),
        }

    def draw(self, figure: Figure) -> None:
        state = self.state
        shown, result, curve = figure.subplots(1, 3, width_ratios=[1, 1, 1.4])
        verdict = "accepted" if state["accepted"] else "rejected"
        viz.draw_partition(state["proposal_cluster"][self.labels], ax=shown, image=self.source,
                           title=f"proposal {state['step']}: {state['num_clusters']} cliques, {verdict}")
        final_cluster = state["cluster"]
        viz.draw_partition(final_cluster[self.labels], ax=result, image=self.source,
                           title=f"chain result: {int(final_cluster.max()) + 1} cliques")
        table = state["table"]
        viz.draw_mh_trace(table["energy"], table["accepted"], ax=curve, current_energy=table["state_energy"],
                          title=f"T = {state['temperature']:.3g}: acceptance {state['acceptance_rate']:.0%}")
        curve.axvline(state["step"], color="0.5", ls="--", lw=1)


# --------------------------------------------------------------------------------------------------
# photos as model samples
# --------------------------------------------------------------------------------------------------
def photo_sample(source: Any, image_size: int, mask: Any | None = None, name: str | None = None) -> dict:
    """A sample dict (``image [3,S,S]``, ``id``, optional ``mask [S,S]``) of one photo, for a model and
    :class:`EvolutionExplorer`.

    ``source`` is a scikit-image sample photo's name (``"astronaut"``, see :data:`PEOPLE_PHOTOS`), the
    path of an image file, the bytes of one (a ``FileUpload``), or an image array (``[H,W,3]``,
    ``[3,H,W]`` or grey). It is resized to ``image_size`` square exactly as in training and prediction
    (``selab.data.datasets.resize_image``). ``mask`` (a label PNG's path or a class-id array of the photo's
    size) is resized with the nearest label.

    Examples
    --------
    >>> sample = photo_sample("astronaut", 64)
    >>> sample["image"].shape, sample["id"]
    (torch.Size([3, 64, 64]), 'astronaut')
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        image = decode_image(io.BytesIO(bytes(source)), f"image: cannot read {name or 'the uploaded file'} as an image")
        name = name or "upload"
    elif isinstance(source, (str, os.PathLike)):
        text = str(source)
        loader = getattr(skimage.data, text, None)
        if not Path(text).exists() and callable(loader) and "/" not in text:
            image = torch.from_numpy(viz.to_image(loader())).permute(2, 0, 1).contiguous()
        elif Path(text).is_file():
            image = read_image(text)
        else:
            raise ValueError(f"image: {text!r} is neither an image file nor a scikit-image sample photo "
                             f"(with a person: {', '.join(PEOPLE_PHOTOS)})")
        name = name or Path(text).stem
    else:
        image = torch.from_numpy(viz.to_image(source)).permute(2, 0, 1).contiguous()
        name = name or "image"
    sample = {"image": resize_image(image, image_size), "id": name}
    if mask is not None:
        labels = read_mask(mask) if isinstance(mask, (str, os.PathLike)) else torch.as_tensor(viz.to_numpy(mask))
        if tuple(labels.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"mask: expected the photo's size {tuple(image.shape[-2:])}, got {tuple(labels.shape)}")
        sample["mask"] = F.interpolate(labels[None, None].float(), size=(image_size, image_size),
                                       mode="nearest")[0, 0].long()
    return sample


def photo_samples(sources: str | Any, image_size: int, masks: str | Any | None = None) -> list[dict]:
    """:func:`photo_sample` of every photo of ``sources``: a list, or one comma-separated string (a
    notebook parameter such as ``"astronaut,camera"``); ``masks`` likewise, one per photo ("" for none).

    Examples
    --------
    >>> [s["id"] for s in photo_samples("astronaut, camera", 32)]
    ['astronaut', 'camera']
    """
    def split(value):
        if value is None:
            return []
        return [item.strip() for item in value.split(",")] if isinstance(value, str) else list(value)

    names, mask_list = [item for item in split(sources) if not isinstance(item, str) or item], split(masks)
    if not names:
        raise ValueError("images: expected at least one photo (a scikit-image sample name or an image path)")
    if mask_list and len(mask_list) != len(names):
        raise ValueError(f"masks: expected one per photo ({len(names)}), got {len(mask_list)}")
    mask_list = mask_list or [None] * len(names)
    return [photo_sample(name, image_size, mask=mask or None) for name, mask in zip(names, mask_list)]


# --------------------------------------------------------------------------------------------------
# the evolution of one image through a model
# --------------------------------------------------------------------------------------------------
def as_batch(sample: dict, n_segments: int | None = None, compactness: float = 10.0) -> dict:
    """A model batch of one image from a sample dict (``image [3,S,S]``, optional ``mask [S,S]`` and
    ``superpixels [S,S]``; SLIC with ``n_segments`` when the superpixels are missing).

    Examples
    --------
    >>> import torch
    >>> batch = as_batch({"image": torch.rand(3, 32, 32)}, n_segments=20)
    >>> batch["image"].shape, batch["superpixels"].shape
    (torch.Size([1, 3, 32, 32]), torch.Size([1, 32, 32]))
    """
    if "image" not in sample:
        raise ValueError("sample: expected a dict with 'image' [3,S,S]")
    image = torch.as_tensor(sample["image"], dtype=torch.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"sample['image']: expected [3,S,S], got {tuple(image.shape)}")
    batch = {"image": image[None]}
    if sample.get("mask") is not None:
        batch["mask"] = torch.as_tensor(sample["mask"], dtype=torch.long)[None]
    superpixels = sample.get("superpixels")
    if superpixels is None:
        if n_segments is None:
            raise ValueError("n_segments: needed when the sample has no 'superpixels'")
        superpixels = slic(image, n_segments=n_segments, compactness=compactness)
    batch["superpixels"] = torch.as_tensor(superpixels, dtype=torch.long)[None]
    return batch


def evolution_forward(model: Any, batch: dict, structure: str = "mh", energy: str = "ground_truth",
                      seed: int = 0) -> Any:
    """Run a model on a batch at test time, choosing how its layers pick their structure.

    ``structure``: ``"mh"`` (Metropolis-Hastings, traces recorded), ``"greedy"`` (p > 0.5) or
    ``"none"``. ``energy``: ``"ground_truth"`` scores partitions by the batch's ``mask`` (the training
    energy; useful with an untrained model) or ``"prediction"`` by the model's node confidences.
    Every layer is in eval mode (no dropout, frozen batch norm) and the test-time update order is used;
    the model's settings are restored afterwards. Returns the model's ``ModelOutput``.

    selab decision: the ground-truth energy at test time is an inspection tool, not an evaluation: it
    lets the explorer show how the chain would structure an image under the training energy.
    """
    if structure not in ("mh", "greedy", "none"):
        raise ValueError(f"structure: expected 'mh', 'greedy' or 'none', got {structure!r}")
    if energy not in ("ground_truth", "prediction"):
        raise ValueError(f"energy: expected 'ground_truth' or 'prediction', got {energy!r}")
    if energy == "ground_truth" and batch.get("mask") is None:
        raise ValueError("energy: 'ground_truth' needs the batch's 'mask'")
    evolutions = list(getattr(model, "evolutions", []))
    saved = (model.training, [evo.eval_mode for evo in evolutions])
    try:
        model.eval()
        for evo in evolutions:
            evo.eval_mode = structure
        with torch.no_grad():
            return model(batch, generator=torch.Generator().manual_seed(seed),
                         energy_labels=batch["mask"] if energy == "ground_truth" else None)
    finally:
        model.train(saved[0])
        for evo, eval_mode in zip(evolutions, saved[1]):
            evo.eval_mode = eval_mode


def level_inputs(model: Any, batch: dict, structure: str = "greedy", seed: int = 0) -> dict:
    """What the first Graph LSTM layer of a graph model reads on a batch, captured while it runs.

    Returns ``x`` (node inputs ``[N,H]``), ``confidence`` (node class confidences ``[N,K]``, the softmax
    of the pooled initial confidence maps, which drive the confidence order and the prediction energy),
    ``rank`` (the update order used), ``graph`` (level 0) and ``output`` (the model's ``ModelOutput``
    from :func:`evolution_forward` with the prediction energy).

    selab decision: the values are captured with forward pre-hooks on ``model.node_input`` and
    ``model.layers[0]`` rather than recomputed, so they are exactly what the model used.
    """
    captured: dict[str, Any] = {}

    def node_input_hook(module, args):
        captured.setdefault("node_in", args[0].detach())

    def layer_hook(module, args):
        captured.setdefault("layer", tuple(a.detach() if hasattr(a, "detach") else a for a in args))

    if not getattr(model.config, "uses_graph", False):
        raise ValueError(f"model: expected a graph variant (graph_lstm or se_lstm), got {model.config.variant!r}")
    handles = [model.node_input.register_forward_pre_hook(node_input_hook),
               model.layers[0].register_forward_pre_hook(layer_hook)]
    try:
        output = evolution_forward(model, batch, structure=structure, energy="prediction", seed=seed)
    finally:
        for handle in handles:
            handle.remove()
    num_classes = model.config.num_classes
    x, _, rank = captured["layer"][:3]
    return {"x": x, "confidence": captured["node_in"][:, -num_classes:].softmax(1), "rank": rank,
            "graph": output.levels[0], "output": output}


def level_contributions(model: Any, output: Any) -> list:
    """Each level's additive share of the logits: ``[B,K,S,S]`` per level whose states reach the pixels.

    The model's logits are the CNN's logits plus one node-classifier term per classified layer copied back
    to the pixels of its level (:meth:`selab.model.parser.SELabModel.level_logits`: ``se_lstm``: every level;
    ``graph_lstm``: the last layer on level 0; ``cnn``: none).
    """
    if not model.config.uses_graph:
        return []
    return [unpool_to_pixels(logits, level.assignment) for logits, level in model.level_logits(output)]


def level_predictions(model: Any, output: Any) -> list:
    """Class maps ``[B,S,S]``: the CNN alone, then with the levels added one by one (the last is the
    model's prediction).

    Exact because the final classifier is linear: logits = CNN logits + Σ level contributions.
    """
    contributions = level_contributions(model, output)
    logits = output.logits - sum(contributions) if contributions else output.logits
    predictions = [logits.argmax(1)]
    for contribution in contributions:
        logits = logits + contribution
        predictions.append(logits.argmax(1))
    return predictions


def merge_colour_floor(merge_prob: Any) -> float:
    """The low end of a merge-probability colour scale: the 2nd percentile rounded down to a tenth.

    selab decision: a trained model's probabilities can all lie in [0.6, 1]; a fixed [0, 1] scale then
    paints every edge the same yellow. Starting the scale at a tenth below nearly all of them (the
    colour bar says where) lets them be told apart, and keeps round, comparable bounds.

    Examples
    --------
    >>> merge_colour_floor(np.array([0.66, 0.9, 0.99])), merge_colour_floor(np.zeros(0))
    (0.6, 0.0)
    """
    values = viz.to_numpy(merge_prob).reshape(-1)
    if not values.size:
        return 0.0
    return float(np.clip(np.floor(np.percentile(values, 2) * 10) / 10, 0.0, 0.9))


class EvolutionExplorer(FigureApp):
    """Step through the evolution of one image's hierarchy in a (SE-LSTM) model.

    Controls: ``"image"`` (which of the given samples), ``"layer"`` (the level shown), ``"structure"``
    (``mh`` / ``greedy`` / ``none``) and ``"energy"`` (``ground_truth`` / ``prediction``); changing the
    image, the structure or the energy reruns the model. Beside them a ``FileUpload`` (``upload``,
    "upload a photo") adds any photo to the image list and shows it (:meth:`add_photo` does the same
    from code).
    Panels: the partition at that level over the image; the merge probabilities of that level's edges
    (the input of the next evolution), each drawn on the border the two nodes share; how the layer
    chose its structure (the MH trace; for ``greedy`` the histogram of merge probabilities, merged
    edges against the others); the prediction with the levels up to this one; the ground truth (or
    "no ground truth" for a photo without a mask); the hierarchy as an icicle (one row per level, each
    node a block as wide as its share of the image, right above the nodes it merged, coloured by and
    grouped by its majority predicted class, the shown level framed). One class legend along the bottom names the colours of the prediction, the
    ground truth and the hierarchy.
    The panels keep their place and size at every layer (a fixed grid; at the top level the merge and
    MH panels stay, saying why they are empty), so stepping through the layers does not jump.
    State: ``image``, ``layer``, ``num_levels``, ``nodes_per_level``, ``num_nodes``, ``num_edges``,
    ``mean_merge_prob``, ``acceptance_rate`` (NaN without a chain), ``merged_edges`` (edges switched on
    after this level, ``-1`` at the top), ``pixel_accuracy`` of the shown prediction (NaN without a
    mask), ``has_ground_truth``, ``structure``, ``energy`` (the one used: ``prediction`` for an image
    without a mask, whatever the dropdown says), ``trained``; arrays ``assignment [S,S]``,
    ``prediction [S,S]``, ``merge_prob [E]`` (empty at the top level) and ``clusters`` (one per evolution).

    Parameters
    ----------
    model : SELabModel
    sample : dict or sequence of dicts
        One image (``image [3,S,S]``, optional ``mask`` and ``superpixels``, see :func:`as_batch` and
        :func:`photo_sample`) or several, chosen with the ``"image"`` dropdown; some may have a mask,
        others not.
    image : int, optional
        The sample shown first; default the one with the most superpixels (selab decision: SLIC can
        return far fewer regions than asked on a small image, a poor first view).
    trained : bool
        False for a model with random weights: the figure and the readout then say so, since its merge
        probabilities (about 0.5) and predictions mean nothing yet.
    structure, energy, seed, n_segments : see :func:`evolution_forward` and :func:`as_batch`.

    Examples
    --------
    >>> import torch
    >>> from selab.model.parser import ModelConfig, SELabModel
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = SELabModel(ModelConfig(variant="se_lstm", num_layers=3, feature_channels=16, hidden_channels=16))
    >>> sample = {"image": torch.rand(3, 48, 48), "mask": torch.randint(0, 7, (48, 48))}
    >>> app = EvolutionExplorer(model, sample, n_segments=40, trained=False)
    >>> app.controls["layer"].value = 2
    >>> app.state["num_nodes"] <= app.state["nodes_per_level"][0]
    True
    """

    separator = "; "

    def __init__(self, model: Any, sample: dict | Any, structure: str = "mh", energy: str = "ground_truth",
                 seed: int = 0, n_segments: int | None = None, image: int | None = None,
                 trained: bool = True) -> None:
        self.model = model
        self.seed = seed
        self.trained = bool(trained)
        samples = [sample] if isinstance(sample, dict) else list(sample)
        if not samples:
            raise ValueError("sample: expected a sample dict or a non-empty sequence of them")
        self.n_segments = n_segments or model.config.n_segments
        self.batches = [as_batch(item, n_segments=self.n_segments, compactness=model.config.compactness)
                        for item in samples]
        self.image_size = int(self.batches[0]["image"].shape[-1])
        self.names = [str(item.get("id", index)) for index, item in enumerate(samples)]
        self.num_superpixels = [int(batch["superpixels"].max()) + 1 for batch in self.batches]
        if image is None:
            image = int(np.argmax(self.num_superpixels))
        if not 0 <= image < len(self.batches):
            raise ValueError(f"image: expected 0..{len(self.batches) - 1} (one of the samples), got {image}")
        if energy == "ground_truth" and not any("mask" in batch for batch in self.batches):
            energy = "prediction"  # photos only: the dropdown says what is used (with masks: per image)
        self._output_key: tuple | None = None
        self.controls = {
            "image": widgets.Dropdown(options=self._image_options(), value=image, description="image",
                                      disabled=len(self.batches) == 1),
            "layer": widgets.IntSlider(value=0, min=0, max=max(model.config.num_layers - 1, 0), description="layer"),
            "structure": widgets.Dropdown(options=["mh", "greedy", "none"], value=structure,
                                          description="structure"),
            "energy": widgets.Dropdown(options=["ground_truth", "prediction"], value=energy, description="energy"),
        }
        self._select(image)
        # selab decision: a fixed grid (no layout engine) so that no panel moves or resizes when its
        # title, colour bar or tick labels change from layer to layer.
        super().__init__(figsize=(12.0, 7.6), layout=None)
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload a photo",
                                        layout=widgets.Layout(width="auto"))  # the whole label, not "phot…"
        self.upload.observe(self._on_upload, names="value")
        controls_box = self.widget.children[0]
        controls_box.children = (*controls_box.children, self.upload)

    def _image_options(self) -> list[tuple[str, int]]:
        return [(f"{index}: {name} ({count} superpixels)", index)
                for index, (name, count) in enumerate(zip(self.names, self.num_superpixels))]

    def _select(self, image: int) -> None:
        self.batch = self.batches[image]
        self.source = viz.to_image(self.batch["image"][0])
        self.mask = self.batch["mask"][0].numpy() if "mask" in self.batch else None

    # -- photos ----------------------------------------------------------------------------------
    def add_photo(self, source: Any, name: str | None = None) -> int:
        """Add a photo (anything :func:`photo_sample` reads: a path, the bytes of an image file, an
        array) at the size of the other samples, show it, and return its index in the image list."""
        sample = photo_sample(source, self.image_size, name=name)
        batch = as_batch(sample, n_segments=self.n_segments, compactness=self.model.config.compactness)
        self.batches.append(batch)
        self.names.append(str(sample["id"]))
        self.num_superpixels.append(int(batch["superpixels"].max()) + 1)
        selector = self.controls["image"]
        with self.controls["image"].hold_trait_notifications():
            selector.options = self._image_options()
            selector.disabled = False
        selector.value = len(self.batches) - 1  # observed: reruns the model on the new photo
        return selector.value

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"] or ()
        if not files:
            return
        try:
            for file in files:
                self.add_photo(bytes(file["content"]), name=str(file.get("name", "upload")).rsplit(".", 1)[0])
        except Exception as error:
            self.show_error(error)
            raise
        finally:
            self.upload.value = ()  # so that the same file can be sent again

    # -- the pattern -----------------------------------------------------------------------------
    def _run(self) -> None:
        image = int(self.controls["image"].value)
        energy = self.controls["energy"].value
        if energy == "ground_truth" and "mask" not in self.batches[image]:
            energy = "prediction"  # a photo without a mask: the model's own prediction scores the partitions
        key = (self.controls["structure"].value, energy, image)
        if key != self._output_key:
            self._select(key[2])
            self.output = evolution_forward(self.model, self.batch, structure=key[0], energy=key[1], seed=self.seed)
            self.predictions = [p[0].numpy() for p in level_predictions(self.model, self.output)]
            self._output_key = key
            self.controls["layer"].max = max(len(self.output.levels) - 1, 0)

    def compute(self) -> dict[str, Any]:
        self._run()
        out = self.output
        num_levels = len(out.levels)
        layer = min(int(self.controls["layer"].value), num_levels - 1)
        level = out.levels[layer]
        merge_prob = viz.to_numpy(out.merge_prob[layer]) if layer < len(out.merge_prob) else np.zeros(0)
        trace = out.traces[layer] if layer < len(out.traces) else None
        chain = trace.chains[0] if trace is not None and trace.chains else None
        # prediction with the levels up to this one (index 0 of predictions is the CNN alone)
        prediction = self.predictions[min(layer + 1, len(self.predictions) - 1)]
        accuracy = float((prediction == self.mask).mean()) if self.mask is not None else float("nan")
        return {
            "image": self._output_key[2],
            "layer": layer,
            "num_levels": num_levels,
            "nodes_per_level": [lv.num_nodes for lv in out.levels],
            "num_nodes": level.num_nodes,
            "num_edges": level.num_edges,
            "mean_merge_prob": float(merge_prob.mean()) if merge_prob.size else float("nan"),
            "acceptance_rate": chain.acceptance_rate if chain is not None else float("nan"),
            "merged_edges": int(trace.edges_on.sum()) if trace is not None else -1,
            "pixel_accuracy": accuracy,
            "has_ground_truth": self.mask is not None,
            "structure": self._output_key[0],
            "energy": self._output_key[1],
            "trained": self.trained,
            "assignment": viz.to_numpy(level.assignment[0]),
            "prediction": prediction,
            "merge_prob": merge_prob,
            "edges_on": viz.to_numpy(trace.edges_on) if trace is not None else np.zeros(0, dtype=bool),
            "chain": chain,
            "clusters": [viz.to_numpy(trace.cluster) for trace in out.traces],
        }

    def summary_fields(self) -> list[str]:
        state = self.state
        fields = [f"image {state['image']}",
                  f"layer {state['layer']} of {state['num_levels']}: {state['num_nodes']} nodes, "
                  f"{state['num_edges']} edges", f"nodes per level {state['nodes_per_level']}"]
        if not np.isnan(state["acceptance_rate"]):
            fields.append(f"MH acceptance {state['acceptance_rate']:.0%}")
        if state["merged_edges"] >= 0:
            fields.append(f"{state['merged_edges']} of {state['num_edges']} edges merged")
        fields.append(f"structure {state['structure']}, energy {state['energy']}")
        if not np.isnan(state["pixel_accuracy"]):
            fields.append(f"pixel accuracy {state['pixel_accuracy']:.1%}")
        if not state["has_ground_truth"]:
            fields.append("no ground truth")
        if not self.trained:
            fields.append("untrained model")
        return fields

    def node_classes(self) -> list[np.ndarray]:
        """Every level's nodes' majority class in the model's final prediction (one array per level)."""
        final = torch.as_tensor(self.predictions[-1])[None]
        return [node_label_histogram(final, lv.assignment, lv.num_nodes).argmax(1).numpy()
                for lv in self.output.levels]

    def draw(self, figure: Figure) -> None:
        state = self.state
        axes = figure.subplots(2, 3, gridspec_kw=dict(left=0.07, right=0.97, top=0.9, bottom=0.14,
                                                      wspace=0.5, hspace=0.3))
        layer, level = state["layer"], self.output.levels[state["layer"]]
        viz.draw_partition(state["assignment"], ax=axes[0, 0], image=self.source,
                           title=f"level {layer}: {state['num_nodes']} nodes")
        merge_ax = axes[0, 1]
        low = merge_colour_floor(state["merge_prob"])
        if state["merge_prob"].size:
            viz.draw_border_values(state["assignment"], level.edge_index, state["merge_prob"], ax=merge_ax,
                                   image=self.source, vmin=low, title=f"merge probabilities, layer {layer}")
        else:  # the same panel, its borders grey: nothing merges after the top level
            viz.draw_boundaries(self.source, state["assignment"], ax=merge_ax, alpha=0.5, color=(0.6, 0.6, 0.6),
                                title="top level: no further merge")
        # the colour bar in its own inset, drawn at every layer: the panel keeps its size
        figure.colorbar(ScalarMappable(Normalize(low, 1.0), cmap="viridis"),
                        cax=merge_ax.inset_axes([1.03, 0.0, 0.05, 1.0]), label="p on the shared border")
        self._draw_structure_panel(axes[0, 2])
        viz.draw_segmentation(state["prediction"], ax=axes[1, 0], image=self.source, alpha=0.75,
                              title=f"prediction with levels 0..{layer}")
        if self.mask is not None:
            viz.draw_segmentation(self.mask, ax=axes[1, 1], image=self.source, alpha=0.75, title="ground truth")
        else:
            viz.draw_no_data(axes[1, 1], "no ground truth\n(a photo without a mask;\nthe energy is the prediction)",
                             image=self.source, title="ground truth")
        classes = self.node_classes()
        viz.draw_hierarchy(state["clusters"], self.output.levels[0].pos, ax=axes[1, 2],
                           node_colors=[CLASS_COLORS[c] / 255.0 for c in classes], groups=classes,
                           sizes=self.output.levels[0].size, highlight=layer,
                           title="hierarchy (colour: majority class)")
        viz.figure_class_legend(figure, title="class colours (prediction, ground truth, hierarchy blocks)",
                                bbox_to_anchor=(0.5, 0.0))
        if not self.trained:
            figure.suptitle("untrained model (random weights): merge probabilities near 0.5 and "
                            "predictions are not learned; load a shipped model or a training run",
                            color="#b00", fontsize="medium")

    def _draw_structure_panel(self, ax: Any) -> None:
        """How the layer chose its structure: the MH chain, the greedy threshold, or why there is none."""
        state, layer = self.state, self.state["layer"]
        if state["chain"] is not None:
            table = mh_table(state["chain"])
            viz.draw_mh_trace(table["energy"], table["accepted"], ax=ax, current_energy=table["state_energy"],
                              title=f"MH, layer {layer}: {state['acceptance_rate']:.0%} accepted")
        elif state["structure"] == "greedy" and state["merge_prob"].size:
            viz.draw_edge_histogram(state["merge_prob"], ax=ax, target=state["edges_on"], bins=50,
                                    target_labels=("merged", "kept apart"),
                                    title=f"greedy, layer {layer}: {state['merged_edges']} edges merged")
            ax.set_xlim(merge_colour_floor(state["merge_prob"]), 1.0)
            ax.axvline(0.5, color="0.3", ls="--", lw=1)  # the threshold; the merge budget may cut higher
        else:  # keep the axes (same place, same labels) and say why there is no chain
            why = ("top level: no further evolution" if layer >= len(self.output.traces)
                   else f"structure = {state['structure']}: no MH chain")
            ax.set(xlabel="MH step", ylabel="energy of proposal", xticks=[], yticks=[])
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.35")
            ax.set_title(f"MH, layer {layer}")

"""ipywidgets explorers for the Structure-evolving LSTM, testable without a browser.

Each explorer lets a researcher turn one knob of the pipeline of Liang et al. (Graph LSTM, ECCV 2016;
SE-LSTM, CVPR 2017) and see the effect: the number and compactness of SLIC superpixels, the node update
order of a Graph LSTM layer, the temperature of the Metropolis-Hastings merge chain, and the image and
the layer of an evolved hierarchy (:mod:`selab.workbench.evolution_explorer`).

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
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure

from selab.method import orders
from selab.method.graph import graph_from_superpixels
from selab.method.graph_lstm import GraphLSTM
from selab.method.merge import connected_components
from selab.method.mh import metropolis_hastings
from selab.method.superpixels import adjacency, pool_to_nodes, slic
from selab.workbench import viz

__all__ = ["ORDERS", "update_order", "FigureApp", "SuperpixelExplorer", "UpdateOrderExplorer", "mh_table",
           "MHChainExplorer"]

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

    #: what :meth:`~selab.workbench.widgets.FigureApp.summary` puts between the fields of
    #: :meth:`~selab.workbench.widgets.FigureApp.summary_fields`
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
    >>> from selab.method.energy import PartitionEnergy
    >>> from selab.method.mh import metropolis_hastings
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
    >>> from selab.method.energy import PartitionEnergy
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

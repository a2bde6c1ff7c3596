"""ipywidgets explorers for the Structure-evolving LSTM, testable without a browser.

Each explorer lets a researcher turn one knob of the pipeline of Liang et al. (Graph LSTM, ECCV 2016;
SE-LSTM, CVPR 2017) and see the effect: the number and compactness of SLIC superpixels, the node update
order of a Graph LSTM layer, the temperature of the Metropolis-Hastings merge chain, and the layer of an
evolved hierarchy.

Every explorer follows one pattern, so that it can be unit-tested in pytest by setting ``.value`` on a
control and checking the result (an exception inside a widget callback does not fail papermill):

- ``controls``: a dict of ipywidgets controls with stable, readable descriptions (the slider of the
  evolution explorer is described ``"layer"``), which browser tests can find;
- ``state``: a plain dict recomputed by :meth:`update` from the controls, the readout tests check;
- ``figure``: a matplotlib ``Figure`` (not managed by pyplot, so nothing is drawn twice in a notebook)
  redrawn by :meth:`update` and shown as PNG bytes in ``image`` (an ``ipywidgets.Image``);
  ``renders`` counts the redraws;
- ``readout``: an ``ipywidgets.HTML`` line summarising ``state`` (or the error, if a callback failed);
- ``widget``: the whole app as one ipywidgets box; :meth:`display` and ``_repr_mimebundle_`` show it.

selab decision: the figure is rendered to a PNG ``Image`` widget rather than an ``Output`` widget holding
an inline-backend figure: it looks the same, does not depend on the kernel's matplotlib backend, and
tests can check that the picture changed by comparing bytes.
"""

from __future__ import annotations

import html
import io
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from selab import viz

__all__ = ["FigureApp", "SuperpixelExplorer"]


class FigureApp:
    """Base of the explorers: controls -> :meth:`compute` -> :meth:`draw` -> PNG in ``image``.

    Subclasses fill ``self.controls`` before calling ``super().__init__`` and implement ``compute()``
    (returns the new ``state`` dict) and ``draw(figure)``.
    """

    def __init__(self, figsize: tuple[float, float] = (9.0, 4.5), dpi: int = 80) -> None:
        self.controls: dict[str, widgets.ValueWidget] = getattr(self, "controls", {})
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        self.image = widgets.Image(format="png")
        self.readout = widgets.HTML()
        self.state: dict[str, Any] = {}
        self.error: str | None = None
        self.renders = 0
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox(list(self.controls.values())), self.readout, self.image]
        )
        self.update()

    # -- the pattern ---------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def draw(self, figure: Figure) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def summary(self) -> str:
        """One line for the readout; subclasses may override."""
        return ", ".join(
            f"{key} = {value:.4g}" if isinstance(value, float) else f"{key} = {value}"
            for key, value in self.state.items()
            if isinstance(value, (int, float, str, np.integer, np.floating))
        )

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
            self.readout.value = f"<code>{html.escape(self.summary())}</code>"
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            self.readout.value = f"<b style='color:#b00'>error: {html.escape(self.error)}</b>"
            raise

    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    # -- showing it ----------------------------------------------------------------------------
    @property
    def png(self) -> bytes:
        """The current picture as PNG bytes."""
        return bytes(self.image.value)

    def display(self) -> None:
        """Show the app in a notebook."""
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class SuperpixelExplorer(FigureApp):
    """SLIC superpixels of an image and their region graph, with sliders for the two SLIC knobs.

    Controls: ``"superpixels"`` (target number of segments) and ``"compactness"``.
    State: ``n_segments``, ``compactness``, ``num_nodes``, ``num_edges``, ``mean_degree``, plus the
    arrays ``labels [H,W]``, ``edge_index [2,E]`` and ``pos [N,2]``.

    Example
    -------
    >>> from skimage.data import astronaut
    >>> app = SuperpixelExplorer(astronaut()[::4, ::4], n_segments=100)
    >>> app.controls["n_segments"].value = 200
    >>> app.state["num_nodes"] > 100
    True
    """

    def __init__(
        self,
        image: Any,
        n_segments: int = 300,
        compactness: float = 10.0,
        max_segments: int = 2000,
    ) -> None:
        self.source = viz.to_image(image)
        self.controls = {
            "n_segments": widgets.IntSlider(
                value=n_segments, min=25, max=max_segments, step=25, description="superpixels",
                continuous_update=False,
            ),
            "compactness": widgets.FloatLogSlider(
                value=compactness, base=10, min=-1, max=2, step=0.1, description="compactness",
                continuous_update=False,
            ),
        }
        super().__init__(figsize=(9.0, 4.5))

    def compute(self) -> dict[str, Any]:
        import torch

        from selab.superpixels import adjacency, pool_to_nodes, slic

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

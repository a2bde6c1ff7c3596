"""The evolution explorer: one image's hierarchy in an SE-LSTM model, level by level (an ipywidgets app).

:class:`EvolutionExplorer` follows the pattern of :mod:`selab.workbench.widgets` (controls, ``state``, a
PNG figure, a readout) and runs the model through :mod:`selab.workbench.inference`;
:func:`merge_colour_floor` picks the low end of its merge-probability colour scale (notebooks 03 and 04
use it too).
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from selab.classes import CLASS_COLORS
from selab.method.superpixels import node_label_histogram
from selab.workbench import viz
from selab.workbench.inference import as_batch, evolution_forward, level_predictions, photo_sample
from selab.workbench.widgets import FigureApp, mh_table

__all__ = ["EvolutionExplorer", "merge_colour_floor"]


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
        One image (``image [3,S,S]``, optional ``mask`` and ``superpixels``, see :func:`~selab.workbench.inference.as_batch` and
        :func:`~selab.workbench.inference.photo_sample`) or several, chosen with the ``"image"`` dropdown; some may have a mask,
        others not.
    image : int, optional
        The sample shown first; default the one with the most superpixels (selab decision: SLIC can
        return far fewer regions than asked on a small image, a poor first view).
    trained : bool
        False for a model with random weights: the figure and the readout then say so, since its merge
        probabilities (about 0.5) and predictions mean nothing yet.
    structure, energy, seed, n_segments : see :func:`~selab.workbench.inference.evolution_forward` and :func:`~selab.workbench.inference.as_batch`.

    Examples
    --------
    >>> import torch
    >>> from selab.model.config import ModelConfig
    >>> from selab.model.parser import SELabModel
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
        """Add a photo (anything :func:`~selab.workbench.inference.photo_sample` reads: a path, the bytes of an image file, an
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
            self.output = evolution_forward(self.model, self.batch, structure=key[0], energy_source=key[1], seed=self.seed)
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

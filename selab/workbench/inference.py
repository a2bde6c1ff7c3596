"""Running a model on a photo, the one way selab does it: for :mod:`selab.workbench.predict`, the
explorers of :mod:`selab.workbench.widgets` and :mod:`selab.workbench.evolution_explorer`, and the notebooks.

A photo becomes a sample (:func:`photo_sample`: resized to the model's size as in training), samples
become a batch (:func:`as_batch`: the superpixels with the model's SLIC settings), and a model runs on it
at test time with a chosen structure (:func:`evolution_forward`). What the model computed can then be
taken apart: the first layer's inputs (:func:`level_inputs`), each level's additive share of the logits
(:func:`level_contributions`) and the prediction as the levels are added (:func:`level_predictions`).

Examples
--------
>>> import torch
>>> from selab.model.config import ModelConfig
>>> from selab.model.parser import SELabModel
>>> model = SELabModel(ModelConfig(variant="se_lstm", num_layers=2, feature_channels=8, hidden_channels=8))
>>> batch = as_batch(photo_sample("astronaut", 48), n_segments=30)
>>> output = evolution_forward(model, batch, structure="greedy", energy_source="prediction")
>>> len(level_predictions(model, output))  # the CNN alone, then with each of the two levels
3
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import skimage.data
import torch
import torch.nn.functional as F

from selab.data.datasets import decode_image, read_image, read_mask, resize_image
from selab.method.superpixels import slic, unpool_to_pixels
from selab.workbench import viz

__all__ = ["PEOPLE_PHOTOS", "photo_sample", "photo_samples", "as_batch", "evolution_forward", "level_inputs",
           "level_contributions", "level_predictions"]

#: scikit-image's sample photos that show a person (shipped with scikit-image: no download).
PEOPLE_PHOTOS = ("astronaut", "camera")


# --------------------------------------------------------------------------------------------------
# photos as model samples
# --------------------------------------------------------------------------------------------------
def photo_sample(source: Any, image_size: int, mask: Any | None = None, name: str | None = None) -> dict:
    """A sample dict (``image [3,S,S]``, ``id``, optional ``mask [S,S]``) of one photo, for a model and
    :class:`~selab.workbench.evolution_explorer.EvolutionExplorer`.

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
def as_batch(sample: dict | list, n_segments: int | None = None, compactness: float = 10.0,
             superpixels: bool = True) -> dict:
    """A model batch of one image, or of several of one size, from sample dicts (``image [3,S,S]``, optional
    ``mask [S,S]`` and ``superpixels [S,S]``; SLIC with ``n_segments`` when the superpixels are missing).

    ``superpixels=False``: no superpixels at all (what the ``cnn`` variant reads).

    Examples
    --------
    >>> import torch
    >>> batch = as_batch({"image": torch.rand(3, 32, 32)}, n_segments=20)
    >>> batch["image"].shape, batch["superpixels"].shape
    (torch.Size([1, 3, 32, 32]), torch.Size([1, 32, 32]))
    >>> as_batch([{"image": torch.rand(3, 32, 32)}] * 2, superpixels=False)["image"].shape
    torch.Size([2, 3, 32, 32])
    """
    samples = [sample] if isinstance(sample, dict) else list(sample)
    images = []
    for item in samples:
        if not isinstance(item, dict) or "image" not in item:
            raise ValueError("sample: expected a dict with 'image' [3,S,S]")
        image = torch.as_tensor(item["image"], dtype=torch.float32)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"sample['image']: expected [3,S,S], got {tuple(image.shape)}")
        images.append(image)
    batch = {"image": torch.stack(images)}
    if samples and all(item.get("mask") is not None for item in samples):
        batch["mask"] = torch.stack([torch.as_tensor(item["mask"], dtype=torch.long) for item in samples])
    if not superpixels:
        return batch
    maps = []
    for item, image in zip(samples, images):
        labels = item.get("superpixels")
        if labels is None:
            if n_segments is None:
                raise ValueError("n_segments: needed when the sample has no 'superpixels'")
            labels = slic(image, n_segments=n_segments, compactness=compactness)
        maps.append(torch.as_tensor(labels, dtype=torch.long))
    batch["superpixels"] = torch.stack(maps)
    return batch


def evolution_forward(model: Any, batch: dict, structure: str = "mh", energy_source: str = "ground_truth",
                      seed: int = 0) -> Any:
    """Run a model on a batch at test time, choosing how its layers pick their structure.

    ``structure``: ``"mh"`` (Metropolis-Hastings, traces recorded), ``"greedy"`` (p > 0.5) or
    ``"none"``. ``energy_source``: ``"ground_truth"`` scores partitions by the batch's ``mask`` (the training
    energy; useful with an untrained model) or ``"prediction"`` by the model's node confidences.
    Every layer is in eval mode (no dropout, frozen batch norm) and the test-time update order is used;
    the model's settings are restored afterwards. Returns the model's ``ModelOutput``.

    selab decision: the ground-truth energy at test time is an inspection tool, not an evaluation: it
    lets the explorer show how the chain would structure an image under the training energy.
    """
    if structure not in ("mh", "greedy", "none"):
        raise ValueError(f"structure: expected 'mh', 'greedy' or 'none', got {structure!r}")
    if energy_source not in ("ground_truth", "prediction"):
        raise ValueError(f"energy_source: expected 'ground_truth' or 'prediction', got {energy_source!r}")
    if energy_source == "ground_truth" and batch.get("mask") is None:
        raise ValueError("energy_source: 'ground_truth' needs the batch's 'mask'")
    evolutions = list(model.evolutions) if model.config.variant == "se_lstm" else []
    saved = (model.training, [evo.eval_mode for evo in evolutions])
    try:
        model.eval()
        for evo in evolutions:
            evo.eval_mode = structure
        with torch.no_grad():
            return model(batch, generator=torch.Generator().manual_seed(seed),
                         energy_labels=batch["mask"] if energy_source == "ground_truth" else None)
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
        output = evolution_forward(model, batch, structure=structure, energy_source="prediction", seed=seed)
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

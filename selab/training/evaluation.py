"""Evaluation: a model scored over a split with the benchmark's metric, with optional test-time augmentation.

:func:`evaluate_model` accumulates the confusion matrix over a loader's batches at each mask's full
resolution (flip and multi-scale test-time augmentation: :func:`mirrored`, :func:`rescaled`,
:func:`tta_sizes`); :func:`evaluate` scores a run folder or checkpoint on a split of any dataset.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from selab.data.augment import renumber
from selab.data.datasets import resize_image
from selab.data.prepare import to_device
from selab.files import atomic_write_text, writable_folder
from selab.model.parser import SELabModel
from selab.training import distributed
from selab.training.checkpoints import load_model
from selab.training.config import TrainConfig, autocast, check_device
from selab.training.loaders import evaluation_loader
from selab.training.metrics import ConfusionMatrix, confusion_matrix, save_per_image
from selab.training.partition_scores import combine_hierarchy_stats, hierarchy_stats


def mirrored(data: dict) -> dict:
    """The model's inputs for the mirror images of a batch: image and superpixels mirrored left to right.

    Cached features are left out, so the backbone computes the mirror image's own features: mirrored
    cached features (what training's flips use) would be nearly the same features again, and the flip
    would add nothing (measured: +0.00 mIoU on PASCAL-Person-Part, docs/results.md).
    """
    return {key: data[key].flip(-1) for key in ("image", "superpixels") if data.get(key) is not None}


TTA_MODES = ("flip", "scale", "flip,scale")
TTA_SCALES = (0.75, 1.0, 1.25)


def tta_sizes(size: int, scales, multiple: int) -> list[int]:
    """The image sizes of the test-time scales: ``size * scale`` rounded to the nearest multiple of ``multiple``.

    selab decision: ``multiple`` is the backbone's coarsest stride (32 for EfficientNet-Lite), so that every
    stride-2 convolution sees an even input: EfficientNet-Lite0's static padding (computed for 224 px) is
    then exactly the padding of the rescaled input (:func:`selab.model.backbones.load_efficientnet_lite`), and
    the feature grids of every scale line up with the image. Scale 1 keeps ``size`` as it is (the
    single-scale pass). Ties round up. A scale that rounds to a size already listed is dropped (at small
    sizes scales collapse: 0.75 x 64 px rounds to 64), so no pass is counted twice in the average.

    Examples
    --------
    >>> tta_sizes(320, (0.75, 1.0, 1.25), 32)
    [256, 320, 416]
    >>> tta_sizes(64, (0.75, 1.0, 1.25), 32)
    [64, 96]
    """
    rounded = [size if scale == 1 else max(multiple, int(math.floor(size * scale / multiple + 0.5)) * multiple)
               for scale in scales]
    return list(dict.fromkeys(rounded))


def rescaled(data: dict, size: int) -> dict:
    """The model's inputs for a batch's images at ``size`` x ``size`` (multi-scale test-time augmentation).

    Each image is resized from its full-resolution original (``full_images``, with the antialiased
    resize of :mod:`selab.data.prepare`), so a larger scale sees real detail rather than an upsampled
    S x S image. selab decision: the superpixels are the batch's own S x S map resized with nearest
    neighbour and :func:`~selab.data.augment.renumber`-ed (as the paper's scaling augmentation treats them in
    training), not SLIC run again at the new size: every scale then parses the same partition (the graph
    only changes where a tiny superpixel vanishes or splits), the scales differ in their CNN features
    alone, and evaluation runs no SLIC. Cached features are left out (the backbone computes the
    rescaled image's own).

    Examples
    --------
    >>> data = {"image": torch.rand(1, 3, 8, 8), "full_images": [torch.rand(3, 20, 30)],
    ...         "superpixels": torch.arange(4).repeat_interleave(16).view(1, 8, 8)}
    >>> small = rescaled(data, 4)
    >>> tuple(small["image"].shape), small["superpixels"].unique().tolist()
    ((1, 3, 4, 4), [0, 1, 2, 3])
    """
    device = data["image"].device
    out = {"image": torch.stack([resize_image(image, size) for image in data["full_images"]]).to(device)}
    superpixels = data.get("superpixels")
    if superpixels is not None:
        nearest = F.interpolate(superpixels[:, None].double(), size=(size, size), mode="nearest-exact")[:, 0]
        out["superpixels"] = torch.stack([renumber(s.long()) for s in nearest.cpu()]).to(superpixels.device)
    return out


def _check_tta_scales(scales) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"tta_scales: expected a list of positive numbers, got {scales!r}") from None
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales) or 1.0 not in scales:
        raise ValueError(f"tta_scales: expected positive numbers including 1 (the single-scale pass), got {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"tta_scales: each scale once, got {scales!r}")
    return scales


@torch.no_grad()
def evaluate_model(model: SELabModel, loader, device, progress: bool = False, num_examples: int = 0,
                   description: str = "evaluate", per_image: list | None = None,
                   ignore_index: int | None = None, precision: str = "fp32",
                   flip: bool = False, scales=None) -> tuple[dict, list]:
    """Scores over a loader of evaluation batches (each holds the full-resolution ``full_masks``).

    Logits [B,K,S,S] are upsampled (bilinear) to each mask's own size before the argmax, and the
    confusion matrix accumulates over the whole split (pixels labelled ``ignore_index`` left out).
    ``per_image``, a list, receives one ``(id, confusion [K,K])`` pair per image (for paired
    comparisons of runs, :mod:`selab.experiments.compare`). ``precision="bf16"``: the forward pass under autocast.
    ``flip=True``: test-time augmentation, the mean of the logits of each image and of its mirror image
    (mirrored back). ``scales`` (e.g. ``(0.75, 1, 1.25)``, must include 1): multi-scale test-time
    augmentation, the whole model run again on each image at every other scale (:func:`tta_sizes`,
    :func:`rescaled`), every scale's logits upsampled to the mask's resolution and averaged there with the
    single-scale ones (with ``flip``, every scale also with its mirror image). The hierarchy statistics
    are those of the single-scale, unmirrored pass.
    """
    if scales is not None:
        scales = _check_tta_scales(scales)
    model.eval()
    distributed.broadcast_buffers(model)  # distributed: every process evaluates rank 0's model
    matrix = ConfusionMatrix(model.config.num_classes, ignore_index=ignore_index)
    examples, hierarchy = [], []

    def logits_of(inputs, output=None):
        logits = (model(inputs) if output is None else output).logits.float()
        if flip:
            logits = (logits + model(mirrored(inputs)).logits.float().flip(-1)) / 2
        return logits

    for data in tqdm(loader, desc=description, disable=not progress, leave=False):
        data = to_device(data, device)
        scaled = []  # the batch at the other scales, resized outside autocast (in float32)
        if scales is not None:
            single = data["image"].shape[-1]
            scaled = [rescaled(data, size) for size in tta_sizes(single, scales, max(model.backbone.strides))
                      if size != single]
        with autocast(precision, device):
            output = model(data)
            logits = logits_of(data, output)
            passes = [logits] + [logits_of(inputs) for inputs in scaled]
        if output.levels and "mask" in data:
            hierarchy.append(hierarchy_stats(output.levels, data["mask"], model.config.num_classes))
        for b, full_mask in enumerate(data["full_masks"]):
            size = tuple(full_mask.shape)
            upsampled = sum(F.interpolate(p[b : b + 1], size=size, mode="bilinear", align_corners=False)
                            for p in passes) / len(passes)
            prediction = upsampled[0].argmax(0)
            image_matrix = confusion_matrix(prediction, full_mask.to(prediction.device), model.config.num_classes,
                                            ignore_index)
            matrix.matrix += image_matrix
            if per_image is not None:
                per_image.append((data["ids"][b], image_matrix))
            if len(examples) < num_examples:
                examples.append((data["full_images"][b].cpu(), full_mask.cpu(), prediction.cpu()))
    # distributed: each process scored its shard of the split; sum and gather them (one process: as is)
    matrix.matrix = distributed.all_reduce_sum(matrix.matrix)
    hierarchy, examples = distributed.gather_shards(hierarchy), distributed.gather_shards(examples)[:num_examples]
    if per_image is not None:
        per_image[:] = distributed.gather_shards(per_image)
    scores = matrix.compute()
    if hierarchy:
        # The evolved hierarchy at test time, per level: nodes per image, clique label purity (ASA) and the
        # other partition scores (selab.training.partition_scores.hierarchy_stats, on the masks at the training size).
        levels = combine_hierarchy_stats(hierarchy)
        scores["hierarchy"] = {key: [s[key] for s in levels] for key in (
            "mean_nodes_per_image", "purity", "achievable_miou", "boundary_recall", "undersegmentation_error")}
    return scores, examples


def evaluate(checkpoint_or_run_dir, dataset: str | None = None, data_root: str | None = None,
             split: str = "val", image_size: int | None = None, limit: int | None = None,
             out: str | None = None, device: str = "auto", batch_size: int = 8, progress: bool = True,
             cache_dir: str | None = None, per_image_out: str | None = None,
             model_options: dict | None = None, tta: str | None = None, tta_scales=TTA_SCALES) -> dict:
    """Evaluate a trained model (a run folder or a checkpoint file) on a split; optionally write the metrics
    to ``out`` (JSON).

    ``model_options`` tests the model another way (:func:`~selab.training.checkpoints.load_model`); the
    other arguments are those of :func:`evaluate_trained`, which this calls with the checkpoint's model
    and training config. Returns its result plus ``checkpoint`` and ``checkpoint_file`` (the file used:
    in a run folder ``best.pt``, or ``last.pt`` when ``best.pt`` is missing or unreadable).

    Examples
    --------
    >>> evaluate("runs/quick", dataset="synthetic", split="val")["mean_iou"]  # doctest: +SKIP
    """
    torch_device = check_device(device, "evaluate: device")
    if out:
        writable_folder(Path(out).parent, "evaluate: out")
    model, checkpoint = load_model(checkpoint_or_run_dir, torch_device, model_options=model_options)
    return evaluate_trained(model, checkpoint["train_config"], dataset=dataset, data_root=data_root, split=split,
                            image_size=image_size, limit=limit, out=out, device=device, batch_size=batch_size,
                            progress=progress, cache_dir=cache_dir, per_image_out=per_image_out, tta=tta,
                            tta_scales=tta_scales,
                            source={"checkpoint": str(checkpoint_or_run_dir), "checkpoint_file": checkpoint["path"]})


def evaluate_trained(model, train_config: dict, dataset: str | None = None, data_root: str | None = None,
                     split: str = "val", image_size: int | None = None, limit: int | None = None,
                     out: str | None = None, device: str = "auto", batch_size: int = 8, progress: bool = True,
                     cache_dir: str | None = None, per_image_out: str | None = None, tta: str | None = None,
                     tta_scales=TTA_SCALES, source: dict | None = None) -> dict:
    """Evaluate a loaded model, trained with ``train_config`` (a :class:`~selab.training.config.TrainConfig`
    as a dict: a checkpoint's or a shipped model's), on a split.

    ``per_image_out`` (an ``.npz`` path) also saves every image's confusion matrix
    (:func:`selab.training.metrics.save_per_image`), for paired comparisons with :mod:`selab.experiments.compare`.
    ``tta``: test-time augmentation (:func:`evaluate_model`), one of :data:`TTA_MODES`: ``"flip"``, each
    image and its mirror image; ``"scale"``, each image at every scale of ``tta_scales`` (default
    0.75, 1, 1.25; must include 1); ``"flip,scale"``, both. Recorded as ``test_time_augmentation`` in the
    result (with ``tta_scales`` and the image sizes run, ``tta_sizes``, both ``None`` without
    ``"scale"``), so that it is reported apart from single-pass scores. ``source`` (e.g. the checkpoint
    or the model's name) is copied into the result.

    Returns ``{"mean_iou", "per_class_iou" (by class name), "pixel_accuracy"}`` in percent, plus
    ``dataset`` (default: the run's own), ``split``, ``num_images``, ``image_size`` and ``source``'s keys.

    Examples
    --------
    >>> from selab.workbench import pretrained  # doctest: +SKIP
    >>> model, record = pretrained.load("se_lstm")  # doctest: +SKIP
    >>> evaluate_trained(model, record["train_config"], data_root="pascal_person_part")["mean_iou"]  # doctest: +SKIP
    """
    if tta not in (None, *TTA_MODES):
        raise ValueError(f"evaluate: tta must be None or one of {TTA_MODES}, got {tta!r}")
    scales = _check_tta_scales(tta_scales) if tta is not None and "scale" in tta else None
    torch_device = check_device(device, "evaluate: device")
    if out:
        writable_folder(Path(out).parent, "evaluate: out")
    model = model.to(torch_device).eval()
    train_config = dict(train_config)
    dataset = dataset or train_config["dataset"]
    if dataset != "synthetic" and not (data_root or (dataset == train_config["dataset"] and train_config["data_root"]
                                                     and Path(train_config["data_root"]).is_dir())):
        raise ValueError(f"evaluate: dataset {dataset!r} needs its folder: pass data_root (--data-root)")
    overrides = {"dataset": dataset, "val_split": split, "val_limit": limit, "resume": False,
                 "device": str(torch_device), "batch_size": batch_size, "progress": progress}
    if dataset != train_config["dataset"] or data_root is not None:
        overrides["data_root"] = data_root
    if dataset == "synthetic" and train_config["dataset"] != "synthetic":
        overrides["data_root"] = None
    if image_size is not None:
        overrides["image_size"] = image_size
    if cache_dir is not None:
        overrides["cache_dir"] = cache_dir
    train_config.update(overrides)
    config = TrainConfig.from_dict(train_config)
    loader = evaluation_loader(config, model)
    per_image = [] if per_image_out else None
    scores, _ = evaluate_model(model, loader, torch_device, progress=progress, per_image=per_image,
                               ignore_index=config.ignore_index, precision=config.precision,
                               flip=tta is not None and "flip" in tta, scales=scales)
    if per_image_out:
        save_per_image(Path(per_image_out), per_image)
    result = dict(scores)
    result.update(source or {})
    result.update({"dataset": dataset, "split": split,
                   "num_images": len(loader.dataset), "image_size": config.image_size,
                   "test_time_augmentation": tta, "tta_scales": None if scales is None else list(scales),
                   "tta_sizes": None if scales is None else tta_sizes(config.image_size, scales,
                                                                      max(model.backbone.strides))})
    if out:
        atomic_write_text(json.dumps(result, indent=2), Path(out))
    return result

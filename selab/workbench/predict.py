"""Parsing photos with a trained model: label maps, colour overlays and the evolved hierarchy.

``selab predict IMAGE... --model NAME|RUN_DIR --out DIR`` runs a shipped model (:mod:`selab.workbench.pretrained`)
or a run folder's checkpoint on any photos, in batches: each photo is resized to the model's training
size (as in training), cut into superpixels with the model's SLIC settings, parsed, and the logits are
upsampled to the photo's own size. For every photo it writes ``<stem>_labels.png`` (class ids as a
palette PNG, colours of :data:`selab.classes.CLASS_COLORS`) and ``<stem>_overlay.png``; with
``--hierarchy`` also ``<stem>_level<k>.png`` (each level's partition, cliques outlined and filled with
their majority class) and ``<stem>_hierarchy.json`` (:func:`hierarchy_record`), which
:func:`hierarchy_to_networkx` turns into a graph per level.

Nothing is lost to a prediction: an input photo, or any file predict did not write, is never overwritten;
earlier outputs are replaced only with ``overwrite=True`` (``--overwrite``); the pictures selab writes carry
a PNG text chunk (:data:`OUTPUT_MARK`) by which a later run, given the same folder, leaves them out of its
inputs; and a prediction that fails removes what it wrote (and the ``--out`` folder, if it created it).
:func:`check_images` says what is wrong with tensors given to :func:`predict_images`.

Examples
--------
>>> from skimage import data
>>> from selab.model.config import ModelConfig
>>> from selab.model.parser import SELabModel
>>> model = SELabModel(ModelConfig(variant="se_lstm", backbone="small", n_segments=60)).eval()
>>> result = predict_images(model, [torch.from_numpy(data.astronaut()).permute(2, 0, 1) / 255.0], image_size=64)[0]
>>> result.labels.shape, len(result.hierarchy["levels"])
((512, 512), 3)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

from selab.classes import CLASS_COLORS, CLASS_NAMES
from selab.data.datasets import IMAGE_SUFFIXES, read_image, resize_image
from selab.method.superpixels import node_label_histogram
from selab.workbench.inference import as_batch
from selab.files import writable_folder

# The PNG text chunk (key) of every picture predict writes: how a later run tells its outputs from photos.
OUTPUT_MARK = "selab-output"
_OUTPUT_NAME = re.compile(r"_(labels|overlay|level\d+)\.png$", re.IGNORECASE)


@dataclass
class Prediction:
    """One parsed photo: ``labels`` [H,W] at the photo's size, the ``superpixels`` [S,S] of the resized
    photo, and its ``hierarchy`` (:func:`hierarchy_record`; one level for ``cnn``)."""

    labels: np.ndarray
    superpixels: np.ndarray
    level_assignments: list
    hierarchy: dict


def hierarchy_record(output, labels: torch.Tensor, image: int = 0) -> dict:
    """The evolved hierarchy of image ``image`` of a batch as plain data (JSON-ready).

    ``levels[k]``: ``nodes`` (``id``, ``members``: the level-0 superpixels it covers, ``size`` in pixels,
    ``majority_class`` of the predicted pixel labels ``labels`` [B,S,S]) and ``edges`` (``[i, j, p]``:
    the merge probability p of edge (i, j) where an evolution followed the level, else ``None``).
    Node ids are the image's own (from 0 at every level).
    """
    ptr0 = output.levels[0].ptr
    first0, stop0 = int(ptr0[image]), int(ptr0[image + 1])
    levels = []
    for k, graph in enumerate(output.levels):
        ptr = graph.ptr
        start, stop = int(ptr[image]), int(ptr[image + 1])
        histogram = node_label_histogram(labels[image:image + 1].to(graph.device), graph.assignment[image:image + 1],
                                         graph.num_nodes, len(CLASS_NAMES))[start:stop].cpu()
        owner = (torch.arange(first0, stop0) if graph.superpixel_assignment is None
                 else graph.superpixel_assignment.cpu()[first0:stop0]) - start
        order = np.argsort(owner.numpy(), kind="stable")
        members = np.split(order, np.cumsum(np.bincount(owner.numpy(), minlength=stop - start))[:-1])
        nodes = [{"id": i, "members": members[i].tolist(), "size": int(histogram[i].sum()),
                  "majority_class": CLASS_NAMES[int(histogram[i].argmax())]} for i in range(stop - start)]
        edge_index = graph.edge_index.cpu()
        mine = (edge_index[0] >= start) & (edge_index[0] < stop)
        pairs = (edge_index[:, mine] - start).t().tolist()
        probs = output.merge_prob[k].detach().cpu()[mine].tolist() if k < len(output.merge_prob) else [None] * len(pairs)
        edges = [[i, j, None if p is None else round(p, 4)] for (i, j), p in zip(pairs, probs)]
        levels.append({"level": k, "num_nodes": stop - start, "nodes": nodes, "edges": edges})
    return {"levels": levels}


def hierarchy_to_networkx(record: dict, level: int = 0) -> nx.Graph:
    """A networkx graph of one level of a :func:`hierarchy_record` (node and edge attributes kept).

    Examples
    --------
    >>> g = hierarchy_to_networkx({"levels": [{"nodes": [{"id": 0, "size": 4}, {"id": 1, "size": 2}],
    ...                                        "edges": [[0, 1, 0.9]]}]})
    >>> g.number_of_nodes(), g.edges[0, 1]["merge_prob"]
    (2, 0.9)
    """
    data = record["levels"][level]
    graph = nx.Graph()
    graph.add_nodes_from((node["id"], {k: v for k, v in node.items() if k != "id"}) for node in data["nodes"])
    graph.add_edges_from((i, j, {"merge_prob": p}) for i, j, p in data["edges"])
    return graph


@torch.no_grad()
def predict_images(model, images: list[torch.Tensor], image_size: int, n_segments: int | None = None,
                   compactness: float | None = None, device="cpu") -> list[Prediction]:
    """Parse a batch of photos ([3,H,W] float in [0,1], any sizes) with ``model`` (put in eval mode).

    The photos and ``image_size`` are checked first (:func:`check_images`)."""
    check_images(images, image_size)
    model.eval()
    n_segments = n_segments or model.config.n_segments
    compactness = model.config.compactness if compactness is None else compactness
    batch = as_batch([{"image": resize_image(image, image_size)} for image in images], n_segments, compactness,
                     superpixels=model.config.uses_graph)
    superpixels = batch["superpixels"].numpy() if "superpixels" in batch else None
    output = model({key: value.to(device) for key, value in batch.items()})
    small_labels = output.logits.argmax(1).cpu()
    results = []
    for b, image in enumerate(images):
        logits = F.interpolate(output.logits[b:b + 1], size=tuple(image.shape[-2:]), mode="bilinear",
                               align_corners=False)
        labels = logits[0].argmax(0).cpu().numpy().astype(np.uint8)
        if model.config.uses_graph:
            hierarchy = hierarchy_record(output, small_labels, b)
            assignments = [(g.assignment[b] - int(g.ptr[b])).cpu().numpy() for g in output.levels]
            results.append(Prediction(labels, superpixels[b], assignments, hierarchy))
        else:
            results.append(Prediction(labels, None, [], {"levels": []}))
    return results


# ---------------------------------------------------------------------------------------------------
# checks: the tensors given to predict_images, the inputs and outputs of predict_files
# ---------------------------------------------------------------------------------------------------
def check_images(images, image_size) -> None:
    """Raise ``ValueError`` naming the photo unless ``images`` is a non-empty list of float [3,H,W]
    tensors with values in [0, 1] and ``image_size`` a positive int.

    Examples
    --------
    >>> check_images([torch.rand(3, 8, 8)], 16)
    >>> check_images([torch.full((3, 8, 8), 200.0)], 16)
    Traceback (most recent call last):
    ...
    ValueError: predict_images: image 0 has values up to 200 (expected [0, 1]; divide 0-255 pixels by 255)
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"predict_images: image_size must be a positive int, got {image_size!r}")
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        raise ValueError(f"predict_images: expected a list of [3,H,W] tensors, got {type(images).__name__}")
    if not images:
        raise ValueError("predict_images: no images given (an empty list)")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"predict_images: image {i} is a {type(image).__name__}, expected a torch.Tensor [3,H,W]")
        if image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(f"predict_images: image {i} has shape {list(image.shape)}, expected [3, H, W] "
                             "(a grey [H, W] image: image.expand(3, -1, -1))")
        if not image.is_floating_point():
            raise ValueError(f"predict_images: image {i} is {image.dtype}, expected float values in [0, 1] "
                             "(e.g. image.float() / 255 for 8-bit pixels)")
        low, high = float(image.min()), float(image.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"predict_images: image {i} holds NaN or infinite values")
        if low < 0 or high > 1:
            hint = "; divide 0-255 pixels by 255" if high > 1 else ""
            raise ValueError(f"predict_images: image {i} has values {'up to' if high > 1 else 'down to'} "
                             f"{high if high > 1 else low:g} (expected [0, 1]{hint})")


def is_own_output(path) -> bool:
    """Whether ``path`` is a file that :func:`predict_files` wrote: a picture by its name and its PNG text
    chunk (:data:`OUTPUT_MARK`), a ``<stem>_hierarchy.json`` by its content."""
    path = Path(path)
    if path.name.endswith("_hierarchy.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and isinstance(record.get("levels"), list)
    if not _OUTPUT_NAME.search(path.name):
        return False
    try:
        with Image.open(path) as im:
            return OUTPUT_MARK in im.info
    except (OSError, ValueError):
        return False


def planned_outputs(paths: list[Path], out: Path, hierarchy: bool) -> list[dict]:
    """The files :func:`predict_files` will write for ``paths`` into ``out`` (``levels``: a pattern)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):  # two photos would write the same files
        stems = [f"{i:04d}_{s}" for i, s in enumerate(stems)]
    plans = []
    for path, stem in zip(paths, stems):
        plan = {"image": str(path), "stem": stem, "labels": out / f"{stem}_labels.png",
                "overlay": out / f"{stem}_overlay.png"}
        if hierarchy:
            plan["hierarchy"] = out / f"{stem}_hierarchy.json"
        plans.append(plan)
    return plans


def check_outputs(plans: list[dict], inputs: list[Path], out: Path, overwrite: bool) -> None:
    """Raise ``ValueError`` if an output would replace an input photo or a file that is not an earlier output
    (never allowed), or, without ``overwrite``, an earlier output; the message names the file and ``--out`` /
    ``--overwrite``."""
    taken = {p.resolve() for p in inputs}
    existing = []
    for plan in plans:
        targets = [plan[k] for k in ("labels", "overlay", "hierarchy") if k in plan]
        if "hierarchy" in plan and out.is_dir():
            # level pictures: their number is known only after parsing, so every existing one counts
            level = re.compile(re.escape(plan["stem"]) + r"_level\d+\.png")
            targets += sorted(p for p in out.glob(f"{_glob_escape(plan['stem'])}_level*.png") if level.fullmatch(p.name))
        for target in targets:
            if target.resolve() in taken:
                raise ValueError(f"predict: the output {target} of {plan['image']} would replace an input photo; "
                                 "choose another --out (an input is never overwritten)")
            if target.exists() and not is_own_output(target):
                raise ValueError(f"predict: the output {target} of {plan['image']} would replace a file that "
                                 "selab predict did not write; choose another --out (such a file is never overwritten)")
            if target.exists():
                existing.append(target)
    if existing and not overwrite:
        raise ValueError(f"predict: --out {out} already holds {len(existing)} output file(s) of these photos "
                         f"(e.g. {existing[0]}); pass --overwrite to replace them, or choose another --out")


def _glob_escape(text: str) -> str:
    """``text`` with glob wildcards escaped (a photo may be named ``a[1].jpg``)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _mark() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(OUTPUT_MARK, "predict")
    return info


def _palette_png(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(CLASS_COLORS)] = CLASS_COLORS
    image.putpalette(palette.reshape(-1).tolist())
    image.save(path, pnginfo=_mark())


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The photo (HxWx3 uint8) with the parse's class colours blended over the people (not the background)."""
    colours = CLASS_COLORS[labels].astype(np.float32)
    weight = np.where(labels[..., None] > 0, alpha, 0.0)
    return (image.astype(np.float32) * (1 - weight) + colours * weight).round().astype(np.uint8)


def level_picture(resized: np.ndarray, assignment: np.ndarray, hierarchy_level: dict) -> np.ndarray:
    """A level's partition: each clique filled with its majority class colour, outlined in white."""
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    node_class = np.array([index[n["majority_class"]] for n in hierarchy_level["nodes"]])
    picture = (0.45 * resized + 0.55 * CLASS_COLORS[node_class[assignment]]).round().astype(np.uint8)
    picture[find_boundaries(assignment, mode="inner")] = 255
    return picture


def image_paths(inputs: list[str]) -> list[Path]:
    """The photos named by ``inputs`` (files, or folders: their image files, sorted); errors name the path."""
    paths, own = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            photos = [p for p in found if not is_own_output(p)]
            own += [p for p in found if p not in photos]
            if not photos:
                what = "only selab's own outputs" if found else "no image files"
                raise ValueError(f"predict: folder {item} holds {what} ({', '.join(IMAGE_SUFFIXES)})")
            paths += photos
        elif item.is_file():
            if is_own_output(item):  # e.g. a shell glob over an earlier --out
                own.append(item)
            else:
                paths.append(item)
        else:
            raise ValueError(f"predict: {item} is neither an image file nor a folder")
    if not paths:
        raise ValueError(f"predict: every file given is one of selab's own outputs (e.g. {own[0]}), not a photo")
    return paths


def predict_files(model, inputs: list[str], out_dir, image_size: int, batch_size: int = 4, hierarchy: bool = False,
                  device="cpu", progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Parse every photo of ``inputs`` into ``out_dir``; returns one record of written files per photo.

    Before anything is written, the outputs are checked (:func:`check_outputs`): none may replace an
    input, and existing ones only with ``overwrite``. If parsing fails part-way, the files written so
    far are removed, and ``out_dir`` too if this call created it.
    """
    paths = image_paths(inputs)
    out = Path(out_dir)
    plans = planned_outputs(paths, out, hierarchy)
    check_outputs(plans, paths, out, overwrite)
    created = not out.exists()
    writable_folder(out, "predict: --out")
    written, new_files = [], []
    bar = tqdm(total=len(paths), desc="predict", disable=not progress)
    try:
        for start in range(0, len(paths), batch_size):
            chunk = plans[start:start + batch_size]
            images = [read_image(plan["image"]) for plan in chunk]
            for plan, image, result in zip(chunk, images, predict_images(model, images, image_size, device=device)):
                files = {"image": plan["image"], "labels": str(plan["labels"]), "overlay": str(plan["overlay"])}
                photo = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                new_files += [plan["labels"], plan["overlay"]]
                _palette_png(result.labels, plan["labels"])
                Image.fromarray(overlay(photo, result.labels)).save(plan["overlay"], pnginfo=_mark())
                if hierarchy and result.hierarchy["levels"]:
                    resized = (resize_image(image, image_size).permute(1, 2, 0).numpy() * 255).round()
                    files["levels"] = []
                    for k, assignment in enumerate(result.level_assignments):
                        level_path = out / f"{plan['stem']}_level{k}.png"
                        new_files.append(level_path)
                        Image.fromarray(level_picture(resized, assignment, result.hierarchy["levels"][k])).save(
                            level_path, pnginfo=_mark())
                        files["levels"].append(str(level_path))
                    files["hierarchy"] = str(plan["hierarchy"])
                    new_files.append(plan["hierarchy"])
                    plan["hierarchy"].write_text(json.dumps(result.hierarchy))
                written.append(files)
                bar.update(1)
    except BaseException:  # also Ctrl-C: a half-done prediction leaves nothing of itself
        for path in new_files:
            path.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        bar.close()
    return written

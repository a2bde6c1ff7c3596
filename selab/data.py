"""Datasets, augmentation, cached superpixels and collation for semantic part parsing.

The data side of the Graph LSTM (Liang et al., ECCV 2016) and Structure-evolving LSTM (Liang et al.,
CVPR 2017) experiments on PASCAL-Person-Part (Xia et al.): every dataset yields one sample format,
a dict with ``image`` float32 [3, H, W] in [0, 1], ``mask`` int64 [H, W] (class ids 0..6) and ``id``
str, and every transform takes and returns that dict. SLIC superpixels are computed once per image,
size and SLIC setting, cached on disk, and then cropped, scaled, flipped and rotated together with the
image (nearest neighbour, renumbered) instead of being recomputed for each augmented sample.

The paper's configuration: ``train_transform(321)`` (random crops around the people, flips, scaling,
colour-intensity scaling; ``rotation=10`` adds the small rotation) for training, ``eval_transform(321)``
for evaluation, about 1000 superpixels (``SuperpixelCache(n_segments=1000)``).

Example
-------
>>> ds = make_dataset("synthetic", split="train", limit=4, image_size=64)
>>> batch = collate([ds[0], ds[1]])
>>> batch["image"].shape, batch["mask"].shape, batch["id"]
(torch.Size([2, 3, 64, 64]), torch.Size([2, 64, 64]), ['0000000', '0000001'])
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from selab.classes import NUM_CLASSES
from selab.synthetic import SyntheticPersonParts

__all__ = [
    "LABEL_KEYS",
    "read_image",
    "read_mask",
    "check_files",
    "PascalPersonParts",
    "ImageMaskFolder",
    "SyntheticPersonParts",
    "Compose",
    "Resize",
    "RandomPersonCrop",
    "RandomScale",
    "RandomHorizontalFlip",
    "RandomRotation",
    "ColorJitter",
    "train_transform",
    "eval_transform",
    "default_cache_dir",
    "SuperpixelCache",
    "WithSuperpixels",
    "collate",
    "make_dataset",
    "check_dataset",
    "DatasetReport",
]

# Label maps that move with the image: nearest neighbour, never interpolated.
LABEL_KEYS = ("mask", "superpixels")
# Label maps whose ids are arbitrary and are renumbered 0..N-1 after a geometric transform.
RENUMBERED_KEYS = ("superpixels",)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Sample = dict
Transform = Callable[[Sample], Sample]


# ---------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as float32 [3, H, W] in [0, 1] (grey, palette and RGBA become RGB).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file when it is missing or unreadable.

    Example
    -------
    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "a.png"
    >>> Image.new("L", (5, 4)).save(p); read_image(p).shape
    torch.Size([3, 4, 5])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """[3,H,W] in [0,1] -> [3,S,S]: the antialiased bilinear resize of training and prediction.

    Examples
    --------
    >>> resize_image(torch.rand(3, 40, 30), 16).shape
    torch.Size([3, 16, 16])
    """
    if tuple(image.shape[-2:]) == (size, size):
        return image.float()
    return F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def read_mask(path: str | os.PathLike, num_classes: int = NUM_CLASSES, ignore_index: int | None = None) -> torch.Tensor:
    """Read a single-channel label PNG (8-bit grey or palette indices) as int64 [H, W].

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, unreadable,
    not single-channel, or holds a label outside ``0 .. num_classes - 1`` other than ``ignore_index``
    (e.g. 255, PASCAL VOC's "void", which training and the metrics then leave out).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            labels = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read mask file {path}: {error}") from error
    if labels.ndim != 2 or mode not in ("L", "P", "I", "I;16", "1"):
        raise ValueError(
            f"mask file {path}: expected a single-channel label image (mode L or P), got mode {mode} "
            f"with shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    problem = _label_problem(labels, num_classes, ignore_index)
    if problem:
        raise ValueError(f"mask file {path}: {problem}")
    return torch.from_numpy(labels)


def _label_problem(labels: np.ndarray, num_classes: int, ignore_index: int | None) -> str | None:
    if not labels.size:
        return None
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if not bad.any():
        return None
    values = np.unique(labels[bad])
    shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
    hint = "" if ignore_index is not None or 255 not in values else \
        " (255 marks unlabelled pixels in PASCAL VOC masks: set ignore_index=255 / --ignore-index 255 to skip them)"
    return f"labels {shown} out of range, expected 0..{num_classes - 1}{hint}"


def _check_pair(image_path: Path, mask_path: Path, num_classes: int, ignore_index: int | None) -> str | None:
    """What is wrong with an image/mask pair (one line naming the file), or ``None``.

    The image's header gives its size; its pixels are decoded at 1/8 scale where the format allows
    (JPEG): that still reads the whole compressed stream, so a truncated or damaged file is caught,
    at a fraction of a full decode. The mask is decoded in full (its labels are checked).
    """
    try:
        with Image.open(image_path) as im:
            size = im.size
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except FileNotFoundError:
        return f"image file not found: {image_path}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return f"cannot read image file {image_path}: {error}"
    try:
        mask = read_mask(mask_path, num_classes, ignore_index)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    if tuple(mask.shape) != (size[1], size[0]):
        return (f"mask file {mask_path} is {tuple(mask.shape)} (H, W) but its image {image_path} is "
                f"{(size[1], size[0])}")
    return None


def check_files(dataset, progress: bool = False, description: str = "checking files") -> list[str]:
    """Check every image and mask of a file dataset before any training step.

    Each image is opened and decoded (at 1/8 scale for JPEG), each mask decoded and its labels checked
    against the dataset's ``num_classes`` and ``ignore_index``, and their sizes compared.

    Parameters
    ----------
    dataset : PascalPersonParts or ImageMaskFolder (anything with ``files()``)
    progress : bool
        A tqdm progress bar.

    Returns
    -------
    list of str
        One line per bad pair, naming the file and what is wrong; empty when all are fine.

    Example
    -------
    >>> check_files(PascalPersonParts("data/pascal_person_part", "val"))  # doctest: +SKIP
    []
    """
    from tqdm.auto import tqdm

    problems = []
    for _, image_path, mask_path in tqdm(dataset.files(), desc=description, disable=not progress, leave=False):
        problem = _check_pair(image_path, mask_path, dataset.num_classes, getattr(dataset, "ignore_index", None))
        if problem:
            problems.append(problem)
    return problems


def _file_fingerprint(path: Path) -> str:
    """A short key of a file's size and modification time: changes when the file is replaced."""
    stat = path.stat()
    return hashlib.sha1(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest()[:10]


def _read_ids(split_file: Path) -> list[str]:
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    seen, repeated = set(), []
    for sample_id in ids:
        if sample_id in seen and sample_id not in repeated:
            repeated.append(sample_id)
        seen.add(sample_id)
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        warnings.warn(f"{split_file}: {len(repeated)} id(s) listed more than once ({shown}); "
                      f"each copy is used (and scored) again", stacklevel=3)
    return ids


def _missing_files_error(what: str, missing: list[str]) -> FileNotFoundError:
    shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
    return FileNotFoundError(f"{what}: {len(missing)} missing file(s): {shown}")


def _load_pair(image_path: Path, mask_path: Path, sample_id: str, num_classes: int,
               ignore_index: int | None = None) -> Sample:
    image = read_image(image_path)
    mask = read_mask(mask_path, num_classes, ignore_index)
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"mask file {mask_path} is {tuple(mask.shape)} (H, W) but its image {image_path} is "
            f"{tuple(image.shape[1:])}: they must be the same size"
        )
    return {"image": image, "mask": mask, "id": sample_id}


def _check_limit(limit):
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit: expected None or an int >= 0, got {limit!r}")


# ---------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------
class PascalPersonParts(torch.utils.data.Dataset):
    """PASCAL-Person-Part in its standard layout.

    ``root/JPEGImages/<id>.jpg``, ``root/SegmentationPart/<id>.png`` (one class id 0..6 per pixel)
    and ``root/<split>_id.txt`` (one id a line; ``root/list/<split>_id.txt`` is accepted too). The
    official full-size release loads unchanged. Every listed id's files are checked at construction.

    Parameters
    ----------
    root : path
    split : str
        ``"train"``, ``"val"``, ``"test"``: any name with a ``<split>_id.txt``.
    limit : int, optional
        Keep the first ``limit`` ids of the split.
    transform : callable, optional
        Applied to each sample dict.
    ignore_index : int, optional
        A mask value allowed besides the class ids (e.g. 255), left out of training and scoring.

    Example
    -------
    >>> ds = PascalPersonParts(os.environ["SELAB_PASCAL_ROOT"], "val", limit=2)  # doctest: +SKIP
    >>> ds[0]["image"].shape  # doctest: +SKIP
    torch.Size([3, 213, 320])
    """

    name = "pascal_person_part"
    num_classes = NUM_CLASSES

    def __init__(self, root, split: str = "train", limit: int | None = None, transform: Transform | None = None,
                 ignore_index: int | None = None):
        _check_limit(limit)
        self.ignore_index = ignore_index
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"PascalPersonParts: root {self.root} is not a directory")
        candidates = [self.root / f"{split}_id.txt", self.root / "list" / f"{split}_id.txt"]
        split_file = next((c for c in candidates if c.is_file()), None)
        if split_file is None:
            raise FileNotFoundError(
                f"PascalPersonParts: split file for split={split!r} not found (looked for "
                f"{candidates[0]} and {candidates[1]})"
            )
        ids = _read_ids(split_file)
        if limit is not None:
            ids = ids[:limit]
        self.split, self.split_file, self.ids, self.transform = split, split_file, ids, transform
        missing = [f"id {sample_id!r} has no file {path}" for sample_id in ids
                   for path in (self.image_path(sample_id), self.mask_path(sample_id)) if not path.is_file()]
        if missing:
            raise _missing_files_error(f"PascalPersonParts: ids listed in {split_file}", missing)

    def files(self) -> list[tuple[str, Path, Path]]:
        """``(id, image path, mask path)`` of every sample."""
        return [(i, self.image_path(i), self.mask_path(i)) for i in self.ids]

    def fingerprint(self, i: int) -> str:
        """Changes when sample ``i``'s image file is replaced (a key for cached superpixels and features)."""
        return _file_fingerprint(self.image_path(self.ids[i]))

    def image_path(self, sample_id: str) -> Path:
        return self.root / "JPEGImages" / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path:
        return self.root / "SegmentationPart" / f"{sample_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        sample_id = self.ids[i]
        sample = _load_pair(self.image_path(sample_id), self.mask_path(sample_id), sample_id, self.num_classes,
                            self.ignore_index)
        return self.transform(sample) if self.transform is not None else sample


class ImageMaskFolder(torch.utils.data.Dataset):
    """Images and label masks in two folders, paired by file name stem.

    ``ImageMaskFolder(image_dir, mask_dir)`` pairs ``image_dir/<stem>.<jpg|png|...>`` with
    ``mask_dir/<stem>.png``. ``ImageMaskFolder(root, split=...)`` (no ``mask_dir``) reads
    ``root/images`` and ``root/masks``, or ``root/<split>/images`` and ``root/<split>/masks`` when that
    folder exists, or the stems listed in ``root/<split>_id.txt`` when that file exists.
    selab decision: without split folders or lists, ``split="train"`` (or ``None``) is every image and
    any other split is an error (rather than silently evaluating on the training images).

    Parameters
    ----------
    image_dir, mask_dir : path
    split : str, optional
    limit : int, optional
    transform : callable, optional
    num_classes : int
        Labels must lie in ``0 .. num_classes - 1``.
    ignore_index : int, optional
        A mask value allowed besides those (e.g. 255), left out of training and scoring.

    Example
    -------
    >>> ds = ImageMaskFolder("photos/", "labels/")  # doctest: +SKIP
    """

    def __init__(
        self,
        image_dir,
        mask_dir=None,
        split: str | None = None,
        limit: int | None = None,
        transform: Transform | None = None,
        num_classes: int = NUM_CLASSES,
        ignore_index: int | None = None,
    ):
        _check_limit(limit)
        self.ignore_index = ignore_index
        ids = None
        if mask_dir is None:
            root = Path(image_dir)
            if split is not None and (root / split / "images").is_dir():
                root = root / split
            elif split is not None and (root / f"{split}_id.txt").is_file():
                ids = _read_ids(root / f"{split}_id.txt")
            elif split not in (None, "train"):
                raise FileNotFoundError(
                    f"ImageMaskFolder: split={split!r} needs {root / split / 'images'} or {root / f'{split}_id.txt'}"
                )
            image_dir, mask_dir = root / "images", root / "masks"
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        for folder, what in ((self.image_dir, "image_dir"), (self.mask_dir, "mask_dir")):
            if not folder.is_dir():
                raise FileNotFoundError(f"ImageMaskFolder: {what} {folder} is not a directory")
        images = {p.stem: p for p in sorted(self.image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        if ids is None:
            ids = sorted(images)
        if limit is not None:
            ids = ids[:limit]
        self.images, missing = {}, []
        for sample_id in ids:
            mask = self.mask_dir / f"{sample_id}.png"
            if sample_id not in images:
                missing.append(f"id {sample_id!r} has no image file in {self.image_dir}")
            elif not mask.is_file():
                missing.append(f"image {images[sample_id]} has no mask file {mask}")
            else:
                self.images[sample_id] = images[sample_id]
        if missing:
            raise _missing_files_error("ImageMaskFolder", missing)
        self.ids, self.split, self.transform, self.num_classes = list(ids), split, transform, num_classes
        digest = hashlib.sha1(str(self.image_dir.resolve()).encode()).hexdigest()[:10]
        self.name = f"folder-{digest}"

    def __len__(self) -> int:
        return len(self.ids)

    def files(self) -> list[tuple[str, Path, Path]]:
        """``(id, image path, mask path)`` of every sample."""
        return [(i, self.images[i], self.mask_dir / f"{i}.png") for i in self.ids]

    def fingerprint(self, i: int) -> str:
        """Changes when sample ``i``'s image file is replaced (a key for cached superpixels and features)."""
        return _file_fingerprint(self.images[self.ids[i]])

    def __getitem__(self, i: int) -> Sample:
        sample_id = self.ids[i]
        sample = _load_pair(self.images[sample_id], self.mask_dir / f"{sample_id}.png", sample_id, self.num_classes,
                            self.ignore_index)
        return self.transform(sample) if self.transform is not None else sample


# ---------------------------------------------------------------------------------------------------
# transforms: each takes and returns a sample dict; label maps move with the image
# ---------------------------------------------------------------------------------------------------
def _relabel(labels: torch.Tensor) -> torch.Tensor:
    """Renumber ids to 0..N-1 keeping their order, as :func:`selab.superpixels.relabel` does.

    A lookup table over 0..max id (a bincount and a cumsum) instead of a sort: linear time, which
    matters because every crop, resize and rotation renumbers.
    """
    if labels.numel() == 0:
        return labels.long()
    labels = labels.long()
    present = torch.bincount(labels.flatten(), minlength=int(labels.max()) + 1) > 0
    new_ids = torch.cumsum(present, 0) - 1
    return new_ids[labels]


def _renumber(sample: Sample) -> Sample:
    for key in RENUMBERED_KEYS:
        if key in sample:
            sample[key] = _relabel(sample[key])
    return sample


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize by index arithmetic: exact for any integer ids, on any device."""
    H, W = labels.shape[-2:]
    rows = ((torch.arange(size[0], device=labels.device) + 0.5) * (H / size[0])).long().clamp_(max=H - 1)
    cols = ((torch.arange(size[1], device=labels.device) + 0.5) * (W / size[1])).long().clamp_(max=W - 1)
    return labels[..., rows[:, None], cols[None, :]]


def _resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    out = dict(sample)
    image = sample["image"]
    if tuple(image.shape[-2:]) != tuple(size):
        down = size[0] < image.shape[-2] or size[1] < image.shape[-1]
        out["image"] = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=down
        )[0].clamp_(0, 1)
        for key in LABEL_KEYS:
            if key in sample:
                out[key] = _resize_labels(sample[key], size)
    return _renumber(out)


def _crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    out = dict(sample)
    out["image"] = sample["image"][:, top : top + height, left : left + width]
    for key in LABEL_KEYS:
        if key in sample:
            out[key] = sample[key][top : top + height, left : left + width]
    return _renumber(out)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size: expected an int or (height, width) >= 1, got {size!r}")
    return size  # type: ignore[return-value]


class Compose:
    """Apply transforms in order. Example: ``Compose([RandomHorizontalFlip(), Resize(321)])``."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Deterministic resize to ``size`` (S x S or (H, W)): bilinear image, nearest label maps.

    The evaluation transform. Example: ``Resize(321)(sample)["image"].shape == (3, 321, 321)``.
    """

    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, sample: Sample) -> Sample:
        return _resize_sample(sample, self.size)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomPersonCrop:
    """A random crop around the people: the box of non-background pixels, grown by a random margin.

    The crop is square (clipped to the image) with side ``context * max(box height, box width)``,
    ``context`` drawn from ``context_range``, centred on the box centre shifted by up to ``jitter`` of
    the side. An image with no person gets a random crop of 50-100% of its shorter side.
    selab decision: the paper says "random object crops"; margins and jitter are selab's.
    """

    def __init__(self, context_range=(1.1, 1.8), jitter: float = 0.2, generator: torch.Generator | None = None):
        if not 0 < context_range[0] <= context_range[1]:
            raise ValueError(f"context_range: expected 0 < low <= high, got {context_range}")
        self.context_range, self.jitter, self.generator = tuple(context_range), float(jitter), generator

    def __call__(self, sample: Sample) -> Sample:
        mask = sample["mask"]
        H, W = mask.shape
        g = self.generator
        rows = torch.nonzero((mask > 0).any(dim=1)).flatten()
        cols = torch.nonzero((mask > 0).any(dim=0)).flatten()
        if rows.numel() == 0:
            side = min(H, W) * _uniform(0.5, 1.0, g)
            cy, cx = _uniform(side / 2, H - side / 2, g), _uniform(side / 2, W - side / 2, g)
        else:
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            side = max(y1 - y0, x1 - x0) * _uniform(*self.context_range, g)
            cy = (y0 + y1) / 2 + self.jitter * side * _uniform(-1, 1, g)
            cx = (x0 + x1) / 2 + self.jitter * side * _uniform(-1, 1, g)
        height, width = min(max(int(round(side)), 8), H), min(max(int(round(side)), 8), W)
        top = int(min(max(round(cy - height / 2), 0), H - height))
        left = int(min(max(round(cx - width / 2), 0), W - width))
        return _crop_sample(sample, top, left, height, width)


class RandomScale:
    """Rescale the sample by a factor drawn from ``scale_range`` (image bilinear, labels nearest)."""

    def __init__(self, scale_range=(0.75, 1.25), generator: torch.Generator | None = None):
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {scale_range}")
        self.scale_range, self.generator = tuple(scale_range), generator

    def __call__(self, sample: Sample) -> Sample:
        factor = _uniform(*self.scale_range, self.generator)
        H, W = sample["image"].shape[-2:]
        return _resize_sample(sample, (max(1, round(H * factor)), max(1, round(W * factor))))


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (PASCAL-Person-Part has no left/right classes)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = float(p), generator

    def __call__(self, sample: Sample) -> Sample:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return sample
        out = dict(sample)
        for key in ("image", *LABEL_KEYS):
            if key in sample:
                out[key] = sample[key].flip(-1)
        return out  # ids stay valid under a flip: no renumbering needed


class RandomRotation:
    """Rotate by an angle in ``[-max_degrees, max_degrees]`` about the centre, keeping the size.

    Uncovered corners become black image and background mask; for superpixels they become one new
    superpixel (then renumbered).
    """

    def __init__(self, max_degrees: float = 10.0, generator: torch.Generator | None = None):
        self.max_degrees, self.generator = float(max_degrees), generator

    def __call__(self, sample: Sample) -> Sample:
        angle = math.radians(_uniform(-self.max_degrees, self.max_degrees, self.generator))
        image = sample["image"]
        H, W = image.shape[-2:]
        c, s = math.cos(angle), math.sin(angle)
        # affine_grid works in normalised coordinates; correct for the aspect ratio.
        theta = torch.tensor([[c, -s * H / W, 0.0], [s * W / H, c, 0.0]], dtype=torch.float32, device=image.device)
        grid = F.affine_grid(theta[None], [1, 1, H, W], align_corners=False)
        out = dict(sample)
        out["image"] = F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0].clamp_(0, 1)
        for key in LABEL_KEYS:
            if key in sample:
                labels = sample[key]
                # Shift by one so that the zero padding marks "outside"; ids stay exact in float32
                # below 2**24.
                moved = F.grid_sample((labels + 1).float()[None, None], grid, mode="nearest", align_corners=False)
                moved = moved[0, 0].round().long() - 1
                outside = moved < 0
                moved[outside] = 0 if key == "mask" else int(labels.max()) + 1
                out[key] = moved
        return _renumber(out)


class ColorJitter:
    """Colour-intensity scaling: random brightness, contrast and saturation factors in ``1 ± x``."""

    def __init__(self, brightness=0.3, contrast=0.3, saturation=0.3, generator: torch.Generator | None = None):
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        g = self.generator
        image = sample["image"] * _uniform(1 - self.brightness, 1 + self.brightness, g)
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = grey.mean() + (image - grey.mean()) * _uniform(1 - self.contrast, 1 + self.contrast, g)
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = grey + (image - grey) * _uniform(1 - self.saturation, 1 + self.saturation, g)
        return {**sample, "image": image.clamp_(0, 1)}


def train_transform(size=321, rotation: float = 0.0, scale_range=(0.75, 1.25),
                    generator: torch.Generator | None = None) -> Compose:
    """The training augmentation: person crop, scaling, flip, colour jitter, (rotation), resize to ``size``.

    Example
    -------
    >>> t = train_transform(64, generator=torch.Generator().manual_seed(0))
    >>> t(SyntheticPersonParts(1, 96)[0])["image"].shape
    torch.Size([3, 64, 64])
    """
    steps: list[Transform] = [RandomPersonCrop(generator=generator), RandomScale(scale_range, generator)]
    steps += [RandomHorizontalFlip(generator=generator), ColorJitter(generator=generator)]
    if rotation:
        steps.append(RandomRotation(rotation, generator))
    steps.append(Resize(size))
    return Compose(steps)


def eval_transform(size=321) -> Resize:
    """The evaluation transform: a deterministic resize to ``size`` x ``size``."""
    return Resize(size)


# ---------------------------------------------------------------------------------------------------
# superpixels, computed once and cached on disk
# ---------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$SELAB_CACHE/superpixels`` when set, else ``.cache/selab/superpixels`` under the repository."""
    if os.environ.get("SELAB_CACHE"):
        return Path(os.environ["SELAB_CACHE"]) / "superpixels"
    return Path(__file__).resolve().parents[1] / ".cache" / "selab" / "superpixels"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


class SuperpixelCache:
    """SLIC label maps on disk, keyed by dataset name, sample id, the image file's fingerprint, image
    size and SLIC parameters.

    The fingerprint (``PascalPersonParts.fingerprint``: a hash of the file's size and modification
    time) makes a replaced image get new superpixels instead of its predecessor's. Caches written
    before fingerprints were part of the key are not read: their images are computed again once.

    Parameters
    ----------
    cache_dir : path, optional
        Defaults to :func:`default_cache_dir`.
    n_segments, compactness : SLIC parameters (see :func:`selab.superpixels.slic`).

    Files are written to a temporary name and renamed into place, so concurrent workers never read a
    half-written map.

    Example
    -------
    >>> import tempfile
    >>> cache = SuperpixelCache(tempfile.mkdtemp(), n_segments=50)
    >>> labels = cache.get("demo", "a", torch.rand(3, 32, 32))
    >>> labels.dtype, cache.path("demo", "a", (32, 32)).is_file()
    (dtype('int64'), True)
    """

    def __init__(self, cache_dir=None, n_segments: int = 1000, compactness: float = 10.0):
        if int(n_segments) < 1 or compactness <= 0:
            raise ValueError(f"n_segments must be >= 1 and compactness > 0; got {n_segments}, {compactness}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.n_segments, self.compactness = int(n_segments), float(compactness)

    def path(self, dataset_name: str, sample_id: str, size: tuple[int, int], fingerprint: str | None = None) -> Path:
        source = f"_{_safe(fingerprint)}" if fingerprint else ""
        key = f"{_safe(sample_id)}{source}_{size[0]}x{size[1]}_n{self.n_segments}_c{self.compactness:g}.npy"
        return self.cache_dir / _safe(dataset_name) / key

    def get(self, dataset_name: str, sample_id: str, image, fingerprint: str | None = None) -> np.ndarray:
        """The cached superpixels of ``image`` ([3, H, W] tensor or H x W x 3 array), computing them once.

        ``fingerprint`` identifies the image's content or file version (see the class docstring).
        """
        size = tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else tuple(np.shape(image)[:2])
        path = self.path(dataset_name, sample_id, size, fingerprint)
        if path.is_file():
            try:
                labels = np.load(path)
                if labels.shape == size:
                    return labels.astype(np.int64)
            except (OSError, ValueError):
                pass  # a damaged file: recompute and replace it
        from selab.superpixels import slic

        labels = slic(image, n_segments=self.n_segments, compactness=self.compactness)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                np.save(f, labels.astype(np.int32))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return labels

    def __repr__(self) -> str:
        return f"SuperpixelCache({str(self.cache_dir)!r}, n_segments={self.n_segments}, compactness={self.compactness:g})"


def _fingerprint(dataset, i: int) -> str | None:
    """``dataset.fingerprint(i)`` through any Subset wrappers (``None`` for generated data)."""
    while isinstance(dataset, torch.utils.data.Subset):
        i, dataset = dataset.indices[i], dataset.dataset
    method = getattr(dataset, "fingerprint", None)
    return method(i) if method is not None else None


def _dataset_name(dataset) -> str | None:
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return getattr(dataset, "name", None)


class WithSuperpixels(torch.utils.data.Dataset):
    """Add cached ``superpixels`` int64 [H, W] (ids 0..N-1) to each sample, then apply ``transform``.

    Superpixels are computed on the untransformed image (once, cached), and the transform moves them
    with the image; so the wrapped ``dataset`` must have no transform of its own.

    Parameters
    ----------
    dataset : Dataset of sample dicts, without a transform
    cache : SuperpixelCache, optional
    transform : callable, optional
    name : str, optional
        Cache key prefix; defaults to ``dataset.name``.

    Example
    -------
    >>> import tempfile
    >>> ds = WithSuperpixels(SyntheticPersonParts(2, 48), SuperpixelCache(tempfile.mkdtemp(), 40))
    >>> ds[0]["superpixels"].shape
    torch.Size([48, 48])
    """

    def __init__(self, dataset, cache: SuperpixelCache | None = None, transform: Transform | None = None,
                 name: str | None = None):
        inner = dataset
        while isinstance(inner, torch.utils.data.Subset):
            inner = inner.dataset
        if getattr(inner, "transform", None) is not None:
            raise ValueError(
                "WithSuperpixels: the wrapped dataset has its own transform; pass it as transform= here "
                "so that superpixels are computed on the original image and moved with it"
            )
        self.name = name or _dataset_name(dataset)
        if not self.name:
            raise ValueError("WithSuperpixels: dataset has no .name; pass name= (a cache key prefix)")
        self.dataset, self.cache, self.transform = dataset, cache or SuperpixelCache(), transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        sample = dict(self.dataset[i])
        fingerprint = _fingerprint(self.dataset, i)
        sample["superpixels"] = torch.from_numpy(self.cache.get(self.name, sample["id"], sample["image"], fingerprint))
        return self.transform(sample) if self.transform is not None else sample


# ---------------------------------------------------------------------------------------------------
# batching and the factory
# ---------------------------------------------------------------------------------------------------
def collate(samples: Sequence[Sample]) -> dict:
    """Stack a list of samples into a batch: tensors to [B, ...], ``id`` (and anything else) to lists.

    Superpixel ids stay per image (0..N_b-1); :func:`selab.graph.graph_from_superpixels` offsets them.

    Example
    -------
    >>> s = {"image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long), "id": "a"}
    >>> collate([s, s])["image"].shape
    torch.Size([2, 3, 4, 4])
    """
    if not samples:
        raise ValueError("collate: expected at least one sample, got none")
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                if key in ("image", *LABEL_KEYS):
                    raise ValueError(
                        f"collate: {key!r} differs in size across samples {sorted(shapes)}; resize them "
                        f"first (eval_transform / train_transform)"
                    )
                batch[key] = values
            else:
                batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


DATASETS = ("synthetic", "pascal_person_part", "folder")
SYNTHETIC_SPLIT_START = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def make_dataset(
    name: str,
    root=None,
    split: str = "train",
    limit: int | None = None,
    image_size=128,
    seed: int = 0,
    transform: Transform | str | None = "default",
    superpixels: bool = False,
    n_segments: int = 1000,
    compactness: float = 10.0,
    cache_dir=None,
    ignore_index: int | None = None,
):
    """Build a dataset by name: ``synthetic``, ``pascal_person_part`` or ``folder``.

    Parameters
    ----------
    name : str
    root : path
        Dataset folder (PASCAL layout, or the ``folder`` layout of :class:`ImageMaskFolder`); not used
        by ``synthetic``.
    split : str
    limit : int, optional
        First ``limit`` samples; for ``synthetic`` the number of images (default 64 for ``train``, 16
        otherwise). Synthetic splits are disjoint: ``val`` starts at image 1,000,000, ``test`` at 2,000,000.
    image_size : int or (H, W)
        Synthetic render size, and the output size of the default transforms.
    seed : int
        Synthetic generator seed.
    transform : "default", "augment", None or callable
        ``"default"``: :func:`eval_transform` (``image_size``) for real data, none for synthetic (already
        that size); ``"augment"``: :func:`train_transform` (``image_size``); ``None``: original sizes.
    superpixels : bool
        Add cached ``superpixels`` (:class:`WithSuperpixels`) with ``n_segments``, ``compactness`` and
        ``cache_dir``.
    ignore_index : int, optional
        A mask value allowed besides the class ids in real data (e.g. 255), left out of training and scoring.

    Example
    -------
    >>> make_dataset("synthetic", split="val", limit=3, image_size=32)[0]["id"]
    '1000000'
    """
    if name not in DATASETS:
        raise ValueError(f"make_dataset: name must be one of {DATASETS}, got {name!r}")
    _check_limit(limit)
    if name == "synthetic":
        if split not in SYNTHETIC_SPLIT_START:
            raise ValueError(f"make_dataset: synthetic split must be one of {tuple(SYNTHETIC_SPLIT_START)}, got {split!r}")
        number = limit if limit is not None else (64 if split == "train" else 16)
        base = SyntheticPersonParts(number, image_size, seed=seed, start=SYNTHETIC_SPLIT_START[split])
    else:
        if root is None:
            raise ValueError(f"make_dataset: root is required for {name!r}")
        if name == "pascal_person_part":
            base = PascalPersonParts(root, split=split, limit=limit, ignore_index=ignore_index)
        else:
            base = ImageMaskFolder(root, split=split, limit=limit, ignore_index=ignore_index)
    if transform == "default":
        transform = None if name == "synthetic" else eval_transform(image_size)
    elif transform == "augment":
        transform = train_transform(image_size)
    elif transform is not None and not callable(transform):
        raise ValueError(f"make_dataset: transform must be 'default', 'augment', None or callable, got {transform!r}")
    if superpixels:
        return WithSuperpixels(base, SuperpixelCache(cache_dir, n_segments, compactness), transform)
    base.transform = transform
    return base


# ---------------------------------------------------------------------------------------------------
# checking a dataset folder (``selab check-data``)
# ---------------------------------------------------------------------------------------------------
class DatasetReport(NamedTuple):
    """What :func:`check_dataset` found in a dataset folder.

    Attributes
    ----------
    root : Path
    dataset : str
        ``"pascal_person_part"`` or ``"folder"``.
    splits : dict
        Number of ids per checked split.
    num_images : int
        Distinct image/mask pairs read (an id listed in two splits is read once).
    pixels_per_class, images_per_class : ndarray of int64, shape (num_classes,)
        Pixel count of each class over all masks, and the number of masks holding it.
    class_names : tuple of str
    problems : list of str
        One line per problem (file and what was expected); empty when the folder is usable.
    """

    root: Path
    dataset: str
    splits: dict
    num_images: int
    pixels_per_class: np.ndarray
    images_per_class: np.ndarray
    class_names: tuple
    problems: list

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_problems: int = 20) -> str:
        """The report as text: splits, the class histogram, then the problems (at most ``max_problems``)."""
        split_text = ", ".join(f"{name} {count}" for name, count in self.splits.items()) or "none"
        lines = [f"{self.dataset} at {self.root}", f"splits: {split_text} ids; {self.num_images} image/mask pairs read"]
        total = max(int(self.pixels_per_class.sum()), 1)
        width = max(len(name) for name in self.class_names)
        lines.append(f"{'id':>3}  {'class':<{width}}  {'pixels %':>8}  {'images':>6}")
        for k, name in enumerate(self.class_names):
            lines.append(f"{k:>3}  {name:<{width}}  {100 * self.pixels_per_class[k] / total:8.2f}  "
                         f"{int(self.images_per_class[k]):>6}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {problem}" for problem in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _listed_splits(root: Path) -> list[str]:
    names = {p.name[: -len("_id.txt")] for folder in (root, root / "list") if folder.is_dir()
             for p in folder.glob("*_id.txt")}
    return sorted(names)


def _listed_pascal_pairs(root: Path, split: str, problems: list) -> list[tuple[str, Path, Path]]:
    candidates = [root / f"{split}_id.txt", root / "list" / f"{split}_id.txt"]
    split_file = next((c for c in candidates if c.is_file()), None)
    if split_file is None:
        problems.append(f"split {split!r}: no {candidates[0]} (nor {candidates[1]})")
        return []
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        problems.append(f"{split_file}: lists no ids")
    duplicated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicated:
        problems.append(f"{split_file}: {len(duplicated)} id(s) listed twice, e.g. {duplicated[0]!r}")
    # The paths of PascalPersonParts.image_path / mask_path.
    return [(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationPart" / f"{i}.png") for i in dict.fromkeys(ids)]


def _listed_folder_pairs(root: Path, split: str, num_classes: int, problems: list) -> list[tuple[str, Path, Path]]:
    try:
        folder = ImageMaskFolder(root, split=split, num_classes=num_classes)
    except (FileNotFoundError, ValueError) as error:
        problems.append(str(error))
        return []
    return [(i, folder.images[i], folder.mask_dir / f"{i}.png") for i in folder.ids]


def _pair_class_counts(image_path: Path, mask_path: Path, num_classes: int) -> tuple[np.ndarray | None, str | None]:
    """(per-class pixel counts, None) for a good pair, or (None, the problem)."""
    for path, what in ((image_path, "image"), (mask_path, "mask")):
        if not path.is_file():
            return None, f"{what} file missing: {path}"
    try:
        with Image.open(image_path) as im:
            im.load()  # a full decode: a truncated JPEG fails here, not at training time
            image_size = im.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, f"cannot decode image {image_path}: {error}"
    try:
        with Image.open(mask_path) as im:
            mode, labels = im.mode, np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, f"cannot decode mask {mask_path}: {error}"
    if labels.ndim != 2 or mode not in ("L", "P", "I", "I;16", "1"):
        return None, f"mask {mask_path}: mode {mode} shape {labels.shape}, expected one channel (mode L or P)"
    if labels.shape != (image_size[1], image_size[0]):
        return None, (f"mask {mask_path} is {labels.shape} (H, W) but its image {image_path} is "
                      f"{(image_size[1], image_size[0])}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        found = sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))
        return None, f"mask {mask_path}: labels {found[:5]} out of range, expected 0..{num_classes - 1}"
    return np.bincount(labels.ravel(), minlength=num_classes), None


def check_dataset(root, dataset: str = "pascal_person_part", splits: Sequence[str] | None = None,
                  num_classes: int = NUM_CLASSES, progress: bool = True) -> DatasetReport:
    """Check a dataset folder before training on it; the logic of ``selab check-data``.

    Reads every listed image and mask once: ids without files, images that do not decode, masks that
    are not single-channel, differ in size from their image or hold labels outside
    ``0 .. num_classes - 1``, ids listed twice and ids shared by two splits are reported, all of them
    (not only the first), together with the class histogram of the masks.

    Parameters
    ----------
    root : path
        The dataset folder (the layout of :class:`PascalPersonParts` or of :class:`ImageMaskFolder`).
    dataset : {"pascal_person_part", "folder"}
    splits : list of str, optional
        Default: every ``<split>_id.txt`` in ``root`` (or ``root/list``); for ``folder`` without such
        lists, ``["train"]`` (every image).
    num_classes : int
        Labels must lie in ``0 .. num_classes - 1`` (7 for PASCAL-Person-Part).
    progress : bool
        A tqdm progress bar over the images.

    Returns
    -------
    DatasetReport
        ``report.ok`` is True when nothing is wrong; ``report.format()`` is the printed text.

    Examples
    --------
    >>> import tempfile
    >>> from selab.synthetic import write_pascal_layout
    >>> root = write_pascal_layout(SyntheticPersonParts(5, 32), tempfile.mkdtemp(), val_fraction=0.4)
    >>> report = check_dataset(root, progress=False)
    >>> report.ok, report.splits, report.num_images
    (True, {'train': 3, 'val': 2}, 5)
    """
    from tqdm.auto import tqdm

    from selab.classes import CLASS_NAMES

    if dataset not in ("pascal_person_part", "folder"):
        raise ValueError(f"check_dataset: dataset must be 'pascal_person_part' or 'folder', got {dataset!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"check_dataset: num_classes must be a positive int, got {num_classes!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"check_dataset: root {root} is not a directory")
    problems: list[str] = []
    if dataset == "pascal_person_part":
        for folder in ("JPEGImages", "SegmentationPart"):
            if not (root / folder).is_dir():
                problems.append(f"folder missing: {root / folder}")
    if splits is None:
        splits = _listed_splits(root)
        if not splits:
            if dataset == "pascal_person_part":
                problems.append(f"no <split>_id.txt in {root} (nor in {root / 'list'})")
            splits = [] if dataset == "pascal_person_part" else ["train"]
    pairs: dict[str, tuple[Path, Path]] = {}
    split_of: dict[str, str] = {}
    counts = {}
    for split in splits:
        found = (_listed_pascal_pairs(root, split, problems) if dataset == "pascal_person_part"
                 else _listed_folder_pairs(root, split, num_classes, problems))
        counts[split] = len(found)
        shared = [i for i, _, _ in found if i in split_of]
        if shared:
            problems.append(f"split {split!r}: {len(shared)} id(s) also in split {split_of[shared[0]]!r}, "
                            f"e.g. {shared[0]!r}")
        for sample_id, image_path, mask_path in found:
            split_of.setdefault(sample_id, split)
            pairs.setdefault(sample_id, (image_path, mask_path))
    pixels = np.zeros(num_classes, dtype=np.int64)
    images = np.zeros(num_classes, dtype=np.int64)
    for sample_id, (image_path, mask_path) in tqdm(pairs.items(), desc="check-data", unit="img", disable=not progress):
        histogram, problem = _pair_class_counts(image_path, mask_path, num_classes)
        if problem is not None:
            problems.append(f"id {sample_id!r}: {problem}")
            continue
        pixels += histogram
        images += histogram > 0
    names = tuple(CLASS_NAMES) if num_classes == NUM_CLASSES else tuple(f"class {k}" for k in range(num_classes))
    return DatasetReport(root, dataset, counts, len(pairs), pixels, images, names, problems)

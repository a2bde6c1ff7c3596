"""Part-parsing datasets: reading and checking image/mask files, PASCAL-Person-Part and folder loaders.

The data of the Graph LSTM (Liang et al., ECCV 2016) and Structure-evolving LSTM (Liang et al.,
CVPR 2017) experiments on PASCAL-Person-Part (Xia et al.): every dataset yields one sample format,
a dict with ``image`` float32 [3, H, W] in [0, 1], ``mask`` int64 [H, W] (class ids 0..6) and ``id``
str, at the files' own sizes. :func:`make_dataset` picks one by name (the built-in synthetic data
included, :mod:`selab.data.synthetic`); :func:`check_files` and :func:`check_dataset` (``selab check-data``)
report every bad file at once. What training reads (resized, with cached superpixels and features) is
built from these in :mod:`selab.data.prepare`.

Examples
--------
>>> ds = make_dataset("synthetic", split="train", limit=4, image_size=64)
>>> sample = ds[0]
>>> sample["image"].shape, sample["mask"].shape, sample["id"]
(torch.Size([3, 64, 64]), torch.Size([64, 64]), '0000000')
"""

from __future__ import annotations

import collections
import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from selab.classes import CLASS_NAMES, NUM_CLASSES
from selab.data.synthetic import SyntheticPersonParts

__all__ = ["DATASETS", "decode_image", "read_image", "resize_image", "read_mask", "check_files", "PascalPersonParts",
           "ImageMaskFolder", "SyntheticPersonParts", "make_dataset", "check_dataset", "DatasetReport"]

DATASETS = ("synthetic", "pascal_person_part", "folder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Sample = dict
Transform = Callable[[Sample], Sample]


# ---------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------
# 16-bit grey modes, scaled by their range (65535); Pillow reads 16-bit colour PNGs as 8-bit RGB itself.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Modes without a defined range of values: refused rather than clipped to garbage.
_UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def decode_image(source, error: str) -> torch.Tensor:
    """An image file (a path or a file object) as float32 [3, H, W] in [0, 1]; grey, palette and RGBA
    become RGB, 16-bit grey is scaled by 65535. A file that is not an image, or a 32-bit integer or
    float image (no defined range of values), raises ``ValueError("<error>: <why>")``."""
    try:
        with Image.open(source) as im:
            if im.mode in _UNSCALED_MODES:
                raise ValueError(f"{_UNSCALED_MODES[im.mode]} pixels (mode {im.mode}) have no defined range; "
                                 "save the image with 8 or 16 bits per channel")
            if im.mode in _SIXTEEN_BIT_MODES:
                grey = np.asarray(im).astype(np.float32) / 65535.0
                return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(grey, (3, *grey.shape))))
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as cause:
        raise ValueError(f"{error}: {cause}") from cause
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as float32 [3, H, W] in [0, 1] (grey, palette and RGBA become RGB).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file when it is missing or unreadable.

    Examples
    --------
    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "a.png"
    >>> Image.new("L", (5, 4)).save(p); read_image(p).shape
    torch.Size([3, 4, 5])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return decode_image(path, f"cannot read image file {path}")


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


def _check_pair(image_path: Path, mask_path: Path, num_classes: int, ignore_index: int | None = None,
                full: bool = False) -> tuple[torch.Tensor | None, str | None]:
    """``(mask, None)`` for a good image/mask pair, else ``(None, one line naming the file and what is wrong)``.

    The image's header gives its size; unless ``full``, its pixels are decoded at 1/8 scale where the
    format allows (JPEG): that still reads the whole compressed stream, so a truncated or damaged file
    is caught, at a fraction of a full decode. The mask is decoded in full (its labels are checked).
    """
    for path, what in ((image_path, "image"), (mask_path, "mask")):
        if not path.is_file():
            return None, f"{what} file missing: {path}"
    try:
        with Image.open(image_path) as im:
            size = im.size
            if not full:
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return None, f"cannot decode image file {image_path}: {error}"
    try:
        mask = read_mask(mask_path, num_classes, ignore_index)
    except ValueError as error:
        return None, str(error)
    if tuple(mask.shape) != (size[1], size[0]):
        return None, (f"mask file {mask_path} is {tuple(mask.shape)} (H, W) but its image {image_path} is "
                      f"{(size[1], size[0])}")
    return mask, None


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

    Examples
    --------
    >>> check_files(PascalPersonParts("data/pascal_person_part", "val"))  # doctest: +SKIP
    []
    """
    files = tqdm(dataset.files(), desc=description, disable=not progress, leave=False)
    checked = (_check_pair(image, mask, dataset.num_classes, getattr(dataset, "ignore_index", None))
               for _, image, mask in files)
    return [problem for _, problem in checked if problem]


def _file_fingerprint(path: Path) -> str:
    """A short key of a file's size and modification time: changes when the file is replaced."""
    stat = path.stat()
    return hashlib.sha1(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest()[:10]


def _split_file(root: Path, split: str) -> tuple[Path | None, list[Path]]:
    """A split's id list, ``root/<split>_id.txt`` or ``root/list/<split>_id.txt`` (``None``: neither), and both."""
    candidates = [root / f"{split}_id.txt", root / "list" / f"{split}_id.txt"]
    return next((c for c in candidates if c.is_file()), None), candidates


def _ids_in(split_file: Path) -> tuple[list[str], list[str]]:
    """The ids of a split file (one a line) and those listed more than once."""
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    return ids, [i for i, n in collections.Counter(ids).items() if n > 1]


def _read_ids(split_file: Path) -> list[str]:
    ids, repeated = _ids_in(split_file)
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        warnings.warn(f"{split_file}: {len(repeated)} id(s) listed more than once ({shown}); "
                      f"each copy is used (and scored) again", stacklevel=3)
    return ids


def _missing_files_error(what: str, missing: list[str]) -> FileNotFoundError:
    shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
    return FileNotFoundError(f"{what}: {len(missing)} missing file(s): {shown}")


def _check_limit(limit):
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit: expected None or an int >= 0, got {limit!r}")


# ---------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------
class _FilePairs(torch.utils.data.Dataset):
    """What both file datasets share: samples ``ids`` whose files :meth:`paths` names."""

    def paths(self, sample_id: str) -> tuple[Path, Path]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def files(self) -> list[tuple[str, Path, Path]]:
        """``(id, image path, mask path)`` of every sample."""
        return [(i, *self.paths(i)) for i in self.ids]

    def fingerprint(self, i: int) -> str:
        """Changes when sample ``i``'s image file is replaced (a key for cached superpixels and features)."""
        return _file_fingerprint(self.paths(self.ids[i])[0])

    def __getitem__(self, i: int) -> Sample:
        sample_id = self.ids[i]
        image_path, mask_path = self.paths(sample_id)
        image, mask = read_image(image_path), read_mask(mask_path, self.num_classes, self.ignore_index)
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"mask file {mask_path} is {tuple(mask.shape)} (H, W) but its image {image_path} is "
                             f"{tuple(image.shape[1:])}: they must be the same size")
        sample = {"image": image, "mask": mask, "id": sample_id}
        return self.transform(sample) if self.transform is not None else sample


class PascalPersonParts(_FilePairs):
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

    Examples
    --------
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
        split_file, candidates = _split_file(self.root, split)
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

    def paths(self, sample_id: str) -> tuple[Path, Path]:
        return self.image_path(sample_id), self.mask_path(sample_id)

    def image_path(self, sample_id: str) -> Path:
        return self.root / "JPEGImages" / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path:
        return self.root / "SegmentationPart" / f"{sample_id}.png"


class ImageMaskFolder(_FilePairs):
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

    Examples
    --------
    >>> ds = ImageMaskFolder("photos/", "labels/")  # doctest: +SKIP
    """

    def __init__(self, image_dir, mask_dir=None, split: str | None = None, limit: int | None = None,
                 transform: Transform | None = None, num_classes: int = NUM_CLASSES, ignore_index: int | None = None):
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

    def paths(self, sample_id: str) -> tuple[Path, Path]:
        return self.images[sample_id], self.mask_dir / f"{sample_id}.png"


SYNTHETIC_SPLIT_START = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def make_dataset(name: str, root=None, split: str = "train", limit: int | None = None, image_size=128,
                 seed: int = 0, transform: Transform | None = None, ignore_index: int | None = None):
    """Build a dataset by name: ``synthetic``, ``pascal_person_part`` or ``folder``.

    Real data comes at its files' own sizes (:mod:`selab.data.prepare` resizes it for training).

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
        Synthetic render size.
    seed : int
        Synthetic generator seed.
    transform : callable, optional
        Applied to each sample dict.
    ignore_index : int, optional
        A mask value allowed besides the class ids in real data (e.g. 255), left out of training and scoring.

    Examples
    --------
    >>> make_dataset("synthetic", split="val", limit=3, image_size=32)[0]["id"]
    '1000000'
    """
    if name not in DATASETS:
        raise ValueError(f"make_dataset: name must be one of {DATASETS}, got {name!r}")
    _check_limit(limit)
    if transform is not None and not callable(transform):
        raise ValueError(f"make_dataset: transform must be None or callable, got {transform!r}")
    if name == "synthetic":
        if split not in SYNTHETIC_SPLIT_START:
            raise ValueError(f"make_dataset: synthetic split must be one of {tuple(SYNTHETIC_SPLIT_START)}, got {split!r}")
        number = limit if limit is not None else (64 if split == "train" else 16)
        return SyntheticPersonParts(number, image_size, seed=seed, start=SYNTHETIC_SPLIT_START[split],
                                    transform=transform)
    if root is None:
        raise ValueError(f"make_dataset: root is required for {name!r}")
    if name == "pascal_person_part":
        return PascalPersonParts(root, split=split, limit=limit, transform=transform, ignore_index=ignore_index)
    return ImageMaskFolder(root, split=split, limit=limit, transform=transform, ignore_index=ignore_index)


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
    split_file, candidates = _split_file(root, split)
    if split_file is None:
        problems.append(f"split {split!r}: no {candidates[0]} (nor {candidates[1]})")
        return []
    ids, duplicated = _ids_in(split_file)
    duplicated = sorted(duplicated)
    if not ids:
        problems.append(f"{split_file}: lists no ids")
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
    return folder.files()


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
    >>> from selab.data.synthetic import write_pascal_layout
    >>> root = write_pascal_layout(SyntheticPersonParts(5, 32), tempfile.mkdtemp(), val_fraction=0.4)
    >>> report = check_dataset(root, progress=False)
    >>> report.ok, report.splits, report.num_images
    (True, {'train': 3, 'val': 2}, 5)
    """
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
        # a full decode: a truncated JPEG fails here, not at training time
        mask, problem = _check_pair(image_path, mask_path, num_classes, full=True)
        if problem is not None:
            problems.append(f"id {sample_id!r}: {problem}")
            continue
        histogram = np.bincount(mask.numpy().ravel(), minlength=num_classes)
        pixels += histogram
        images += histogram > 0
    names = tuple(CLASS_NAMES) if num_classes == NUM_CLASSES else tuple(f"class {k}" for k in range(num_classes))
    return DatasetReport(root, dataset, counts, len(pairs), pixels, images, names, problems)

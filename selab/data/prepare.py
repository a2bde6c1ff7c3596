"""What training reads: a split resized to S x S, with cached superpixels and features, batched.

The data side of :func:`selab.training.loop.run`, told what to prepare by a :class:`DataConfig`.
:func:`base_dataset` picks a split's full-resolution samples
(:mod:`selab.data.datasets`); :class:`PreparedSplit` resizes them (antialiased bilinear image, nearest-neighbour
mask) and adds the superpixels of the resized image and, with a frozen backbone, its multi-scale
features, both computed once and cached on disk (:class:`SuperpixelCache`, one ``.pt`` file per image
for the features); :func:`collate` batches its items. The loaders of a training run (each epoch's
shuffle and augmentation, the evaluation batches) are :mod:`selab.training.loaders`.

Augmentation (``TrainConfig.augment``, ``TrainConfig.augmentation``): ``"flip"`` mirrors a sample
horizontally, image, mask, superpixels and every cached feature map alike; ``"paper"`` applies the paper's
crops around the people, scale, rotation, flip and colour-intensity scaling (:mod:`selab.data.augment`) to the
full-resolution image and mask and to the cached superpixel map. selab decision: with cached features only
the flip is possible (a feature map cannot follow a crop or a rotation of its image: it would have to be
computed again), so ``"paper"`` needs uncached features (a trained backbone, or ``cache_features=False``).

Examples
--------
>>> import tempfile
>>> data = DataConfig(image_size=32, cache_root=tempfile.mkdtemp(), superpixels=True, n_segments=20)
>>> split = PreparedSplit(data, "train", limit=2, keep_full=False)
>>> batch = collate([split[0], split[1]])
>>> batch["image"].shape, batch["superpixels"].shape, batch["ids"]
(torch.Size([2, 3, 32, 32]), torch.Size([2, 32, 32]), ['0000000', '0000001'])
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from selab.data.augment import Augmentation
from selab.data.datasets import check_files, make_dataset, resize_image
from selab.files import atomic_save, atomic_write
from selab.method import superpixels
from selab.model.parser import SELabModel

SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_VAL_IMAGES = 256, 32


@dataclass(frozen=True)
class DataConfig:
    """What preparing a split needs to know: the data, the size it is trained at, the caches.

    Parameters
    ----------
    dataset : {"synthetic", "pascal_person_part", "folder"}
        See :func:`selab.data.datasets.make_dataset`.
    data_root : str, optional
        The dataset folder (not for ``synthetic``).
    image_size : int
        Images, masks and superpixels are resized to S x S.
    ignore_index : int, optional
        The mask value that is not a class (e.g. 255).
    cache_root : path
        Holds ``superpixels/`` and ``features/``.
    train_split : str
        The training split: ``synthetic`` renders 256 images for it by default and 32 for any other.
    superpixels : bool
        Items carry their SLIC superpixels (the graph variants).
    n_segments, compactness : SLIC parameters (:func:`selab.method.superpixels.slic`).
    feature_tag : str, optional
        Items carry the cached features of the frozen backbone this names (e.g.
        ``efficientnet_lite0-os8-imagenet``); ``None``: no feature cache.
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    image_size: int = 96
    ignore_index: int | None = None
    cache_root: Path | str = "cache"
    train_split: str = "train"
    superpixels: bool = False
    n_segments: int = 1000
    compactness: float = 10.0
    feature_tag: str | None = None


# ---------------------------------------------------------------------------------------------------
# the split's samples
# ---------------------------------------------------------------------------------------------------
def _dataset_key(config: DataConfig, split: str) -> str:
    """Names a dataset split in cache paths: changes whenever its pixels could."""
    if config.dataset == "synthetic":
        return f"synthetic-{split}-{config.image_size}"
    root = str(Path(config.data_root).resolve())
    return f"{config.dataset}-{hashlib.sha1(root.encode()).hexdigest()[:10]}"


def base_dataset(config: DataConfig, split: str, limit: int | None):
    """The split's full-resolution samples (dicts with ``image`` [3,H,W], ``mask`` [H,W], ``id``).

    :func:`selab.data.datasets.make_dataset`; ``synthetic`` renders ``limit`` images (default 256 for training,
    32 otherwise) at ``image_size``, with disjoint ``train``/``val``/``test``.
    """
    if config.dataset == "synthetic" and limit is None:
        # selab decision: enough synthetic images that the default quick run learns visibly.
        limit = SYNTHETIC_TRAIN_IMAGES if split == config.train_split else SYNTHETIC_VAL_IMAGES
    return make_dataset(config.dataset, root=config.data_root, split=split, limit=limit,
                        image_size=config.image_size, ignore_index=config.ignore_index)


def check_data(config: DataConfig, splits: list[tuple[str, int | None]], progress: bool = False) -> None:
    """Check every image and mask of ``splits`` (``(split, limit)`` pairs) before the first step.

    Raises one ``ValueError`` naming every bad or missing file of all of them (generated synthetic
    data is not checked).
    """
    if config.dataset == "synthetic":
        return
    problems = []
    for split, limit in splits:
        try:
            dataset = base_dataset(config, split, limit)
        except FileNotFoundError as error:
            problems.append(str(error))
            continue
        problems += check_files(dataset, progress=progress, description=f"checking {split} files")
    if problems:
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise ValueError(f"{len(problems)} bad data file(s) in {config.data_root} (nothing was trained):\n  {shown}")


# ---------------------------------------------------------------------------------------------------
# superpixels, computed once and cached on disk
# ---------------------------------------------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


class SuperpixelCache:
    """SLIC label maps on disk, keyed by dataset name, sample id, the image file's fingerprint, image
    size and SLIC parameters.

    The fingerprint (``PascalPersonParts.fingerprint``: a hash of the file's size and modification
    time) makes a replaced image get new superpixels instead of its predecessor's. Caches written
    before fingerprints were part of the key are not read: their images are computed again once.
    Files are written to a temporary name and renamed into place, so concurrent workers never read a
    half-written map (:func:`selab.files.atomic_write`).

    Parameters
    ----------
    cache_dir : path
    n_segments, compactness : SLIC parameters (see :func:`selab.method.superpixels.slic`).

    Examples
    --------
    >>> import tempfile
    >>> cache = SuperpixelCache(tempfile.mkdtemp(), n_segments=50)
    >>> labels = cache.get("demo", "a", torch.rand(3, 32, 32))
    >>> labels.dtype, cache.path("demo", "a", (32, 32)).is_file()
    (dtype('int64'), True)
    """

    def __init__(self, cache_dir, n_segments: int = 1000, compactness: float = 10.0):
        if int(n_segments) < 1 or compactness <= 0:
            raise ValueError(f"n_segments must be >= 1 and compactness > 0; got {n_segments}, {compactness}")
        self.cache_dir = Path(cache_dir)
        self.n_segments, self.compactness = int(n_segments), float(compactness)

    def path(self, dataset_name: str, sample_id: str, size: tuple[int, int], fingerprint: str | None = None) -> Path:
        source = f"_{_safe(fingerprint)}" if fingerprint else ""
        key = f"{_safe(sample_id)}{source}_{size[0]}x{size[1]}_n{self.n_segments}_c{self.compactness:g}.npy"
        return self.cache_dir / _safe(dataset_name) / key

    def get(self, dataset_name: str, sample_id: str, image: torch.Tensor, fingerprint: str | None = None) -> np.ndarray:
        """The cached superpixels of ``image`` [3, H, W], computing them once.

        ``fingerprint`` identifies the image's content or file version (see the class docstring).
        """
        size = tuple(image.shape[-2:])
        path = self.path(dataset_name, sample_id, size, fingerprint)
        if path.is_file():
            try:
                labels = np.load(path)
                if labels.shape == size:
                    return labels.astype(np.int64)
            except (OSError, ValueError):
                pass  # a damaged file: recompute and replace it
        labels = superpixels.slic(image, n_segments=self.n_segments, compactness=self.compactness)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, labels.astype(np.int32))

        atomic_write(path, write)
        return labels

    def __repr__(self) -> str:
        return f"SuperpixelCache({str(self.cache_dir)!r}, n_segments={self.n_segments}, compactness={self.compactness:g})"


# ---------------------------------------------------------------------------------------------------
# one split, prepared
# ---------------------------------------------------------------------------------------------------
class PreparedSplit(torch.utils.data.Dataset):
    """One split resized to S x S, with cached superpixels and (frozen backbone) cached features.

    Items: ``image`` [3,S,S], ``mask`` [S,S], ``superpixels`` [S,S] (graph variants), ``features`` (list of
    [C_i,h_i,w_i] float16, cached), ``id``, and for evaluation ``full_mask`` / ``full_image`` at the
    original resolution. ``flips`` (a bool tensor per index) mirrors a sample horizontally: image, mask,
    superpixels and every feature map alike. ``draws`` (one row of :meth:`selab.data.augment.Augmentation.draws`
    per index) applies the paper's augmentation instead, the flip included.
    """

    def __init__(self, config: DataConfig, split: str, limit: int | None, keep_full: bool):
        self.config, self.split, self.keep_full = config, split, keep_full
        self.base = base_dataset(config, split, limit)
        self.needs_superpixels = config.superpixels
        self.size = config.image_size
        self.cache_key = _dataset_key(config, split)
        cache_root = Path(config.cache_root)
        self.superpixel_cache = SuperpixelCache(cache_root / "superpixels", config.n_segments, config.compactness)
        self.feature_dir = None
        if config.feature_tag is not None:
            self.feature_dir = cache_root / "features" / self.cache_key / f"{config.feature_tag}-s{self.size}"
        self.flips, self.draws, self.augmentation = None, None, Augmentation()

    def __len__(self) -> int:
        return len(self.base)

    def _id(self, index: int) -> str:
        ids = getattr(self.base, "ids", None)
        return str(ids[index]) if ids is not None else str(self.base[index]["id"])

    def resized(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = sample["image"], sample["mask"]
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image.float(), mask.long()
        mask = F.interpolate(mask[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
        return resize_image(image, self.size), mask

    def fingerprint(self, index: int) -> str | None:
        """Changes when item ``index``'s image file is replaced (``None`` for generated data)."""
        method = getattr(self.base, "fingerprint", None)
        return method(index) if method is not None else None

    def superpixel_path(self, index: int) -> Path:
        return self.superpixel_cache.path(self.cache_key, self._id(index), (self.size, self.size),
                                          self.fingerprint(index))

    def superpixels(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """SLIC of the resized ``image`` of item ``index``, computed once (:class:`SuperpixelCache`)."""
        return torch.from_numpy(self.superpixel_cache.get(self.cache_key, self._id(index), image,
                                                          self.fingerprint(index)))

    def feature_path(self, index: int, folder: Path | None = None) -> Path:
        fingerprint = self.fingerprint(index)
        name = f"{self._id(index)}-{fingerprint}.pt" if fingerprint else f"{self._id(index)}.pt"
        return (folder or self.feature_dir) / name

    def __getitem__(self, index: int) -> dict:
        sample = self.base[index]
        image, mask = self.resized(sample)
        item = {"image": image, "mask": mask, "id": self._id(index)}
        if self.needs_superpixels:
            item["superpixels"] = self.superpixels(index, image)
        if self.feature_dir is not None:
            path = self.feature_path(index)
            try:
                item["features"] = torch.load(path, weights_only=True)
            except Exception as error:
                reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
                raise ValueError(f"cached features {path} are unreadable ({reason}); delete the file "
                                 f"and they are computed again") from None
        if self.keep_full:
            item["full_mask"] = sample["mask"].long()
            item["full_image"] = sample["image"].float()
        flip = self.flips is not None and bool(self.flips[index])
        if self.draws is not None:
            if "features" in item:
                raise ValueError("PreparedSplit: the paper's augmentation cannot transform cached features")
            item.update(self.augmentation(sample["image"], sample["mask"], item.get("superpixels"), self.size,
                                          self.draws[index], flip, self.config.ignore_index))
        elif flip:
            for key in ("image", "mask", "superpixels"):
                if key in item:
                    item[key] = item[key].flip(-1)
            if "features" in item:
                item["features"] = [f.flip(-1) for f in item["features"]]
        return item

    def prepare(self, model: SELabModel, device, batch_size: int, num_workers: int, progress: bool) -> None:
        """Fill the superpixel and feature caches for every missing image (once per dataset and size)."""
        missing_sp = [i for i in range(len(self)) if self.needs_superpixels
                      and not self.superpixel_path(i).is_file()]
        missing_ft = [i for i in range(len(self)) if self.feature_dir is not None and not self.feature_path(i).is_file()]
        todo = sorted(set(missing_sp) | set(missing_ft))
        if not todo:
            return
        saved_dir, self.feature_dir = self.feature_dir, None  # load items without features while filling
        keep_full, self.keep_full = self.keep_full, False
        try:
            position = 0
            for data in tqdm(loader(torch.utils.data.Subset(self, todo), batch_size, num_workers),
                             desc=f"caching {self.split} superpixels/features", disable=not progress, leave=False):
                indices = todo[position : position + len(data["ids"])]
                position += len(data["ids"])
                if saved_dir is None:
                    continue
                with torch.no_grad():
                    model.backbone.eval()
                    features = model.backbone(data["image"].to(device))
                for b, index in enumerate(indices):
                    path = self.feature_path(index, saved_dir)
                    atomic_save([f[b].detach().to("cpu", torch.float16).clone() for f in features], path)
        finally:
            self.feature_dir, self.keep_full = saved_dir, keep_full


# ---------------------------------------------------------------------------------------------------
# batches and loaders
# ---------------------------------------------------------------------------------------------------
def collate(items: list[dict]) -> dict:
    """Stack :class:`PreparedSplit` items into the data dict the model and the loss read.

    Tensors of one size stack under the item's key (``image`` [B,3,S,S], ``mask``, ``superpixels``
    [B,S,S], ``features`` a list of [B,C_i,h_i,w_i]); what differs per image becomes a list under the
    plural key: ``ids``, ``full_masks``, ``full_images``. Superpixel ids stay per image (0..N_b-1);
    :func:`selab.method.graph.graph_from_superpixels` offsets them.
    """
    data = {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "ids": [i["id"] for i in items]}
    if "superpixels" in items[0]:
        data["superpixels"] = torch.stack([i["superpixels"] for i in items])
    if "features" in items[0]:
        data["features"] = [torch.stack([i["features"][k] for i in items]) for k in range(len(items[0]["features"]))]
    if "full_mask" in items[0]:
        data["full_masks"] = [i["full_mask"] for i in items]
        data["full_images"] = [i["full_image"] for i in items]
    return data


def to_device(data: dict, device) -> dict:
    """The data dict with its stacked tensors on ``device`` (full-resolution lists stay where they are)."""
    moved = dict(data)
    for key in ("image", "mask", "superpixels"):
        if key in moved:
            moved[key] = moved[key].to(device, non_blocking=True)
    if "features" in moved:
        moved["features"] = [f.to(device, non_blocking=True) for f in moved["features"]]
    return moved


def loader(dataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of ``dataset`` in its order (:func:`collate`), ``num_workers`` processes loading them."""
    # Every DataLoader gets its own generator: creating an iterator draws a seed from it, and drawing from
    # the global torch RNG instead would make a run depend on whether the caches were already filled.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=collate, generator=torch.Generator().manual_seed(0))

"""Tests for selab.data.datasets (loaders and their errors) and selab.data.prepare (the superpixel cache, prepared splits)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import selab.method.superpixels
from selab.data import datasets as data
from selab.data.datasets import ImageMaskFolder, PascalPersonParts, SyntheticPersonParts, make_dataset
from selab.data.prepare import PreparedSplit, SuperpixelCache, collate
from selab.method.superpixels import check_labels
from selab.training.config import TrainConfig


def _write_pair(root, sample_id, size=(12, 16), labels=None, image_dir="JPEGImages", mask_dir="SegmentationPart",
                suffix=".jpg"):
    rng = np.random.default_rng(len(sample_id))
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / image_dir / f"{sample_id}{suffix}")
    if labels is None:
        labels = np.zeros(size, np.uint8)
        labels[2:8, 4:10] = rng.integers(1, 7, (6, 6))
    Image.fromarray(np.asarray(labels, np.uint8)).save(root / mask_dir / f"{sample_id}.png")


def _pascal(tmp_path, ids=("a", "b"), split="train"):
    for sample_id in ids:
        _write_pair(tmp_path, sample_id)
    (tmp_path / f"{split}_id.txt").write_text("".join(f"{i}\n" for i in ids))
    return tmp_path


# --- loaders ---------------------------------------------------------------------------------------
def test_pascal_layout_loads(tmp_path):
    ds = PascalPersonParts(_pascal(tmp_path), "train")
    sample = ds[1]
    assert len(ds) == 2 and sample["id"] == "b"
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 12, 16)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (12, 16)
    assert len(PascalPersonParts(tmp_path, "train", limit=1)) == 1


def test_missing_split_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_id.txt"):
        PascalPersonParts(_pascal(tmp_path), "val")


def test_id_without_file_names_the_file(tmp_path):
    root = _pascal(tmp_path)
    (root / "train_id.txt").write_text("a\nghost\n")
    with pytest.raises(FileNotFoundError, match="ghost.jpg"):
        PascalPersonParts(root, "train")
    (root / "JPEGImages" / "ghost.jpg").write_bytes((root / "JPEGImages" / "a.jpg").read_bytes())
    with pytest.raises(FileNotFoundError, match="ghost.png"):
        PascalPersonParts(root, "train")


def test_unreadable_image_names_the_file(tmp_path):
    root = _pascal(tmp_path)
    (root / "JPEGImages" / "b.jpg").write_bytes(b"not a jpeg at all")
    ds = PascalPersonParts(root, "train")
    ds[0]
    with pytest.raises(ValueError, match="b.jpg"):
        ds[1]


def test_mask_size_differing_from_image_names_both(tmp_path):
    root = _pascal(tmp_path)
    Image.fromarray(np.zeros((12, 15), np.uint8)).save(root / "SegmentationPart" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png.*a\.jpg|same size"):
        PascalPersonParts(root, "train")[0]


def test_label_out_of_range_names_the_file(tmp_path):
    root = _pascal(tmp_path)
    labels = np.zeros((12, 16), np.uint8)
    labels[0, 0] = 7
    Image.fromarray(labels).save(root / "SegmentationPart" / "b.png")
    with pytest.raises(ValueError, match=r"b\.png.*out of range"):
        PascalPersonParts(root, "train")[1]


def test_colour_mask_is_rejected(tmp_path):
    root = _pascal(tmp_path)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "SegmentationPart" / "a.png")
    with pytest.raises(ValueError, match="single-channel"):
        PascalPersonParts(root, "train")[0]


def test_image_mask_folder_pairs_by_stem(tmp_path):
    for sample_id in ("x", "y"):
        _write_pair(tmp_path, sample_id, image_dir="images", mask_dir="masks", suffix=".png")
    ds = ImageMaskFolder(tmp_path / "images", tmp_path / "masks")
    assert ds.ids == ["x", "y"] and ds[0]["image"].shape == (3, 12, 16)
    assert ImageMaskFolder(tmp_path, split="train").ids == ["x", "y"]  # root/images + root/masks
    with pytest.raises(FileNotFoundError, match="val"):
        ImageMaskFolder(tmp_path, split="val")  # no split folder or list: no silent reuse of train
    (tmp_path / "val_id.txt").write_text("y\n")
    assert ImageMaskFolder(tmp_path, split="val").ids == ["y"]
    os.remove(tmp_path / "masks" / "x.png")
    with pytest.raises(FileNotFoundError, match="x.png"):
        ImageMaskFolder(tmp_path / "images", tmp_path / "masks")


# --- transforms ------------------------------------------------------------------------------------
# --- superpixel cache ------------------------------------------------------------------------------
def test_cache_computes_once_and_keys_by_parameters(tmp_path, monkeypatch):
    cache = SuperpixelCache(tmp_path, n_segments=30, compactness=10)
    image = SyntheticPersonParts(1, 40)[0]["image"]
    first = cache.get("demo", "img/1", image)
    assert first.dtype == np.int64 and first.shape == (40, 40) and first.min() == 0
    path = cache.path("demo", "img/1", (40, 40))
    assert path.is_file() and path.parent.parent == tmp_path
    assert not list(tmp_path.rglob("*.tmp"))

    def no_slic(*args, **kwargs):
        raise AssertionError("SLIC ran again although the result was cached")

    monkeypatch.setattr(selab.method.superpixels, "slic", no_slic)
    assert np.array_equal(cache.get("demo", "img/1", image), first)
    assert SuperpixelCache(tmp_path, n_segments=60).path("demo", "img/1", (40, 40)) != path
    assert cache.path("demo", "img/1", (40, 41)) != path


# --- prepared splits -------------------------------------------------------------------------------
def test_prepared_split_resizes_flips_and_collates(tmp_path):
    root = _pascal(tmp_path / "p", ids=("a", "b", "c"))
    config = TrainConfig(variant="graph_lstm", dataset="pascal_person_part", data_root=str(root), image_size=24,
                         n_segments=10, cache_dir=str(tmp_path / "cache"), progress=False)
    split = PreparedSplit(config.data_config(), "train", limit=None, keep_full=True)
    item = split[0]
    assert item["image"].shape == (3, 24, 24) and item["mask"].shape == item["superpixels"].shape == (24, 24)
    assert item["full_mask"].shape == (12, 16) and item["id"] == "a"
    split.flips = torch.tensor([True, False, False])
    flipped = split[0]
    for key in ("image", "mask", "superpixels"):
        assert torch.equal(flipped[key], item[key].flip(-1)), key
    data = collate([split[0], split[1], split[2]])
    assert data["image"].shape == (3, 3, 24, 24) and data["superpixels"].shape == (3, 24, 24)
    assert data["ids"] == ["a", "b", "c"] and [m.shape for m in data["full_masks"]] == [(12, 16)] * 3


def test_prepared_split_applies_the_papers_augmentation_to_the_full_resolution_sample(tmp_path):
    root = _pascal(tmp_path / "p", ids=("a", "b"))
    config = TrainConfig(variant="graph_lstm", dataset="pascal_person_part", data_root=str(root), image_size=24,
                         n_segments=10, cache_dir=str(tmp_path / "cache"), progress=False, augmentation="paper")
    split = PreparedSplit(config.data_config(), "train", limit=None, keep_full=False)
    plain = split[0]
    split.draws = split.augmentation.draws(2, torch.Generator().manual_seed(0))
    item = split[0]
    assert item["image"].shape == (3, 24, 24) and item["mask"].shape == item["superpixels"].shape == (24, 24)
    assert not torch.equal(item["image"], plain["image"])
    assert check_labels(item["superpixels"]) == int(item["superpixels"].max()) + 1
    assert torch.equal(split[0]["image"], item["image"])  # the draws decide, nothing else


def test_make_dataset_by_name(tmp_path):
    train = make_dataset("synthetic", split="train", limit=3, image_size=32)
    val = make_dataset("synthetic", split="val", limit=3, image_size=32)
    assert len(train) == 3 and not set(train.ids) & set(val.ids)
    pascal = make_dataset("pascal_person_part", _pascal(tmp_path / "p"))
    assert pascal[0]["image"].shape == (3, 12, 16)  # the file's own size
    for sample_id in ("u", "v"):
        _write_pair(tmp_path / "f", sample_id, image_dir="images", mask_dir="masks")
    folder = make_dataset("folder", tmp_path / "f", limit=1, transform=lambda sample: {**sample, "seen": True})
    assert len(folder) == 1 and folder[0]["image"].shape == (3, 12, 16) and folder[0]["seen"]
    with pytest.raises(ValueError, match="transform"):
        make_dataset("synthetic", transform="augment")
    with pytest.raises(ValueError, match="name"):
        make_dataset("coco")
    with pytest.raises(ValueError, match="root"):
        make_dataset("pascal_person_part")


# --- the real data ---------------------------------------------------------------------------------
def test_real_pascal_person_part_loads(pascal_root):
    train, val = PascalPersonParts(pascal_root, "train"), PascalPersonParts(pascal_root, "val", limit=3)
    assert len(train) > 1000 and len(val) == 3 and not set(train.ids) & set(val.ids)
    for i in (0, len(train) - 1):
        sample = train[i]
        H, W = sample["mask"].shape
        assert sample["image"].shape == (3, H, W) and max(H, W) <= 500
        assert 0 <= int(sample["mask"].min()) and int(sample["mask"].max()) <= 6
        assert int((sample["mask"] > 0).sum()) > 0  # every image holds a person
        assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    config = TrainConfig(dataset="pascal_person_part", data_root=str(pascal_root), image_size=64, progress=False)
    resized = PreparedSplit(config.data_config(), "val", limit=2, keep_full=False)
    assert collate([resized[0], resized[1]])["image"].shape == (2, 3, 64, 64)


# ---------------------------------------------------------------------------------------------------
# check_dataset (selab check-data)
# ---------------------------------------------------------------------------------------------------
def test_check_dataset_counts_a_good_folder(tmp_path):
    labels = np.zeros((12, 16), np.uint8)
    labels[:, :4] = 1
    labels[:6, 4:6] = 6
    for sample_id in ("a", "b", "c"):
        _write_pair(tmp_path, sample_id, labels=labels)
    (tmp_path / "train_id.txt").write_text("a\nb\n")
    (tmp_path / "val_id.txt").write_text("c\n")
    report = data.check_dataset(tmp_path, progress=False)
    assert report.ok, report.problems
    assert report.splits == {"train": 2, "val": 1} and report.num_images == 3
    assert report.pixels_per_class.tolist() == [3 * 132, 3 * 48, 0, 0, 0, 0, 3 * 12]
    assert report.images_per_class.tolist() == [3, 3, 0, 0, 0, 0, 3]
    assert "lower_leg" in report.format() and "no problems found" in report.format()
    assert data.check_dataset(tmp_path, splits=["val"], progress=False).splits == {"val": 1}


def test_check_dataset_reports_every_problem(tmp_path):
    for sample_id in ("good", "nomask", "small", "label9", "broken", "twice"):
        _write_pair(tmp_path, sample_id)
    (tmp_path / "SegmentationPart" / "nomask.png").unlink()
    _write_pair(tmp_path, "small", size=(10, 16))
    Image.open(tmp_path / "JPEGImages" / "good.jpg").resize((16, 14)).save(tmp_path / "JPEGImages" / "small.jpg")
    _write_pair(tmp_path, "label9", labels=np.full((12, 16), 9, np.uint8))
    (tmp_path / "JPEGImages" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train_id.txt").write_text("good\nnomask\nsmall\nlabel9\nbroken\nmissing\ntwice\ntwice\n")
    (tmp_path / "val_id.txt").write_text("good\n")
    report = data.check_dataset(tmp_path, progress=False)
    assert not report.ok
    text = "\n".join(report.problems)
    for expected in ("'nomask': mask file missing", "'small'", "(10, 16)", "'label9'", "labels 9 out of range",
                     "'broken': cannot decode image", "'missing': image file missing", "listed twice",
                     "also in split 'train'"):
        assert expected in text, (expected, text)
    assert len(report.problems) == 7
    assert report.num_images == 7 and report.images_per_class[0] == 2  # good and twice counted


def test_check_dataset_folder_layout_and_num_classes(tmp_path):
    _write_pair(tmp_path, "x", labels=np.full((12, 16), 4, np.uint8), image_dir="images", mask_dir="masks",
                suffix=".png")
    report = data.check_dataset(tmp_path, dataset="folder", num_classes=5, progress=False)
    assert report.ok and report.splits == {"train": 1}
    assert report.class_names == tuple(f"class {k}" for k in range(5))
    assert not data.check_dataset(tmp_path, dataset="folder", num_classes=4, progress=False).ok
    missing = data.check_dataset(tmp_path, dataset="folder", splits=["val"], progress=False)
    assert "split='val' needs" in missing.problems[0]


def test_check_dataset_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.check_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="dataset must be"):
        data.check_dataset(tmp_path, dataset="coco")
    report = data.check_dataset(tmp_path, progress=False)
    assert any("JPEGImages" in p for p in report.problems) and any("_id.txt" in p for p in report.problems)


def test_check_dataset_on_the_real_copy(pascal_root):
    report = data.check_dataset(pascal_root, splits=["val"], progress=False)
    assert report.ok, report.problems[:5]
    assert report.splits == {"val": 300} and report.images_per_class[0] == 300
    assert (report.pixels_per_class[1:] > 0).all()

"""Tests for selab.data.synthetic: determinism, classes, shared limb appearance, and the disk round trip."""

import numpy as np
import pytest
import torch

from selab.data.datasets import PascalPersonParts
from selab.data.synthetic import SyntheticPersonParts, render_sample, write_pascal_layout


def test_same_seed_and_index_give_the_same_image():
    a, b = render_sample(5, 17, 64), render_sample(5, 17, 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    ds = SyntheticPersonParts(20, 64, seed=5)
    assert torch.equal(ds[17]["image"], torch.from_numpy(a.image.transpose(2, 0, 1)))
    assert torch.equal(ds[17]["mask"], torch.from_numpy(a.mask))


def test_other_seed_or_index_gives_another_image():
    base = render_sample(0, 0, 64)
    assert not np.array_equal(base.image, render_sample(0, 1, 64).image)
    assert not np.array_equal(base.image, render_sample(1, 0, 64).image)


def test_sample_format_and_any_image_size():
    ds = SyntheticPersonParts(3, (48, 80), seed=2)
    sample = ds[1]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 48, 80)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (48, 80)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["id"] == "0000001" and len(ds) == 3
    assert ds[-1]["id"] == "0000002"
    with pytest.raises(IndexError):
        ds[3]


def test_all_seven_classes_with_their_ids_appear():
    seen = set()
    for i in range(6):
        mask = render_sample(0, i, 96).mask
        assert mask.min() >= 0 and mask.max() <= 6
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(7))


def test_one_to_three_people_per_image():
    counts = {int(render_sample(1, i, 64).instance.max()) for i in range(30)}
    assert counts == {1, 2, 3}


def _mean_colour(sample, label, figure):
    where = (sample.mask == label) & (sample.instance == figure)
    return sample.image[where].mean(axis=0) if where.sum() >= 40 else None


def test_upper_and_lower_limbs_share_appearance():
    """A sleeve covers both arm segments, trousers both leg segments: their colours agree far better
    than an arm agrees with its torso, so only context tells upper from lower."""
    same_arm, same_leg, arm_vs_torso = [], [], []
    for i in range(20):
        s = render_sample(3, i, 128)
        for k in range(1, int(s.instance.max()) + 1):
            upper, lower, torso = (_mean_colour(s, c, k) for c in (3, 4, 2))
            thigh, shin = _mean_colour(s, 5, k), _mean_colour(s, 6, k)
            if upper is not None and lower is not None:
                same_arm.append(np.abs(upper - lower).max())
                if torso is not None:
                    arm_vs_torso.append(np.abs(upper - torso).max())
            if thigh is not None and shin is not None:
                same_leg.append(np.abs(thigh - shin).max())
    assert len(same_arm) >= 10 and len(same_leg) >= 10 and len(arm_vs_torso) >= 5
    assert np.median(same_arm) < 0.05 and np.median(same_leg) < 0.05
    assert np.median(same_arm) * 3 < np.median(arm_vs_torso)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticPersonParts(2, 4)
    with pytest.raises(ValueError, match="num_images"):
        SyntheticPersonParts(-1, 32)
    with pytest.raises(ValueError, match="val_fraction"):
        write_pascal_layout(SyntheticPersonParts(1, 32), "/nonexistent", val_fraction=2)


def test_disk_round_trip_through_the_pascal_loader(tmp_path):
    ds = SyntheticPersonParts(5, (40, 56), seed=4)
    root = write_pascal_layout(ds, tmp_path / "synthetic", val_fraction=0.4)
    train, val = PascalPersonParts(root, "train"), PascalPersonParts(root, "val")
    assert train.ids == ds.ids[:3] and val.ids == ds.ids[3:]
    for loaded, original in zip([train[i] for i in range(3)] + [val[i] for i in range(2)], ds):
        assert loaded["id"] == original["id"]
        assert torch.equal(loaded["mask"], original["mask"])  # PNG: lossless
        assert loaded["image"].shape == original["image"].shape
        # JPEG drops the pixel noise but keeps the picture: compare 4x4 block means.
        blocks = [torch.nn.functional.avg_pool2d(s["image"][None], 4) for s in (loaded, original)]
        assert float((blocks[0] - blocks[1]).abs().mean()) < 0.02

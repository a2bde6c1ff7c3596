import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selab.classes import CLASS_NAMES
from selab.training.metrics import ConfusionMatrix, confusion_matrix, scores_from_confusion


def test_known_values():
    prediction = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [0, 1]])
    cm = confusion_matrix(prediction, target, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]
    scores = scores_from_confusion(cm, ("a", "b"))
    assert scores["per_class_iou"]["a"] == pytest.approx(50.0)
    assert scores["per_class_iou"]["b"] == pytest.approx(200 / 3)
    assert scores["mean_iou"] == pytest.approx((50 + 200 / 3) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(75.0)


def test_accumulates_over_the_split_not_per_image():
    # image 1: class 1 all wrong on a tiny area; image 2: class 1 right on a big area
    cm = ConfusionMatrix(num_classes=2, class_names=("a", "b"))
    cm.update(torch.tensor([0]), torch.tensor([1]))
    cm.update(torch.ones(9, dtype=torch.long), torch.ones(9, dtype=torch.long))
    assert cm.compute()["per_class_iou"]["b"] == pytest.approx(90.0)


def test_absent_class_is_nan_and_skipped():
    cm = ConfusionMatrix()
    cm.update(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))
    scores = cm.compute()
    assert set(scores["per_class_iou"]) == set(CLASS_NAMES)
    assert np.isnan(scores["per_class_iou"]["head"])
    assert scores["mean_iou"] == 100.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=50))
def test_perfect_prediction_is_100_and_counts_sum(pairs):
    p = torch.tensor([a for a, _ in pairs])
    t = torch.tensor([b for _, b in pairs])
    cm = confusion_matrix(p, t)
    assert int(cm.sum()) == len(pairs)
    assert scores_from_confusion(confusion_matrix(t, t))["mean_iou"] == 100.0


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(torch.tensor([9]), torch.tensor([0]))

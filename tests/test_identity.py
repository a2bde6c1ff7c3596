"""Same-seed training runs give the numbers recorded before a refactor.

``tests/identity_recorded.json`` holds, for a few small seeded runs on generated data, every epoch's training loss
and validation mIoU and, per weight tensor of the final model, its sum and sum of squares. A change that is meant to
change no result (a refactor, a library call replacing hand-written arithmetic) must reproduce them: losses within
1e-5 (relative), mIoU within 0.05 points, weight sums within 1e-3 of their scale and sums of squares within 2e-3
(relative). The tolerances leave room for float rounding across CPUs, not for a changed computation.

Re-record only when a result is meant to change, and say so in the commit:
``PYTHONPATH=. python tests/test_identity.py --record``.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from selab.training.config import TrainConfig
from selab.training.loop import run

RECORDED = Path(__file__).with_name("identity_recorded.json")

# make run's configuration (notebooks/05_train.ipynb defaults: se_lstm, small backbone, 64 px) on fewer images and
# epochs, so that the test stays short, plus the two other variants.
_COMMON = dict(dataset="synthetic", limit=8, val_limit=4, image_size=48, epochs=2, batch_size=4, progress=False,
               num_figures=0, seed=3)
CASES = {
    "cnn": dict(variant="cnn", model={"feature_channels": 16}),
    "graph_lstm": dict(variant="graph_lstm", model={"feature_channels": 16, "hidden_channels": 16}),
    "se_lstm": dict(variant="se_lstm", model={"feature_channels": 16, "hidden_channels": 16, "num_layers": 2}),
}


def summarise(tmp_path: Path, name: str) -> dict:
    """Train case ``name`` in ``tmp_path`` and return its losses, mIoUs and weight statistics."""
    result = run(TrainConfig(**_COMMON, **CASES[name], out_dir=str(tmp_path / name),
                             cache_dir=str(tmp_path / "cache")))
    weights = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]
    return {
        "train_loss": [epoch["train_loss"] for epoch in result["epochs"]],
        "val_mean_iou": [epoch["val_mean_iou"] for epoch in result["epochs"]],
        "weights": {key: [value.double().sum().item(), value.double().square().sum().item()]
                    for key, value in sorted(weights.items()) if value.is_floating_point()},
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_seed_run_reproduces_the_recorded_numbers(tmp_path, name):
    expected = json.loads(RECORDED.read_text())[name]
    got = summarise(tmp_path, name)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
    assert got["val_mean_iou"] == pytest.approx(expected["val_mean_iou"], abs=0.05)
    assert sorted(got["weights"]) == sorted(expected["weights"]), "the model's weight names changed"
    for key, (total, squares) in expected["weights"].items():
        # sums of tensors centred near zero: compare against their scale, not their (tiny) value
        scale = math.sqrt(squares) + 1e-12
        assert abs(got["weights"][key][0] - total) <= 1e-4 * scale * 10, key
        # AdamW normalises its steps, so where a bias's gradient is near zero float rounding becomes a step of
        # lr size: on another CPU (an AMD EPYC) a batch-norm bias's sum of squares differed by 4.4e-4
        # (relative) while every loss agreed within 1e-6.
        assert got["weights"][key][1] == pytest.approx(squares, rel=2e-3), key


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_identity.py --record")
    with tempfile.TemporaryDirectory() as folder:
        recorded = {name: summarise(Path(folder), name) for name in sorted(CASES)}
    RECORDED.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"recorded {', '.join(recorded)} in {RECORDED}")

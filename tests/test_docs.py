"""Tests for the documentation: it stands on its own, and its list of selab's decisions names real options.

The site itself is built with warnings as errors by ``make test-docs`` (part of ``make test``).
"""

import dataclasses
import inspect
import subprocess
from pathlib import Path

import pytest

from selab.method.evolve import MergeProbability, PartitionEnergy, StructureEvolution
from selab.model.parser import ModelConfig
from selab.training.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
METHOD = (REPO / "docs" / "method.md").read_text()


def _tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in listing.decode().split("\0") if name]


# The sibling folder the project grew up beside, and its notes (spelled in pieces so this file passes).
OUTSIDE = ("../" + "shared", "PAPER" + ".md", "DESIGN" + ".md", "BROWSER_TESTING" + ".md")


def test_no_file_names_a_path_outside_the_repository():
    # .ci/ describes the CI machine's own layout; tests/conftest.py builds its one default without "../".
    offenders = []
    for path in _tracked_files():
        if path.relative_to(REPO).parts[0] == ".ci" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(outside in line for outside in OUTSIDE):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("callable_", [StructureEvolution, MergeProbability, PartitionEnergy])
def test_every_evolution_option_is_on_the_method_page(callable_):
    names = [name for name in inspect.signature(callable_).parameters
             if name not in ("hidden_channels", "node_prob", "node_labels", "size", "batch", "num_classes")]
    missing = [name for name in names if f"{name}=" not in METHOD and f"{name}, " not in METHOD
               and f"`{name}`" not in METHOD and f"({name}" not in METHOD]
    assert not missing, f"{callable_.__name__} options not on docs/method.md: {missing}"


@pytest.mark.parametrize("name, default", [
    ("merge_budget", "0.25"), ("beta", "0.1"), ("energy_scale", "100.0"), ("num_proposals", "8"),
    ("eval_mode", '"auto"'), ("source", '"forget_gates"'), ("threshold", "0.5"), ("temperature", "1.0"),
])
def test_the_method_page_states_the_evolution_defaults(name, default):
    assert repr(inspect.signature(StructureEvolution).parameters[name].default).replace("'", '"') == default
    assert default in METHOD


@pytest.mark.parametrize("config, names", [
    (ModelConfig, ["hidden_channels", "num_layers", "residual", "order", "train_order", "order_noise",
                   "schedule", "merge_loss_weight", "confidence_loss_weight", "compactness"]),
    (TrainConfig, ["backbone", "freeze_backbone", "cache_features", "augment", "n_segments", "optimizer",
                   "lr", "schedule", "batch_size", "weight_decay"]),
])
def test_the_decision_tables_name_real_config_fields(config, names):
    fields = {f.name for f in dataclasses.fields(config)}
    assert set(names) <= fields
    for name in names:
        assert f"{config.__name__}.{name}" in METHOD or f"`{name}`" in METHOD, name

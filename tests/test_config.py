"""selab.training.config: the typed model inside TrainConfig, the saved file format, notebook 05's parameters."""

import ast
import json
from pathlib import Path

import pytest
import torch

from selab.model.config import ModelConfig
from selab.model.parser import SELabModel
from selab.training.checkpoints import load_model, save_checkpoint
from selab.training.config import NOTEBOOK_DEFAULTS, PRESETS, TrainConfig
from selab.training.runs import changed_fields

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "05_train.ipynb"

# The "train" part of a config.json as selab wrote it before lr_schedule, update_schedule and energy_source
# had their names: the model options a partial dict, the four run fields at the top.
SAVED_TRAIN = {
    "variant": "se_lstm", "backbone": "small", "dataset": "synthetic", "data_root": None, "split": "train",
    "val_split": "val", "limit": 4, "val_limit": 2, "image_size": 32, "epochs": 2, "batch_size": 2, "lr": 0.003,
    "optimizer": "adamw", "momentum": 0.9, "weight_decay": 0.0001, "backbone_lr_scale": 0.1, "schedule": "cosine",
    "two_step_epochs": 0, "freeze_backbone": None, "cache_features": None, "cache_dir": None, "n_segments": 20,
    "augment": True, "augmentation": "flip",
    "model": {"num_layers": 2, "hidden_channels": 8, "schedule": "sequential", "evolution": {"energy": "prediction"}},
    "seed": 0, "out_dir": "runs/old", "resume": False, "overwrite": False, "ignore_index": None, "device": "auto",
    "precision": "fp32", "num_workers": 0, "num_figures": 4, "val_every": 1, "progress": True,
}


def test_the_model_is_a_typed_model_config_with_the_runs_own_fields():
    config = TrainConfig(variant="graph_lstm", image_size=64, model={"hidden_channels": 16})
    assert isinstance(config.model, ModelConfig)
    assert (config.model.variant, config.model.hidden_channels, config.model.n_segments) == ("graph_lstm", 16, 64)  # at least 64
    assert TrainConfig(variant="graph_lstm", image_size=64, model=config.model) == config
    with pytest.raises(ValueError, match="variant"):
        TrainConfig(variant="cnn", model=config.model)
    with pytest.raises(ValueError, match="set 'backbone' on TrainConfig"):
        TrainConfig(model={"backbone": "small"})


def test_a_saved_config_of_the_earlier_names_reads_as_the_present_ones():
    config = TrainConfig.from_dict(SAVED_TRAIN)
    assert config.lr_schedule == "cosine"
    assert config.model.update_schedule == "sequential" and config.model.evolution == {"energy_source": "prediction"}
    assert changed_fields(SAVED_TRAIN, config) == []
    assert changed_fields({**SAVED_TRAIN, "model": {**SAVED_TRAIN["model"], "hidden_channels": 16}}, config) == \
        ["model.hidden_channels"]
    saved = config.to_dict()  # the same shape: the run fields at the top, the model's other fields under "model"
    assert set(saved) == set(SAVED_TRAIN) - {"schedule"} | {"lr_schedule"}
    assert "variant" not in saved["model"] and saved["model"]["hidden_channels"] == 8
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == config


def test_a_checkpoint_with_the_earlier_model_names_loads(tmp_path):
    config = TrainConfig.from_dict(SAVED_TRAIN)
    model = SELabModel(config.model)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, None, None, config, 1, 0, [])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_config"] = {("schedule" if k == "update_schedule" else k): v
                                  for k, v in checkpoint["model_config"].items()}
    checkpoint["model_config"]["evolution"] = {"energy": "prediction"}
    checkpoint["train_config"] = SAVED_TRAIN
    torch.save(checkpoint, path)
    loaded, _ = load_model(path)
    assert loaded.config.update_schedule == "sequential"
    assert [e.energy_source for e in loaded.evolutions] == ["prediction"]


def _notebook_parameters() -> dict:
    cell = next(c for c in json.loads(NOTEBOOK.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.AnnAssign)}


def test_notebook_defaults_are_the_notebooks():
    parameters = _notebook_parameters()
    assert {key: parameters[key] for key in NOTEBOOK_DEFAULTS} == NOTEBOOK_DEFAULTS
    accepted = set(TrainConfig.from_notebook.__code__.co_varnames[1:TrainConfig.from_notebook.__code__.co_argcount])
    assert set(parameters) - {"reevaluate"} == accepted


def test_the_pascal_preset_trains_what_the_data_page_promises(tmp_path):
    parameters = {k: v for k, v in _notebook_parameters().items() if k != "reevaluate"}
    config = TrainConfig.from_notebook(**{**parameters, "preset": "pascal_person_part", "data_root": str(tmp_path),
                                          "out_dir": str(tmp_path / "run")})
    assert (config.dataset, config.backbone, config.image_size) == ("pascal_person_part", "efficientnet_lite0", 320)
    assert (config.limit, config.val_limit, config.epochs) == (None, None, PRESETS["pascal_person_part"]["epochs"])
    assert (config.model.num_layers, config.model.hidden_channels) == (3, 64)  # ModelConfig's defaults
    assert config.frozen and config.use_feature_cache
    longer = TrainConfig.from_notebook(**{**parameters, "preset": "pascal_person_part", "data_root": str(tmp_path),
                                          "epochs": 30, "out_dir": str(tmp_path / "run")})
    assert longer.epochs == 30  # a parameter set besides the preset wins
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_notebook(**{**parameters, "preset": "pascal", "out_dir": str(tmp_path / "run")})


def test_a_scratch_cnn_on_real_data_with_the_test_sized_defaults_is_refused(tmp_path):
    parameters = {k: v for k, v in _notebook_parameters().items() if k != "reevaluate"}
    with pytest.raises(ValueError, match=r"backbone 'small'.*num_images=32.*preset pascal_person_part") as caught:
        TrainConfig.from_notebook(**{**parameters, "dataset": "pascal_person_part", "data_root": str(tmp_path),
                                     "out_dir": str(tmp_path / "run")})
    assert "val_images" in str(caught.value)
    chosen = TrainConfig.from_notebook(**{**parameters, "dataset": "pascal_person_part", "data_root": str(tmp_path),
                                          "num_images": 0, "out_dir": str(tmp_path / "run")})
    assert chosen.backbone == "small" and chosen.limit is None  # a deliberate choice is taken as it is


def test_papermill_reads_every_parameter_of_the_training_notebook():
    """Papermill parses each line of notebook 05's parameters cell (a comment it cannot parse drops the name)."""
    import inspect

    import papermill
    declared = papermill.inspect_notebook(str(Path(__file__).parents[1] / "notebooks" / "05_train.ipynb"))
    expected = set(inspect.signature(TrainConfig.from_notebook).parameters) - {"cache_dir", "resume"}
    assert expected <= set(declared), sorted(expected - set(declared))

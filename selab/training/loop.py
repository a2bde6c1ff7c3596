r"""The training loop: one :func:`run` for the notebook (papermill) and the ``selab`` command.

Trains the three variants of :mod:`selab.model.parser` (``cnn``, ``graph_lstm`` of Liang et al., ECCV 2016,
``se_lstm`` of Liang et al., CVPR 2017) on PASCAL-Person-Part, an image/mask folder or the built-in
synthetic data (prepared by :mod:`selab.data.prepare`), and validates them with the benchmark's metric
(:mod:`selab.training.evaluation`). The paper's recipe is SGD (momentum 0.9, weight decay 5e-4, lr 1e-3
for new layers and 1e-4 for pretrained ones, batch 2) and a two-step schedule (first the confidence
layer, then all): ``TrainConfig(optimizer="sgd", lr=1e-3, backbone_lr_scale=0.1, weight_decay=5e-4,
batch_size=2, two_step_epochs=E1)``, and the whole network fine-tuned with the paper's augmentation: add
``backbone="efficientnet_lite0", freeze_backbone=False, augmentation="paper"`` (:mod:`selab.data.augment`).
selab's defaults (AdamW, poly schedule, batch 8, a frozen pretrained backbone with cached features) train
faster on a CPU.

A run folder (:mod:`selab.training.runs`) holds ``config.json``, ``checkpoints/last.pt`` (+ ``best.pt``),
``metrics.json`` (per-epoch list + final), ``metrics.csv`` and ``figures/*.png``. Checkpoints
(:mod:`selab.training.checkpoints`) carry the model, optimizer, scheduler, epoch, step and every RNG
state, so ``resume=True`` continues an interrupted run (Ctrl-C saves one mid-epoch) to the same result
as an uninterrupted one: the shuffling, augmentation and Metropolis-Hastings draws of an epoch come from
generators seeded by ``(seed, epoch)`` (:mod:`selab.seeds`), not from a global stream.

The loop reads top to bottom: ``_Training.train`` runs the epochs, ``_Training.step`` one batch;
every early end goes through ``_Training.halt`` (save what can be saved, say where, raise) and every
non-finite value through ``_Training.diverged``.

Examples
--------
>>> result = run(TrainConfig(epochs=1, limit=4, val_limit=2, image_size=32,
...                          out_dir="/tmp/selab-doctest"))  # doctest: +SKIP
>>> sorted(result)  # doctest: +SKIP
['epochs', 'final', 'paths']
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from selab.data.prepare import check_data, to_device
from selab.files import writable_folder
from selab.model.loss import compute_loss
from selab.model.parser import SELabModel
from selab.seeds import MODEL, epoch_generator, rng_state, seed_everything, set_rng_state
from selab.training import distributed
from selab.training.checkpoints import load_checkpoint, save_checkpoint
from selab.training.config import TrainConfig, autocast
from selab.training.divergence import (TrainingDiverged, divergence, first_non_finite, non_finite,
                                       non_finite_culprit, replay_step)
from selab.training.evaluation import evaluate_model
from selab.training.figures import plot_curves, plot_predictions
from selab.training.loaders import TrainingData, evaluation_loader
from selab.training.metrics import PER_IMAGE_FILE, save_per_image
from selab.training.optim import build_optimizer, build_scheduler, load_schedule
from selab.training.runs import RunFolder, changed_fields, write_config, write_metrics

# What validation adds to an epoch's record (as ``val_<key>``); metrics.json's ``final`` is the last one's.
VALIDATION_KEYS = ("mean_iou", "pixel_accuracy", "per_class_iou", "hierarchy")
FINAL_KEYS = ("mean_iou", "per_class_iou", "pixel_accuracy", "hierarchy")  # evaluate()'s order


def run(config: TrainConfig | dict) -> dict:
    """Train (or resume) a run into ``config.out_dir`` and evaluate it on the validation split.

    Every image and mask of both splits is checked before the first step (one error naming every bad
    file). An earlier run in ``out_dir`` is never destroyed (see :class:`~selab.training.runs.RunFolder`).

    Returns
    -------
    dict
        ``final``: the last epoch's validation metrics (``mean_iou``, ``per_class_iou``,
        ``pixel_accuracy``, in percent; ``None`` without validation), ``epochs``: per-epoch records,
        ``paths``: run folder, config, checkpoints, metrics and figures.

    Raises
    ------
    KeyboardInterrupt
        After writing ``checkpoints/last.pt`` (resume with ``resume=True``).
    TrainingDiverged
        A non-finite loss, gradient or weight; nothing non-finite is saved, the last good checkpoint is kept.
    ValueError
        Bad configuration, data or run folder (naming the culprit). Any other error in the middle of an
        epoch first saves a mid-epoch ``last.pt`` (when the state is consistent) and says where.

    Examples
    --------
    >>> run(TrainConfig(epochs=1, limit=8, image_size=48, out_dir="runs/tiny"))["final"]["mean_iou"]  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run: config must be a TrainConfig or dict, got {type(config).__name__}")
    device = distributed.setup(config)  # torchrun: join the process group, take this process's device
    if not distributed.is_main():
        config = dataclasses.replace(config, progress=False)  # one set of progress bars, rank 0's
    if config.dataset != "synthetic" or config.model.uses_graph or config.use_feature_cache:
        writable_folder(config.cache_root, "TrainConfig.cache_dir")
    folder = distributed.run_folder(RunFolder, config)  # rank 0 alone inspects and writes out_dir
    try:
        return _Training(config, folder, device).train()
    except BaseException:
        folder.abandon()
        raise
    finally:
        distributed.cleanup()


class _Interrupt:
    """Turns SIGINT into a flag checked between batches, so a checkpoint can be written first."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread (e.g. some notebook runners): plain KeyboardInterrupt
            self.previous = None
        return self

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


@dataclass
class _Epoch:
    """Where an epoch stands: its steps done, its running loss, and the states a failing step started from."""

    index: int
    step: int
    loss_sum: float
    count: int
    started: float
    generator: torch.Generator
    confidence_only: bool
    consistent: bool = True  # every counted step fully applied (False between optimizer.step and the tally)
    ids: list | None = None
    mh_state: torch.Tensor | None = None  # the generator's state before the current step
    rng_before: dict | None = None  # the global RNG states before the current step

    def state(self, before_step: bool = False) -> dict:
        """What a mid-epoch checkpoint holds of the epoch (``before_step``: as the current step found it)."""
        return {"loss_sum": self.loss_sum, "count": self.count, "seconds": time.time() - self.started,
                "mh_generator": self.mh_state if before_step else self.generator.get_state()}


class _Training:
    """One training run: the model, its optimizer and data, and the run folder it writes."""

    def __init__(self, config: TrainConfig, folder: RunFolder, device):
        self.config, self.folder, self.device = config, folder, device
        check_data(config.data_config(), [(config.split, config.limit)]
                   + ([(config.val_split, config.val_limit)] if config.val_split else []), config.progress)
        seed_everything(config.seed)
        self.model = SELabModel(config.model).to(device)
        distributed.seed_rank(config.seed)  # distributed: own dropout draws per process (rank 0: the one-process ones)
        with distributed.main_first():  # distributed: one process per machine fills the caches, then the others
            self.data = TrainingData(config, self.model)
            self.val_loader = evaluation_loader(config, self.model) if config.val_split else None
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.data.steps_per_epoch)
        self.history, self.start_epoch, self.start_step, self.accumulators, self.best = [], 0, 0, {}, None
        if folder.resuming:
            self.resume()
        if distributed.is_main():
            write_config(self.run_dir, config)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.network = distributed.wrap_model(self.model, device)  # distributed: DDP runs the training forward

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    def resume(self) -> None:
        """Continue from ``last.pt``: weights, optimizer, schedule, history, position and RNG states."""
        checkpoint = distributed.from_main(load_checkpoint, self.last_path)  # distributed: rank 0 reads, sends it
        changed = changed_fields(dict(checkpoint["train_config"]), self.config)
        if changed:
            raise ValueError(f"run: resume=True but the config differs from the saved run in {changed} "
                             f"({self.last_path})")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        load_schedule(self.scheduler, checkpoint["scheduler"])
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        self.start_epoch, self.start_step = checkpoint["epoch"], checkpoint["step"]
        set_rng_state(checkpoint["rng"])
        # distributed: each process takes its own RNG and sampler state back (one process: as is)
        self.accumulators = distributed.restore_rank_state(checkpoint.get("accumulators") or {}, self.start_step > 0,
                                                           self.config.seed, self.start_epoch)

    # -- the loop ---------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Every remaining epoch: its steps, then validation, checkpoints, metrics and figures."""
        with _Interrupt() as interrupt:
            for index in range(self.start_epoch, self.config.epochs):
                epoch = self.start(index)
                bar = tqdm(self.data.loader(index, self.data.permutation(index), self.start_step),
                           total=self.data.steps_per_epoch, initial=self.start_step, disable=not self.config.progress,
                           desc=f"epoch {index + 1}/{self.config.epochs}", leave=False)
                try:
                    for data in bar:
                        self.step(epoch, data)
                        bar.set_postfix(loss=f"{epoch.loss_sum / max(epoch.count, 1):.3f}")
                        # distributed: a Ctrl-C seen by any process ends all of them after this same step
                        if distributed.any_rank(interrupt.requested) and epoch.step < self.data.steps_per_epoch:
                            self.halt(epoch)
                except (KeyboardInterrupt, TrainingDiverged):
                    raise
                except Exception as error:
                    self.halt(epoch, error)
                bar.close()
                line = self.finish(epoch)
                if distributed.any_rank(interrupt.requested) and index + 1 < self.config.epochs:
                    self.halt(None, index=index)
                # One line per epoch, also without progress bars: papermill's --log-output shows it while a
                # notebook trains (make run), and a sweep cell's log keeps it.
                if distributed.is_main():
                    tqdm.write(line) if self.config.progress else print(line, flush=True)
        return self.result()

    def start(self, index: int) -> _Epoch:
        """Epoch ``index`` from its first step, or from where an interrupted one left off."""
        model_config = self.model.config
        self.model.train()
        # independent chains per rank, drawn on the model's device
        generator = distributed.per_rank(epoch_generator(self.config.seed, index, MODEL, self.device))
        if self.start_step:
            _restore_generator(generator, self.accumulators["mh_generator"], self.last_path)
        return _Epoch(index=index, step=self.start_step, loss_sum=self.accumulators.get("loss_sum", 0.0),
                      count=self.accumulators.get("count", 0),
                      started=time.time() - self.accumulators.get("seconds", 0.0), generator=generator,
                      confidence_only=index < self.config.two_step_epochs and model_config.uses_graph,
                      mh_state=generator.get_state(), rng_before=rng_state())

    def step(self, epoch: _Epoch, data: dict) -> None:
        """One batch: forward, loss, backward, update; a non-finite loss or gradient ends the run first."""
        epoch.ids = data["ids"]
        # A failing step must count neither its random draws nor its batch-norm statistics.
        epoch.mh_state, epoch.rng_before = epoch.generator.get_state(), rng_state()
        buffers = [b.clone() for b in self.model.buffers()]
        data = to_device(data, self.device)
        precision, ignore_index = self.config.precision, self.config.ignore_index
        try:
            with autocast(precision, self.device):
                output = self.network(data, generator=epoch.generator, confidence_only=epoch.confidence_only,
                                      energy_labels=data.get("mask"))
                parts = compute_loss(output, data, self.model.config, epoch.confidence_only, ignore_index)
        except Exception as error:
            replay = replay_step(self.model, data, epoch.generator, epoch.mh_state, epoch.confidence_only, precision)
            self.diverged(epoch.index, epoch.step, error=error, replay=replay, restore=buffers)
            raise
        loss = float(parts["loss"].detach())
        if not math.isfinite(loss):
            self.diverged(epoch.index, epoch.step, f"the loss is {loss}")
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if non_finite([p.grad for p in self.trained]):
            named = ((n, p.grad) for n, p in self.model.named_parameters() if p.requires_grad)
            self.diverged(epoch.index, epoch.step, f"the gradient of {first_non_finite(named)} is not finite")
        epoch.consistent = False  # until the step is fully counted
        self.optimizer.step()
        self.scheduler.step()
        epoch.step += 1
        epoch.loss_sum += loss * len(data["ids"])
        epoch.count += len(data["ids"])
        epoch.consistent = True

    def finish(self, epoch: _Epoch) -> str:
        """The end of an epoch: its record, validation, ``last.pt`` (and ``best.pt``), metrics and figures;
        returns the epoch's line of the log."""
        index = epoch.index
        loss_sum, count = distributed.sum_numbers(epoch.loss_sum, epoch.count)  # distributed: the global mean loss
        self.start_step, self.accumulators = 0, {}
        record = {"epoch": index + 1, "train_loss": loss_sum / max(count, 1),
                  "lr": self.optimizer.param_groups[0]["lr"], "stage": "confidence" if epoch.confidence_only else "all"}
        if non_finite(list(self.model.state_dict().values())):
            self.diverged(index, None, "non-finite weights or statistics in "
                          f"{first_non_finite(self.model.state_dict().items())}")
        examples = self.validate(index, record)
        record["seconds"] = time.time() - epoch.started
        self.history.append(record)
        score = record.get("val_mean_iou")
        improved = score is not None and math.isfinite(score) and (self.best is None or score > self.best)
        if improved:
            self.best = score
        self.save_last(index + 1, 0, None)
        if distributed.is_main():  # distributed: rank 0 alone writes the run folder
            if improved:
                save_checkpoint(self.best_path, self.model, None, None, self.config, index + 1, 0, self.history,
                                None, self.best)
            write_metrics(self.run_dir, self.history, None)
            plot_curves(self.run_dir, self.history)
            plot_predictions(self.run_dir, examples)
        shown = f", val mIoU {score:.2f}" if score is not None else ""
        return f"epoch {index + 1}/{self.config.epochs}: loss {record['train_loss']:.4f}{shown} ({record['seconds']:.0f} s)"

    def validate(self, index: int, record: dict) -> list:
        """Validation after epoch ``index`` (every ``val_every`` and the last): its scores into ``record``,
        its figure's examples returned; the last epoch also saves the per-image confusions."""
        config = self.config
        if self.val_loader is None or not ((index + 1) % config.val_every == 0 or index + 1 == config.epochs):
            return []
        # The last epoch's per-image confusions let runs be compared image by image (selab.experiments.compare).
        per_image = [] if index + 1 == config.epochs else None
        try:
            scores, examples = evaluate_model(self.model, self.val_loader, self.device, progress=config.progress,
                                              num_examples=config.num_figures, description="validate",
                                              per_image=per_image, ignore_index=config.ignore_index,
                                              precision=config.precision)
        except Exception as error:
            self.diverged(index, None, error=error, prefix="validation met ", replay=lambda: evaluate_model(
                self.model, self.val_loader, self.device, precision=config.precision))
            raise
        if per_image is not None and distributed.is_main():
            save_per_image(self.run_dir / PER_IMAGE_FILE, per_image)
        record.update({f"val_{key}": scores[key] for key in VALIDATION_KEYS if key in scores})
        return examples

    # -- the one way to end early, and the one way to diverge ------------------------------------------
    def save_last(self, epoch: int, step: int, state: dict | None, rng: dict | None = None) -> None:
        """Write ``last.pt`` (and, with overwrite, put the new run in place)."""
        state = distributed.with_rank_states(state, rng)  # distributed: every process's RNG and sampler state
        if distributed.is_main():
            save_checkpoint(self.last_path, self.model, self.optimizer, self.scheduler, self.config, epoch, step,
                            self.history, state, self.best, rng)
        self.folder.commit()

    def halt(self, epoch: _Epoch | None, error: BaseException | None = None, index: int | None = None):
        """Save what can be saved, say where the run ended and how to continue it, and raise.

        ``error`` ``None``: a Ctrl-C, after a completed step of ``epoch`` (saved with the states as they
        are now) or at the end of epoch ``index`` (saved already); raises KeyboardInterrupt. Otherwise
        ``error`` broke off a step of ``epoch``: the epoch is saved as that step found it, if every step
        before it was fully applied (not in a data-parallel run, whose other processes are not at a
        collective to gather their state); ``error`` is raised again.
        """
        if error is None:
            if epoch is not None:
                self.save_last(epoch.index, epoch.step, epoch.state())
                if distributed.is_main():
                    write_metrics(self.run_dir, self.history, None)
            where = f"epoch {epoch.index + 1}, step {epoch.step}" if epoch is not None else f"end of epoch {index + 1}"
            if distributed.is_main():
                print(f"\ninterrupted: checkpoint saved to {self.last_path} ({where}); "
                      f"continue with resume=True / --resume")
            raise KeyboardInterrupt
        where = f"epoch {epoch.index + 1}, step {epoch.step + 1} of {self.data.steps_per_epoch}"
        if epoch.ids is not None:
            where += f" (last batch loaded: ids {epoch.ids})"
        if epoch.consistent and epoch.step > self.start_step and not distributed.is_distributed():
            self.save_last(epoch.index, epoch.step, epoch.state(before_step=True), epoch.rng_before)
            write_metrics(self.run_dir, self.history, None)
            kept = (f"checkpoint saved to {self.last_path} after {epoch.step} steps of epoch {epoch.index + 1}; "
                    f"fix the cause and continue with resume=True / --resume")
        elif self.last_path.is_file():
            kept = f"the last checkpoint {self.last_path} is kept; continue with resume=True / --resume"
        else:
            kept = "no checkpoint had been written yet"
        print(f"\nrun: {type(error).__name__} at {where}: {error}\nrun: {kept}", file=sys.stderr)
        raise error

    def diverged(self, index: int, step: int | None, what: str | None = None, error: BaseException | None = None,
                 replay=None, restore: list | None = None, prefix: str = "") -> None:
        """Raise :class:`~selab.training.divergence.TrainingDiverged` for epoch ``index``'s ``step`` (``None``:
        its end): ``what`` went non-finite, or, after ``error``, whatever ``replay()`` finds non-finite
        (then nothing is raised when it finds nothing, and the caller raises ``error``). ``restore``: the
        batch-norm buffers as the failed step found them, put back after the replay."""
        if error is not None:
            culprit = non_finite_culprit(self.model, replay)
            if restore is not None:
                torch._foreach_copy_(list(self.model.buffers()), restore)
            if not culprit:
                return
            what = f"{prefix}non-finite values in {culprit} ({error})"
        raise divergence(self.config, index, step, what, self.last_path) from error

    def result(self) -> dict:
        """What :func:`run` returns, after writing the final metrics."""
        last = self.history[-1] if self.history and "val_mean_iou" in self.history[-1] else None
        final = None if last is None else {key: last[f"val_{key}"] for key in FINAL_KEYS if f"val_{key}" in last}
        if distributed.is_main():
            write_metrics(self.run_dir, self.history, final)
        run_dir = self.run_dir
        paths = {"run_dir": str(run_dir), "config": str(run_dir / "config.json"), "last": str(self.last_path),
                 "best": str(self.best_path) if self.best_path.is_file() else None,
                 "metrics_json": str(run_dir / "metrics.json"), "metrics_csv": str(run_dir / "metrics.csv"),
                 "figures": sorted(str(p) for p in (run_dir / "figures").glob("*.png"))}
        return {"final": final, "epochs": self.history, "paths": paths}


def _restore_generator(generator: torch.Generator, state: torch.Tensor, path: Path) -> None:
    """A mid-epoch checkpoint's model generator state, or a clear error when it is another device kind's."""
    try:
        generator.set_state(state)
    except RuntimeError:
        raise ValueError(f"run: {path} was interrupted mid-epoch on another kind of device than "
                         f"{generator.device.type!r} (its random-number state does not fit); resume it there, "
                         f"or from an epoch boundary") from None

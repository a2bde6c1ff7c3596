r"""Data-parallel training over several processes: PyTorch's ``DistributedDataParallel``, started by ``torchrun``.

``torchrun --nproc_per_node N -m selab train ...`` starts N processes on one machine (on each of M
machines add ``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB``); each one runs :func:`selab.training.loop.run`,
which calls the hooks of this module. Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every
hook is a no-op and a run is exactly the one-process run. Nothing here replaces PyTorch's own machinery:
the process group, ``DistributedSampler``, ``DistributedDataParallel`` (gradient all-reduce) and
``SyncBatchNorm`` are torch's; this module only decides how selab's run maps onto them.

selab decisions (the papers train on one GPU; none of this is theirs):

* **The batch size is the global batch.** With W processes each one takes ``batch_size / W`` images of
  every step (``batch_size`` must be a multiple of W). The epoch's order and flips come from (seed, epoch),
  the same in every process, and ``DistributedSampler`` (no shuffling of its own) deals each global batch
  out, so W processes step through the same global batches as one process, with the same learning-rate
  schedule. DDP averages the gradients over the processes, which equals the one-process gradient of
  the global batch when every process holds the same number of scored pixels. What still differs:

  - BatchNorm statistics in training: per process by default (``ModelConfig.batchnorm="batch"``,
    PyTorch's behaviour; buffers are broadcast from rank 0). ``"sync"`` uses ``SyncBatchNorm`` over all
    processes (torch implements it on GPUs only), ``"frozen"`` normalises with the running statistics:
    both then equal the one-process computation.
  - random draws: dropout masks and the Metropolis-Hastings chains of ``se_lstm`` (and a stochastic
    update order) are drawn per process, from seeds derived from the seed and the rank (the chains'
    also from the epoch); rank 0 draws what a one-process run draws. The chains of different processes are independent.
  - losses that average over a varying count: ``ignore_index`` pixels, the merge-probability L2 over
    each process's edges.
  - a last partial batch: ``DistributedSampler`` pads the epoch by repeating its first images so that
    every process takes the same number of steps.

* **Validation**: process r scores images r, r+W, r+2W, ... of the split (``DistributedSampler``'s
  partition without its padding, so that every image counts once); the confusion matrices are summed
  (``all_reduce``) and the per-image confusions, hierarchy statistics and example figures gathered in
  the split's order: the scores are the one-process scores.
* **Rank 0 alone writes** the run folder: ``config.json``, checkpoints, metrics and figures. It decides
  whether the run resumes and reads the checkpoint, then broadcasts it, so only rank 0's machine needs
  the run folder; the superpixel and feature caches are filled by one process per machine (local rank
  0) while the others wait.
* **Checkpoints** hold what a one-process checkpoint holds (``selab evaluate``/``predict`` load them as
  usual) plus every process's RNG and sampler state (``accumulators["ranks"]``), so an interrupted run
  resumes to the result of an uninterrupted one. A mid-epoch checkpoint resumes only with the same
  number of processes; an end-of-epoch one with any number.
* **Ctrl-C**: torchrun forwards SIGINT to every process; they agree (``all_reduce``) to stop after the
  same step and rank 0 writes ``last.pt``.

Examples
--------
::

    torchrun --standalone --nproc_per_node 2 -m selab train --variant cnn --batch-size 8 --out runs/ddp
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from selab.seeds import rng_state, seed_everything, set_rng_state


# selab decision: processes wait this long for each other in a collective. Filling the caches of a
# large split happens on one process per machine while the others wait at a barrier (tens of minutes on
# a CPU for PASCAL-Person-Part); a crashed process ends the whole group through torchrun long before.
TIMEOUT = datetime.timedelta(hours=2)

_owned_group = False  # whether setup() created the process group (then cleanup() destroys it)


# -- who am I ------------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an int (as torchrun sets it), got {value!r}") from None


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the run (1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(_env_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    """This process's global rank (0 without torchrun); also after :func:`cleanup`, from torchrun's ``RANK``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``): it picks the GPU."""
    return _env_int("LOCAL_RANK", 0) if world_size() > 1 else 0


def is_main() -> bool:
    """Whether this process writes the run folder and prints (rank 0, or the only process)."""
    return rank() == 0


# -- setup and teardown --------------------------------------------------------------------------------
def setup(config) -> torch.device:
    """Join torchrun's process group (if launched by torchrun with WORLD_SIZE > 1); return this process's device.

    ``config`` is a :class:`selab.training.config.TrainConfig`. The backend is NCCL for CUDA and gloo for the CPU;
    process k of a machine takes GPU ``cuda:k`` (``--device cuda`` or ``auto``). Checks first that the
    global ``batch_size`` splits over the processes and that ``batchnorm="sync"`` has a GPU.

    Examples
    --------
    >>> from selab.training.config import TrainConfig
    >>> setup(TrainConfig(device="cpu"))  # without torchrun: nothing to join
    device(type='cpu')
    """
    global _owned_group
    device = config.resolved_device()
    size = world_size()
    if size <= 1:
        return device
    if not dist.is_available():
        raise ValueError(f"torchrun started {size} processes, but this torch build has no torch.distributed")
    if config.batch_size % size:
        raise ValueError(f"TrainConfig.batch_size: {config.batch_size} is the global batch, split over the {size} "
                         f"processes: expected a multiple of {size}")
    if config.model.batchnorm == "sync" and device.type != "cuda":
        raise ValueError("ModelConfig.batchnorm: 'sync' (SyncBatchNorm) runs on GPUs only in torch; on a CPU use "
                         "'batch' (statistics per process) or 'frozen' (running statistics)")
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"TrainConfig.device: {config.device!r} names one GPU, but each of the {size} processes "
                             f"takes its own (cuda:LOCAL_RANK): pass --device cuda")
        if local_rank() >= torch.cuda.device_count():
            raise ValueError(f"torchrun: local rank {local_rank()} has no GPU (this machine has "
                             f"{torch.cuda.device_count()}); start at most that many processes per machine")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "gloo" and not dist.is_gloo_available():
            raise ValueError("torchrun on CPU needs the gloo backend, which this torch build lacks")
        dist.init_process_group(backend=backend, timeout=TIMEOUT)  # reads MASTER_ADDR, RANK, ... from torchrun
        _owned_group = True
    return device


def cleanup() -> None:
    """Leave the process group that :func:`setup` created (a group made by the caller stays)."""
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


# -- data ----------------------------------------------------------------------------------------------
def local_batch_size(batch_size: int) -> int:
    """This process's share of the global ``batch_size`` (all of it in one process)."""
    size = world_size() if is_distributed() else 1
    if batch_size % size:
        raise ValueError(f"TrainConfig.batch_size: {batch_size} does not split over {size} processes")
    return batch_size // size


def shard(order: list) -> list:
    """This process's part of the epoch's ``order`` of training indices (all of it in one process).

    ``DistributedSampler`` without shuffling takes every W-th position (padding the end by repeating the
    first ones), so that the k-th local batch of every process together make the k-th global batch of
    ``order``: for W = 2 and ``order = [a, b, c, d]``, rank 0 takes ``[a, c]`` and rank 1 ``[b, d]``.
    """
    if not is_distributed():
        return list(order)
    sampler = torch.utils.data.DistributedSampler(order, num_replicas=world_size(), rank=rank(), shuffle=False)
    return [order[i] for i in sampler]


def shard_for_evaluation(dataset):
    """This process's images r, r+W, ... of an evaluation ``dataset``, each image in exactly one process."""
    if not is_distributed():
        return dataset
    return torch.utils.data.Subset(dataset, list(range(rank(), len(dataset), world_size())))


@contextlib.contextmanager
def main_first():
    """Let local rank 0 of each machine run the block first (filling the caches), then the others."""
    if not is_distributed():
        yield
        return
    if local_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if local_rank() == 0:
            dist.barrier()


# -- random numbers ------------------------------------------------------------------------------------
def derive_seed(seed: int, process: int) -> int:
    """A seed for process ``process`` from ``seed``: ``seed`` itself for rank 0, unrelated ones for the others."""
    if process == 0:
        return int(seed)
    digest = hashlib.sha256(f"selab-rank:{int(seed)}:{int(process)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def per_rank(generator: torch.Generator) -> torch.Generator:
    """``generator`` reseeded for this process (unchanged on rank 0 and in one process): independent draws."""
    if is_distributed() and rank() != 0:
        generator.manual_seed(derive_seed(generator.initial_seed(), rank()))
    return generator


def seed_rank(seed: int) -> None:
    """Reseed the global RNGs (dropout) of ranks other than 0, after the model is built alike everywhere."""
    if is_distributed() and rank() != 0:
        seed_everything(derive_seed(seed, rank()))


# -- model ---------------------------------------------------------------------------------------------
def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` (as is in one process); ``batchnorm="sync"`` → SyncBatchNorm.

    The wrapper only runs the training forward; checkpoints, evaluation and the optimizer keep using
    ``model`` itself (SyncBatchNorm takes over the same parameter and buffer tensors, so an optimizer
    built before stays valid and the state dict keeps its keys). Some parameters get no gradient in a
    step: the first Graph LSTM layer's recurrent weights act on a zero initial state, the confidence-only
    epochs of two-step training use no graph layer, and a trained EfficientNet-Lite0 holds its ImageNet
    classifier head, which the features never reach. DDP then looks for unused parameters
    (``find_unused_parameters``); only ``cnn`` on a frozen or ``small`` backbone uses all of them.
    Globally unused parameters keep no gradient, as in one process.
    """
    if not is_distributed():
        return model
    config = getattr(model, "config", None)
    if config is not None and config.batchnorm == "sync":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    find_unused = config is None or config.uses_graph or not (config.freeze_backbone or config.backbone == "small")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics) before evaluating."""
    if not is_distributed():
        return
    for buffer in model.buffers():
        moved = buffer.to(_comm_device())
        dist.broadcast(moved, 0)
        buffer.copy_(moved)


# -- collectives ---------------------------------------------------------------------------------------
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (e.g. a Ctrl-C seen by one of them)."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes (a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    total = tensor.to(_comm_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def sum_numbers(*values: float) -> tuple[float, ...]:
    """Python numbers summed over the processes (float64)."""
    if not is_distributed():
        return values
    return tuple(all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist())


def _to_cpu(item):
    if isinstance(item, torch.Tensor):
        return item.cpu()
    if isinstance(item, (list, tuple)):
        return type(item)(_to_cpu(i) for i in item)
    if isinstance(item, dict):
        return {k: _to_cpu(v) for k, v in item.items()}
    return item


def gather_shards(items: list) -> list:
    """Every process's ``items`` (one per image of its :func:`shard_for_evaluation`) back in the split's order.

    Process r's i-th item belongs to image r + i W; interleaving the lists restores the order (shorter
    lists, such as the first few example figures of each process, simply end early).
    """
    if not is_distributed():
        return items
    lists = [None] * world_size()
    dist.all_gather_object(lists, _to_cpu(list(items)))
    longest = max(len(part) for part in lists)
    return [part[i] for i in range(longest) for part in lists if i < len(part)]


def from_main(function, *args):
    """``function(*args)`` computed by rank 0 and sent to every process; an error there is raised everywhere."""
    if not is_distributed():
        return function(*args)
    message = [None, None]
    if is_main():
        try:
            message[0] = function(*args)
        except Exception as error:  # raised below in every process, so that none waits for the others
            message[1] = error
    dist.broadcast_object_list(message, src=0)
    if message[1] is not None:
        raise message[1]
    return message[0]


# -- the run folder ------------------------------------------------------------------------------------
class FollowerFolder:
    """What ranks other than 0 hold instead of the :class:`selab.training.runs.RunFolder`: its paths, no writing."""

    def __init__(self, folder):
        self.final, self.path, self.resuming, self.pending = Path(folder.final), Path(folder.final), folder.resuming, False

    def commit(self) -> Path:
        return self.path

    def abandon(self) -> None:
        pass


def run_folder(factory, config):
    """``factory(config)`` (a RunFolder) on rank 0, which alone inspects and writes ``out_dir``."""
    folder = from_main(factory, config)
    return folder if is_main() else FollowerFolder(folder)


# -- checkpoints ---------------------------------------------------------------------------------------
def with_rank_states(state: dict | None, rng: dict | None) -> dict | None:
    """The checkpoint's ``accumulators``: ``state`` plus every process's (state, RNG) under ``"ranks"``.

    In one process ``state`` is returned as is (the checkpoint format stays the one-process one).
    """
    if not is_distributed():
        return state
    mine = {"accumulators": state or {}, "rng": rng if rng is not None else rng_state()}
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, _to_cpu(mine))
    return {**(state or {}), "ranks": everyone}


def restore_rank_state(accumulators: dict, mid_epoch: bool, seed: int, epoch: int) -> dict:
    """This process's accumulators (and RNG states) from a checkpoint's, see :func:`with_rank_states`.

    Raises a ValueError when a mid-epoch checkpoint was written by another number of processes (the
    epoch's partition of the data and the per-process chains would not continue). At an epoch boundary
    any number resumes: processes without a saved state reseed from (seed, epoch, rank).
    """
    ranks = accumulators.get("ranks")
    saved = len(ranks) if ranks else 1
    now = world_size() if is_distributed() else 1
    if saved != now:
        if mid_epoch:
            raise ValueError(f"run: resume=True: the checkpoint was written mid-epoch by {saved} process(es), this run "
                             f"has {now}; resume with {saved} (torchrun --nproc_per_node), or from an end-of-epoch "
                             f"checkpoint")
        if rank() != 0:
                seed_everything(derive_seed(int(seed) * 1009 + int(epoch), rank()))
        own = ranks[0]["accumulators"] if ranks and rank() == 0 else {}
        return dict(own)
    if not ranks:
        return accumulators
    entry = ranks[rank()]
    set_rng_state(entry["rng"])
    return dict(entry["accumulators"])

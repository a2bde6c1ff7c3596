"""Where training's random numbers come from, and how the seed reaches them.

Two kinds of randomness, one rule each:

* **Per-epoch streams** (:func:`epoch_generator`): every random draw of a training epoch that decides
  what is computed (the shuffle, the flips, the other augmentations, the model's Metropolis-Hastings proposals and noisy update
  orders) comes from a generator that depends only on ``(seed, epoch, stream)``. Resuming an epoch
  therefore replays the same draws, whatever ran before. The data streams live on the CPU (the
  DataLoader's side); the model's stream lives on the model's device, because the model draws on it
  (``torch.rand(..., generator=g, device=x.device)`` needs ``g`` on ``x``'s device).
* **Global generators** (Python's, NumPy's, torch's CPU and CUDA default generators): seeded once per
  run by :func:`seed_everything` (weight initialisation) and saved in every checkpoint by
  :func:`rng_state` / :func:`set_rng_state`.

Examples
--------
>>> a = epoch_generator(seed=0, epoch=3, stream=SHUFFLE)
>>> b = epoch_generator(seed=0, epoch=3, stream=SHUFFLE)
>>> torch.equal(torch.randperm(5, generator=a), torch.randperm(5, generator=b))
True
"""

from __future__ import annotations

import random

import numpy as np
import torch

# The per-epoch streams: training-set order, horizontal flips, and the model's own draws.
SHUFFLE, FLIPS, MODEL = 0, 1, 2
# The paper's augmentation (selab.data.augment): crops, scales, rotations and colour factors of every sample.
AUGMENT = 3


def epoch_generator(seed: int, epoch: int, stream: int, device="cpu") -> torch.Generator:
    """A generator on ``device`` that depends only on (seed, epoch, stream): resuming replays the same draws.

    The same seed gives a CPU and a CUDA generator different streams (their algorithms differ), so a run
    is reproducible bit for bit on one kind of device, not across kinds.
    """
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + epoch * 1009 + stream)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state as tensors and plain data (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss_next = random.getstate()
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"algorithm": str(algorithm), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the global RNG states that :func:`rng_state` recorded."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss_next"]))
    np.random.set_state((numpy_state["algorithm"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Writing files safely: never a torn file, and a folder's writability proven before a run starts.

Every file selab writes for later reading (checkpoints, cached features and superpixels, metrics,
configs) goes to a temporary name beside its destination and is renamed into place with
``os.replace``, so an interruption or a concurrent reader never sees half a file.

Examples
--------
>>> import tempfile
>>> folder = writable_folder(Path(tempfile.mkdtemp()) / "run", "out_dir")
>>> atomic_write_text("{}", folder / "metrics.json"); (folder / "metrics.json").read_text()
'{}'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch


def atomic_write(path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def writable_folder(path, what: str) -> Path:
    """Create ``path`` (and its parents) if needed and prove it writable; else a ValueError naming ``what``."""
    path = Path(path)
    for ancestor in (path, *path.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                where = "is a file" if ancestor == path else f"is under {ancestor}, which is a file"
                raise ValueError(f"{what}: {path} {where}; expected a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".selab-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"{what}: {path} is not writable ({error.strerror or error})") from error
    return path

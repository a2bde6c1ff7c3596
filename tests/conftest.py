import os
from pathlib import Path

import pytest
import torch

# One intra-op thread: on a busy 2-core machine, two threads make small ops stall for tens of
# milliseconds each (measured: one test went from 15 s to 0.05 s). Results do not depend on it.
torch.set_num_threads(int(os.environ.get("SELAB_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
# The one place the tests learn where the real PASCAL-Person-Part copy is (docs/data.md says how to get
# one): $SELAB_PASCAL_ROOT, else a shared/data folder beside the repository, where CI keeps it.
PASCAL_ROOT = Path(
    os.environ.get("SELAB_PASCAL_ROOT", REPO.parent / "shared" / "data" / "pascal_person_part")
)


@pytest.fixture(scope="session")
def pascal_root_path() -> Path:
    """Where the PASCAL-Person-Part copy is expected (it may be absent)."""
    return PASCAL_ROOT


@pytest.fixture(scope="session")
def pascal_root() -> Path:
    """The real PASCAL-Person-Part copy; tests that need it skip cleanly without it."""
    if not (PASCAL_ROOT / "JPEGImages").is_dir():
        pytest.skip(f"PASCAL-Person-Part not found at {PASCAL_ROOT} (set SELAB_PASCAL_ROOT)")
    return PASCAL_ROOT


def _synthetic_batch(size: int, seed: int, n_segments: int) -> dict:
    """Two generated images of ``size`` px: ``image``, SLIC ``superpixels`` and ``mask``, as a model reads them."""
    from selab.method.superpixels import slic
    from selab.data.synthetic import SyntheticPersonParts

    ds = SyntheticPersonParts(2, size, seed=seed)
    samples = [ds[i] for i in range(2)]
    return {"image": torch.stack([s["image"] for s in samples]),
            "superpixels": torch.stack([torch.from_numpy(slic(s["image"], n_segments=n_segments)) for s in samples]),
            "mask": torch.stack([s["mask"] for s in samples])}


@pytest.fixture(scope="session")
def synthetic_batch():
    """The factory ``synthetic_batch(size, seed, n_segments)`` of small model batches (:func:`_synthetic_batch`)."""
    return _synthetic_batch


@pytest.fixture(autouse=True)
def _user_model_folder(tmp_path_factory, monkeypatch):
    """Exported models go to the user's model folder ($SELAB_HOME/models): each test has an empty temporary
    one, so that tests neither see nor write a real one, nor each other's."""
    monkeypatch.setenv("SELAB_HOME", str(tmp_path_factory.mktemp("selab_home")))


_DESELECTED = []


def pytest_deselected(items):
    _DESELECTED.extend(items)


@pytest.fixture
def whole_module_selected(request) -> bool:
    """Whether every test of the requesting test's module runs in this pytest run: none deselected (``-k``,
    ``-m``) and the module not narrowed to some tests by a ``path::name`` argument."""
    path = request.node.path
    narrowed = any("::" in str(arg) and Path(str(arg).split("::")[0]).resolve() == path
                   for arg in request.config.args)
    return not narrowed and not any(item.path == path for item in _DESELECTED)

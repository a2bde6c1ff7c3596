import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PASCAL_ROOT = Path(
    os.environ.get("SELAB_PASCAL_ROOT", REPO.parent / "shared" / "data" / "pascal_person_part")
)


@pytest.fixture(scope="session")
def pascal_root() -> Path:
    """The real PASCAL-Person-Part copy beside the repo; tests that need it skip cleanly without it."""
    if not (PASCAL_ROOT / "JPEGImages").is_dir():
        pytest.skip(f"PASCAL-Person-Part not found at {PASCAL_ROOT} (set SELAB_PASCAL_ROOT)")
    return PASCAL_ROOT

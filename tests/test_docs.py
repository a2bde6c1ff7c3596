"""Tests for the documentation: it stands on its own, its list of selab's decisions names real options, the
README stays a front page whose code runs, and the repository's text speaks of selab only.

The site itself is built with warnings as errors by ``make test-docs`` (part of ``make test``).
"""

import dataclasses
import importlib.util
import inspect
import re
import subprocess
from pathlib import Path

import pytest

from selab.method.energy import PartitionEnergy
from selab.method.evolve import StructureEvolution
from selab.method.merge import MergeProbability
from selab.model.config import ModelConfig
from selab.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
METHOD = (REPO / "docs" / "method.md").read_text()


def _tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in listing.decode().split("\0") if name]


def _tracked_lines(keep):
    """``(path relative to the repository, line number, line)`` of every tracked text file ``keep(path)`` accepts."""
    for path in _tracked_files():
        if not path.is_file() or not keep(path):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            yield path.relative_to(REPO), number, line


# The sibling folder the project grew up beside, and its notes (spelled in pieces so this file passes).
OUTSIDE = ("../" + "shared", "PAPER" + ".md", "DESIGN" + ".md", "BROWSER_TESTING" + ".md")


def test_no_file_names_a_path_outside_the_repository():
    # .ci/ describes the CI machine's own layout; tests/conftest.py builds its one default without "../".
    offenders = [f"{relative}:{number}: {line.strip()[:80]}"
                 for relative, number, line in _tracked_lines(lambda path: path.relative_to(REPO).parts[0] != ".ci")
                 if any(outside in line for outside in OUTSIDE)]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("callable_", [StructureEvolution, MergeProbability, PartitionEnergy])
def test_every_evolution_option_is_on_the_method_page(callable_):
    names = [name for name in inspect.signature(callable_).parameters
             if name not in ("hidden_channels", "node_prob", "node_labels", "size", "batch", "num_classes")]
    missing = [name for name in names if f"{name}=" not in METHOD and f"{name}, " not in METHOD
               and f"`{name}`" not in METHOD and f"({name}" not in METHOD]
    assert not missing, f"{callable_.__name__} options not on docs/method.md: {missing}"


@pytest.mark.parametrize("name, default", [
    ("merge_budget", "0.25"), ("beta", "0.1"), ("energy_scale", "100.0"), ("num_proposals", "8"),
    ("eval_mode", '"auto"'), ("source", '"forget_gates"'), ("threshold", "0.5"), ("temperature", "1.0"),
])
def test_the_method_page_states_the_evolution_defaults(name, default):
    assert repr(inspect.signature(StructureEvolution).parameters[name].default).replace("'", '"') == default
    assert default in METHOD


@pytest.mark.parametrize("config, names", [
    (ModelConfig, ["hidden_channels", "num_layers", "residual", "order", "train_order", "order_noise",
                   "update_schedule", "merge_loss_weight", "confidence_loss_weight", "compactness"]),
    (TrainConfig, ["backbone", "freeze_backbone", "cache_features", "augment", "n_segments", "optimizer",
                   "lr", "lr_schedule", "batch_size", "weight_decay"]),
])
def test_the_decision_tables_name_real_config_fields(config, names):
    fields = {f.name for f in dataclasses.fields(config)}
    assert set(names) <= fields
    for name in names:
        assert f"{config.__name__}.{name}" in METHOD or f"`{name}`" in METHOD, name


# ------------------------------------------------------------------ the front page

README = (REPO / "README.md").read_text()
README_MAX_LINES = 150


def test_the_readme_is_a_front_page_of_at_most_150_lines():
    lines = README.count("\n") + (not README.endswith("\n"))
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, its budget is {README_MAX_LINES}: move the detail into docs/ and link it")


def _readme_python_block() -> str:
    section = README.split("## Parse a photo in Python", 1)
    assert len(section) == 2, "README.md has no 'Parse a photo in Python' section"
    block = section[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "pretrained.load" in block and "predict_images" in block
    return block


def test_the_readme_quickstart_runs_and_shows_a_hierarchy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the block must not depend on the checkout it is read from
    namespace: dict = {}
    exec(compile(_readme_python_block(), "README.md quickstart", "exec"), namespace)
    printed = capsys.readouterr().out
    parsed, top = namespace["parsed"], namespace["top"]
    levels = [level["num_nodes"] for level in parsed.hierarchy["levels"]]
    assert printed.strip() == f"{parsed.labels.shape} {levels}"
    assert parsed.labels.shape == (512, 512)  # the photo's own size
    assert len(levels) >= 2 and all(a >= b for a, b in zip(levels, levels[1:])) and levels[-1] < levels[0]
    assert top.number_of_nodes() == levels[-1]  # the quickstart draws the top level


def _zoo_script():
    spec = importlib.util.spec_from_file_location("make_zoo_table", REPO / "docs" / "make_zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_zoo_table_is_what_the_shipped_models_record():
    zoo = _zoo_script()
    expected = zoo.replace_table(README, zoo.zoo_table())
    assert README == expected, "README.md's model zoo is stale: run python docs/make_zoo_table.py --write README.md"


def test_the_zoo_script_refuses_a_file_without_markers(tmp_path, capsys):
    target = tmp_path / "other.md"
    target.write_text("# no table here\n")
    assert _zoo_script().main(["--write", str(target)]) == 2
    assert "other.md" in capsys.readouterr().err and target.read_text() == "# no table here\n"


@pytest.mark.parametrize("page", ["README.md", "docs/notebooks.md"])
def test_every_notebook_is_in_the_tables(page):
    text = (REPO / page).read_text()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    missing = [nb.stem for nb in sorted((REPO / "notebooks").glob("*.ipynb"))
               if not any(nb.stem in row for row in rows)]
    assert not missing, f"{page} does not list {missing}"


def test_every_picture_in_docs_is_shown_somewhere():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    unused = [picture.name for picture in sorted((REPO / "docs").glob("*.png")) if picture.name not in text]
    assert not unused, f"pictures in docs/ that no page shows: {unused}"


# ------------------------------------------------------------------ the text speaks of selab only

# Words about how the repository was made rather than about selab: working stops and sessions, the people and
# agents who wrote it, the tracker's issues. Each pattern is a diary form, narrow enough to leave the ordinary
# uses alone ("stop the run", pytest's scope="session", a JupyterLab session, DataLoader workers, test helpers).
HISTORY_WORDS = [
    r"\bstops? \d+\b(?!\s*(?:s|ms|seconds?|minutes?|epochs?|steps?|%))",     # "stop 22", "stops 21-23"
    r"\bstop-\d+\b",
    r"\bissues? #?\d+",                                                      # "issue 19", "issues 17/19"
    r"\bissue-\d+",
    r"\bthe issue(?:'s)?\b",                                                 # "the issue hoped for"
    r"\bissue tracker\b",
    r"\b(?:this|that|a|another|an earlier|the previous|the next|the working) session\b",
    r"\bsession (?:that|which) (?:wrote|ran|made|measured|added)",
    r"\bsessions? had\b",
    r"\bhelpers? (?:session|agent)s?\b",
    r"\b(?:a|the|another|this) helper (?:wrote|ran|added|measured|found|made)\b",
    r"\bcoordinators?\b",
    r"\b(?:layout|reliability|hierarchy|zoo|frontpage|docs) worker\b",
    r"\b(?:another|the other|a) worker (?:is|adds|added|wrote|edits)\b",
    r"\bheavily loaded\b",
    r"\bhoped for\b",
    r"\bfor want of time\b",
]
_HISTORY = re.compile("|".join(f"(?:{word})" for word in HISTORY_WORDS), re.IGNORECASE)
TEXT_SUFFIXES = {".md", ".py", ".ipynb", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".cff", ".sh", ".rst", ".json", ""}
AREAS = ["README.md", "docs", "selab", "bench", "tests", "notebooks", "other"]


def _area(relative: Path) -> str:
    top = relative.parts[0]
    return top if top in AREAS else "other"


@pytest.mark.parametrize("area", AREAS)
def test_the_repository_text_speaks_of_selab_only(area):
    def keep(path):  # this file holds the word list itself
        return _area(path.relative_to(REPO)) == area and path.suffix in TEXT_SUFFIXES and path != Path(__file__)

    offenders = [f"{relative}:{number}: {match.group(0)!r} in {line.strip()[:100]}"
                 for relative, number, line in _tracked_lines(keep) if (match := _HISTORY.search(line))]
    assert not offenders, "text about how selab was made, not about selab:\n" + "\n".join(offenders)


@pytest.mark.parametrize("diary", ["at the end of stop 22", "stop 23", "the session that wrote this",
                                   "a fifth of the +1.0 the issue hoped for", "(issue 17)", "issues 17/19",
                                   "the issue-19 options", "on a heavily loaded machine", "the layout worker"])
def test_the_history_words_catch_the_diary_forms(diary):
    assert _HISTORY.search(diary)


@pytest.mark.parametrize("product", ["stop the run with Ctrl-C", "it stops 2 epochs later", 'scope="session"',
                                     "one JupyterLab page for the session", "DataLoader workers",
                                     "keeps the harness's helpers honest", "the sampler stops accepting merges"])
def test_the_history_words_leave_ordinary_uses_alone(product):
    assert not _HISTORY.search(product)

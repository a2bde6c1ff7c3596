"""Sphinx configuration of selab's documentation site.

Build with ``make docs`` (offline). Two kinds of pages are generated here on
every build, into git-ignored folders, so that they cannot drift from the code:

- ``docs/api/<module>.rst``: one API page per module of ``selab/``, listing every public function and
  class (a module's ``__all__`` where it has one, else what the module itself defines);
- ``docs/notebooks/<name>.ipynb``: the notebooks of ``notebooks/``, which are committed without outputs;
  myst-nb executes them on their defaults (small data, the shipped models, seconds to a minute each)
  so that the site shows their figures. Results are cached in ``docs/_build/.jupyter_cache``: a
  notebook runs again only when its code changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import selab  # noqa: E402

project = "selab"
author = "the selab authors"
copyright = "the selab authors, MIT License"
release = version = selab.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# -- notebooks: executed on their defaults at build time, so the pages show their figures ------------
nb_execution_mode = "cache"
nb_execution_timeout = 600  # seconds per cell: the slowest default cell takes well under a minute
nb_execution_in_temp = True  # the notebooks write runs/... into a scratch folder, not into docs/
nb_execution_raise_on_error = True  # a notebook that fails breaks the build
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]

# -- API reference ------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # not torch's text on every overridden forward() and train()
# Every cross-reference must resolve (a renamed function breaks the build, not a link), except those
# into other projects' documentation, which this offline build does not load.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(torch|numpy|np|scipy|skimage|networkx|nx|matplotlib|PIL|ipywidgets|tqdm)\..*")]
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# An unknown section (e.g. "Example" for "Examples") is dropped from the page: make it a build warning.
numpydoc_validation_checks = {"GL06"}

# -- HTML -----------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"selab {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False


def public_names(module) -> tuple[list[str], list[str]]:
    """(defined here, re-exported from another selab module): the module's ``__all__``, else the
    functions and classes it defines whose names do not start with an underscore."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, obj in vars(module).items()
                 if not name.startswith("_") and (
                     ((inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__)
                     or (name.isupper() and isinstance(obj, (int, float, str, tuple, dict, np.ndarray))))]
    own, reexported = [], []
    for name in names:
        obj = getattr(module, name)
        home = getattr(obj, "__module__", module.__name__)
        (own if home == module.__name__ or not callable(obj) else reexported).append(name)
    return own, reexported


def api_page(modname: str) -> str:
    module = importlib.import_module(modname)
    own, reexported = public_names(module)
    lines = [modname, "=" * len(modname), "", f".. automodule:: {modname}", "   :no-members:", "",
             f".. currentmodule:: {modname}", ""]
    if own:
        lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {name}" for name in own] + [""]
    if reexported:
        links = ", ".join(f":obj:`{name} <{getattr(module, name).__module__}.{name}>`" for name in reexported)
        lines += [f"Also importable from here: {links}.", ""]
    for name in own:
        obj = getattr(module, name)
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {name}", "   :members:"]
            if hasattr(obj, "_fields"):  # a NamedTuple: its Attributes section documents the fields
                lines += ["   :exclude-members: " + ", ".join(obj._fields)]
            elif not dataclasses.is_dataclass(obj):  # dataclass fields are in the Parameters section
                lines += ["   :undoc-members:"]
            lines += [""]
        elif callable(obj):
            lines += [f".. autofunction:: {name}", ""]
        else:  # a constant: its value (its type's docstring is not about it)
            value = " ".join(repr(obj).split())
            value = value if len(value) <= 120 else value[:117] + "..."
            lines += [f".. py:data:: {name}", f"   :value: {value}", ""]
    return "\n".join(lines)


#: The folders of selab/, in the order of the pipeline.
STAGES = ("method", "model", "data", "training", "experiments", "workbench")


def write_if_changed(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def generate_api() -> None:
    modules = sorted(info.name for info in pkgutil.walk_packages(selab.__path__, "selab.")
                     if not info.name.rsplit(".", 1)[-1].startswith("_"))
    out = DOCS / "api"
    for stale in out.glob("*.rst"):
        if stale.stem not in modules and stale.stem != "index":
            stale.unlink()
    for modname in modules:
        write_if_changed(out / f"{modname}.rst", api_page(modname))
    # One section per folder of selab/, in the order of the pipeline (method <- model <- data <- training <-
    # experiments <- workbench), after the top-level modules; each opens with its package's docstring.
    index = ["API reference", "=============", "",
             "Every public function and class of ``selab/``, one page per module, from the docstrings",
             "(numpydoc), one section per folder in the order of the pipeline. The examples in them run as",
             "doctests (``make test``).", ""]
    sections = [("selab", [m for m in modules if m.count(".") == 1 and m.split(".")[1] not in STAGES])]
    sections += [(f"selab/{stage}/", [m for m in modules if m.split(".")[1] == stage]) for stage in STAGES]
    for caption, members in sections:
        package = members[0] if caption != "selab" else "selab"
        summary = (inspect.getdoc(importlib.import_module(package)) or "").split("\n\n")[0]
        index += [caption, "-" * len(caption), "", summary, "", ".. toctree::", "   :maxdepth: 1", ""]
        index += [f"   {m}" for m in members] + [""]
    write_if_changed(out / "index.rst", "\n".join(index) + "\n")


def copy_notebooks() -> None:
    out = DOCS / "notebooks"
    sources = sorted((REPO / "notebooks").glob("*.ipynb"))
    for stale in out.glob("*.ipynb"):
        if stale.name not in {s.name for s in sources}:
            stale.unlink()
    for source in sources:
        write_if_changed(out / source.name, source.read_bytes())


generate_api()
copy_notebooks()

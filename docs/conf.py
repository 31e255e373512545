"""Sphinx configuration of the optax_sai documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are
errors) and run its code examples with ``sphinx-build -b doctest docs docs/_build/doctest``;
``tests/test_docs.py`` does both.
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document this checkout, not an installed copy

import optax_sai  # noqa: E402

project = "optax_sai"
author = "the optax_sai authors"
copyright = "2024-2026, the optax_sai authors"  # noqa: A001
version = release = optax_sai.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and the notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style Args/Returns sections
    "sphinx.ext.doctest",  # runs every {doctest} / {testcode} block and the docstrings' examples
    "sphinx.ext.mathjax",
    # Ships MathJax (3.2.2, from the PyPI package of this name, in the docs extra) into
    # _static/mathjax and points sphinx.ext.mathjax at it: math renders offline, no CDN.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# MyST: $...$ and $$...$$ math, ::: fences.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The notebooks are rendered as stored, with the outputs notebooks/refresh_outputs.py stored
# in them at full size (a test checks they belong to the current code); the test suite
# executes them at a reduced size.
nb_execution_mode = "off"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Code in the pages runs on the CPU, without noise from JAX about missing accelerators.
doctest_global_setup = """
import importlib.util
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
"""
import doctest  # noqa: E402

doctest_default_flags = (
    doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1)

html_theme = "furo"
html_title = f"optax_sai {release}"
html_static_path = []

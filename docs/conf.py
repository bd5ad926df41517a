"""Sphinx configuration of txcmux's documentation site.

Build it with ``python -m sphinx -W -b html docs docs/_build/html`` (after
``pip install '.[docs]'``); tests/test_docs_site.py builds it the same way.
The pages stay Markdown (MyST); the Python API pages come from the
docstrings.
"""

from __future__ import annotations

import txcmux

project = "txcmux"
author = "the txcmux authors"
copyright = "the txcmux authors"  # noqa: A001  (Sphinx's name)
release = version = txcmux.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings get anchors, so that links such as matchers.md#combinators work
# on the site as they do on GitHub.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Twisted's and zope's objects are named in signatures, not documented here.
nitpicky = False
# No network at build time: intersphinx inventories are not fetched.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

# The flow diagram (docs/flow.dot) is drawn at build time by Graphviz's dot
# (Debian: graphviz), as SVG so that its labels stay text.
graphviz_output_format = "svg"
graphviz_dot_args = ["-Gfontname=sans-serif"]

html_theme = "furo"
html_title = f"txcmux {release}"
html_static_path: list[str] = []

"""Sphinx configuration of the flask-dependency-proxy documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

project = "flask-dependency-proxy"
author = "flask-dependency-proxy developers"
copyright = "2026, flask-dependency-proxy developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "configtable", "readme"]
# The README parts (docs/_ext/readme.py): heading anchors as GitHub makes them.
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = True
nitpick_ignore_regex = [
    # Types that belong to other projects' documentation.
    (r"py:class", r"(flask|sqlalchemy|flask_sqlalchemy|t|typing)\..*"),
    (r"py:class", r"(Flask|SQLAlchemy|ResponseReturnValue)"),
    # DependencyProxy's argument types (models/binding.py), named in host.rst's text.
    (r"py:class", r"(SessionSource|EngineSource|OutsideRequest)"),
]
intersphinx_mapping = {}
html_theme = "alabaster"
exclude_patterns = ["_build"]

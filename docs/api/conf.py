"""Sphinx configuration of linuxdmabuf's API reference, built from the docstrings.

    python -m sphinx -W -b html docs/api build/api     (tests/test_quality.py does this)
"""
import linuxdmabuf

project = "linuxdmabuf"
release = version = linuxdmabuf.__version__
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False

"""Sphinx configuration of the pyro_fusion documentation (``make docs`` -> ``docs/_build/html``).

The tutorials are the jupytext scripts of ``tutorials/``: they are copied here before the build and
executed by myst-nb at the small size (``PYRO_FUSION_SMALL=1``), their outputs and figures cached in
``docs/_build/.jupyter_cache`` (a script is executed again only when its code changes).
"""
import os
import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))

import pyro_fusion  # noqa: E402

# --- the tutorials: copied from tutorials/, executed by the kernel of this Python, at the small size
TUTORIALS = REPO / "tutorials"
RENDERED = DOCS / "tutorials"
RENDERED.mkdir(exist_ok=True)
for script in sorted(TUTORIALS.glob("*.py")):
    copy = RENDERED / script.name
    if not copy.exists() or copy.read_bytes() != script.read_bytes():
        shutil.copyfile(script, copy)  # only when changed: Sphinx rebuilds what is newer
os.environ.setdefault("PYRO_FUSION_SMALL", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["PYRO_FUSION_OUTPUT"] = str(DOCS / "_build" / "tutorial_outputs")  # figures saved by the tutorials

project = "pyro_fusion"
author = "the pyro_fusion developers"
copyright = "the pyro_fusion developers, Apache-2.0"
version = release = pyro_fusion.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from the built site: formulas render without internet
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "conf.py"]

# --- API reference: Pyro's reST field lists (`:param Tensor x:`), types from the hints
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # inherited torch/pyro docstrings are not ours to fix
add_module_names = False

# --- tutorials and markdown pages
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "cache"
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- HTML
html_theme = "furo"
html_title = f"pyro_fusion {release}"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": True}

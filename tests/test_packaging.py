"""Packaging metadata: one version source, the licence, type information, the extras the docs need."""
import pathlib
import re
import tomllib

import pyro_fusion

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pyro_fusion.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", pyro_fusion.__version__)
    assert not (REPO / "setup.cfg").exists() and not (REPO / "setup.py").exists()


def test_licence_and_typing_marker_ship():
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert (REPO / "pyro_fusion" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["pyro_fusion"]
    assert set(PYPROJECT["project"]["urls"]) >= {"Documentation", "Source", "Changelog"}


def test_docs_extra_lists_what_the_docs_build_imports():
    conf = (REPO / "docs" / "conf.py").read_text()
    extra = " ".join(PYPROJECT["project"]["optional-dependencies"]["docs"])
    for package in ("sphinx", "furo", "myst-nb", "jupytext", "ipykernel", "matplotlib"):
        assert package in extra
    assert "myst_nb" in conf and "furo" in conf

"""Examples are tests: every docstring example of the package and every Python block of the README
and of the user guide runs here."""
import doctest
import importlib
import importlib.util
import os
import pathlib
import runpy
import pkgutil
import re
import warnings

import pyro
import pytest
import torch

import pyro_fusion

REPO = pathlib.Path(__file__).resolve().parents[1]
#: shim modules that only warn and re-export (CHANGELOG.md); their names are documented at their new homes
DEPRECATED_MODULES = {"pyro_fusion.extract", "pyro_fusion.fused", "pyro_fusion.demo", "pyro_fusion.__main__"}
#: modules whose examples need an optional dependency
OPTIONAL = {"pyro_fusion.flower": "flwr"}
#: data the examples of the loaders read (tests/conftest.py points the variables at ../shared/data)
DATA_GLOBALS = {
    "mnist_root": pathlib.Path(os.environ.get("PYRO_FUSION_MNIST", "/nonexistent")),
    "ap_root": pathlib.Path(os.environ.get("PYRO_FUSION_AP", "/nonexistent")),
}
#: the names the examples share (shown on the API reference's first page), built where used
WORLD = REPO / "tests" / "example_world.py"
WORLD_NAMES = ("model", "handwritten_guide", "posts", "data", "new_data", "guide", "fused")


def package_modules():
    names = [pyro_fusion.__name__]
    for info in pkgutil.walk_packages(pyro_fusion.__path__, prefix="pyro_fusion."):
        if info.name not in DEPRECATED_MODULES:
            names.append(info.name)
    return sorted(names)


MODULES = package_modules()


def _import(name):
    for prefix, requirement in OPTIONAL.items():
        if name.startswith(prefix):
            pytest.importorskip(requirement, reason=f"{name} needs {requirement}")
    return importlib.import_module(name)


def _example_blocks(text):
    """The indented blocks that follow ``Example::`` in a docstring."""
    for match in re.finditer(r"^( *)Example::\n\n((?:\1 +\S.*\n|\n)+)", text, re.M):
        yield match.group(2)


def docstring_cases():
    """One case per docstring with examples: (module, the DocTest's name)."""
    cases = []
    for name in MODULES:
        requirement = next((r for prefix, r in OPTIONAL.items() if name.startswith(prefix)), None)
        if requirement and importlib.util.find_spec(requirement) is None:
            skip = pytest.mark.skip(reason=f"{name} needs {requirement}")
            cases.append(pytest.param(name, None, id=name, marks=skip))
            continue
        module = importlib.import_module(name)
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
            if test.examples and test.name.startswith(name):
                cases.append(pytest.param(name, test.name, id=test.name))
    return cases


def _uses(test, names):
    source = "".join(example.source for example in test.examples)
    return [n for n in names if re.search(rf"\b{n}\b", source)]


@pytest.mark.parametrize("module_name, test_name", docstring_cases())
def test_docstring_examples_run(module_name, test_name, one_thread):
    module = importlib.import_module(module_name)
    [test] = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.name == test_name]
    for key in _uses(test, DATA_GLOBALS):
        if not DATA_GLOBALS[key].is_dir():
            pytest.skip(f"{test_name} reads {DATA_GLOBALS[key]}, which is not there")
    world = {"torch": torch, "pyro": pyro, "dist": pyro.distributions}
    if _uses(test, WORLD_NAMES):
        world.update({k: v for k, v in runpy.run_path(str(WORLD)).items() if not k.startswith("__")})
    test.globs = {**world, **{key: str(path) for key, path in DATA_GLOBALS.items()}, **test.globs}
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    with warnings.catch_warnings():  # the examples may not change the process's warning filters
        runner.run(test)
    summary = runner.summarize(verbose=False)
    assert summary.failed == 0, f"{summary.failed} of {summary.attempted} examples of {test_name} failed (see above)"


def test_every_example_block_is_a_doctest():
    """An ``Example::`` block written as plain code would never run: every one has ``>>>`` prompts,
    and none is skipped."""
    plain, skipped = [], []
    for path in sorted((REPO / "pyro_fusion").rglob("*.py")):
        text = path.read_text()
        plain += [f"{path.relative_to(REPO)}: {b.strip().splitlines()[0]}" for b in _example_blocks(text)
                  if ">>>" not in b]
        skipped += [f"{path.relative_to(REPO)}: {line.strip()}" for line in text.splitlines()
                    if "doctest: +SKIP" in line]
    assert not plain, "Example:: blocks without >>> prompts:\n" + "\n".join(plain)
    assert not skipped, "skipped examples:\n" + "\n".join(skipped)


# ----- README and user guide -----------------------------------------------------------------------

def python_blocks(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


MARKDOWN = [p for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
            if "_build" not in p.parts and python_blocks(p)]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    """Each page's Python blocks run in order in one namespace, like a reader pasting them."""
    blocks = python_blocks(path)
    if any("import flwr" in b or "from flwr" in b for b in blocks):
        pytest.importorskip("flwr", reason=f"{path.name} shows a Flower app")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"markdown_{path.stem}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name}, Python block {i + 1}", "exec"), namespace)


def test_readme_flower_block_is_the_example_app():
    """The README shows the whole Flower app file, as it is in the repository."""
    app = (REPO / "examples" / "flower_app.py").read_text()
    assert app in python_blocks(REPO / "README.md")


"""The package layout: every module imports on its own, and the import graph has no cycle."""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGE = ROOT / "pyro_fusion"
#: shim modules of old import paths: importing them warns (kept for one release)
DEPRECATED_MODULES = {"pyro_fusion.demo", "pyro_fusion.extract", "pyro_fusion.fused"}


def module_names():
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def module_path(name):
    path = ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(name):
    """The package modules that ``name``'s import statements (anywhere in the file, also inside
    functions and ``TYPE_CHECKING`` blocks) name: ``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``."""
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = set(module_names())
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target not in known:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    out.discard(name)
    return out


def find_cycle(graph):
    """A list of modules forming a cycle in ``graph`` (module -> imported modules), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]


def test_imports_of_the_old_io_cycle_are_seen():
    # the cycle of the old layout ran through imports inside functions; they must count
    graph = {name: imported_modules(name) for name in module_names()}
    assert "pyro_fusion.io" in graph["pyro_fusion.fusion"]  # FusionResult.save/load import the codec
    assert "pyro_fusion.io" in graph["pyro_fusion.posterior"]


def test_import_graph_is_acyclic():
    """No module imports (directly or through others) a module that imports it back. Deprecated
    aliases (``pyro_fusion.deprecation.moved``) resolve their new home by name when used and
    are not imports of the module that lists them."""
    graph = {name: imported_modules(name) for name in module_names()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the codec sits below the objects it encodes
    assert not {"pyro_fusion.posterior", "pyro_fusion.fusion"} & graph["pyro_fusion.io"]


IMPORT_ALONE = """
import importlib, json, sys, warnings
results = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "pyro_fusion" or m.startswith("pyro_fusion.")]:
        del sys.modules[loaded]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importlib.import_module(name)
            error = None
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
    ours = [str(w.message) for w in caught
            if issubclass(w.category, DeprecationWarning) and "pyro_fusion" in str(w.message)]
    results[name] = {"error": error, "deprecations": ours, "matplotlib": "matplotlib" in sys.modules}
print(json.dumps(results))
"""


def test_every_module_imports_alone():
    """Each module imports in an interpreter where no other pyro_fusion module is loaded yet
    (one subprocess; the package modules are unloaded before each import), and only the
    shims of old import paths warn. (``pyro_fusion.__main__`` runs the command line.)"""
    names = [n for n in module_names() if not n.endswith("__main__")]
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALONE, *names], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    assert set(results) == set(names)
    failed = {n: r["error"] for n, r in results.items() if r["error"]}
    assert not failed, failed
    warned = {n for n, r in results.items() if r["deprecations"]}
    assert warned == DEPRECATED_MODULES
    # matplotlib is optional: only plotting functions import it, when called
    assert not [n for n, r in results.items() if r["matplotlib"]]


@pytest.mark.parametrize("name", sorted(DEPRECATED_MODULES))
def test_deprecated_module_warns_and_reexports(name):
    import importlib
    import warnings

    sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match=name.replace(".", r"\.")):
        module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for attr in module.__all__:
            assert getattr(module, attr) is not None



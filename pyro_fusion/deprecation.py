"""
Deprecated names, kept for one release: each use warns with :class:`DeprecationWarning` and
names the replacement (the full list is in ``CHANGELOG.md``).

- :func:`moved`: a module ``__getattr__`` resolving names that moved to another module.
- :func:`deprecated_module`: called by a shim module that only re-exports a new home.
- :func:`rename_kwargs`: old keyword arguments of a function mapped to their new names.
"""
from __future__ import annotations

import functools
import importlib
import sys
import types
import warnings
from typing import Any, Callable, Dict, Mapping, Optional

#: the release that removes the deprecated names
REMOVED_IN = "0.3"


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``.

    :param str old: what the caller used.
    :param str new: what to use instead.
    :param int stacklevel: as :func:`warnings.warn` (3: the caller of the function that warns).
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in pyro_fusion {REMOVED_IN}; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def moved(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """
    A module-level ``__getattr__`` for names that moved: ``names`` maps an old attribute of
    ``module`` to ``"new.module:new_name"`` (or ``"new.module:Class.method"``). The new
    module is imported when the name is first used, so the old module does not import its
    replacement.

    Example::

        >>> __getattr__ = moved("pyro_fusion.models.gmm", {"kmeans": "pyro_fusion.models.clustering:kmeans"})
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     kmeans = __getattr__("kmeans")
        >>> str(caught[0].message).endswith("use pyro_fusion.models.clustering.kmeans")
        True
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, attr = names[name].partition(":")
        warn(f"{module}.{name}", f"{target}.{attr}")
        return functools.reduce(getattr, attr.split("."), importlib.import_module(target))

    return __getattr__


class _CallableModule(types.ModuleType):
    """A shim module that stands for a function of the same name (``pyro_fusion.extract``)."""

    def __call__(self, *args, **kwargs):
        return self.__dict__["__call_target__"](*args, **kwargs)


def deprecated_module(name: str, new: str, call: Optional[Callable] = None) -> None:
    """
    Called at the top of a shim module ``name`` that re-exports ``new``: warns once, at import.

    :param str name: the shim's ``__name__``.
    :param str new: where its names live now.
    :param call: a function the shim module also stands for (importing the module
        ``pyro_fusion.extract`` replaces the package attribute ``pyro_fusion.extract``, the
        function; the module then calls it).
    """
    warn(f"module {name}", new, stacklevel=4)
    if call is not None:
        module = sys.modules[name]
        module.__call_target__ = call
        module.__class__ = _CallableModule


def rename_kwargs(where: str, renamed: Dict[str, str]) -> Callable[[Callable], Callable]:
    """
    Decorator: accept the old keyword names of ``renamed`` (old -> new) with a warning.

    Example::

        >>> @rename_kwargs("refine", {"rounds": "num_rounds"})
        ... def refine(num_rounds=10):
        ...     return num_rounds
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     refine(rounds=3)
        3
    """

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{where}: got both {old}= (deprecated) and {new}=")
                    warn(f"{where}({old}=...)", f"{new}=...")
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate

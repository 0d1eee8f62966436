"""Bad inputs, as a careless user or a hostile client would give them: one row per input in
``BAD``. Each row calls one public entry point (family constructors and ``natural()``,
``Components``, ``extract``, ``fuse``/``fuse_posteriors``, write-back, every file reader, the
CLI, the adapters, the Flower reply path) and must raise the given exception type with a
message that names the offending thing (argument, site, field, file, client or node) and is
at most :data:`pyro_fusion.io.MAX_MESSAGE_CHARS` long; afterwards every tensor the caller
holds, the whole Pyro param store and every file in the test's folder must be bit-identical
(the snapshot helpers of ``test_inputs_untouched``).
"""
from __future__ import annotations

import hashlib
import math
import pathlib
import re
from typing import Any, Callable, Dict, NamedTuple

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_fusion import Components
from pyro_fusion.expfam import (
    Bernoulli,
    Beta,
    Categorical,
    DiagNormal,
    Dirichlet,
    Gamma,
    MultivariateNormal,
    NormalWishart,
    PointMass,
    family_from_spec,
)
from test_inputs_untouched import PARAM_STORE, assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

#: the longest error message a bad input may produce
MAX_MESSAGE_CHARS = 1000


class Bad(NamedTuple):
    """``inputs``: everything the caller holds; ``call``: the bad call; ``error``: the exception
    type it must raise; ``names``: a regex the message must match (what it must name)."""

    inputs: Any
    call: Callable[[], Any]
    error: type
    names: str


BAD: Dict[str, Callable[[pathlib.Path], Bad]] = {}


def bad(name: str):
    def register(factory):
        assert name not in BAD, name
        BAD[name] = factory
        return factory

    return register


def rows(prefix: str, table: Dict[str, Callable[[pathlib.Path], Bad]]) -> None:
    """Register one row per entry of ``table`` under ``prefix``."""
    for name, factory in table.items():
        bad(f"{prefix}: {name}")(factory)


def files_digest(folder: pathlib.Path) -> Dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- families: constructors and natural() --------------------------------------------------


def natural_row(family, names: str, *args, **kwargs):
    return lambda tmp_path: Bad((args, kwargs), lambda: family.natural(*args, **kwargs), ValueError, names)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


rows("natural", {
    "normal negative scale": natural_row(DiagNormal(), r"scale must be positive.*-1", t(0.0, 1.0), t(1.0, -1.0)),
    "normal zero scale": natural_row(DiagNormal(), r"scale must be positive", t(0.0), t(0.0)),
    "normal infinite scale": natural_row(DiagNormal(), r"scale must be positive and finite", t(0.0), t(math.inf)),
    "normal nan loc": natural_row(DiagNormal(), r"loc must be finite", t(math.nan), t(1.0)),
    "normal scale underflows precision": natural_row(
        DiagNormal(), r"loc and scale overflow torch.float64", t(0.0, dtype=torch.float64), t(1e-200, dtype=torch.float64)
    ),
    "point mass nan value": natural_row(PointMass((), scale=1.0), r"value must be finite", t(math.nan)),
    "point mass value overflows at its scale": natural_row(PointMass((), scale=1e-30), r"scale 1e-30 overflow", t(1.0)),
    "gamma negative concentration": natural_row(Gamma(), r"concentration must be positive", t(1.0, -1.0), t(1.0, 1.0)),
    "gamma zero rate": natural_row(Gamma(), r"rate must be positive", t(1.0), t(0.0)),
    "beta zero concentration0": natural_row(Beta(), r"concentration0 must be positive", t(1.0), t(0.0)),
    "dirichlet negative concentration": natural_row(Dirichlet((3,)), r"concentration must be positive", t(1.0, -1.0, 2.0)),
    "bernoulli p above one": natural_row(Bernoulli(), r"probs must be strictly between 0 and 1, got 1.5", t(1.5)),
    "bernoulli p zero": natural_row(Bernoulli(), r"probs must be strictly between 0 and 1", t(0.0)),
    "categorical zero probability": natural_row(Categorical((3,)), r"probs must be positive.*index \[2\]", t(0.5, 0.5, 0.0)),
    "mvn covariance not positive definite": natural_row(
        MultivariateNormal((2,)), r"covariance_matrix must be.*positive definite", torch.zeros(2), covariance_matrix=-torch.eye(2)
    ),
    "mvn precision not symmetric": natural_row(
        MultivariateNormal((2,)), r"precision_matrix must be.*symmetric", torch.zeros(2),
        precision_matrix=torch.tensor([[1.0, 2.0], [0.0, 1.0]]),
    ),
    "mvn nan loc": natural_row(
        MultivariateNormal((2,)), r"loc must be finite", t(math.nan, 0.0), covariance_matrix=torch.eye(2)
    ),
    "normal-wishart nu too small": natural_row(
        NormalWishart((2,)), r"nu must be .*greater than D - 1 = 1, got 0.5", t(1.0)[0], t(0.5)[0], torch.zeros(2), torch.eye(2)
    ),
    "normal-wishart negative kappa": natural_row(
        NormalWishart((2,)), r"kappa must be positive", t(-1.0)[0], t(4.0)[0], torch.zeros(2), torch.eye(2)
    ),
    "normal-wishart scale matrix not positive definite": natural_row(
        NormalWishart((2,)), r"scale_matrix must be", t(1.0)[0], t(4.0)[0], torch.zeros(2), -torch.eye(2)
    ),
})


def constructor_row(build: Callable[[], Any], names: str):
    return lambda tmp_path: Bad((), build, ValueError, names)


rows("family", {
    "negative event shape": constructor_row(lambda: DiagNormal((-2,)), r"DiagNormal event_shape.*-2"),
    "float event shape": constructor_row(lambda: Gamma((2.0,)), r"Gamma event_shape"),
    "dirichlet of one category": constructor_row(lambda: Dirichlet((1,)), r"Dirichlet.*size >= 2"),
    "point mass infinite scale": constructor_row(lambda: PointMass((), scale=math.inf), r"point_scale.*inf"),
    "point mass scale whose square overflows": constructor_row(lambda: PointMass((), scale=1e200), r"point_scale.*1e\+200"),
    "point mass scale whose square underflows": constructor_row(lambda: PointMass((), scale=1e-200), r"point_scale.*1e-200"),
    "point mass bool scale": constructor_row(lambda: PointMass((), scale=True), r"point_scale.*bool"),
    "spec with negative event shape": constructor_row(
        lambda: family_from_spec({"family": "normal", "event_shape": [-2]}), r"event_shape.*-2"
    ),
    "spec with float event shape": constructor_row(
        lambda: family_from_spec({"family": "normal", "event_shape": [0.7]}), r"event_shape.*0.7"
    ),
    "spec with unknown key": constructor_row(
        lambda: family_from_spec({"family": "normal", "event_shape": [2], "scale": 1.0}), r"family 'normal'.*'scale'"
    ),
    "spec with string scale": constructor_row(
        lambda: family_from_spec({"family": "point_mass", "event_shape": [], "scale": "1"}), r"point_scale.*str"
    ),
    "spec not a mapping": constructor_row(lambda: family_from_spec(["normal"]), r"family spec must be a mapping"),
})


# ----- Components ------------------------------------------------------------------------------


def components_row(natural: torch.Tensor, names: str, family=DiagNormal((1,))):
    return lambda tmp_path: Bad(natural, lambda: Components({"x": (family, natural)}), ValueError, names)


rows("Components", {
    "float16": lambda tmp_path: Bad(
        (loc := torch.zeros(3, 2, dtype=torch.float16)),
        lambda: Components.from_distributions({"x": dist.Normal(loc, 1.0)}),
        ValueError, r"field 'x'.*float32 or float64.*float16",
    ),
    "bfloat16": components_row(torch.zeros(3, 2, dtype=torch.bfloat16), r"field 'x'.*bfloat16"),
    "int64": components_row(torch.zeros(3, 2, dtype=torch.int64), r"field 'x'.*int64"),
    "not a family": components_row(torch.zeros(3, 2), r"field 'x'.*ExponentialFamily.*str", family="normal"),
    "wrong width": components_row(torch.zeros(3, 3), r"field 'x'.*shape \[L, 2\]"),
})


# ----- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input(name, tmp_path):
    pyro.param("caller.sentinel", torch.arange(3.0))  # a parameter of the caller's own
    row = BAD[name](tmp_path)
    roots = {"inputs": row.inputs, "param_store": PARAM_STORE}
    before, files = snapshot(roots), files_digest(tmp_path)
    with pytest.raises(row.error) as info:
        row.call()
    message = str(info.value)
    assert re.search(row.names, message), message
    assert len(message) <= MAX_MESSAGE_CHARS, f"{len(message)} characters"
    assert_unchanged(before, roots)
    assert files_digest(tmp_path) == files, "files were modified"

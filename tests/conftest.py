import os
import pathlib

import pyro
import pytest
import torch

#: the development checkout's data sets that pyro_fusion does not ship; the tests pass them explicitly
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
for _env, _folder in (("PYRO_FUSION_MNIST", "mnist"), ("PYRO_FUSION_AP", "ap")):
    if (SHARED_DATA / _folder).is_dir():
        os.environ.setdefault(_env, str(SHARED_DATA / _folder))


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Every test starts from an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """One intra-op thread (restored after): the tensors in these tests are small, and on a
    shared 2-core machine thread start-up and contention dominate their cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    """pyro_fusion's own deprecation warnings are errors outside ``pytest.warns``: the package,
    its tutorials, benchmarks and tests use only the current names."""
    config.addinivalue_line("filterwarnings", "error:.*will be removed in pyro_fusion:DeprecationWarning")

import pyro
import pytest


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Every test starts from an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

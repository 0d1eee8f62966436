"""What a benchmark's timings depend on, recorded next to them in its JSON; where its data are."""
import os
from pathlib import Path

import torch

#: the development checkout's folder of the data sets pyro_fusion does not ship
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(name: str, env: str) -> str:
    """The folder of a data set the package does not ship: ``$env`` if set, else ``SHARED_DATA / name``
    (the benchmarks pass it to the loaders explicitly; the package itself has no default)."""
    return os.environ.get(env) or str(SHARED_DATA / name)


def run_environment() -> dict:
    """Threads, load average, OpenMP wait policy and torch version of this run."""
    return {
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
    }

"""What a benchmark's timings depend on, recorded next to them in its JSON."""
import os

import torch


def run_environment() -> dict:
    """Threads, load average, OpenMP wait policy and torch version of this run."""
    return {
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
    }

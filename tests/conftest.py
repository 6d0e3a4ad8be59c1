import os
import warnings

import pytest
import torch

# One intra-op thread (unless OMP_NUM_THREADS says otherwise), here and in the subprocesses that
# inherit the variable: the suite's ops are small, and on a loaded 2-core machine a second
# OpenMP thread per process mostly waits for a core (migrate_from_fvcore.py beside two busy
# processes: 18.8 s wall, 11.6 s CPU with two threads; 11.9 s, 5.3 s with one).
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def no_warnings():
    """Fail the test on any dispatchcount warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="dispatchcount")
        yield

import warnings

import pytest
import torch


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

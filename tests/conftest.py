import os
import sys

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def rng():
    """A fresh seeded numpy Generator per test (reproducible, independent of test order)."""
    return np.random.default_rng(12345)


@pytest.fixture
def torch_seed():
    import torch
    torch.manual_seed(0)
    return 0

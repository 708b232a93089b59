import os

import pytest
import torch

# Tests run tiny nets on a shared 2-core CPU: one intra-op thread is fastest for them (thread
# hand-off costs more than the convs). Tests with paper-size nets ask for more threads.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _grad_mode_is_per_test():
    """Every test starts with autograd on and cannot leave it off for the tests after it.

    Grad mode is process-global: a module that switched it off at import time once turned
    every later training test into "element 0 of tensors does not require grad".
    """
    torch.set_grad_enabled(True)
    yield
    torch.set_grad_enabled(True)


@pytest.fixture
def no_grad():
    """Inference-only tests: autograd off for the test alone."""
    with torch.no_grad():
        yield


@pytest.fixture
def all_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)

import pytest
import torch

# Tests run tiny nets on a shared 2-core CPU: one intra-op thread is fastest for them (thread
# hand-off costs more than the convs). Tests with paper-size nets ask for more threads.
torch.set_num_threads(1)


@pytest.fixture
def all_threads():
    import os

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)

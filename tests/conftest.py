import os

import torch

# Tests run on CPU with tiny nets; two threads match CI's two cores and keep timings steady.
torch.set_num_threads(min(2, os.cpu_count() or 1))

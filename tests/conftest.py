import os
import time
import zlib

import pytest
import torch

# Fresh random inputs every run; the seed is printed in the header so a failure can be replayed
# with PENACT_TEST_SEED=<seed>.
SEED = int(os.environ.get("PENACT_TEST_SEED", time.time_ns() % 2**31))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEVICE_PARAMS = [pytest.param("cpu")] + [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))
]


def pytest_report_header(config):
    return f"penact test seed: {SEED} (replay with PENACT_TEST_SEED={SEED}); devices: {DEVICES}"


@pytest.fixture
def rng(request):
    """A torch.Generator seeded from the run's seed and the test's name (crc32: Python's str hash
    changes from process to process, which would make PENACT_TEST_SEED replays differ)."""
    return torch.Generator().manual_seed((SEED * 1000003 + zlib.crc32(request.node.nodeid.encode())) % 2**63)


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param


@pytest.fixture
def one_thread():
    """Runs a test on one torch thread (the trainers' tiny models: more threads only add overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

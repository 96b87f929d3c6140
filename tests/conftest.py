"""What every test file shares: the run's seed, the device x dtype x family matrix, families fitted
to plausible activations, and a way to run code that might crash in a process of its own."""
import math
import os
import subprocess
import sys
import textwrap
import time
import zlib

import pytest
import torch

from penact import family_names, get_family

# Fresh random inputs every run; the seed is printed in the header so a failure can be replayed
# with PENACT_TEST_SEED=<seed>.
SEED = int(os.environ.get("PENACT_TEST_SEED", time.time_ns() % 2**31))

CUDA_AVAILABLE = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA_AVAILABLE else [])
DEVICE_PARAMS = [pytest.param("cpu")] + [
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device"))
]
DTYPES = [torch.float32, torch.float64]
FAMILIES = family_names()
EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


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


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def one_thread():
    """Runs a test on one torch thread (the trainers' tiny models: more threads only add overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_layer(weight, bias=None, requires_grad=False):
    """An nn.Linear holding ``weight: [C, D]`` and ``bias: [C]`` (zeros by default), on their device."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.zeros_like(weight[:, 0]) if bias is None else bias)
    return layer.requires_grad_(requires_grad)


def class_activations(generator, weight, labels, spread=1.0):
    """ReLU activations [N, D] that point along their class's weight row on average, as a trained
    classifier's penultimate activations do (every family can be fitted to them)."""
    signal = (weight[labels] / weight[labels].norm(dim=1, keepdim=True) * math.sqrt(weight.shape[1])).double().cpu()
    noise = torch.randn(labels.shape[0], weight.shape[1], generator=generator, dtype=torch.float64)
    a = torch.relu(signal + spread * noise)
    dead = a.sum(dim=1) == 0  # a row of zeros has no direction: keep its strongest coordinate
    strongest = signal[dead].argmax(dim=1)
    a[dead.nonzero().flatten(), strongest] = signal[dead].abs().max(dim=1).values
    return a.to(weight.dtype).to(weight.device)


def fitted_family(name, generator, num_classes=6, dim=12, dtype=torch.float64, device="cpu", rows=3000):
    """The family ``name`` fitted (its own ``fit``) to class activations of a random final layer."""
    weight = (torch.randn(num_classes, dim, generator=generator, dtype=torch.float64) * 3 / math.sqrt(dim))
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    layer = linear_layer(weight.to(dtype).to(device), bias.to(dtype).to(device))
    labels = torch.randint(0, num_classes, (rows,), generator=generator).to(device)
    return get_family(name).fit(layer, class_activations(generator, layer.weight.detach(), labels), labels)


def run_isolated(source, timeout=300):
    """Runs ``source`` in a fresh Python process and returns it (stdout and stderr captured), so that
    a test of code that could crash fails with the signal instead of killing the test run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                          timeout=timeout)


def assert_ran_cleanly(result):
    """The process of run_isolated exited normally; a crash names its signal."""
    if result.returncode < 0:
        pytest.fail(f"the process was killed by signal {-result.returncode}:\n{result.stderr[-3000:]}")
    assert result.returncode == 0, result.stderr[-3000:]

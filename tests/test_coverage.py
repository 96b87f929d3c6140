"""Every operator with a CPU kernel also has a CUDA kernel, or is a composite of operators (the
dispatcher then runs it on any device). Read from the dispatcher's tables, so it needs no GPU: CI
builds the CUDA kernels without one, and this test is its check that none is missing."""
import pytest
import torch

import penact  # noqa: F401  (registers the operators)
from penact import _C, ops


def penact_operators():
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("penact::"))


def has_kernel(name, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)


def is_composite(name):
    return has_kernel(name, "CompositeExplicitAutograd") or has_kernel(name, "CompositeImplicitAutograd")


def test_every_cpu_operator_has_a_cuda_kernel_or_is_a_composite():
    if not _C.cuda_kernels:
        pytest.skip("penact was built without its CUDA kernels (PENACT_CUDA=0 or no CUDA toolkit)")
    names = penact_operators()
    assert len(names) >= 20, names
    missing = [name for name in names if has_kernel(name, "CPU") and not (has_kernel(name, "CUDA") or is_composite(name))]
    assert not missing, f"operators with a CPU kernel but neither a CUDA kernel nor a composite one: {missing}"
    assert all(has_kernel(name, "CPU") or is_composite(name) for name in names)


def test_penact_ops_exports_every_operator():
    """penact.ops holds a wrapper for every public operator (the backward operators are reached
    through autograd)."""
    internal = {"vmf_log_prob_backward", "rectified_log_prob_backward", "rectified_rsample_backward",
                "rectified_mean_backward"}
    public = {name.split("::")[1] for name in penact_operators()} - internal
    assert public <= set(ops.__all__), public - set(ops.__all__)

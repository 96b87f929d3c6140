"""CPU-vs-CUDA parity for every operator, plus what only a GPU has: streams, devices, graph capture,
the skipping of device checks. The CPU back-end is the oracle here (the same core math, tested on
its own, on every device, in the other files).

Tolerances are derived, not guessed: both devices run the same formulas, so they differ only by
FMA contraction, summation order and the last bits of libm functions. For a sample row that
is a few ulps of the output dtype times the row's conditioning; a row whose accept/reject decision
in Wood's step flips through rounding (possible in principle, ~1e-15 per proposal) would differ
at O(1) and is counted, and must be rare. Skipped, with the reason shown, without a GPU.
"""
import math

import pytest
import torch

from conftest import EPS, assert_ran_cleanly, run_isolated
from penact import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the CUDA kernels are compiled but cannot run here")

CUDA = "cuda"
# Kappas from the uniform law to the float32-tail regime (0 .. 1e7, docs/model.md).
KAPPAS = [0.0, 0.3, 2.0, 10.0, 64.0, 1e3, 1e5, 1e7]
# Dimensions that reach every kernel tier (lane teams of 4/16/32 lanes with 1-8 Philox blocks per
# lane, block teams with 2/4/8 blocks per thread, the streaming path) and partial last blocks.
SAMPLE_DIMS = [2, 3, 5, 16, 63, 64, 128, 255, 512, 1000, 1024, 2048, 3000, 4099, 8192, 10001]


def random_classes(rng, num_classes, dim, dtype):
    mu = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=rng, dtype=torch.float64), dim=1)
    kappa = torch.tensor([KAPPAS[c % len(KAPPAS)] for c in range(num_classes)], dtype=torch.float64)
    return mu.to(dtype), kappa.to(dtype)


def fresh_seed(rng):
    return int(torch.randint(0, 2**62, (), generator=rng))


def row_error(gpu, cpu, mu_rows, radius):
    """Per row, relative to the radius: max(max_k |gpu_k - cpu_k|, |(gpu - cpu) . mu|); the second
    term catches a different t even where D is so large that each element moves little. Rows NaN
    on both devices count 0, NaN on one only count inf."""
    gpu, cpu = gpu.double().cpu(), cpu.double()
    diff = gpu - cpu
    both_nan = gpu.isnan() & cpu.isnan()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff).nan_to_num(nan=math.inf)
    along = (diff * mu_rows.double()).sum(dim=1).abs().nan_to_num(nan=math.inf)
    return torch.maximum(diff.abs().amax(dim=1), along) / radius


# Rounding differences are a few ulps per element (normals: FMA contraction; the scale of v: a
# D-term sum's rounding, spread over D elements) and reach this tolerance only where amplified.
SAMPLE_ULPS = 256


def allowed_differing_rows(n, dim):
    """Rows allowed beyond SAMPLE_ULPS: v = (g - (g . mu) mu) / ||.|| has condition number
    1 / sin(angle(g, mu)), which exceeds SAMPLE_ULPS / (a few ulps) ~ 128 with probability
    (2/pi) asin(1/128) for D = 2 (g's direction uniform on the circle), 1 - cos(asin(1/128)) for
    D = 3 and far less beyond; an accept/reject flip of Wood's step by rounding (~1e-15 per
    proposal) adds nothing measurable. Four times the expected count, plus one."""
    s = 1.0 / 128
    p = {2: 2 / math.pi * math.asin(s), 3: 1 - math.sqrt(1 - s * s)}.get(dim, 0.0)
    return int(4 * p * n) + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", SAMPLE_DIMS)
def test_sample_matches_cpu(dim, dtype, rng, record_property):
    n = 2000 if dim <= 2048 else 300  # not a multiple of any tile: partial tiles and teams
    mu, kappa = random_classes(rng, 8, dim, dtype)
    labels = torch.randint(0, 8, (n,), generator=rng)
    seed, offset, radius = fresh_seed(rng), 12345, 3.0
    cpu = ops.vmf_sample(mu, kappa, labels, radius, seed, offset)
    gpu = ops.vmf_sample(mu.to(CUDA), kappa.to(CUDA), labels.to(CUDA), radius, seed, offset)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype and gpu.shape == (n, dim)
    err = row_error(gpu, cpu, mu[labels], radius)
    tolerance = SAMPLE_ULPS * EPS[dtype]
    differing = int((err > tolerance).sum())
    record_property("rows_differing", differing)
    print(f"D={dim} {dtype}: {differing} of {n} rows differ beyond {tolerance:.1e} r (worst {float(err.max()):.1e} r)")
    assert differing <= allowed_differing_rows(n, dim), f"{differing} of {n} rows differ beyond {tolerance:.1e} r"


@pytest.mark.parametrize("dim", [3, 64, 100, 512, 2048])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_sample_output(dim, out_dtype, rng):
    mu, kappa = random_classes(rng, 8, dim, torch.float32)
    labels = torch.randint(0, 8, (1000,), generator=rng)
    seed, radius = fresh_seed(rng), 2.0
    full = ops.vmf_sample(mu.to(CUDA), kappa.to(CUDA), labels.to(CUDA), radius, seed, 5)
    reduced = ops.vmf_sample(mu.to(CUDA), kappa.to(CUDA), labels.to(CUDA), radius, seed, 5, dtype=out_dtype)
    assert reduced.dtype == out_dtype
    # one rounding of the float32 result (equal unless the two kernels contract FMAs differently)
    torch.testing.assert_close(reduced.float(), full.to(out_dtype).float(), rtol=EPS[out_dtype],
                               atol=EPS[out_dtype] * radius)
    cpu = ops.vmf_sample(mu, kappa, labels, radius, seed, 5, dtype=out_dtype)
    # the float32 results differ by rounding, so the rounded ones by at most one ulp of out_dtype
    torch.testing.assert_close(reduced.float().cpu(), cpu.float(), rtol=EPS[out_dtype], atol=EPS[out_dtype] * radius)


@pytest.mark.parametrize("dim", [5, 64, 512, 2048, 10001])
def test_rows_are_independent_of_the_batch(dim, rng):
    mu, kappa = random_classes(rng, 5, dim, torch.float32)
    mu, kappa = mu.to(CUDA), kappa.to(CUDA)
    labels = torch.randint(0, 5, (700,), generator=rng).to(CUDA)
    seed = fresh_seed(rng)
    full = ops.vmf_sample(mu, kappa, labels, 1.0, seed, 100)
    for begin, end in [(0, 1), (31, 33), (100, 700), (699, 700)]:
        part = ops.vmf_sample(mu, kappa, labels[begin:end], 1.0, seed, 100 + begin)
        assert torch.equal(part, full[begin:end])


def test_invalid_concentration_gives_nan_rows(rng):
    dim = 40
    mu, _ = random_classes(rng, 5, dim, torch.float32)
    kappa = torch.tensor([1.0, float("nan"), float("inf"), -1.0, 5.0])
    labels = torch.arange(5).repeat(20)
    out = ops.vmf_sample(mu.to(CUDA), kappa.to(CUDA), labels.to(CUDA), 1.0, 7, 0).cpu()
    bad = (labels >= 1) & (labels <= 3)
    assert out[bad].isnan().all() and out[~bad].isfinite().all()


BAD_LABELS_ON_CUDA = """
import torch
from penact import RectifiedDistribution, SphereDistribution, ops
mu = torch.nn.functional.normalize(torch.randn(5, 40), dim=1).cuda()
kappa = torch.rand(5).cuda() * 10
x = torch.randn(2, 40).cuda()
for labels in ([0, 5], [-1, 2]):
    bad = torch.tensor(labels, device="cuda")
    calls = {
        "vmf_sample": lambda: ops.vmf_sample(mu, kappa, bad, 1.0, 7, 0),
        "vmf_log_prob": lambda: ops.vmf_log_prob(x, mu, kappa, bad, 1.0),
        "vmf_rsample_backward": lambda: ops.vmf_rsample_backward(x, x, mu, kappa, bad, 1.0),
        "rectified_sample": lambda: ops.rectified_sample(mu, kappa, kappa, bad, 1, 0),
        "rectified_log_prob": lambda: ops.rectified_log_prob(x.relu(), mu, kappa, kappa, kappa, bad),
        "vmf_log_prob_backward": lambda: torch.ops.penact.vmf_log_prob_backward(
            x[:, 0], x, mu, bad, 1.0, True, True),
    }
    for name, call in calls.items():
        try:
            call()
        except ValueError as error:
            assert "labels must lie in [0, 5)" in str(error), (name, str(error))
        else:
            raise AssertionError(f"{name} accepted labels {labels}")
print("ok")
"""


def test_out_of_range_labels_raise_on_cuda():
    """The first GPU run (H200, 2026-11-27) saw this call kill the process with SIGSEGV instead of
    raising; it runs in a process of its own, so that a crash fails this test alone, with its signal."""
    result = run_isolated(BAD_LABELS_ON_CUDA)
    assert_ran_cleanly(result)
    assert result.stdout.strip().endswith("ok")


def test_skip_device_checks_gives_nan_rows_without_raising(rng):
    mu, kappa = random_classes(rng, 4, 33, torch.float32)
    labels = torch.tensor([0, 4, 1, -2], device=CUDA)
    with ops.skip_device_checks():
        out = ops.vmf_sample(mu.to(CUDA), kappa.to(CUDA), labels, 1.0, 3, 0)
        lp = ops.vmf_log_prob(out.nan_to_num(), mu.to(CUDA), kappa.to(CUDA), labels, 1.0)
    bad = torch.tensor([False, True, False, True], device=CUDA)
    assert out[bad].isnan().all() and out[~bad].isfinite().all()
    assert lp[bad].isnan().all() and lp[~bad].isfinite().all()
    with pytest.raises(ValueError, match="labels must lie"):  # restored on exit
        ops.vmf_sample(mu.to(CUDA), kappa.to(CUDA), labels, 1.0, 3, 0)


def test_graph_capture_guards_labels_with_nan_rows(rng):
    """Under capture the label range cannot be checked (it needs a synchronization): the kernels'
    own guard turns an out-of-range label into a NaN row instead of an out-of-bounds read."""
    dim, c = 33, 4
    mu, kappa = random_classes(rng, c, dim, torch.float32)
    mu, kappa = mu.to(CUDA), kappa.to(CUDA)
    weight = (mu * 3).contiguous()
    lognorm = torch.randn(c, device=CUDA)
    labels = torch.tensor([0, 1, c, -1, 3, 2], device=CUDA)
    x = torch.randn(6, dim, device=CUDA)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as CUDA graphs require
        ops.vmf_sample(mu, kappa, labels.clamp(0, c - 1), 1.0, 3, 0)
        ops.vmf_log_prob(x, weight, lognorm, labels.clamp(0, c - 1), 2.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sample = ops.vmf_sample(mu, kappa, labels, 1.0, 3, 0)
        log_prob = ops.vmf_log_prob(x, weight, lognorm, labels, 2.0)
    graph.replay()
    torch.cuda.synchronize()
    bad = torch.tensor([False, False, True, True, False, False], device=CUDA)
    assert sample[bad].isnan().all() and sample[~bad].isfinite().all()
    assert log_prob[bad].isnan().all() and log_prob[~bad].isfinite().all()
    for i in torch.nonzero(~bad).flatten().tolist():  # row i keeps its own stream (seed, offset + i)
        assert torch.equal(sample[i], ops.vmf_sample(mu, kappa, labels[i:i + 1], 1.0, 3, i)[0])


# ------------------------------------------------------------------------------------------------
# log_prob, backward, log_prob_all

DTYPE_PAIRS = [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float16, torch.float32),
               (torch.bfloat16, torch.float32)]
LAYOUTS = ["contiguous", "padded_rows", "misaligned", "transposed"]


def make_x(rng, n, dim, dtype, layout):
    """x: [n, dim] with the given memory layout, as (cpu, cuda) views of equal values. The kernels
    read any row stride with unit column stride in place, with 16-byte loads only where every row
    is aligned; other layouts are copied."""
    if layout == "contiguous":
        base, view = torch.randn(n, dim, generator=rng, dtype=torch.float64), (lambda t: t)
    elif layout == "padded_rows":  # aligned rows, row stride != dim
        base, view = torch.randn(n, dim + 8, generator=rng, dtype=torch.float64), (lambda t: t[:, :dim])
    elif layout == "misaligned":  # every row starts one element off alignment
        base, view = torch.randn(n, dim + 3, generator=rng, dtype=torch.float64), (lambda t: t[:, 1:dim + 1])
    else:  # transposed: unit row stride
        base, view = torch.randn(dim, n, generator=rng, dtype=torch.float64), (lambda t: t.t())
    base = base.to(dtype)
    return view(base), view(base.to(CUDA))


def log_prob_problem(rng, n, c, dim, x_dtype, w_dtype, layout):
    x, x_cuda = make_x(rng, n, dim, x_dtype, layout)
    weight = (torch.randn(c, dim, generator=rng, dtype=torch.float64) * 2).to(w_dtype)
    lognorm = torch.randn(c, generator=rng, dtype=torch.float64).to(w_dtype) * 10
    labels = torch.randint(0, c, (n,), generator=rng)
    return x, x_cuda, weight, lognorm, labels


def dot_scale(x, weight, lognorm, radius):
    """[N, C]: r sum_k |w_ck x_ik| / ||x_i|| + |log_normalizer_c|, what a dot product's rounding
    error is relative to (in float64)."""
    xd = x.double()
    return radius * (xd.abs() @ weight.double().abs().t()) / xd.norm(dim=1, keepdim=True) + lognorm.double().abs()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_dtype,w_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("dim", [3, 64, 100, 200, 513, 2048])
def test_log_prob_matches_cpu(dim, x_dtype, w_dtype, layout, rng):
    x, x_cuda, weight, lognorm, labels = log_prob_problem(rng, 300, 7, dim, x_dtype, w_dtype, layout)
    radius = 2.5
    cpu = ops.vmf_log_prob(x, weight, lognorm, labels, radius)
    assert layout == "contiguous" or not x_cuda.is_contiguous()
    gpu = ops.vmf_log_prob(x_cuda, weight.to(CUDA), lognorm.to(CUDA), labels.to(CUDA), radius)
    assert gpu.dtype == w_dtype and gpu.shape == (300,)
    # D-term dots in w's dtype summed in different orders (x in float16/bfloat16 converts exactly):
    # a few sqrt(D) ulps of the sum of absolute terms
    scale = dot_scale(x, weight, lognorm, radius).gather(1, labels[:, None]).squeeze(1)
    assert ((gpu.double().cpu() - cpu.double()).abs() <= 16 * EPS[w_dtype] * math.sqrt(dim) * scale).all()


@pytest.mark.parametrize("need_x,need_w", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("layout", ["contiguous", "misaligned"])
@pytest.mark.parametrize("x_dtype,w_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("dim", [3, 64, 513])
def test_log_prob_backward_matches_cpu(dim, x_dtype, w_dtype, layout, need_x, need_w, rng):
    n, c, radius = 400, 5, 1.7
    x, x_cuda, weight, _, labels = log_prob_problem(rng, n, c, dim, x_dtype, w_dtype, layout)
    grad = torch.randn(n, generator=rng, dtype=torch.float64).to(w_dtype)
    op = torch.ops.penact.vmf_log_prob_backward.default
    cpu_x, cpu_w = op(grad, x, weight, labels, radius, need_x, need_w)
    gpu_x, gpu_w = op(grad.to(CUDA), x_cuda, weight.to(CUDA), labels.to(CUDA), radius, need_x, need_w)
    xd = x.double()
    norm = xd.norm(dim=1, keepdim=True)
    along = (radius * grad.double().abs()[:, None] / norm)  # |r g_i / ||x_i|||
    tol = 16 * EPS[w_dtype] * math.sqrt(dim)
    if need_x:
        assert gpu_x.dtype == x_dtype and gpu_x.shape == x.shape
        # grad_x_i = along (w_y - (w_y . u_i) u_i): each term bounded by along ||w_y||, and the
        # result rounded to x's dtype
        bound = along * weight.double().norm(dim=1)[labels][:, None]
        error = (gpu_x.double().cpu() - cpu_x.double()).abs()
        assert (error <= (tol + 2 * EPS[x_dtype]) * bound).all()
    else:
        assert gpu_x.numel() == 0
    if need_w:
        # sum over the class's rows of along |x_i|: the atomics add in any order
        magnitude = torch.zeros(c, dim, dtype=torch.float64).index_add_(0, labels, along * xd.abs())
        error = (gpu_w.double().cpu() - cpu_w.double()).abs()
        assert (error <= 16 * EPS[w_dtype] * math.sqrt(n) * magnitude).all()
    else:
        assert gpu_w.numel() == 0


@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "transposed"])
@pytest.mark.parametrize("x_dtype,w_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("dim", [3, 64, 513])
def test_log_prob_all_matches_cpu(dim, x_dtype, w_dtype, layout, rng):
    x, x_cuda, weight, lognorm, _ = log_prob_problem(rng, 200, 11, dim, x_dtype, w_dtype, layout)
    radius = 0.8
    cpu = ops.vmf_log_prob_all(x, weight, lognorm, radius)
    gpu = ops.vmf_log_prob_all(x_cuda, weight.to(CUDA), lognorm.to(CUDA), radius)
    assert gpu.dtype == w_dtype and gpu.shape == (200, 11)
    # cuBLAS rounds float32 products to TF32 if the user allowed it (float32_matmul_precision)
    tf32 = w_dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    eps = 2.0**-10 if tf32 else EPS[w_dtype]
    error = (gpu.double().cpu() - cpu.double()).abs()
    assert (error <= 16 * eps * math.sqrt(dim) * dot_scale(x, weight, lognorm, radius)).all()


def test_log_prob_gradcheck_on_cuda(rng):
    weight = (torch.randn(4, 5, generator=rng, dtype=torch.float64) * 2).to(CUDA).requires_grad_()
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64).to(CUDA).requires_grad_()
    lognorm = torch.randn(4, generator=rng, dtype=torch.float64).to(CUDA).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 2], device=CUDA)
    assert torch.autograd.gradcheck(lambda a, w, l: ops.vmf_log_prob(a, w, l, labels, 1.3), (x, weight, lognorm))
    assert torch.autograd.gradcheck(lambda a, w, l: ops.vmf_log_prob_all(a, w, l, 1.3), (x, weight, lognorm))


def test_zero_row_gives_nan_like_cpu():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    weight, lognorm, labels = torch.eye(3), torch.zeros(3), torch.tensor([0, 1])
    for device in ("cpu", CUDA):
        lp = ops.vmf_log_prob(x.to(device), weight.to(device), lognorm.to(device), labels.to(device), 1.0).cpu()
        lpa = ops.vmf_log_prob_all(x.to(device), weight.to(device), lognorm.to(device), 1.0).cpu()
        assert lp[0].isnan() and lp[1].isfinite()
        assert lpa[0].isnan().all() and lpa[1].isfinite().all()


# ------------------------------------------------------------------------------------------------
# Special functions

ORDERS = [0.0, 0.5, 1.0, 2.5, 7.3, 24.0, 24.5, 25.0, 30.2, 255.0, 4095.0, 32767.0, 1e5]
ARGS = [0.0, 1e-10, 1e-6, 0.01, 0.7, 3.3, 15.9, 16.1, 40.0, 250.0, 3e3, 6e4, 1e6, 1e7, math.inf]


def special_grid(rng):
    v = torch.tensor(ORDERS, dtype=torch.float64)[:, None].expand(-1, len(ARGS)).flatten()
    x = torch.tensor(ARGS, dtype=torch.float64)[None, :].expand(len(ORDERS), -1).flatten()
    u = torch.rand(500, 2, generator=rng, dtype=torch.float64)
    v = torch.cat([v, 10 ** (5 * u[:, 0]) - 1, torch.tensor([math.nan, 1.0, -0.5, -1e20])])
    x = torch.cat([x, 10 ** (17 * u[:, 1] - 10), torch.tensor([1.0, math.nan, 2.0, 100.0])])
    return v, x


@pytest.mark.parametrize("name", ["log_bessel_iv", "bessel_iv_ratio"])
def test_bessel_functions_match_cpu(name, rng):
    """Both devices are within ~5e-15 max(1, |value|) of 50-digit references (test_special.py), so
    they agree to 1e-13 max(1, |value|); a negative order gives NaN on both (no endless loop)."""
    fn = getattr(ops, name)
    v, x = special_grid(rng)
    cpu = fn(v, x)
    gpu = fn(v.to(CUDA), x.to(CUDA)).cpu()
    assert torch.equal(cpu.isnan(), gpu.isnan())
    finite = cpu.isfinite()
    assert torch.equal(cpu[~finite & ~cpu.isnan()], gpu[~finite & ~cpu.isnan()])
    assert ((gpu[finite] - cpu[finite]).abs() <= 1e-13 * cpu[finite].abs().clamp_min(1)).all()


@pytest.mark.parametrize("dim", [2, 3, 4, 10, 51, 52, 64, 512, 4096, 65536])
def test_vmf_log_normalizer_matches_cpu(dim, rng):
    kappa = torch.cat([torch.tensor([0.0, 1e-12, 0.5, 16.0, 1e7, math.inf, math.nan], dtype=torch.float64),
                       10 ** (17 * torch.rand(200, generator=rng, dtype=torch.float64) - 10)])
    cpu = ops.vmf_log_normalizer(dim, kappa)
    gpu = ops.vmf_log_normalizer(dim, kappa.to(CUDA)).cpu()
    assert torch.equal(cpu.isnan(), gpu.isnan())
    finite = cpu.isfinite()
    assert ((gpu[finite] - cpu[finite]).abs() <= 1e-13 * cpu[finite].abs().clamp_min(1)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_special_functions_in_reduced_precision(dtype, rng):
    """Computed in float64 on both devices, rounded once: equal up to one ulp of the dtype."""
    v = (10 ** (3 * torch.rand(300, generator=rng, dtype=torch.float64))).to(dtype)
    x = (10 ** (4 * torch.rand(300, generator=rng, dtype=torch.float64) - 1)).to(dtype)
    for fn in (ops.log_bessel_iv, ops.bessel_iv_ratio):
        torch.testing.assert_close(fn(v.to(CUDA), x.to(CUDA)).cpu(), fn(v, x), rtol=EPS[dtype], atol=EPS[dtype])
    torch.testing.assert_close(ops.vmf_log_normalizer(9, x.to(CUDA)).cpu(), ops.vmf_log_normalizer(9, x),
                               rtol=EPS[dtype], atol=EPS[dtype])


def test_special_function_gradcheck_on_cuda(rng):
    x = (torch.rand(6, generator=rng, dtype=torch.float64) * 30 + 0.1).to(CUDA).requires_grad_()
    v = torch.full((6,), 3.5, dtype=torch.float64, device=CUDA)
    assert torch.autograd.gradcheck(lambda t: ops.log_bessel_iv(v, t), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.bessel_iv_ratio(v, t), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.vmf_log_normalizer(7, t), (x,))


# ------------------------------------------------------------------------------------------------
# opcheck, streams, devices

def test_opcheck_on_cuda(rng):
    weight = torch.randn(4, 5, generator=rng, dtype=torch.float64).to(CUDA).requires_grad_()
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64).to(CUDA).requires_grad_()
    lognorm = torch.randn(4, generator=rng, dtype=torch.float64).to(CUDA).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 2], device=CUDA)
    penact = torch.ops.penact
    torch.library.opcheck(penact.vmf_log_prob.default, (x, weight, lognorm, labels, 1.3))
    torch.library.opcheck(penact.vmf_log_prob_all.default, (x, weight, lognorm, 1.3))
    grad = torch.randn(7, dtype=torch.float64, device=CUDA)
    torch.library.opcheck(penact.vmf_log_prob_backward.default,
                          (grad, x.detach(), weight.detach(), labels, 1.3, True, True))
    mu = torch.nn.functional.normalize(weight.detach(), dim=1)
    kappa = weight.detach().norm(dim=1)
    torch.library.opcheck(penact.vmf_sample.default, (mu, kappa, labels, 1.0, 3, 0))
    torch.library.opcheck(penact.vmf_sample.default, (mu.float(), kappa.float(), labels, 1.0, 3, 0),
                          {"dtype": torch.bfloat16})
    order = torch.tensor([0.5, 3.0, 40.0], dtype=torch.float64, device=CUDA)
    z = torch.tensor([0.1, 5.0, 70.0], dtype=torch.float64, device=CUDA, requires_grad=True)
    torch.library.opcheck(penact.log_bessel_iv.default, (order, z))
    torch.library.opcheck(penact.bessel_iv_ratio.default, (order, z))
    torch.library.opcheck(penact.vmf_log_normalizer.default, (z, 7))


def test_side_stream_gives_the_same_results(rng):
    mu, kappa = random_classes(rng, 6, 300, torch.float32)
    mu, kappa = mu.to(CUDA), kappa.to(CUDA)
    labels = torch.randint(0, 6, (1000,), generator=rng).to(CUDA)
    x = torch.randn(1000, 300, device=CUDA)
    expected_sample = ops.vmf_sample(mu, kappa, labels, 1.0, 77, 0)
    expected_lp = ops.vmf_log_prob(x, mu, kappa, labels, 1.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        sample = ops.vmf_sample(mu, kappa, labels, 1.0, 77, 0)
        lp = ops.vmf_log_prob(x, mu, kappa, labels, 1.0)
    stream.synchronize()
    assert torch.equal(sample, expected_sample)
    assert torch.equal(lp, expected_lp)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_second_device(rng):
    """Tensors on cuda:1 while cuda:0 is current: the device guard launches on cuda:1."""
    mu, kappa = random_classes(rng, 6, 200, torch.float32)
    labels = torch.randint(0, 6, (500,), generator=rng)
    x = torch.randn(500, 200, generator=rng)
    results = {}
    for device in ("cuda:0", "cuda:1"):
        with torch.cuda.device(0):
            results[device] = (
                ops.vmf_sample(mu.to(device), kappa.to(device), labels.to(device), 1.0, 5, 0),
                ops.vmf_log_prob(x.to(device), mu.to(device), kappa.to(device), labels.to(device), 1.0),
                ops.vmf_log_prob_all(x.to(device), mu.to(device), kappa.to(device), 1.0),
                ops.log_bessel_iv(kappa.double().to(device), kappa.double().to(device) + 1),
            )
    for a, b in zip(results["cuda:0"], results["cuda:1"]):
        assert b.device == torch.device("cuda:1")
        # same code; equal up to rounding if the two GPUs are of different architectures
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# The rectified family

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 5, 130, 300])
def test_rectified_operators_match_cpu(dim, dtype, rng):
    from test_rectified import random_activations, random_params

    n, c = 400, 5
    weight, _, scale, zero_mass = random_params(rng, c, dim, dtype, spread=2.0)
    labels = torch.randint(0, c, (n,), generator=rng)
    a = random_activations(rng, n, dim, dtype)
    params = (weight, scale, zero_mass)
    on_cuda = tuple(t.to(CUDA) for t in params)
    eps = EPS[dtype]
    # Samples: the same decision per coordinate (one product, no rounding freedom), the values up to
    # FMA contraction of the quantile's polynomials and libm's last bits in the own-stream draws.
    cpu = ops.rectified_sample(*params, labels, 11, 7)
    gpu = ops.rectified_sample(*on_cuda, labels.to(CUDA), 11, 7).cpu()
    assert torch.equal(cpu == 0, gpu == 0)
    torch.testing.assert_close(gpu, cpu, rtol=64 * eps, atol=64 * eps)
    # Tables: float64 inside, rounded once; the partition sums D terms in another order.
    stats = ops.rectified_coordinate_stats(*params)
    torch.testing.assert_close(ops.rectified_coordinate_stats(*on_cuda).cpu(), stats, rtol=4 * eps, atol=4 * eps)
    log_z = ops.rectified_log_partition(*params)
    torch.testing.assert_close(ops.rectified_log_partition(*on_cuda).cpu(), log_z, rtol=4 * eps,
                               atol=4 * eps * float(stats[0].abs().sum(dim=1).max()))
    # Densities: D-term sums in the weight's dtype in different orders: a few sqrt(D) ulps of the
    # sum of the absolute terms.
    terms = (weight[labels] * a).abs().sum(dim=1) + (a * a / (2 * scale * scale)).sum(dim=1) + zero_mass.log().abs().clamp_max(1e3).sum() + log_z.abs()[labels]
    tolerance = 16 * eps * math.sqrt(dim) * terms
    lp = ops.rectified_log_prob(a, *params, log_z, labels)
    lp_gpu = ops.rectified_log_prob(a.to(CUDA), *on_cuda, log_z.to(CUDA), labels.to(CUDA)).cpu()
    assert (lp.isinf() == lp_gpu.isinf()).all()
    finite = lp.isfinite()
    assert ((lp_gpu[finite] - lp[finite]).abs() <= tolerance[finite]).all()
    every = ops.rectified_log_prob_all(a, *params, log_z)
    every_gpu = ops.rectified_log_prob_all(a.to(CUDA), *on_cuda, log_z.to(CUDA)).cpu()
    tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    finite = every.isfinite()
    assert torch.equal(finite, every_gpu.isfinite())
    scale_all = (a.abs() @ weight.abs().t()) + terms[:, None]
    assert ((every_gpu - every).abs()[finite] <= (2.0**-10 if tf32 else 16 * eps) * math.sqrt(dim) * scale_all[finite]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [3, 130])
def test_rectified_backward_matches_cpu(dim, dtype, rng):
    from test_rectified import random_activations, random_params

    n, c = 600, 4
    weight, _, scale, zero_mass = random_params(rng, c, dim, dtype)
    zero_mass = zero_mass + 0.1  # the zero-mass gradient divides by m
    labels = torch.randint(0, c, (n,), generator=rng)
    a = random_activations(rng, n, dim, dtype)
    grad = torch.randn(n, generator=rng, dtype=torch.float64).to(dtype)
    backward = torch.ops.penact.rectified_log_prob_backward.default
    cpu = backward(grad, a, weight, scale, zero_mass, labels, True, True, True, True)
    gpu = backward(*(t.to(CUDA) for t in (grad, a, weight, scale, zero_mass, labels)), True, True, True, True)
    eps = EPS[dtype]
    g = grad.double().abs()[:, None]
    # grad_a per entry; the sums over rows (atomics on CUDA) up to sqrt(N) ulps of their absolute terms
    magnitudes = [g * (weight.double()[labels].abs() + a.double() / scale.double() ** 2),
                  torch.zeros(c, dim, dtype=torch.float64).index_add_(0, labels, g * a.double().abs()),
                  (g * a.double() ** 2).sum(dim=0) / scale.double() ** 3,
                  (g * (a == 0)).sum(dim=0) / zero_mass.double()]
    for name, mine, theirs, magnitude, terms in zip(("a", "weight", "scale", "zero_mass"), cpu, gpu, magnitudes,
                                                    (1, n, n, n)):
        error = (theirs.double().cpu() - mine.double()).abs()
        assert (error <= 16 * eps * math.sqrt(terms) * magnitude + 1e-300).all(), name


# ------------------------------------------------------------------------------------------------
# The fused backward of vmf_rsample

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [2, 3, 64, 513])
def test_rsample_backward_matches_cpu(dim, dtype, rng):
    mu, kappa = random_classes(rng, 6, dim, dtype)
    labels = torch.randint(0, 6, (500,), generator=rng)
    sample = ops.vmf_sample(mu, kappa, labels, 1.3, 3, 0)
    grad = torch.randn(500, dim, generator=rng, dtype=torch.float64).to(dtype)
    cpu = ops.vmf_rsample_backward(grad, sample, mu, kappa, labels, 1.3)
    gpu = ops.vmf_rsample_backward(*(t.to(CUDA) for t in (grad, sample, mu, kappa, labels)), 1.3)
    eps = EPS[dtype]
    # grad_mu: per row r t g - (g . mu) o, summed over a class's rows (atomics on CUDA)
    magnitude = torch.zeros(6, dim, dtype=torch.float64).index_add_(
        0, labels, 1.3 * grad.double().abs() + (grad.double() * mu.double()[labels]).sum(1, keepdim=True).abs()
        * sample.double().abs() * 2)
    assert ((gpu[0].double().cpu() - cpu[0].double()).abs() <= 16 * eps * math.sqrt(500 * dim) * magnitude).all()
    # grad_kappa: per row dt/dkappa (float64 quadrature, the same core) times dot products formed in
    # dtype, each within sqrt(D) ulps of the norms that bound it, summed over a class's rows
    x, m = sample.double(), mu.double()[labels]
    t = (x * m).sum(dim=1) / 1.3
    o = x - 1.3 * t[:, None] * m
    sine2 = o.square().sum(dim=1) / 1.3**2
    dt = ops.vmf_cosine_kappa_grad(dim, kappa.double()[labels], t, sine2.sqrt())
    g = grad.double().norm(dim=1)
    rows = dt.abs() * (1.3 * g + t.abs() * g * o.norm(dim=1) / sine2)
    bound = torch.zeros(6, dtype=torch.float64).index_add_(0, labels, rows)
    assert ((gpu[1].double().cpu() - cpu[1].double()).abs() <= 64 * eps * math.sqrt(dim) * bound).all()

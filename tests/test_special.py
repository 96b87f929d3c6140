"""log I_v, A(v, x) and log C_D against 50-digit references (docs/model.md, section 6), and their derivatives."""
import math

import mpmath
import numpy as np
import pytest
import torch

import mp_reference as ref
from penact import ops

ORDERS = [0.0, 0.5, 1.0, 2.5, 7.3, 24.0, 24.5, 25.0, 30.2, 255.0, 4095.0, 32767.0, 1e5]
ARGS = [1e-10, 1e-6, 0.01, 0.7, 3.3, 15.9, 16.1, 40.0, 250.0, 3e3, 6e4, 1e6, 1e7]


def grid(rng, extra=12):
    """The fixed log-spaced grid plus fresh random points over the whole range."""
    points = [(v, x) for v in ORDERS for x in ARGS]
    u = torch.rand(extra, 2, generator=rng, dtype=torch.float64)
    points += [(float(10 ** (5 * a) - 1), float(10 ** (17 * b - 10))) for a, b in u]
    return points


def rel_err(value, truth):
    """Relative error, measured against max(1, |truth|): log values cross zero, where a relative
    error has no meaning; away from zero this is the plain relative error."""
    return abs(value - float(truth)) / max(1.0, abs(float(truth)))


@pytest.fixture(scope="module")
def references(request):
    cache = {}

    def get(kind, v, x):
        key = (kind, v, x)
        if key not in cache:
            if kind == "log_iv":
                cache[key] = ref.log_besseli(v, x)
            elif kind == "ratio":
                cache[key] = ref.bessel_ratio(v, x)
            else:
                cache[key] = ref.vmf_log_normalizer(2 * v + 2, x)
        return cache[key]

    return get


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_log_bessel_iv_and_ratio_match_mpmath(rng, references, dtype, tol):
    points = grid(rng)
    v = torch.tensor([p[0] for p in points], dtype=dtype)
    x = torch.tensor([p[1] for p in points], dtype=dtype)
    log_iv, ratio = ops.log_bessel_iv(v, x), ops.bessel_iv_ratio(v, x)
    assert torch.isfinite(log_iv).all() and torch.isfinite(ratio).all()
    worst = 0.0
    for i in range(len(points)):
        vi, xi = float(v[i]), float(x[i])  # the values as rounded to dtype
        worst = max(worst, rel_err(float(log_iv[i]), references("log_iv", vi, xi)))
        truth = references("ratio", vi, xi)
        worst = max(worst, abs(float(ratio[i]) - float(truth)) / float(truth))
    assert worst <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_vmf_log_normalizer_matches_mpmath(rng, references, dtype, tol):
    dims = [2, 3, 4, 5, 16, 50, 51, 64, 512, 4096, 65536]
    kappas = [0.0, 1e-10, 1e-3, 0.5, 3.0, 30.0, 700.0, 2e4, 1e6, 1e7]
    fresh = torch.rand(8, generator=rng, dtype=torch.float64)
    kappas += [float(10 ** (17 * u - 10)) for u in fresh]
    for dim in dims:
        k = torch.tensor(kappas, dtype=dtype)
        got = ops.vmf_log_normalizer(dim, k)
        assert torch.isfinite(got).all(), dim
        errs = [rel_err(float(g), references("lognorm", dim / 2 - 1, float(ki))) for g, ki in zip(got, k)]
        assert max(errs) <= tol, (dim, kappas[int(np.argmax(errs))], max(errs))


def test_log_normalizer_closed_forms():
    k = torch.tensor([0.0, 1e-8, 0.3, 5.0, 1e4], dtype=torch.float64)
    d3 = torch.log(k[1:]) - math.log(2 * math.pi) - k[1:] - torch.log(-torch.expm1(-2 * k[1:]))
    torch.testing.assert_close(ops.vmf_log_normalizer(3, k)[1:], d3, rtol=1e-14, atol=0)
    for dim in (2, 3, 10, 65536):
        at_zero = math.lgamma(dim / 2) - math.log(2) - dim / 2 * math.log(math.pi)
        assert float(ops.vmf_log_normalizer(dim, k[:1])) == pytest.approx(at_zero, rel=1e-15, abs=1e-13)


def test_amos_bounds(rng):
    """Amos (1974): x / (v + 1/2 + sqrt(x^2 + (v + 3/2)^2)) <= A(v, x) <= x / (v + 1/2 + sqrt(x^2 + (v + 1/2)^2)),
    an upper bound tighter than the Amos bound x / (v + sqrt(x^2 + (v + 2)^2)), on fresh random points."""
    v = 10 ** (5 * torch.rand(4000, generator=rng, dtype=torch.float64)) - 1
    x = 10 ** (17 * torch.rand(4000, generator=rng, dtype=torch.float64) - 10)
    a = ops.bessel_iv_ratio(v, x)
    lower = x / (v + 0.5 + torch.sqrt(x * x + (v + 1.5) ** 2))
    upper = x / (v + 0.5 + torch.sqrt(x * x + (v + 0.5) ** 2))
    assert (a >= lower * (1 - 1e-13)).all() and (a <= upper * (1 + 1e-13)).all()


def test_edges():
    v = torch.tensor([0.0, 2.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    x = torch.tensor([0.0, 0.0, float("inf"), float("inf"), float("nan")], dtype=torch.float64)
    log_iv, ratio = ops.log_bessel_iv(v, x), ops.bessel_iv_ratio(v, x)
    assert log_iv[0] == 0 and log_iv[1] == -math.inf and log_iv[2] == math.inf and log_iv[3] == math.inf
    assert ratio[0] == 0 and ratio[1] == 0 and ratio[2] == 1 and ratio[3] == 1
    assert torch.isnan(log_iv[4]) and torch.isnan(ratio[4])
    empty = torch.empty(0, dtype=torch.float32)
    assert ops.log_bessel_iv(empty, empty).shape == (0,)
    assert ops.vmf_log_normalizer(5, empty).shape == (0,)


def test_broadcasting_noncontiguous_and_dtypes():
    x = torch.rand(6, 5, dtype=torch.float64).t() * 100  # non-contiguous
    v = torch.tensor([0.0, 1.5, 40.0, 2.0, 7.0, 0.5], dtype=torch.float64)
    expected = torch.stack([ops.log_bessel_iv(v, x[i].contiguous()) for i in range(5)])
    torch.testing.assert_close(ops.log_bessel_iv(v, x), expected, rtol=0, atol=0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        got = ops.log_bessel_iv(v.to(dtype), x.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), ops.log_bessel_iv(v.to(dtype).double(), x.to(dtype).double()).to(dtype).double())


def test_derivatives_match_mpmath(rng):
    """d/dx log I_v(x), dA/dx and d/dk log C_D(k) against mpmath's numerical derivatives."""
    cases = [(0.0, 0.5), (0.5, 3.0), (3.0, 40.0), (30.0, 5.0), (255.0, 300.0), (1000.0, 2e4)]
    cases.append((float(torch.rand(1, generator=rng) * 50), float(torch.rand(1, generator=rng) * 100 + 0.1)))
    v = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    x = torch.tensor([c[1] for c in cases], dtype=torch.float64, requires_grad=True)
    (grad_log,) = torch.autograd.grad(ops.log_bessel_iv(v, x).sum(), x)
    (grad_ratio,) = torch.autograd.grad(ops.bessel_iv_ratio(v, x).sum(), x)
    for i, (vi, xi) in enumerate(cases):
        d_log = mpmath.diff(lambda t: ref.log_besseli(vi, t), xi)
        d_ratio = mpmath.diff(lambda t: ref.bessel_ratio(vi, t), xi)
        assert float(grad_log[i]) == pytest.approx(float(d_log), rel=1e-10)
        assert float(grad_ratio[i]) == pytest.approx(float(d_ratio), rel=1e-8, abs=1e-14)
    k = torch.tensor([0.0, 0.3, 20.0, 900.0], dtype=torch.float64, requires_grad=True)
    (grad_norm,) = torch.autograd.grad(ops.vmf_log_normalizer(64, k).sum(), k)
    for i, ki in enumerate(k.detach().tolist()):
        truth = mpmath.diff(lambda t: ref.vmf_log_normalizer(64, t), ki) if ki > 0 else 0.0
        assert float(grad_norm[i]) == pytest.approx(float(truth), rel=1e-10, abs=1e-15)


def test_gradcheck_and_opcheck():
    v = torch.tensor([0.0, 0.5, 3.0, 40.0], dtype=torch.float64)
    x = torch.tensor([0.3, 2.0, 17.0, 60.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.log_bessel_iv(v, t), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.bessel_iv_ratio(v, t), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.vmf_log_normalizer(7, t), (x,))
    torch.library.opcheck(torch.ops.penact.log_bessel_iv.default, (v, x))
    torch.library.opcheck(torch.ops.penact.bessel_iv_ratio.default, (v, x))
    torch.library.opcheck(torch.ops.penact.vmf_log_normalizer.default, (x, 7))


def test_order_gradient_is_refused():
    v = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([2.0], dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="order"):
        ops.log_bessel_iv(v, x).sum().backward()

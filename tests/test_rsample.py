"""Differentiable sampling (docs/model.md, "Gradients of samples"): dt/dkappa against 50-digit
quadrature and closed forms, the D = 3 sampler's exact pathwise derivative (gradcheck), the
mu-gradient against autograd of the projection, Monte Carlo gradients against closed forms and
finite differences of expectations, weight gradients of PenultimateDistribution.rsample, opcheck
and torch.compile."""
import math

import mpmath
import pytest
import torch

import mp_reference as ref
from penact import PenultimateDistribution, ops


def assert_same_draws(a, b):
    """The same draws: equal up to a few rounding units. (The CPU sampler's vectorized reductions
    can round differently from one call to the next, by one unit in the last place, when the heap
    hands its per-task buffer out at another alignment; reported to the kernel's owner.)"""
    torch.testing.assert_close(a, b, rtol=0, atol=4 * torch.finfo(a.dtype).eps)


DIMS = [2, 3, 4, 5, 16, 512, 4096, 65536]
KAPPAS = [0.0, 1e-6, 1.0, 30.0, 1e6, 1e7]


def unit(rng, rows, dim, dtype=torch.float64):
    g = torch.randn(rows, dim, generator=rng, dtype=torch.float64)
    return (g / g.norm(dim=1, keepdim=True)).to(dtype)


def cosine_positions(dim, kappa):
    """1 - t at the mode of t's law, 2 mode-widths either side, and 12 and 30 widths into the left tail."""
    alpha = (dim - 3) / 2
    if alpha > 0:
        q = math.hypot(alpha, kappa)
        w_mode = (alpha + alpha * alpha / (q + kappa)) / (alpha + q)
        width = 1 / math.sqrt(alpha / w_mode**2 + alpha / (2 - w_mode) ** 2)
    else:
        w_mode, width = (0.0, min(1 / kappa, 1.0)) if kappa > 0 else (1.0, 0.5)
    points = [w_mode + m * width for m in (-2, 0, 2, 12, 30)] + [w_mode * 1e-3]
    return sorted({w for w in points if 0 < w < 2})


def draw_cosines(t_minus):
    """(t, sine) as a draw would give them, from 1 - t."""
    w = torch.tensor(t_minus, dtype=torch.float64)
    return 1 - w, torch.sqrt(w * (2 - w))


def exact_one_minus_t(t, sine):
    """The 1 - t that the operator reads from (t, sine), as an exact mpf."""
    t, sine = mpmath.mpf(t), mpmath.mpf(sine)
    return sine**2 / (1 + t) if t >= 0 else 1 - t


@pytest.mark.parametrize("dim", DIMS)
def test_cosine_kappa_grad_matches_mpmath(dim, rng):
    """Relative error <= 1e-11 (measured: 8e-14) from kappa = 0 to 1e7, in the bulk and far in the tails."""
    kappas = KAPPAS + [float(10 ** (14 * torch.rand((), generator=rng, dtype=torch.float64) - 7))]
    worst = 0.0
    for kappa in kappas:
        t, sine = draw_cosines(cosine_positions(dim, kappa))
        got = ops.vmf_cosine_kappa_grad(dim, torch.tensor(kappa, dtype=torch.float64), t, sine)
        for i in range(len(t)):
            truth = ref.cosine_kappa_grad(dim, kappa, exact_one_minus_t(float(t[i]), float(sine[i])))
            worst = max(worst, abs(float(got[i]) - float(truth)) / float(truth))
    assert worst <= 1e-11


def test_cosine_kappa_grad_closed_forms():
    """kappa = 0: (1 - t^2) / (D - 1). D = 3: from the inverse CDF, with w = 1 - t,
    dt/dkappa = w / kappa - 2 e^(-2 kappa) expm1(kappa w) / (kappa (1 - e^(-2 kappa)))."""
    t = torch.tensor([-0.999999, -0.7, -0.1, 0.0, 0.2, 0.9, 0.999999], dtype=torch.float64)
    sine = torch.sqrt((1 - t) * (1 + t))
    for dim in (2, 3, 7, 512, 65536):
        got = ops.vmf_cosine_kappa_grad(dim, torch.tensor(0.0, dtype=torch.float64), t, sine)
        torch.testing.assert_close(got, (1 - t) * (1 + t) / (dim - 1), rtol=1e-13, atol=0)
    for kappa in (0.5, 2.0, 30.0, 700.0):
        got = ops.vmf_cosine_kappa_grad(3, torch.tensor(kappa, dtype=torch.float64), t, sine)
        for i in range(len(t)):
            w, k = exact_one_minus_t(float(t[i]), float(sine[i])), mpmath.mpf(kappa)
            expected = w / k - 2 * mpmath.exp(-2 * k) * mpmath.expm1(k * w) / (k * -mpmath.expm1(-2 * k))
            assert float(got[i]) == pytest.approx(float(expected), rel=1e-12)


def test_cosine_kappa_grad_edges_and_dtypes():
    k = torch.tensor([2.0, 2.0, 2.0, -1.0, math.inf, math.nan, 1e7], dtype=torch.float64)
    t = torch.tensor([1.0, -1.0, 0.5, 0.5, 0.5, 0.5, 1.0 - 1e-7], dtype=torch.float64)
    sine = torch.sqrt((1 - t) * (1 + t))
    got = ops.vmf_cosine_kappa_grad(5, k, t, sine)
    assert got[0] == 0 and got[1] == 0 and got[2] > 0 and torch.isfinite(got[6]) and got[6] > 0
    assert torch.isnan(got[3:6]).all()
    got32 = ops.vmf_cosine_kappa_grad(5, k.float(), t.float(), sine.float())
    assert got32.dtype == torch.float32
    assert ops.vmf_cosine_kappa_grad(5, torch.tensor(1.0), torch.empty(0), torch.empty(0)).shape == (0,)
    with pytest.raises(ValueError, match="dim must be at least 2"):
        ops.vmf_cosine_kappa_grad(1, k, t, sine)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        ops.vmf_cosine_kappa_grad(5, k[:3].clone().requires_grad_(), t[:3], sine[:3]).sum().backward()


def test_d3_kappa_gradient_is_the_pathwise_derivative_of_the_sampler(rng):
    """At D = 3 the fused sampler is the exact inverse CDF, so a fixed-seed draw is a smooth function
    of kappa whose derivative the implicit gradient must equal: gradcheck on the operator itself."""
    mu = unit(rng, 4, 3)
    kappa = torch.tensor([1e-3, 0.7, 5.0, 80.0], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    assert torch.autograd.gradcheck(lambda k: ops.vmf_rsample(mu, k, labels, 1.7, seed, 5), (kappa,), eps=1e-7,
                                    atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [2, 5, 64, 512])
def test_fused_backward_matches_its_torch_twin(dim, dtype, rng):
    """The CPU's fused vmf_rsample_backward against _rsample_backward_composite (torch operators, the
    CUDA path): a few classes and one class per row, a dense, a repeated (stride 0) and a transposed
    incoming gradient, each gradient alone; equal up to rounding (both sum the same terms in another
    order), and bit-identical for one thread and two (rows are summed in order within a class)."""
    from penact.ops.vmf import _rsample_backward_composite, vmf_rsample_backward

    n, radius = 300, 1.7
    for classes in (4, n, 2 * n):  # 2 n: classes that no row reaches get zero gradients
        mu = unit(rng, classes, dim, dtype)
        kappa = torch.exp(3 * torch.randn(classes, generator=rng, dtype=torch.float64)).to(dtype)
        labels = torch.randperm(n, generator=rng) if classes == n else torch.randint(0, classes, (n,), generator=rng)
        x = ops.vmf_sample(mu, kappa, labels, radius, 5, 0)
        grads = (torch.randn(n, dim, generator=rng, dtype=dtype),
                 torch.randn(dim, generator=rng, dtype=dtype).expand(n, dim),
                 torch.randn(dim, n, generator=rng, dtype=dtype).t())
        for grad in grads:
            for need in ((True, True), (True, False), (False, True)):
                got = vmf_rsample_backward(grad, x, mu, kappa, labels, radius, *need)
                expected = _rsample_backward_composite(grad, x, mu, kappa, labels, radius, *need)
                exact = _rsample_backward_composite(grad.double(), x.double(), mu.double(), kappa.double(), labels,
                                                    radius, *need)
                for g, e, reference, wanted in zip(got, expected, exact, need):
                    assert (g is None) == (not wanted)
                    if not wanted:
                        continue
                    scale = float(reference.abs().max())
                    if dtype == torch.float64:
                        # rounding of the sums, plus dt/dkappa's quadrature error (~1e-13): inputs that
                        # differ in the last bit may take another split of the panels
                        torch.testing.assert_close(g, e, rtol=0, atol=(64 * torch.finfo(dtype).eps + 1e-12) * scale)
                    else:
                        # within twice the twin's own float32 error against the float64 computation,
                        # or a few float32 roundings of the largest entry (either may round luckily)
                        twin_error = float((e.double() - reference).abs().max())
                        error = float((g.double() - reference).abs().max())
                        assert error <= 2 * twin_error + 4 * torch.finfo(dtype).eps * scale
        threads = torch.get_num_threads()
        try:
            per_thread_count = []
            for count in (1, 2):
                torch.set_num_threads(count)
                per_thread_count.append(vmf_rsample_backward(grads[0], x, mu, kappa, labels, radius))
        finally:
            torch.set_num_threads(threads)
        for a, b in zip(*per_thread_count):
            assert torch.equal(a, b)


def test_create_graph_takes_the_differentiable_path(rng):
    """With create_graph=True the backward runs on torch operators: the same first derivatives as
    the fused kernel, second derivatives in mu, and the refusal of those through kappa."""
    mu = unit(rng, 3, 6).requires_grad_()
    kappa = torch.tensor([0.5, 3.0, 50.0], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2, 0])
    weight = torch.randn(5, 6, generator=rng, dtype=torch.float64)
    x = ops.vmf_rsample(mu, kappa, labels, 1.3, 4, 2)
    fused = torch.autograd.grad((x * weight).sum(), (mu, kappa), retain_graph=True)
    graph = torch.autograd.grad((x * weight).sum(), (mu, kappa), create_graph=True)
    for a, b in zip(fused, graph):
        torch.testing.assert_close(a, b, rtol=0, atol=64 * torch.finfo(a.dtype).eps * float(b.detach().abs().max()))
    (second,) = torch.autograd.grad(graph[0].square().sum(), mu, retain_graph=True)
    assert torch.isfinite(second).all() and second.abs().max() > 0
    with pytest.raises(NotImplementedError, match="second derivatives"):
        torch.autograd.grad(graph[1].sum(), kappa)


def test_fused_backward_checks_its_arguments_and_empty_input(rng):
    mu, kappa = unit(rng, 3, 4), torch.ones(3, dtype=torch.float64)
    labels = torch.tensor([0, 2])
    x = ops.vmf_sample(mu, kappa, labels, 1.0, 1, 0)
    backward = torch.ops.penact.vmf_rsample_backward.default
    with pytest.raises(ValueError, match="sample and grad must have shape"):
        backward(x[:, :3], x, mu, kappa, labels, 1.0, True, True)
    with pytest.raises(ValueError, match="must have the dtype of mean_direction"):
        backward(x.float(), x, mu, kappa, labels, 1.0, True, True)
    with pytest.raises(ValueError, match="kappa must have shape"):
        backward(x, x, mu, kappa[:2], labels, 1.0, True, True)
    with pytest.raises(ValueError, match="labels must lie in"):
        backward(x, x, mu, kappa, torch.tensor([0, 3]), 1.0, True, True)
    with pytest.raises(ValueError, match="radius must be"):
        backward(x, x, mu, kappa, labels, 0.0, True, True)
    empty = x[:0]
    grad_mu, grad_kappa = backward(empty, empty, mu, kappa, labels[:0], 1.0, True, True)
    assert torch.equal(grad_mu, torch.zeros_like(mu)) and torch.equal(grad_kappa, torch.zeros_like(kappa))


@pytest.mark.parametrize("dim", [2, 3, 16, 512])
def test_mu_gradient_is_the_derivative_of_the_projection(dim, rng):
    """grad_mu equals autograd of u(mu) = t mu + s normalize(v - (v . mu) mu) with (t, s, v) read
    from the draw, summed per class through the labels; radius included."""
    c, n, radius = 3, 40, 2.5
    mu = unit(rng, c, dim).requires_grad_()
    kappa = torch.tensor([0.0, 4.0, 300.0], dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=rng)
    x = ops.vmf_rsample(mu, kappa, labels, radius, 21, 0)
    grad = torch.randn(n, dim, generator=rng, dtype=torch.float64)
    (got,) = torch.autograd.grad(x, mu, grad)
    u = (x / radius).detach()
    m0 = mu.detach()[labels]
    t = (u * m0).sum(dim=1, keepdim=True)
    v = u - t * m0
    s = v.norm(dim=1, keepdim=True)
    v = v / s
    m = mu[labels]
    rebuilt = radius * (t * m + s * torch.nn.functional.normalize(v - (v * m).sum(dim=1, keepdim=True) * m, dim=1))
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-12)
    (expected,) = torch.autograd.grad(rebuilt, mu, grad)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def mean_resultant_derivative(dim, kappa):
    """A_D'(kappa) = 1 - A^2 - (D - 1) A / kappa (1/D at kappa = 0)."""
    if kappa == 0:
        return 1 / dim
    a = float(ops.vmf_mean_resultant(dim, torch.tensor(kappa, dtype=torch.float64)))
    return 1 - a * a - (dim - 1) * a / kappa


@pytest.mark.parametrize(
    "dim,kappa,n",
    [(5, 2.0, 200000), (2, 0.0, 100000), (2, 1.0, 100000), (2, 1e6, 50000), (3, 1e-6, 100000), (3, 30.0, 100000),
     (64, 30.0, 50000), (512, 1000.0, 20000), (4096, 0.0, 4000), (4096, 1e6, 4000)],
)
def test_kappa_gradient_of_mean_cosine(dim, kappa, n, rng):
    """d/dkappa E[t] = A_D'(kappa) by Monte Carlo: the mean of the per-draw implicit gradients is
    within 5 standard errors. docs/model.md's figure: 0.147 at D = 5, kappa = 2, where differentiating the
    accepted proposal gives a biased 0.128 (that gap is 40 standard errors here)."""
    # one class per draw, so that the gradients come per draw
    mus = unit(rng, 1, dim).expand(n, dim).clone()
    kap = torch.full((n,), kappa, dtype=torch.float64, requires_grad=True)
    x = ops.vmf_rsample(mus, kap, torch.arange(n), 1.0, int(torch.randint(0, 2**62, (), generator=rng)), 0)
    (grads,) = torch.autograd.grad((x * mus).sum(), kap)
    truth = mean_resultant_derivative(dim, kappa)
    standard_error = float(grads.std()) / math.sqrt(n)
    assert abs(float(grads.mean()) - truth) <= 5 * standard_error + 1e-12 * abs(truth)
    if (dim, kappa) == (5, 2.0):
        assert truth == pytest.approx(0.147, abs=5e-4) and abs(0.128 - truth) > 20 * standard_error


def test_gradients_of_a_quadratic_expectation(rng):
    """E[(b . u)^2] = (A/k) ||b||^2 + (1 - D A/k) (b . mu)^2 (from Cov[u], docs/model.md, section 2): its
    gradients in kappa and in the unit mu (through mu = w / ||w||) by Monte Carlo, against autograd
    of the closed form."""
    dim, kappa, n = 6, 3.0, 200000
    w = torch.randn(dim, generator=rng, dtype=torch.float64)
    b = torch.randn(dim, generator=rng, dtype=torch.float64)

    def closed_form(w, k):
        mu = w / w.norm()
        a = ops.vmf_mean_resultant(dim, k)
        return (a / k) * b.square().sum() + (1 - dim * a / k) * (b * mu).sum().square()

    w_ = w.clone().requires_grad_()
    k_ = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
    truth_w, truth_k = torch.autograd.grad(closed_form(w_, k_), (w_, k_))

    w_rows = w.expand(n, dim).clone().requires_grad_()
    k_rows = torch.full((n,), kappa, dtype=torch.float64, requires_grad=True)
    x = ops.vmf_rsample(w_rows / w_rows.norm(dim=1, keepdim=True), k_rows, torch.arange(n), 1.0,
                        int(torch.randint(0, 2**62, (), generator=rng)), 0)
    grad_w, grad_k = torch.autograd.grad((x @ b).square().sum(), (w_rows, k_rows))
    se_w = grad_w.std(dim=0) / math.sqrt(n)
    assert ((grad_w.mean(dim=0) - truth_w).abs() <= 5 * se_w + 1e-12).all()
    assert abs(float(grad_k.mean() - truth_k)) <= 5 * float(grad_k.std()) / math.sqrt(n)


def test_mu_gradient_matches_finite_differences_of_expectations(rng):
    """d/dw E[f(u)], mu = w / ||w||, for a non-polynomial f, against central differences of the
    expectation with common random numbers (the same seed: t does not depend on mu, so each draw is
    smooth in w). The per-draw difference has mean zero; its mean is within 5 standard errors."""
    dim, kappa, n, eps = 8, 5.0, 40000, 1e-5
    w = torch.randn(dim, generator=rng, dtype=torch.float64)
    b = torch.randn(dim, generator=rng, dtype=torch.float64)
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    labels = torch.arange(n)
    k_rows = torch.full((n,), kappa, dtype=torch.float64)

    def f(w_rows):
        x = ops.vmf_rsample(w_rows / w_rows.norm(dim=1, keepdim=True), k_rows, labels, 1.0, seed, 0)
        return torch.sin(3 * x @ b) + (x[:, 0] - x[:, 1]).square()

    w_rows = w.expand(n, dim).clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(w_rows).sum(), w_rows)
    for j in range(dim):
        step = torch.zeros(dim, dtype=torch.float64)
        step[j] = eps
        with torch.no_grad():
            fd = (f((w + step).expand(n, dim)) - f((w - step).expand(n, dim))) / (2 * eps)
        difference = grad[:, j] - fd
        assert abs(float(difference.mean())) <= 5 * float(difference.std()) / math.sqrt(n) + 1e-9


def test_penultimate_rsample_weight_gradient(rng):
    """PenultimateDistribution.rsample: the same values as sample, and d/dW of E[x_y . b] (Monte Carlo,
    through kappa and mu) matches autograd of E[x | y] = r A_D(kappa_y) mu_y."""
    c, dim, radius, n = 3, 7, 1.5, 60000
    weight = torch.randn(c, dim, generator=rng, dtype=torch.float64) * 2
    b = torch.randn(dim, generator=rng, dtype=torch.float64)
    labels = torch.arange(n) % c
    w = weight.clone().requires_grad_()
    dist = PenultimateDistribution(w, radius=radius)
    x = dist.rsample(labels, seed=8)
    assert_same_draws(x, dist.sample(labels, seed=8))
    (grad,) = torch.autograd.grad((x @ b).sum() / (n // c), w)
    w2 = weight.clone().requires_grad_()
    (truth,) = torch.autograd.grad((PenultimateDistribution(w2, radius=radius).mean() @ b).sum(), w2)
    # per-class standard errors from per-draw gradients of the same estimator
    w_rows = weight[labels].clone().requires_grad_()
    per_row = PenultimateDistribution(w_rows, radius=radius).rsample(torch.arange(n), seed=8)
    (rows,) = torch.autograd.grad((per_row @ b).sum(), w_rows)
    for y in range(c):
        se = rows[labels == y].std(dim=0) / math.sqrt(n // c)
        assert ((grad[y] - truth[y]).abs() <= 5 * se + 1e-12).all()


def test_float32_gradients_follow_float64(rng):
    """float32 draws share Wood's step (t) with float64 ones, not the direction: the kappa-gradient
    of x . mu (a function of t alone), recovered from float32 draws, follows float64's per draw up
    to the digits float32 keeps of 1 - t (at kappa = 1e7, 1 - t ~ 1e-6 against a float32 rounding
    of ~6e-8 of the unit vectors themselves), and stays finite."""
    dim, n = 16, 2000
    mu = unit(rng, 1, dim).expand(n, dim).contiguous()
    for kappa, per_draw, on_average in ((0.0, 1e-5, 1e-6), (20.0, 1e-5, 1e-6), (1e4, 2e-3, 1e-4), (1e7, None, 0.02)):
        grads = {}
        for dtype in (torch.float64, torch.float32):
            k = torch.full((n,), kappa, dtype=dtype, requires_grad=True)
            x = ops.vmf_rsample(mu.to(dtype), k, torch.arange(n), 1.0, 99, 0)
            (grads[dtype],) = torch.autograd.grad((x * mu.to(dtype)).sum(), k)
        g32, g64 = grads[torch.float32].double(), grads[torch.float64]
        assert torch.isfinite(g32).all()
        if per_draw is not None:
            torch.testing.assert_close(g32, g64, rtol=per_draw, atol=0)
        assert float(g32.mean()) == pytest.approx(float(g64.mean()), rel=on_average)


def test_opcheck_and_compile(rng):
    t = torch.tensor([-0.3, 0.2, 0.95], dtype=torch.float64)
    sine = torch.sqrt(1 - t * t)
    kappa = torch.tensor([0.0, 2.0, 40.0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.penact.vmf_cosine_kappa_grad.default, (t, sine, kappa, 5))
    mu = unit(rng, 3, 6).requires_grad_()
    k = torch.tensor([0.5, 3.0, 50.0], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2, 0])
    torch.library.opcheck(torch.ops.penact.vmf_rsample.default, (mu, k, labels, 1.3, 4, 2))
    x = ops.vmf_sample(mu.detach(), k.detach(), labels, 1.3, 4, 2)
    grad = torch.randn(5, 6, generator=rng, dtype=torch.float64)
    for need in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(torch.ops.penact.vmf_rsample_backward.default,
                              (grad, x, mu.detach(), k.detach(), labels, 1.3, *need))

    def loss(mu, k):
        return (ops.vmf_rsample(mu, k, labels, 1.3, 4, 2) ** 3).sum()

    eager = torch.autograd.grad(loss(mu, k), (mu, k))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(mu, k), (mu, k))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_cuda_matches_cpu(device, rng):
    """The CUDA kernel runs the same core function: dt/dkappa and rsample's gradients agree with the
    CPU's (draws agree up to FMA contraction and libm's last bits)."""
    if device == "cpu":
        pytest.skip("CPU is the reference")
    dims = [2, 3, 5, 64, 4096]
    for dim in dims:
        kappa = torch.tensor([0.0, 1e-6, 1.0, 30.0, 1e4, 1e7], dtype=torch.float64)
        t, sine = draw_cosines([0.3 * (1 - math.exp(-k)) + 1e-3 for k in range(6)])
        cpu = ops.vmf_cosine_kappa_grad(dim, kappa, t, sine)
        gpu = ops.vmf_cosine_kappa_grad(dim, kappa.to(device), t.to(device), sine.to(device))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=0)
    mu = unit(rng, 3, 16)
    kappa = torch.tensor([0.5, 20.0, 3000.0], dtype=torch.float64)
    labels = torch.randint(0, 3, (200,), generator=rng)
    grads = []
    for where in ("cpu", device):
        m, k = mu.to(where).requires_grad_(), kappa.to(where).requires_grad_()
        x = ops.vmf_rsample(m, k, labels.to(where), 1.5, 13, 0)
        grads.append([g.cpu() for g in torch.autograd.grad((x ** 2).sum() + x.sum(), (m, k))])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)

"""50-digit references for the special functions (docs/model.md, section 6), independent of penact's methods.

log I_v(x) comes from the integral representation
    I_v(x) = (x/2)^v / (sqrt(pi) Gamma(v + 1/2)) * int_{-1}^{1} (1 - t^2)^(v - 1/2) e^(x t) dt,
integrated by mpmath.quad around the peak of the integrand with its maximum factored out. That
converges where mpmath.besseli does not (order ~4096 with argument >= 1e5, order 1e5 at 1e7).
v = 0 and v = 1/2 (where the weight is singular or the integral trivial) use closed forms or besseli.
"""
import functools

import mpmath

mpmath.mp.dps = 50


def _log_integral(v, x):
    """log of int_{-1}^{1} (1 - t^2)^(v - 1/2) e^(x t) dt for v > 1/2, x > 0."""
    v, x = mpmath.mpf(v), mpmath.mpf(x)
    a = v - mpmath.mpf(1) / 2
    # log integrand f(t) = a log(1 - t^2) + x t, peak where x (1 - t^2) = 2 a t.
    t_peak = (-a + mpmath.sqrt(a * a + x * x)) / x  # stable enough at 50 digits
    f_peak = a * mpmath.log1p(-t_peak * t_peak) + x * t_peak
    # curvature at the peak sets the width of the integration windows
    curvature = 2 * a * (1 + t_peak**2) / (1 - t_peak**2) ** 2
    width = 1 / mpmath.sqrt(curvature)

    def integrand(t):
        return mpmath.exp(a * mpmath.log1p(-t * t) + x * t - f_peak)

    points = [mpmath.mpf(-1)]
    for k in (-40, -10, -3, -1, 0, 1, 3, 10, 40):
        p = t_peak + k * width
        if -1 < p < 1 and p > points[-1]:
            points.append(p)
    points.append(mpmath.mpf(1))
    return f_peak + mpmath.log(mpmath.quad(integrand, points))


@functools.lru_cache(maxsize=None)
def log_besseli(v, x):
    """log I_v(x) to ~40 digits, as an mpf."""
    v, x = mpmath.mpf(v), mpmath.mpf(x)
    if x == 0:
        return mpmath.mpf(0) if v == 0 else mpmath.ninf
    if v <= mpmath.mpf(1) / 2:
        if v == mpmath.mpf(1) / 2:  # I_{1/2}(x) = sqrt(2 / (pi x)) sinh(x)
            return mpmath.log(mpmath.sqrt(2 / (mpmath.pi * x))) + x + mpmath.log(-mpmath.expm1(-2 * x)) - mpmath.log(2)
        return mpmath.log(mpmath.besseli(v, x))
    log_prefactor = v * mpmath.log(x / 2) - mpmath.log(mpmath.sqrt(mpmath.pi)) - mpmath.loggamma(v + mpmath.mpf(1) / 2)
    return log_prefactor + _log_integral(v, x)


def bessel_ratio(v, x):
    """A(v, x) = I_{v+1}(x) / I_v(x)."""
    return mpmath.exp(log_besseli(mpmath.mpf(v) + 1, x) - log_besseli(v, x))


def vmf_log_normalizer(dim, kappa):
    dim, kappa = mpmath.mpf(dim), mpmath.mpf(kappa)
    if kappa == 0:
        return mpmath.loggamma(dim / 2) - mpmath.log(2) - dim / 2 * mpmath.log(mpmath.pi)
    v = dim / 2 - 1
    return v * mpmath.log(kappa) - dim / 2 * mpmath.log(2 * mpmath.pi) - log_besseli(v, kappa)


def cosine_kappa_grad(dim, kappa, one_minus_t):
    """dt/dkappa of a vMF draw's cosine by implicit reparameterization, to ~30 digits, computed
    independently of penact's method: in w = 1 - s, with p(w) ~ exp(-kappa w) (w (2 - w))^alpha,
    B = E[w] = 1 - A_D(kappa) by quadrature and
        dt/dkappa = int_0^{w_t} (B - w) p(w) dw / p(w_t) = int_{w_t}^2 (w - B) p(w) dw / p(w_t).
    mpmath.quad gets breakpoints around the mode and, on the scale of the local slope, around w_t;
    each integrand is scaled near 1 where it matters (quad's tolerance is absolute)."""
    with mpmath.workdps(30):
        return +_cosine_kappa_grad(dim, kappa, one_minus_t)


def _cosine_kappa_grad(dim, kappa, one_minus_t):
    mp = mpmath.mpf
    dim, kappa, wt = mp(dim), mp(kappa), mp(one_minus_t)
    alpha = (dim - 3) / 2

    def log_density(w):
        return -kappa * w + (alpha * (mpmath.log(w) + mpmath.log(2 - w)) if alpha != 0 else 0)

    if alpha > 0:
        q = mpmath.sqrt(alpha**2 + kappa**2)
        w_mode = (alpha + alpha**2 / (q + kappa)) / (alpha + q)
        mode_scale = 1 / mpmath.sqrt(alpha / w_mode**2 + alpha / (2 - w_mode) ** 2)
    else:
        w_mode, mode_scale = mp(0), (1 / kappa if kappa > 0 else mp(1))
    slope = -kappa + (alpha * (1 / wt - 1 / (2 - wt)) if alpha != 0 else 0)
    curvature = abs(alpha) * (1 / wt**2 + 1 / (2 - wt) ** 2)
    scales = [mp(1), min(mode_scale, mp(1))]
    if slope != 0:
        scales.append(1 / abs(slope))
    if curvature > 0:
        scales.append(1 / mpmath.sqrt(curvature))
    points = {mp(0), mp(2)}
    for centre, scale in ((w_mode, scales[1]), (wt, min(scales))):
        for k in (-1000, -300, -100, -60, -30, -10, -3, -1, 0, 1, 3, 10, 30, 60, 100, 300, 1000):
            if 0 < centre + k * scale < 2:
                points.add(centre + k * scale)
    points = sorted(points)
    peak = max(log_density(p) for p in points[1:-1]) if len(points) > 2 else log_density(mp(1))
    z = mpmath.quad(lambda w: mpmath.exp(log_density(w) - peak), points)
    b = mpmath.quad(lambda w: w * mpmath.exp(log_density(w) - peak), points) / z
    at_t = log_density(wt)
    if wt <= b:
        return mpmath.quad(lambda w: (b - w) * mpmath.exp(log_density(w) - at_t), [p for p in points if p < wt] + [wt])
    return mpmath.quad(lambda w: (w - b) * mpmath.exp(log_density(w) - at_t), [wt] + [p for p in points if p > wt])

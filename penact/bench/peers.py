"""The peers of each operation of each family, built on one problem so that all see the same
inputs, and the limit that bounds them.

- ``penact``: the public API for ``sample``, ``log_marginal`` and ``rsample`` (the family's
  methods, the same for every family), the operators for the rest (``log_prob``, its backward and
  ``log_prob_all`` with the normalizers computed once per problem, as issues 2, 3 and 5 state
  their targets; the normalizers' own cost is the ``log_partition`` and special-function rows);
- ``composite``: the pure-torch twins of ``penact.reference`` in the same calling form
  (``FamilyBench`` gives both); its normalizers are the twin's where one exists;
- ``scipy``, ``tfp-jax``, ``power-spherical``: the libraries a user would otherwise pick, for the
  families where they have a counterpart (``n/a`` in the tables where they have none), skipped
  visibly where they are not importable;
- ``limit``: the floor of each operation (``LIMIT_NAMES``).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable

import numpy as np
import torch

from penact import ops, reference
from .families import ELEMENT_OPS, FamilyBench, SphereBench
from .harness import Peer, Settings, clock_for, timed_call
from .problems import ElementProblem, Problem

PEERS = ("penact", "composite", "scipy", "tfp-jax", "power-spherical")
LIMIT = "limit"
LIMIT_NAMES = {
    "sample": "torch.randn(N, D)",
    "log_prob": "x.norm(dim=1)",
    "log_prob_backward": "x.clone()",
    "log_prob_all": "torch.addmm(b, x, W.T)",
    "log_marginal": "torch.addmm(b, x, W.T)",
    "rsample_backward": "torch.randn(N, D); g.clone()",
}


# ---------------------------------------------------------------------------------------------
# Optional peers: importable or the reason they are not


@functools.lru_cache(maxsize=None)
def _scipy():
    """``(scipy.stats, scipy.special)``, or the reason they are unusable."""
    try:
        import scipy.special
        import scipy.stats
        scipy.stats.vonmises_fisher  # noqa: B018  (scipy >= 1.11)
    except (ImportError, AttributeError) as error:
        return None, f"scipy.stats.vonmises_fisher not importable ({error})"
    return (scipy.stats, scipy.special), None


@functools.lru_cache(maxsize=None)
def tfp_modules():
    """``(jax, jax.numpy, tfp)`` on the JAX substrate with float64 enabled, or why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jax
            jax.config.update("jax_enable_x64", True)  # float64 accuracy; timed inputs stay float32
            import jax.numpy as jnp
            import tensorflow_probability.substrates.jax as tfp
    except Exception as error:  # tfp raises assorted errors against mismatched jax versions
        return None, (f"jax / tfp-nightly not importable ({type(error).__name__}: {error}); "
                      "`pip install jax tfp-nightly` to measure it")
    return (jax, jnp, tfp), None


@functools.lru_cache(maxsize=None)
def _power_spherical():
    """The ``power_spherical`` module, or why not."""
    try:
        import power_spherical
    except ImportError as error:
        return None, f"power_spherical not importable ({error}); `pip install power-spherical` to measure it"
    return power_spherical, None


_IMPORTS = {"scipy": _scipy, "tfp-jax": tfp_modules, "power-spherical": _power_spherical}


def unavailable(name: str, settings: Settings | None = None) -> str | None:
    """Why peer ``name`` cannot be measured in this run, or None."""
    if settings is not None and name in settings.excluded:
        return settings.excluded[name]
    return _IMPORTS[name]()[1] if name in _IMPORTS else None


def versions(settings: Settings) -> dict[str, str]:
    """The versions of the optional peers this run measures."""
    found = {}
    if "scipy" in settings.peers and unavailable("scipy", settings) is None:
        import scipy
        found["scipy"] = scipy.__version__
    if "tfp-jax" in settings.peers and unavailable("tfp-jax", settings) is None:
        jax, _, tfp = tfp_modules()[0]
        found["jax"], found["tfp"] = jax.__version__, tfp.__version__
    if "power-spherical" in settings.peers and unavailable("power-spherical", settings) is None:
        from importlib.metadata import version
        found["power-spherical"] = version("power-spherical")
    return found


# ---------------------------------------------------------------------------------------------
# The peers of one operation


def peers_for(family: FamilyBench, op: str, problem: Problem | ElementProblem, settings: Settings) -> list[Peer]:
    """The peers of ``family``'s ``op`` on ``problem``, in ``settings.peers`` order, then the limit
    (penact and the limit are never skipped for time)."""
    clock = clock_for(settings.device)
    peers = []
    for name in (name for name in PEERS if name in settings.peers):
        reason = unavailable(name, settings)
        builder = _BUILDERS[name].get(family.name) if name in _EXTERNAL else _BUILDERS[name]
        if builder is None:
            peers.append(Peer(name, skip=_NO_COUNTERPART.get((name, family.name),
                                                             f"no counterpart in the {family.name} family"),
                              counterpart=False))
        elif reason is not None:
            peers.append(Peer(name, skip=reason))
        elif name in _CPU_ONLY and settings.device.type != "cpu":
            peers.append(Peer(name, skip=_CPU_ONLY[name]))
        else:
            peers.append(builder(family, op, problem, clock))
    if op in LIMIT_NAMES:
        peers.append(_limit(op, problem, clock))
    for peer in peers:
        peer.budgeted = peer.name not in _COMPARED_WITH
    return peers


# What the other peers are compared with: measured however long a call takes.
_COMPARED_WITH = ("penact", LIMIT)


def _absent(name: str, what: str) -> Peer:
    return Peer(name, skip=what, counterpart=False)


def _grad(fn: Callable[[], torch.Tensor], leaves: dict[str, torch.Tensor], cotangent: torch.Tensor,
          allow_unused: bool = False) -> Callable[[], Any]:
    """Forward ``fn`` and its backward to ``leaves`` for the incoming gradient ``cotangent``, in one call."""
    inputs = tuple(leaves.values())
    return lambda: torch.autograd.grad(fn(), inputs, cotangent, allow_unused=allow_unused)


def _operator_peer(name: str, module, family: FamilyBench, op: str, p: Problem, clock: str) -> Peer:
    """``log_partition``, ``log_prob``, its backward and ``log_prob_all`` in ``family``'s calling
    form over ``module`` (penact.ops or penact.reference), the normalizers computed once."""
    dist, x, labels = p.dist, p.x, p.labels
    if op == "log_partition":
        return Peer(name, lambda: family.log_partition(module, dist), clock=clock)
    log_partition = p.log_partition(module)
    if op == "log_prob":
        return Peer(name, lambda: family.log_prob(module, dist, x, labels, log_partition), clock=clock)
    if op == "log_prob_all":
        return Peer(name, lambda: family.log_prob_all(module, dist, x, log_partition), clock=clock)
    if op == "log_prob_backward":
        x_leaf = x.detach().requires_grad_()
        weight = p.weight.detach().requires_grad_()
        out = family.log_prob(module, dist.with_weight(weight), x_leaf, labels, log_partition)
        grad = torch.ones_like(out)
        return Peer(name, lambda: torch.autograd.grad(out, (x_leaf, weight), grad, retain_graph=True),
                    clock=clock, note="backward only (to x and W)")
    raise ValueError(op)


def _penact(family: FamilyBench, op: str, p, clock: str) -> Peer:
    if op in ELEMENT_OPS:
        special = PENACT_SPECIAL[op]
        return Peer("penact", lambda: special(p.order, p.dim, p.x), clock=clock)
    dist, x, labels = p.dist, p.x, p.labels
    if op == "sample":
        return Peer("penact", lambda: dist.sample(labels, seed=p.seed, offset=0), clock=clock)
    if op == "log_marginal":
        return Peer("penact", lambda: dist.log_marginal(x), clock=clock, note="log_marginal: with its normalizers")
    if op == "rsample_backward":
        leaves, leaf_dist = p.leaves()
        return Peer("penact", _grad(lambda: leaf_dist.rsample(labels, seed=p.seed, offset=0), leaves, p.cotangent),
                    clock=clock, note=f"rsample: forward + backward to {', '.join(leaves)}")
    return _operator_peer("penact", ops, family, op, p, clock)


def _composite(family: FamilyBench, op: str, p, clock: str) -> Peer:
    if op in ELEMENT_OPS:
        return _absent("composite", "penact.reference has no twin of the special functions "
                                    "(torch.special has I_0, I_1 only)")
    dist, x, labels = p.dist, p.x, p.labels
    if op == "sample":
        return Peer("composite", lambda: family.twin_sample(dist, labels), clock=clock)
    if op == "log_marginal":
        def log_marginal():
            log_partition = family.log_partition(reference, dist)
            log_prior = torch.log_softmax(dist.bias + log_partition, dim=0)
            log_joint = family.log_prob_all(reference, dist, x, log_partition) + log_prior
            return torch.logsumexp(log_joint, dim=1)
        return Peer("composite", log_marginal, clock=clock)
    if op == "rsample_backward":
        leaves, leaf_dist = p.leaves()
        return Peer("composite", _grad(lambda: family.twin_sample(leaf_dist, labels), leaves, p.cotangent,
                                       allow_unused=True),
                    clock=clock, note="rsample: autograd through the twin's operations as written (the "
                                      "accept/reject and zero/non-zero choices are not differentiated)")
    return _operator_peer("composite", reference, family, op, p, clock)


def _limit(op: str, p: Problem, clock: str) -> Peer:
    name = LIMIT_NAMES[op]
    x = p.x
    if op in ("sample", "rsample_backward"):
        shape, dtype, device = (p.size, p.dim), p.dtype, p.device
        if op == "sample":
            return Peer(LIMIT, lambda: torch.randn(shape, dtype=dtype, device=device), clock=clock, note=name)
        grad = p.cotangent
        return Peer(LIMIT, lambda: (torch.randn(shape, dtype=dtype, device=device), grad.clone()), clock=clock,
                    note=name)
    if op == "log_prob":
        return Peer(LIMIT, lambda: x.norm(dim=1), clock=clock, note=name)
    if op == "log_prob_backward":
        return Peer(LIMIT, lambda: x.clone(), clock=clock, note=name)
    bias, weight_t = p.weight.new_zeros(p.num_classes), p.weight.t()
    return Peer(LIMIT, lambda: torch.addmm(bias, x, weight_t), clock=clock, note=name)


# The special functions, penact's: (order, dim, x) -> values.
PENACT_SPECIAL = {
    "log_bessel_iv": lambda order, dim, x: ops.log_bessel_iv(order, x),
    "bessel_iv_ratio": lambda order, dim, x: ops.bessel_iv_ratio(order, x),
    "vmf_log_normalizer": lambda order, dim, x: ops.vmf_log_normalizer(dim, x),
}


# ---------------------------------------------------------------------------------------------
# scipy: the sphere family (scipy.stats.vonmises_fisher, scipy.special.ive)


class _ScipyVonMisesFisher:
    """scipy's side of a sphere problem: a frozen ``vonmises_fisher`` per class (built on first
    use) and the rows of each class present in the batch (the setup of a scipy user's loop)."""

    def __init__(self, p: Problem):
        self.stats = _scipy()[0][0]
        self.mu = p.dist.mean_direction.double().cpu().numpy()
        self.kappa = p.dist.kappa.double().cpu().numpy()
        self.x, labels = p.numpy["x"], p.numpy["labels"]
        self.size, self.dim, self.num_classes = p.size, p.dim, p.num_classes
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.num_classes + 1))
        self.groups = [(c, order[bounds[c]:bounds[c + 1]]) for c in range(self.num_classes)
                       if bounds[c + 1] > bounds[c]]
        self._frozen: dict[int, Any] = {}

    def frozen(self, c: int):
        if c not in self._frozen:
            self._frozen[c] = self.stats.vonmises_fisher(self.mu[c], self.kappa[c])
        return self._frozen[c]

    def log_pdf(self, c: int, rows: np.ndarray) -> np.ndarray:
        return self.frozen(c).logpdf(self.x[rows])

    def log_prob(self) -> np.ndarray:
        out = np.empty(self.size)
        for c, rows in self.groups:
            out[rows] = self.log_pdf(c, rows)
        return out

    def log_prob_all(self) -> np.ndarray:
        every_row = np.arange(self.size)
        return np.stack([self.log_pdf(c, every_row) for c in range(self.num_classes)], axis=1)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((self.size, self.dim))
        for c, rows in self.groups:
            out[rows] = self.frozen(c).rvs(rows.size, random_state=rng)
        return out


def _loop_estimate(body: Callable[[int, np.ndarray], Any], first: tuple[int, np.ndarray], calls: int,
                   total_rows: int) -> Callable[[float], float]:
    """A cheap prediction of a loop of ``calls`` calls ``body(c, rows)`` over ``total_rows`` rows in
    all, from its ``first`` call's class and rows: the fixed cost of a call from one row, the cost
    of a row from up to 256 rows (scipy's sampler pays a D x D QR decomposition per call, so a
    class costs far more than its rows suggest)."""
    def estimate(budget: float) -> float:
        c, rows = first
        body(c, rows[:1])  # first-call effects
        fixed = timed_call(lambda: body(c, rows[:1]), "wall")
        if fixed * calls > budget or rows.size == 1:
            return fixed * calls  # already over budget (or nothing more to learn)
        some = rows[:256]
        per_row = max(timed_call(lambda: body(c, some), "wall") - fixed, 0.0) / (some.size - 1)
        return fixed * calls + per_row * total_rows
    return estimate


def _scipy_log_bessel_iv(order, dim, x):
    return np.log(_scipy()[0][1].ive(order, x)) + x


def _scipy_bessel_iv_ratio(order, dim, x):
    ive = _scipy()[0][1].ive
    return ive(order + 1, x) / ive(order, x)


def _scipy_vmf_log_normalizer(order, dim, x):
    # the formula of scipy.stats.vonmises_fisher (its _log_norm_factor), elementwise
    return order * np.log(x) - 0.5 * dim * math.log(2 * math.pi) - (np.log(_scipy()[0][1].ive(order, x)) + x)


SCIPY_SPECIAL = {"log_bessel_iv": _scipy_log_bessel_iv, "bessel_iv_ratio": _scipy_bessel_iv_ratio,
                 "vmf_log_normalizer": _scipy_vmf_log_normalizer}


def _scipy_sphere(family: FamilyBench, op: str, p, clock: str) -> Peer:
    if op in ELEMENT_OPS:
        special = SCIPY_SPECIAL[op]

        def call():
            with np.errstate(all="ignore"):  # log(0) where ive underflows: counted in the accuracy section
                return special(p.order, p.dim, p.x64)
        return Peer("scipy", call, note="CPU, float64, scipy.special.ive")
    if op in ("log_prob_backward", "rsample_backward"):
        return _absent("scipy", "scipy has no automatic differentiation")
    loop = p.cached("scipy", lambda: _ScipyVonMisesFisher(p))
    note = "CPU, float64, loop over classes"
    # log_prob and the sampler loop over the classes present; log_prob_all / log_marginal over every class, all rows
    labelled = dict(first=loop.groups[0], calls=len(loop.groups), total_rows=p.size)
    every_class = dict(first=(0, np.arange(min(p.size, 256))), calls=p.num_classes, total_rows=p.size * p.num_classes)
    if op == "sample":
        rng = np.random.default_rng(p.seed)
        return Peer("scipy", lambda: loop.sample(rng), note=note, estimate=_loop_estimate(
            lambda c, rows: loop.frozen(c).rvs(rows.size, random_state=rng), **labelled))
    if op == "log_prob":
        return Peer("scipy", loop.log_prob, note=note, estimate=_loop_estimate(loop.log_pdf, **labelled))
    if op == "log_prob_all":
        return Peer("scipy", loop.log_prob_all, note=note, estimate=_loop_estimate(loop.log_pdf, **every_class))
    if op == "log_marginal":
        logsumexp, log_prior = _scipy()[0][1].logsumexp, p.numpy["log_prior"]
        return Peer("scipy", lambda: logsumexp(loop.log_prob_all() + log_prior, axis=1), note=note,
                    estimate=_loop_estimate(loop.log_pdf, **every_class))
    raise ValueError(op)


# ---------------------------------------------------------------------------------------------
# TFP on JAX: the sphere family (VonMisesFisher) and the rectified family (Inflated TruncatedNormal)


def _block(value):
    """Waits for a JAX result (asynchronous dispatch) and returns it."""
    return tfp_modules()[0][0].block_until_ready(value)


def _as_jax(tensor: torch.Tensor):
    return tfp_modules()[0][1].asarray(tensor.detach().cpu().numpy())


@functools.lru_cache(maxsize=None)
def tfp_sphere_functions() -> dict[str, Callable]:
    """The jit-compiled TFP functions of the sphere family, built once (jax.jit caches one
    compilation per shape)."""
    jax, jnp, tfp = tfp_modules()[0]
    tfd = tfp.distributions

    def per_row(mu, kappa, labels):
        return tfd.VonMisesFisher(mean_direction=mu[labels], concentration=kappa[labels])

    def from_weight(weight):
        norm = jnp.linalg.norm(weight, axis=1)
        return weight / norm[:, None], SphereBench.radius * norm

    def labelled_sum(x, weight, labels):
        mu, kappa = from_weight(weight)
        return per_row(mu, kappa, labels).log_prob(x).sum()

    def log_normalizer(dim, kappa):
        # TFP's own VonMisesFisher normalizer, through its log_bessel_ive
        order = 0.5 * dim - 1
        return (order * jnp.log(kappa) - 0.5 * dim * math.log(2 * math.pi)
                - (tfp.math.log_bessel_ive(jnp.asarray(order, kappa.dtype), kappa) + kappa))

    return dict(
        sample=jax.jit(lambda mu, kappa, labels, key: per_row(mu, kappa, labels).sample(seed=key)),
        log_prob=jax.jit(lambda mu, kappa, labels, x: per_row(mu, kappa, labels).log_prob(x)),
        log_prob_backward=jax.jit(jax.grad(labelled_sum, argnums=(0, 1))),
        log_prob_all=jax.jit(lambda mu, kappa, x: tfd.VonMisesFisher(mu, kappa).log_prob(x[:, None, :])),
        log_marginal=jax.jit(lambda mu, kappa, log_prior, x: tfd.MixtureSameFamily(
            tfd.Categorical(logits=log_prior), tfd.VonMisesFisher(mu, kappa)).log_prob(x)),
        log_bessel_iv=jax.jit(lambda order, x: tfp.math.log_bessel_ive(jnp.asarray(order, x.dtype), x) + x),
        bessel_iv_ratio=jax.jit(lambda order, x: tfp.math.bessel_iv_ratio(jnp.asarray(order, x.dtype), x)),
        vmf_log_normalizer=jax.jit(log_normalizer, static_argnums=0),
    )


def _tfp_sphere(family: FamilyBench, op: str, p, clock: str) -> Peer:
    if op == "rsample_backward":
        return _absent("tfp-jax", "VonMisesFisher's sampler is a while_loop: JAX has no reverse-mode gradient of it")
    fn = tfp_sphere_functions()[op]
    note = "jit, CPU"
    if op in ELEMENT_OPS:
        x = p.cached("jax", lambda: _as_jax(p.x))
        argument = p.dim if op == "vmf_log_normalizer" else p.order
        return Peer("tfp-jax", lambda: _block(fn(argument, x)), note=note)
    # TFP's VonMisesFisher lives on the unit sphere, as the benchmark's sphere problems do
    arrays = p.cached("jax", lambda: dict(
        x=_as_jax(p.dist.support(p.x)), weight=_as_jax(p.weight), mu=_as_jax(p.dist.mean_direction),
        kappa=_as_jax(p.dist.kappa),
        labels=_as_jax(p.labels), log_prior=_as_jax(p.dist.log_prior)))
    mu, kappa, labels, x = arrays["mu"], arrays["kappa"], arrays["labels"], arrays["x"]
    key = tfp_modules()[0][0].random.PRNGKey(p.seed)
    if op == "sample":
        return Peer("tfp-jax", lambda: _block(fn(mu, kappa, labels, key)), note=note)
    if op == "log_prob":
        return Peer("tfp-jax", lambda: _block(fn(mu, kappa, labels, x)), note=note)
    if op == "log_prob_backward":
        weight = arrays["weight"]
        return Peer("tfp-jax", lambda: _block(fn(x, weight, labels)), note="jit(grad): forward + backward")
    if op == "log_prob_all":
        return Peer("tfp-jax", lambda: _block(fn(mu, kappa, x)), note=note)
    if op == "log_marginal":
        log_prior = arrays["log_prior"]
        return Peer("tfp-jax", lambda: _block(fn(mu, kappa, log_prior, x)), note="MixtureSameFamily, " + note)
    raise ValueError(op)


@functools.lru_cache(maxsize=None)
def tfp_rectified_functions() -> dict[str, Callable]:
    """The jit-compiled TFP functions of the rectified family: per coordinate
    ``Inflated(TruncatedNormal(s t, s, 0, inf))`` with the atom's probability ``m / z``, which TFP
    evaluates as penact does (``log P0`` at 0, ``log(1 - P0) + log f(a)`` elsewhere)."""
    jax, jnp, tfp = tfp_modules()[0]
    tfd = tfp.distributions

    def coordinates(weight, scale, zero_mass):
        """The distributions of ``weight [..., D]``'s rows (batch ``[...]``, event ``[D]``) and ``log Z``."""
        t = scale * weight
        log_slab = (jnp.log(scale) + 0.5 * math.log(2 * math.pi) + 0.5 * t * t
                    + jax.scipy.special.log_ndtr(t))
        log_zero_mass = jnp.log(zero_mass)
        slab = tfd.TruncatedNormal(loc=scale * t, scale=jnp.broadcast_to(scale, t.shape), low=0.0, high=jnp.inf)
        # Inflated stacks [l, -l] as its categorical's logits, so P0 = m / z = sigmoid(2 l)
        dist = tfd.Independent(tfd.Inflated(slab, inflated_loc_logits=0.5 * (log_zero_mass - log_slab)), 1)
        return dist, jnp.logaddexp(log_zero_mass, log_slab).sum(axis=-1)

    def labelled_sum(x, weight, scale, zero_mass, labels):
        return coordinates(weight[labels], scale, zero_mass)[0].log_prob(x).sum()

    def log_prob_all(weight, scale, zero_mass, x):
        # one class at a time: broadcasting x [N, 1, D] against [C, D] would materialize [N, C, D]
        # (XLA does not fuse Inflated's selects into the reduction; 40 GB at the headline sizes)
        return jax.lax.map(lambda row: coordinates(row, scale, zero_mass)[0].log_prob(x), weight).T

    def log_marginal(weight, scale, zero_mass, x):
        log_prior = jax.nn.log_softmax(coordinates(weight, scale, zero_mass)[1])
        return jax.nn.logsumexp(log_prob_all(weight, scale, zero_mass, x) + log_prior, axis=1)

    return dict(
        sample=jax.jit(lambda weight, scale, zero_mass, labels, key:
                       coordinates(weight[labels], scale, zero_mass)[0].sample(seed=key)),
        log_prob=jax.jit(lambda weight, scale, zero_mass, labels, x:
                         coordinates(weight[labels], scale, zero_mass)[0].log_prob(x)),
        log_prob_backward=jax.jit(jax.grad(labelled_sum, argnums=(0, 1))),
        log_prob_all=jax.jit(log_prob_all),
        log_marginal=jax.jit(log_marginal),
        log_partition=jax.jit(lambda weight, scale, zero_mass: coordinates(weight, scale, zero_mass)[1]),
    )


def _tfp_rectified(family: FamilyBench, op: str, p: Problem, clock: str) -> Peer:
    if op == "rsample_backward":
        return _absent("tfp-jax", "TFP's Inflated draws its atom by a categorical choice: not reparameterized")
    fn = tfp_rectified_functions()[op]
    arrays = p.cached("jax", lambda: dict(
        x=_as_jax(p.x), weight=_as_jax(p.weight), scale=_as_jax(p.dist.scale), zero_mass=_as_jax(p.dist.zero_mass),
        labels=_as_jax(p.labels)))
    parameters = (arrays["weight"], arrays["scale"], arrays["zero_mass"])
    labels, x = arrays["labels"], arrays["x"]
    note = "Independent(Inflated(TruncatedNormal)), jit, CPU"
    if op == "sample":
        key = tfp_modules()[0][0].random.PRNGKey(p.seed)
        return Peer("tfp-jax", lambda: _block(fn(*parameters, labels, key)), note=note)
    if op == "log_prob":
        return Peer("tfp-jax", lambda: _block(fn(*parameters, labels, x)), note=note)
    if op == "log_prob_backward":
        return Peer("tfp-jax", lambda: _block(fn(x, *parameters, labels)), note="jit(grad): forward + backward")
    if op in ("log_prob_all", "log_marginal"):
        return Peer("tfp-jax", lambda: _block(fn(*parameters, x)), note=note)
    if op == "log_partition":
        return Peer("tfp-jax", lambda: _block(fn(*parameters)), note=note)
    raise ValueError(op)


# ---------------------------------------------------------------------------------------------
# PowerSpherical: a sampling peer of the sphere family


def _power_spherical_sphere(family: FamilyBench, op: str, p, clock: str) -> Peer:
    if op not in ("sample", "rsample_backward"):
        return _absent("power-spherical", "a sampling peer: the power spherical law's densities are not the vMF's")
    power_spherical = _power_spherical()[0].PowerSpherical
    labels, radius = p.labels, p.dist.radius
    note = ("the power spherical law (De Cao & Aziz 2020) with the classes' mean directions and "
            "concentrations: not the vMF, what users pick when the vMF sampler is too slow")

    def draw(dist):
        law = power_spherical(dist.mean_direction[labels], dist.kappa[labels], validate_args=False)
        return radius * law.rsample()
    if op == "sample":
        def sample():
            with torch.no_grad():
                return draw(p.dist)
        return Peer("power-spherical", sample, clock=clock, note=note)
    leaves, leaf_dist = p.leaves()
    return Peer("power-spherical", _grad(lambda: draw(leaf_dist), leaves, p.cotangent), clock=clock, note=note)


# Peers that exist for some families only: family name -> builder; the others get n/a with a reason.
_EXTERNAL = {
    "scipy": {"sphere": _scipy_sphere},
    "tfp-jax": {"sphere": _tfp_sphere, "rectified": _tfp_rectified},
    "power-spherical": {"sphere": _power_spherical_sphere},
}
_BUILDERS = {"penact": _penact, "composite": _composite, **_EXTERNAL}
_CPU_ONLY = {"tfp-jax": "TFP-on-JAX is measured on CPU runs only"}
_NO_COUNTERPART = {
    ("scipy", "rectified"): "scipy.stats has no zero-inflated truncated normal (truncnorm has no atom at 0)",
    ("power-spherical", "rectified"): "a law on the sphere: no counterpart in the rectified family",
}

"""``penact bench``: every figure beside its peers and its limit, with accuracy next to speed.

One run answers, on the machine it runs on: how fast is penact, compared with what, and how far
from the limit. Operations (``OPS``): ``sample``, ``log_prob`` (labelled), the backward of
``log_prob``, ``log_prob_all``, ``log_marginal`` and the special functions. Peers, measured in the
same run on the same inputs:

- ``penact``: the public API (``PenultimateDistribution``, ``penact.ops``);
- ``composite``: the pure-torch twin ``penact.reference`` (Wood's step through
  ``torch.distributions.Beta``; gather-multiply-sum log-density);
- ``scipy``: ``scipy.stats.vonmises_fisher``, one frozen distribution per class and a loop over
  the classes present in a labelled batch (what a scipy user writes); float64 only, CPU only;
- ``tfp-jax``: TensorFlow Probability's ``VonMisesFisher`` on JAX, jit-compiled with per-row
  parameters; skipped visibly when ``jax`` or ``tfp-nightly`` is not importable;
- ``limit``: the floor of each operation: ``torch.randn`` of the output's shape (sample), one read
  pass ``x.norm(dim=1)`` (log_prob), ``x.clone()`` (one read and one write of ``x``, the least a
  backward that returns ``grad_x`` does), ``torch.addmm`` of the same shapes (log_prob_all,
  log_marginal). The measured copy bandwidth of the device turns the bytes an operation must move
  into a second floor (``bw bound / penact``).

Timing: one warm-up call (it absorbs jit compilation), then interleaved rounds (every peer once per
round, in rotating order, so that a change of machine load hits all peers alike) until each peer
has ``clamp(target / t, min_repeats, max_repeats)`` samples; medians are reported. CUDA peers are
timed with CUDA events, CPU peers with ``time.perf_counter``. A peer whose time, extrapolated from
the smaller sizes of the same case, would exceed ``--max-call-s`` is skipped and says so.

Peak memory (``sample``): on the CPU, the growth of the process's resident set, read from
``/proc/self/status`` (``VmHWM`` after the call minus ``VmRSS`` before it, with the high-water mark
reset through ``/proc/self/clear_refs`` and freed heap returned with ``malloc_trim``). It counts
every page the call touches, whichever allocator asked for it (torch's, numpy's, XLA's, or a
kernel's own scratch), which torch's CPU allocator has no statistics for. On CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

Accuracy: special functions against 50-digit mpmath references (``tests/mp_reference.py`` of the
source tree), log-densities against a float64 reference built from those normalizers, samples by
``E[mu . u] = A_D(kappa)`` (a z-score) and their norm. Non-finite outputs are counted and shown.

Results: ``<out>/<device>-<date>[-quick].json``, ``.md`` and ``.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import functools
import gc
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import penact
from penact import ops
from penact.experiments import cpu_model, git
from penact import reference

OPS = ("sample", "log_prob", "log_prob_backward", "log_prob_all", "log_marginal",
       "log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer")
SPECIAL_OPS = ("log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer")
# Operations whose cost does not depend on kappa are timed at kappa ~ D only.
KAPPA_DEPENDENT_OPS = ("sample",) + SPECIAL_OPS
PEERS = ("penact", "composite", "scipy", "tfp-jax")
LIMIT = "limit"

# kappa regimes as multiples of D; the C classes of a case get kappa log-spaced over the range.
REGIMES = {"small": (0.005, 0.05), "~D": (0.5, 2.0), "large": (50.0, 500.0)}
RADIUS = 1.0  # x on the unit sphere: scipy and TFP take unit vectors as they are

LIMIT_NAMES = {
    "sample": "torch.randn(N, D)",
    "log_prob": "x.norm(dim=1)",
    "log_prob_backward": "x.clone()",
    "log_prob_all": "torch.addmm(b, x, W.T)",
    "log_marginal": "torch.addmm(b, x, W.T)",
}
# The issue-2 headline set: N = 1e5, D = 512, C = 100, kappa in [50, 500].
HEADLINE = dict(N=100_000, D=512, C=100, kappa=(50.0, 500.0))
HEADLINE_TARGETS = {"sample": 1.0, "log_prob": 1.5, "log_prob_all": 1.2}
MEMORY_TARGET = 1.1


# ---------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    dims: tuple[int, ...]
    classes: tuple[int, ...]
    sizes: tuple[int, ...]
    regimes: tuple[str, ...]
    ops: tuple[str, ...]
    peers: tuple[str, ...]
    excluded: dict[str, str]  # peer -> why this run leaves it out (shown as a skip)
    warmup: int
    min_repeats: int
    max_repeats: int
    target_s: float
    max_call_s: float
    headline: bool
    headline_peers: tuple[str, ...]
    accuracy: bool
    accuracy_sample_n: int
    plot: bool
    progress: bool
    out: Path
    seed: int
    quick: bool


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``penact bench``'s options to ``parser`` (a top-level parser or a subcommand's)."""
    parser.add_argument("--quick", action="store_true",
                        help="a subset that finishes in about a minute (D in {64, 512}, C = 10, N up to 1e4, "
                             "headline with penact, composite and the limits)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--D", dest="dims", type=_int_list, help="dimensions, e.g. 64,512,2048")
    parser.add_argument("--C", dest="classes", type=_int_list, help="numbers of classes, e.g. 10,1000")
    parser.add_argument("--N", dest="sizes", type=_int_list,
                        help="batch sizes, e.g. 1e3,1e4,1e5 (default: up to 1e5 on CPU, 1e6 on CUDA)")
    parser.add_argument("--kappa", dest="regimes", type=_choice_list(REGIMES),
                        help=f"kappa regimes among {', '.join(REGIMES)} (comma-separated)")
    parser.add_argument("--ops", type=_choice_list(OPS), help=f"operations among {', '.join(OPS)}")
    parser.add_argument("--peers", type=_choice_list(PEERS),
                        help=f"peers among {', '.join(PEERS)} (the limits are always measured)")
    parser.add_argument("--min-repeats", type=int, help="timed calls per peer and case, at least (default 3)")
    parser.add_argument("--max-repeats", type=int, help="timed calls per peer and case, at most (default 15)")
    parser.add_argument("--max-call-s", type=float,
                        help="skip a peer whose call is predicted to take longer (default 20 s, quick 5 s)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads before measuring")
    parser.add_argument("--no-headline", dest="headline", action="store_false", help="skip the issue-2 headline set")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip the accuracy section")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="write no PNG")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for <device>-<date>.json/.md/.png (default: benchmarks/results)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(float(item)) for item in text.split(",") if item)


def _choice_list(choices):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item for item in text.split(",") if item)
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose among {', '.join(choices)}")
        return items
    return parse


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("penact bench: --device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    peers = args.peers or PEERS
    excluded = {}
    if quick and not args.peers:
        excluded["tfp-jax"] = ("left out of --quick: jax.jit compiles once per shape (1-2 s each); "
                               "name it in --peers or run without --quick")
    default_sizes = (1_000, 10_000) if quick else (
        (1_000, 10_000, 100_000, 1_000_000) if device.type == "cuda" else (1_000, 10_000, 100_000))
    return Settings(
        device=device,
        dtype=getattr(torch, args.dtype),
        dims=args.dims or ((64, 512) if quick else (64, 512, 2048)),
        classes=args.classes or ((10,) if quick else (10, 1000)),
        sizes=args.sizes or default_sizes,
        regimes=args.regimes or (("~D",) if quick else tuple(REGIMES)),
        ops=args.ops or OPS,
        peers=peers,
        excluded=excluded,
        warmup=1,
        min_repeats=args.min_repeats or 3,
        max_repeats=args.max_repeats or (5 if quick else 25),
        target_s=0.05 if quick else 0.5,
        max_call_s=args.max_call_s or (5.0 if quick else 20.0),
        headline=args.headline,
        headline_peers=("penact",) if quick else peers,
        accuracy=args.accuracy,
        accuracy_sample_n=4_000 if quick else 10_000,
        plot=args.plot,
        progress=args.progress,
        out=args.out,
        seed=args.seed,
        quick=quick,
    )


# ---------------------------------------------------------------------------------------------
# Optional peers


@functools.lru_cache(maxsize=None)
def _scipy():
    """``(scipy.stats, scipy.special)`` or the reason they are unusable."""
    try:
        import scipy.special
        import scipy.stats
        scipy.stats.vonmises_fisher  # noqa: B018  (scipy >= 1.11)
    except (ImportError, AttributeError) as error:
        return None, f"scipy.stats.vonmises_fisher not importable ({error})"
    return (scipy.stats, scipy.special), None


@functools.lru_cache(maxsize=None)
def _tfp():
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


def _peer_available(name: str, settings: Settings | None = None) -> str | None:
    """Why peer ``name`` cannot be measured in this run, or None."""
    if settings is not None and name in settings.excluded:
        return settings.excluded[name]
    if name == "scipy":
        return _scipy()[1]
    if name == "tfp-jax":
        return _tfp()[1]
    return None


# ---------------------------------------------------------------------------------------------
# Problems: the inputs of one case, shared by every peer, converted once per peer's format.


def class_kappas(num_classes: int, low: float, high: float) -> torch.Tensor:
    """``[C]`` concentrations log-spaced over ``[low, high]`` (float64)."""
    if num_classes == 1:
        return torch.tensor([math.sqrt(low * high)], dtype=torch.float64)
    return torch.logspace(math.log10(low), math.log10(high), num_classes, dtype=torch.float64)


class Problem:
    """Inputs of a case: ``weight [C, D]`` (random directions, row norms ``kappa [C]``, radius 1),
    ``labels [N]`` uniform over the classes, and a
    materialized sample ``x [N, D]``, on ``device`` in ``dtype``; numpy and JAX copies on demand."""

    def __init__(self, dim: int, kappa: torch.Tensor, size: int, device: torch.device, dtype: torch.dtype,
                 seed: int):
        num_classes = kappa.numel()
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
        directions /= directions.norm(dim=1, keepdim=True)
        self.dim, self.num_classes, self.size = dim, num_classes, size
        self.device, self.dtype, self.seed = device, dtype, seed
        self.weight = (directions * kappa[:, None]).to(device=device, dtype=dtype)
        self.labels = torch.randint(0, num_classes, (size,), generator=generator).to(device)
        self.dist = penact.PenultimateDistribution(self.weight, radius=RADIUS)

    @functools.cached_property
    def x(self) -> torch.Tensor:
        """A materialized ``[N, D]`` sample (penact's sampler, or the composite twin's where
        penact cannot run on this device)."""
        try:
            return self.dist.sample(self.labels, seed=self.seed + 1, offset=0)
        except RuntimeError:
            generator = torch.Generator(self.device).manual_seed(self.seed + 1)
            return reference.vmf_sample(self.dist.mean_direction, self.dist.kappa, self.labels, RADIUS, generator)

    @functools.cached_property
    def numpy(self) -> dict[str, np.ndarray]:
        """float64 numpy copies for scipy: ``x`` normalized to the unit sphere (scipy checks)."""
        x = self.x.detach().double().cpu()
        return dict(x=(x / x.norm(dim=1, keepdim=True)).numpy(),
                    mu=self.dist.mean_direction.double().cpu().numpy(),
                    kappa=self.dist.kappa.double().cpu().numpy(),
                    labels=self.labels.cpu().numpy(),
                    log_prior=self.dist.log_prior.double().cpu().numpy())

    def frozen(self, c: int):
        """The frozen ``scipy.stats.vonmises_fisher`` of class ``c`` (built on first use)."""
        cache = self.__dict__.setdefault("_frozen", {})
        if c not in cache:
            cache[c] = _scipy()[0][0].vonmises_fisher(self.numpy["mu"][c], self.numpy["kappa"][c])
        return cache[c]

    @functools.cached_property
    def groups(self) -> list[tuple[int, np.ndarray]]:
        """``(class, row indices)`` of the classes present in the batch (setup of the scipy loop)."""
        labels = self.numpy["labels"]
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.num_classes + 1))
        return [(c, order[bounds[c]:bounds[c + 1]]) for c in range(self.num_classes) if bounds[c + 1] > bounds[c]]

    @functools.cached_property
    def jax(self) -> dict[str, Any]:
        """JAX copies in the run's dtype for TFP."""
        jnp = _tfp()[0][1]
        as_jax = lambda t: jnp.asarray(t.detach().cpu().numpy())  # noqa: E731
        x = self.x.detach()
        return dict(x=as_jax(x / x.norm(dim=1, keepdim=True)), weight=as_jax(self.weight),
                    mu=as_jax(self.dist.mean_direction), kappa=as_jax(self.dist.kappa),
                    labels=as_jax(self.labels), log_prior=as_jax(self.dist.log_prior))


class SpecialProblem:
    """``order = D/2 - 1`` and ``N`` arguments log-spaced over the kappa regime's range."""

    def __init__(self, dim: int, size: int, kappa_range: tuple[float, float], device: torch.device,
                 dtype: torch.dtype):
        self.dim, self.size, self.order = dim, size, 0.5 * dim - 1.0
        self.x = torch.logspace(math.log10(kappa_range[0]), math.log10(kappa_range[1]), size,
                                dtype=torch.float64).to(device=device, dtype=dtype)

    @functools.cached_property
    def x64(self) -> np.ndarray:
        return self.x.double().cpu().numpy()

    @functools.cached_property
    def x_jax(self):
        return _tfp()[0][1].asarray(self.x.cpu().numpy())


# ---------------------------------------------------------------------------------------------
# Peers of each operation


@dataclasses.dataclass
class Peer:
    """One way to compute an operation. ``fn`` runs it once (and waits for it: JAX peers block);
    ``skip`` says why it is not measured; ``clock`` is ``"cuda"`` for CUDA-event timing."""
    name: str
    fn: Callable[[], Any] | None = None
    skip: str | None = None
    clock: str = "wall"
    note: str = ""
    estimate: Callable[[float], float] | None = None  # budget -> predicted seconds per call, cheaply


def _clock(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "wall"


def _block(value):
    """Waits for a JAX result (asynchronous dispatch) and returns it."""
    jax = _tfp()[0][0]
    return jax.block_until_ready(value)


@functools.lru_cache(maxsize=None)
def _tfp_functions() -> dict[str, Callable]:
    """The jit-compiled TFP functions, built once (jax.jit caches one compilation per shape)."""
    jax, jnp, tfp = _tfp()[0]
    tfd = tfp.distributions

    def per_row(mu, kappa, labels):
        return tfd.VonMisesFisher(mean_direction=mu[labels], concentration=kappa[labels])

    def from_weight(weight):
        norm = jnp.linalg.norm(weight, axis=1)
        return weight / norm[:, None], RADIUS * norm

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


def _scipy_log_prob(p: Problem) -> np.ndarray:
    out = np.empty(p.size)
    x = p.numpy["x"]
    for c, rows in p.groups:
        out[rows] = p.frozen(c).logpdf(x[rows])
    return out


def _scipy_log_prob_all(p: Problem) -> np.ndarray:
    x = p.numpy["x"]
    return np.stack([p.frozen(c).logpdf(x) for c in range(p.num_classes)], axis=1)


def _scipy_sample(p: Problem, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((p.size, p.dim))
    for c, rows in p.groups:
        out[rows] = p.frozen(c).rvs(rows.size, random_state=rng)
    return out


def _loop_estimate(body: Callable[[int, np.ndarray], Any], first: tuple[int, np.ndarray], calls: int,
                   total_rows: int):
    """A cheap prediction of a loop of ``calls`` calls ``body(c, rows)`` over ``total_rows`` rows in
    all, from its ``first`` call's class and rows: the fixed cost of a call from one row, the cost
    of a row from up to 256 rows (scipy's sampler pays a D x D QR decomposition per call, so a
    class costs far more than its rows suggest)."""
    def estimate(budget: float) -> float:
        c, rows = first
        body(c, rows[:1])  # first-call effects
        fixed = _timed_call(lambda: body(c, rows[:1]), "wall")
        if fixed * calls > budget or rows.size == 1:
            return fixed * calls  # already over budget (or nothing more to learn)
        some = rows[:256]
        per_row = max(_timed_call(lambda: body(c, some), "wall") - fixed, 0.0) / (some.size - 1)
        return fixed * calls + per_row * total_rows
    return estimate


def _composite_log_normalizer(p: Problem, weight: torch.Tensor) -> torch.Tensor:
    # penact.reference has no special-function twin: the composite uses penact's normalizer ([C]).
    return ops.vmf_log_normalizer(p.dim, RADIUS * weight.norm(dim=1))


def peers_for(op: str, p, settings: Settings) -> list[Peer]:
    """The peers of ``op`` on problem ``p``, in ``settings.peers`` order, then the limit."""
    clock = _clock(settings.device)
    wanted = [name for name in PEERS if name in settings.peers]
    builders = SPECIAL_PEERS if op in SPECIAL_OPS else DENSITY_PEERS
    peers = []
    for name in wanted:
        reason = _peer_available(name, settings)
        if reason is not None:
            peers.append(Peer(name, skip=reason))
            continue
        peer = builders[name](op, p, clock)
        peers.append(peer)
    if op in LIMIT_NAMES:
        peers.append(_limit_peer(op, p, clock))
    return peers


def _penact_peer(op: str, p: Problem, clock: str) -> Peer:
    dist, x, labels = p.dist, p.x, p.labels
    if op == "sample":
        return Peer("penact", lambda: dist.sample(labels, seed=p.seed, offset=0), clock=clock)
    if op == "log_prob":
        return Peer("penact", lambda: dist.log_prob(x, labels), clock=clock)
    if op == "log_prob_backward":
        x_leaf = x.detach().requires_grad_()
        weight = p.weight.detach().requires_grad_()
        out = penact.PenultimateDistribution(weight, radius=RADIUS).log_prob(x_leaf, labels)
        grad = torch.ones_like(out)
        return Peer("penact", lambda: torch.autograd.grad(out, (x_leaf, weight), grad, retain_graph=True),
                    clock=clock, note="backward only (to x and W)")
    if op == "log_prob_all":
        return Peer("penact", lambda: dist.log_prob_all(x), clock=clock)
    if op == "log_marginal":
        return Peer("penact", lambda: dist.log_marginal(x), clock=clock)
    raise ValueError(op)


def _composite_peer(op: str, p: Problem, clock: str) -> Peer:
    x, labels, weight = p.x, p.labels, p.weight
    if op == "sample":
        mu, kappa = p.dist.mean_direction, p.dist.kappa
        return Peer("composite", lambda: reference.vmf_sample(mu, kappa, labels, RADIUS), clock=clock)
    if op == "log_prob":
        return Peer("composite", lambda: reference.vmf_log_prob(
            x, weight, _composite_log_normalizer(p, weight), labels, RADIUS), clock=clock)
    if op == "log_prob_backward":
        x_leaf = x.detach().requires_grad_()
        w_leaf = weight.detach().requires_grad_()
        out = reference.vmf_log_prob(x_leaf, w_leaf, _composite_log_normalizer(p, w_leaf), labels, RADIUS)
        grad = torch.ones_like(out)
        return Peer("composite", lambda: torch.autograd.grad(out, (x_leaf, w_leaf), grad, retain_graph=True),
                    clock=clock, note="backward only (to x and W)")
    if op == "log_prob_all":
        return Peer("composite", lambda: reference.vmf_log_prob_all(
            x, weight, _composite_log_normalizer(p, weight), RADIUS), clock=clock)
    if op == "log_marginal":
        def log_marginal():
            log_normalizer = _composite_log_normalizer(p, weight)
            log_prior = torch.log_softmax(-log_normalizer, dim=0)
            return torch.logsumexp(reference.vmf_log_prob_all(x, weight, log_normalizer, RADIUS) + log_prior, dim=1)
        return Peer("composite", log_marginal, clock=clock)
    raise ValueError(op)


def _scipy_peer(op: str, p: Problem, clock: str) -> Peer:
    note = "CPU, float64, loop over classes"
    special = _scipy()[0][1]
    def log_pdf(c, rows):
        return p.frozen(c).logpdf(p.numpy["x"][rows])

    # log_prob loops over the classes present; log_prob_all / log_marginal over every class, all rows
    labelled = dict(first=p.groups[0], calls=len(p.groups), total_rows=p.size)
    every_class = dict(first=(0, np.arange(min(p.size, 256))), calls=p.num_classes, total_rows=p.size * p.num_classes)
    if op == "sample":
        rng = np.random.default_rng(p.seed)
        return Peer("scipy", lambda: _scipy_sample(p, rng), note=note, estimate=_loop_estimate(
            lambda c, rows: p.frozen(c).rvs(rows.size, random_state=rng), **labelled))
    if op == "log_prob":
        return Peer("scipy", lambda: _scipy_log_prob(p), note=note, estimate=_loop_estimate(log_pdf, **labelled))
    if op == "log_prob_backward":
        return Peer("scipy", skip="scipy has no automatic differentiation")
    if op == "log_prob_all":
        return Peer("scipy", lambda: _scipy_log_prob_all(p), note=note, estimate=_loop_estimate(log_pdf, **every_class))
    if op == "log_marginal":
        return Peer("scipy", lambda: special.logsumexp(_scipy_log_prob_all(p) + p.numpy["log_prior"], axis=1),
                    note=note, estimate=_loop_estimate(log_pdf, **every_class))
    raise ValueError(op)


def _tfp_peer(op: str, p: Problem, clock: str) -> Peer:
    if p.device.type != "cpu":
        return Peer("tfp-jax", skip="TFP-on-JAX is measured on CPU runs only")
    fn = _tfp_functions()[op]
    arrays = p.jax
    mu, kappa, labels, x = arrays["mu"], arrays["kappa"], arrays["labels"], arrays["x"]
    note = "jit, CPU"
    if op == "sample":
        jax = _tfp()[0][0]
        key = jax.random.PRNGKey(p.seed)
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


def _limit_peer(op: str, p: Problem, clock: str) -> Peer:
    name = LIMIT_NAMES[op]
    x = p.x
    if op == "sample":
        shape, dtype, device = (p.size, p.dim), p.dtype, p.device
        return Peer(LIMIT, lambda: torch.randn(shape, dtype=dtype, device=device), clock=clock, note=name)
    if op == "log_prob":
        return Peer(LIMIT, lambda: x.norm(dim=1), clock=clock, note=name)
    if op == "log_prob_backward":
        return Peer(LIMIT, lambda: x.clone(), clock=clock, note=name)
    bias, weight_t = p.weight.new_zeros(p.num_classes), p.weight.t()
    return Peer(LIMIT, lambda: torch.addmm(bias, x, weight_t), clock=clock, note=name)


def _special_penact(op: str, p: SpecialProblem, clock: str) -> Peer:
    x, order, dim = p.x, p.order, p.dim
    if op == "log_bessel_iv":
        return Peer("penact", lambda: ops.log_bessel_iv(order, x), clock=clock)
    if op == "bessel_iv_ratio":
        return Peer("penact", lambda: ops.bessel_iv_ratio(order, x), clock=clock)
    return Peer("penact", lambda: ops.vmf_log_normalizer(dim, x), clock=clock)


def _special_scipy(op: str, p: SpecialProblem, clock: str) -> Peer:
    fn = SCIPY_SPECIAL[op]
    x, order, dim = p.x64, p.order, p.dim

    def call():
        with np.errstate(all="ignore"):  # log(0) where ive underflows: counted in the accuracy section
            return fn(order, dim, x)
    return Peer("scipy", call, note="CPU, float64, scipy.special.ive")


def _special_tfp(op: str, p: SpecialProblem, clock: str) -> Peer:
    if p.x.device.type != "cpu":
        return Peer("tfp-jax", skip="TFP-on-JAX is measured on CPU runs only")
    fn = _tfp_functions()[op]
    x = p.x_jax
    argument = p.dim if op == "vmf_log_normalizer" else p.order
    return Peer("tfp-jax", lambda: _block(fn(argument, x)), note="jit, CPU")


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
DENSITY_PEERS = {"penact": _penact_peer, "composite": _composite_peer, "scipy": _scipy_peer, "tfp-jax": _tfp_peer}
SPECIAL_PEERS = {"penact": _special_penact,
                 "composite": lambda op, p, clock: Peer(
                     "composite", skip="penact.reference has no special-function twin (torch.special has I_0, I_1 only)"),
                 "scipy": _special_scipy, "tfp-jax": _special_tfp}


# ---------------------------------------------------------------------------------------------
# Timing


def _timed_call(fn: Callable[[], Any], clock: str) -> float:
    if clock == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def measure(peers: list[Peer], settings: Settings, predicted: dict[str, float] | None = None,
            min_repeats: int | None = None) -> dict[str, dict]:
    """Times each peer (warm-up, then interleaved rounds) and returns, per peer name,
    ``{"status": "ok" | "skipped" | "error", "time_s": median, "min_s", "times_s": [...], "reason", "note"}``."""
    predicted = predicted or {}
    min_repeats = min_repeats or settings.min_repeats
    results: dict[str, dict] = {}
    active: list[Peer] = []
    for peer in peers:
        record = dict(status="skipped", reason=peer.skip, note=peer.note, time_s=None, min_s=None, times_s=[])
        results[peer.name] = record
        if peer.skip:
            continue
        try:
            guess = predicted.get(peer.name)
            if guess is None and peer.estimate is not None:
                guess = peer.estimate(settings.max_call_s)
            if guess is not None and guess > settings.max_call_s:
                record["reason"] = f"predicted {guess:.1f} s per call > --max-call-s {settings.max_call_s:g}"
                continue
            for _ in range(settings.warmup):
                _timed_call(peer.fn, peer.clock)
        except Exception as error:  # a peer that fails is reported, not fatal
            record.update(status="error", reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        record["status"] = "ok"
        active.append(peer)
    wanted = {peer.name: min_repeats for peer in active}
    for round_index in range(settings.max_repeats):
        pending = [peer for peer in active if len(results[peer.name]["times_s"]) < wanted[peer.name]]
        if not pending:
            break
        shift = round_index % len(pending)
        for peer in pending[shift:] + pending[:shift]:
            elapsed = _timed_call(peer.fn, peer.clock)
            times = results[peer.name]["times_s"]
            times.append(elapsed)
            if len(times) == 1:
                wanted[peer.name] = max(min_repeats, min(settings.max_repeats, math.ceil(settings.target_s / max(elapsed, 1e-9))))
    for peer in active:
        results[peer.name]["time_s"] = statistics.median(results[peer.name]["times_s"])
        results[peer.name]["min_s"] = min(results[peer.name]["times_s"])
    return results


def _predict(history: list[tuple[int, float]], size: int) -> float | None:
    """Time at ``size`` from the times at smaller sizes: affine through the last two points,
    proportional from one (an overestimate where fixed costs dominate)."""
    if not history:
        return None
    (n1, t1) = history[-1]
    if len(history) == 1:
        return t1 * size / n1
    (n0, t0) = history[-2]
    slope = max((t1 - t0) / (n1 - n0), 0.0)
    return t1 + slope * (size - n1)


def measure_bandwidth(device: torch.device, nbytes: int = 256 * 2**20) -> dict:
    """Copy bandwidth ``dst.copy_(src)`` of ``nbytes``, in bytes per second read plus written."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    clock = _clock(device)
    _timed_call(lambda: dst.copy_(src), clock)
    times = [_timed_call(lambda: dst.copy_(src), clock) for _ in range(7)]
    seconds = statistics.median(times)
    return dict(bytes_per_s=2 * nbytes / seconds, buffer_bytes=nbytes, time_s=seconds,
                method="median of 7 dst.copy_(src) of 256 MiB float32; bytes read + written")


def bytes_moved(op: str, size: int, dim: int, num_classes: int, itemsize: int) -> int:
    """The bytes an operation must at least read or write (its inputs of size N x D and outputs)."""
    if op == "sample":
        return size * dim * itemsize
    if op == "log_prob":
        return size * dim * itemsize + size * itemsize
    if op == "log_prob_backward":
        return 2 * size * dim * itemsize
    if op == "log_prob_all":
        return size * dim * itemsize + size * num_classes * itemsize
    if op == "log_marginal":
        return size * dim * itemsize + size * itemsize
    return 2 * size * itemsize  # elementwise special functions: read x, write the result


# ---------------------------------------------------------------------------------------------
# Peak memory


def _resident_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1])
    return values


@functools.lru_cache(maxsize=None)
def _libc():
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


def _release_heap() -> None:
    """Collects garbage and hands freed heap back to the system, so that memory the next call
    reuses shows up in its resident-set growth."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _output_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return int(getattr(value, "nbytes", 0))


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict:
    """Peak extra memory of one call of ``fn`` and the size of its output (see the module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - before
        return dict(peak_bytes=peak, output_bytes=_output_bytes(out), method="torch.cuda.max_memory_allocated")
    if not Path("/proc/self/clear_refs").exists():
        return dict(peak_bytes=None, output_bytes=None, method="unavailable: needs Linux /proc")
    _release_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError as error:
        return dict(peak_bytes=None, output_bytes=None, method=f"unavailable: {error}")
    before = _resident_kib()["VmRSS"]
    out = fn()
    peak = _resident_kib()["VmHWM"]
    result = dict(peak_bytes=(peak - before) * 1024, output_bytes=_output_bytes(out),
                  method="VmHWM - VmRSS (/proc/self/status), high-water mark reset via clear_refs")
    del out
    return result


# ---------------------------------------------------------------------------------------------
# The grid and the headline


def run_grid(settings: Settings, bandwidth: dict, progress) -> list[dict]:
    """Every operation on the grid D x C x kappa x N, N ascending (so slow peers can be predicted)."""
    records = []
    history: dict[tuple, list[tuple[int, float]]] = {}
    density_ops = [op for op in settings.ops if op not in SPECIAL_OPS]
    special_ops = [op for op in settings.ops if op in SPECIAL_OPS]
    for dim in settings.dims:
        for regime in settings.regimes:
            for class_index, num_classes in enumerate(settings.classes):
                for size in settings.sizes:
                    cases = [(op, num_classes) for op in density_ops
                             if op in KAPPA_DEPENDENT_OPS or regime == "~D" or "~D" not in settings.regimes]
                    if class_index == 0:
                        cases += [(op, None) for op in special_ops]
                    if not cases:
                        continue
                    records += _measure_cases(cases, dim, num_classes, size, regime, settings, bandwidth,
                                              history, progress)
                    gc.collect()  # the case's inputs and its peers' closures (and autograd graphs)
    return records


def _measure_cases(cases, dim, num_classes, size, regime, settings, bandwidth, history, progress) -> list[dict]:
    """The operations ``cases`` (``(op, C or None)``) on one set of inputs of the grid."""
    kappa_range = tuple(multiple * dim for multiple in REGIMES[regime])
    itemsize = torch.tensor([], dtype=settings.dtype).element_size()
    problem = Problem(dim, class_kappas(num_classes, *kappa_range), size, settings.device, settings.dtype,
                      settings.seed) if any(c is not None for _, c in cases) else None
    special = SpecialProblem(dim, size, kappa_range, settings.device, settings.dtype) \
        if any(c is None for _, c in cases) else None
    records = []
    for op, case_classes in cases:
        progress.set_postfix_str(f"{op} D={dim} C={case_classes or '-'} kappa {regime} N={size:.0e}")
        key = (op, dim, case_classes, regime)
        predicted = {name: _predict(history.get(key + (name,), []), size) for name in PEERS + (LIMIT,)}
        predicted = {name: value for name, value in predicted.items() if value is not None}
        results = measure(peers_for(op, special if case_classes is None else problem, settings), settings, predicted)
        for name, result in results.items():
            if result["status"] == "ok":
                history.setdefault(key + (name,), []).append((size, result["time_s"]))
        moved = bytes_moved(op, size, dim, case_classes or 0, itemsize)
        records.append(dict(op=op, D=dim, C=case_classes, N=size, kappa=regime, kappa_range=list(kappa_range),
                            dtype=str(settings.dtype).replace("torch.", ""), device=str(settings.device),
                            load_1min=os.getloadavg()[0], bytes_moved=moved,
                            bandwidth_bound_s=moved / bandwidth["bytes_per_s"], peers=results))
        progress.update(1)
    return records


def count_grid_cases(settings: Settings) -> int:
    density = [op for op in settings.ops if op not in SPECIAL_OPS]
    special = [op for op in settings.ops if op in SPECIAL_OPS]
    total = 0
    for regime in settings.regimes:
        per_classes = sum(1 for op in density if op in KAPPA_DEPENDENT_OPS or regime == "~D"
                          or "~D" not in settings.regimes)
        total += len(settings.dims) * len(settings.sizes) * (per_classes * len(settings.classes) + len(special))
    return total


def run_headline(settings: Settings, progress) -> dict:
    """The issue-2 set: ratios to the limits, interleaved, and the peak memory of ``sample``."""
    # kappa linearly between 50 and 500 across the classes, as the issue states it
    kappa = torch.linspace(*HEADLINE["kappa"], HEADLINE["C"], dtype=torch.float64)
    problem = Problem(HEADLINE["D"], kappa, HEADLINE["N"], settings.device, settings.dtype, settings.seed)
    headline_settings = dataclasses.replace(settings, peers=settings.headline_peers,
                                            max_repeats=max(settings.max_repeats, 7), max_call_s=max(settings.max_call_s, 30.0))
    entries = {}
    for op in HEADLINE_TARGETS:
        progress.set_postfix_str(f"headline {op}")
        results = measure(peers_for(op, problem, headline_settings), headline_settings,
                          min_repeats=3 if settings.quick else 7)
        limit = results[LIMIT]["time_s"]
        ratios = {name: (r["time_s"] / limit if r["status"] == "ok" and limit else None) for name, r in results.items()}
        fastest = results[LIMIT]["min_s"]
        ratios_of_minimums = {name: (r["min_s"] / fastest if r["status"] == "ok" and fastest else None)
                              for name, r in results.items()}
        entries[op] = dict(limit=LIMIT_NAMES[op], target=HEADLINE_TARGETS[op], peers=results, ratio_to_limit=ratios,
                           ratio_of_minimums=ratios_of_minimums,
                           met=(ratios.get("penact") is not None and ratios["penact"] <= HEADLINE_TARGETS[op]))
        progress.update(1)
    progress.set_postfix_str("headline memory")
    memory = {}
    timed = entries["sample"]["peers"]
    for peer in peers_for("sample", problem, headline_settings):
        if timed[peer.name]["status"] != "ok":  # skipped or failed when timed: same reason here
            memory[peer.name] = dict(skipped=timed[peer.name]["reason"])
            continue
        try:
            runs = [peak_memory(peer.fn, settings.device) for _ in range(3)]
        except Exception as error:
            memory[peer.name] = dict(skipped=f"{type(error).__name__}: {error}")
            continue
        peaks = [run["peak_bytes"] for run in runs if run["peak_bytes"] is not None]
        output = runs[0]["output_bytes"]
        peak = statistics.median(peaks) if peaks else None
        memory[peer.name] = dict(peak_bytes=peak, output_bytes=output, runs_bytes=peaks, method=runs[0]["method"],
                                 ratio=(peak / output if peak is not None and output else None))
    progress.update(1)
    penact_memory = memory.get("penact", {}).get("ratio")
    return dict(N=HEADLINE["N"], D=HEADLINE["D"], C=HEADLINE["C"], kappa="linspace(50, 500, C)",
                dtype=str(settings.dtype).replace("torch.", ""), ops=entries,
                memory=dict(target=MEMORY_TARGET, peers=memory,
                            met=(penact_memory is not None and penact_memory <= MEMORY_TARGET)))


# ---------------------------------------------------------------------------------------------
# Accuracy


def _load_mp_reference():
    """``tests/mp_reference.py`` of the source tree (50-digit references), or None."""
    path = Path(__file__).resolve().parents[1] / "tests" / "mp_reference.py"
    if not path.exists() or importlib.util.find_spec("mpmath") is None:
        return None
    spec = importlib.util.spec_from_file_location("penact_mp_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error_summary(values: np.ndarray, truth: np.ndarray, points: list, floor: float = 0.0) -> dict:
    """Max relative (``|a - r| / max(|r|, floor)``) and absolute errors over the finite outputs,
    the point where the relative one occurs, and the points where the output is not finite."""
    values = np.asarray(values, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    error = np.abs(values - truth) / np.maximum(np.abs(truth), floor)
    error[~finite] = np.nan
    worst = int(np.nanargmax(error)) if finite.any() else None
    nonfinite = [dict(point=points[i], value=repr(float(values[i]))) for i in np.flatnonzero(~finite)]
    return dict(max_rel_error=(float(error[worst]) if worst is not None else None),
                max_abs_error=(float(np.abs(values - truth)[finite].max()) if finite.any() else None),
                worst_point=(points[worst] if worst is not None else None),
                n_points=int(values.size), n_nonfinite=int((~finite).sum()), nonfinite=nonfinite[:20])


def accuracy_special(settings: Settings, mp) -> list[dict]:
    """``log I_v``, ``A(v, x)``, ``log C_D`` of each peer against mpmath at ``v = D/2 - 1`` and
    kappa at the edges of the SPEC range and in each regime."""
    import mpmath
    records = []
    dims = settings.dims
    multiples = sorted({m for regime in settings.regimes for m in REGIMES[regime]})
    dtypes = [torch.float64, torch.float32]
    for op in SPECIAL_OPS:
        for dtype in dtypes:
            points = [(dim, kappa) for dim in dims for kappa in [1e-10] + [m * dim for m in multiples] + [1e7]]
            # every peer sees the same inputs: the dtype-rounded arguments, and the reference at those
            args = np.array([float(torch.tensor(kappa, dtype=dtype)) for _, kappa in points])
            truth = np.array([float(_mp_special(mp, mpmath, op, dim, x)) for (dim, _), x in zip(points, args)])
            labels = [dict(D=dim, kappa=float(x)) for (dim, _), x in zip(points, args)]
            outputs = {"penact": _penact_special_values(op, points, args, dtype, settings.device)}
            if dtype == torch.float64 and "scipy" in settings.peers and _peer_available("scipy", settings) is None:
                with np.errstate(all="ignore"):
                    outputs["scipy"] = np.array([SCIPY_SPECIAL[op](0.5 * dim - 1, dim, np.float64(x))
                                                 for (dim, _), x in zip(points, args)])
            if "tfp-jax" in settings.peers and _peer_available("tfp-jax", settings) is None:
                outputs["tfp-jax"] = _tfp_special_values(op, points, args, dtype)
            for name, values in outputs.items():
                records.append(dict(section="special", op=op, peer=name, dtype=str(dtype).replace("torch.", ""),
                                    reference="mpmath 50 digits (tests/mp_reference.py)",
                                    **_error_summary(values, truth, labels)))
    return records


def _mp_special(mp, mpmath, op, dim, x):
    order = 0.5 * dim - 1
    if op == "log_bessel_iv":
        return mp.log_besseli(order, x)
    if op == "bessel_iv_ratio":
        return mp.bessel_ratio(order, x)
    return mp.vmf_log_normalizer(dim, x)


def _penact_special_values(op, points, args, dtype, device) -> np.ndarray:
    out = []
    for (dim, _), x in zip(points, args):
        argument = torch.tensor([x], dtype=dtype, device=device)
        if op == "log_bessel_iv":
            out.append(float(ops.log_bessel_iv(0.5 * dim - 1, argument)))
        elif op == "bessel_iv_ratio":
            out.append(float(ops.bessel_iv_ratio(0.5 * dim - 1, argument)))
        else:
            out.append(float(ops.vmf_log_normalizer(dim, argument)))
    return np.array(out)


def _tfp_special_values(op, points, args, dtype) -> np.ndarray:
    jnp = _tfp()[0][1]
    fn = _tfp_functions()[op]
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    out = []
    for (dim, _), x in zip(points, args):
        argument = jnp.asarray(np.array([x], dtype=np_dtype))
        out.append(float(fn(dim if op == "vmf_log_normalizer" else 0.5 * dim - 1, argument)[0]))
    return np.array(out)


def accuracy_density(settings: Settings, mp) -> list[dict]:
    """``log_prob``, ``log_prob_all`` and ``log_marginal`` of each peer against a float64 reference
    whose normalizers come from mpmath; relative errors with the denominator floored at 1 (a
    log-density crosses zero)."""
    records = []
    num_classes, size = 10, 2_000
    for dim in settings.dims:
        for regime in settings.regimes:
            kappa_range = tuple(m * dim for m in REGIMES[regime])
            kappas = class_kappas(num_classes, *kappa_range)
            base = Problem(dim, kappas, size, settings.device, torch.float32, settings.seed)
            # float32-representable inputs, so that float32 and float64 peers see the same values
            weight64, x64, labels = base.weight.double().cpu(), base.x.double().cpu(), base.labels.cpu()
            kappa = weight64.norm(dim=1)
            log_normalizer = torch.tensor([float(mp.vmf_log_normalizer(dim, float(k))) for k in kappa],
                                          dtype=torch.float64)
            u = x64 / x64.norm(dim=1, keepdim=True)
            truth_all = log_normalizer + RADIUS * u @ weight64.t()
            truth = {"log_prob": truth_all.gather(1, labels[:, None])[:, 0], "log_prob_all": truth_all,
                     "log_marginal": torch.logsumexp(truth_all + torch.log_softmax(-log_normalizer, 0), dim=1)}
            points = [dict(D=dim, kappa=regime, C=num_classes, N=size)]
            for dtype in (torch.float32, torch.float64):
                problem = Problem(dim, kappas, size, settings.device, dtype, settings.seed)
                problem.weight = weight64.to(settings.device, dtype)
                problem.dist = penact.PenultimateDistribution(problem.weight, radius=RADIUS)
                problem.x = x64.to(settings.device, dtype)
                for op in truth:
                    for name, values in _density_values(op, problem, settings, dtype).items():
                        summary = _error_summary(values, truth[op].numpy(), points * truth[op].numel(), floor=1.0)
                        records.append(dict(section="density", op=op, peer=name, dtype=str(dtype).replace("torch.", ""),
                                            D=dim, kappa=regime,
                                            reference="float64 with mpmath normalizers; rel. error floored at 1",
                                            **summary))
    return records


def _density_values(op: str, p: Problem, settings: Settings, dtype: torch.dtype) -> dict[str, np.ndarray]:
    values = {}
    for name in ("penact", "composite", "scipy", "tfp-jax"):
        if name not in settings.peers or _peer_available(name, settings) is not None:
            continue
        if name == "scipy" and dtype != torch.float64:
            continue
        peer = DENSITY_PEERS[name](op, p, _clock(p.device))
        if peer.skip:
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = peer.fn()
        values[name] = out.detach().double().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float64)
    return values


def accuracy_sample(settings: Settings, mp) -> list[dict]:
    """Samples of each peer at one kappa per regime: the z-score of ``mean(mu . u) - A_D(kappa)``
    (|z| > 4 is suspicious), the largest ``| ||u|| - 1 |``, and the count of non-finite rows."""
    records = []
    size = settings.accuracy_sample_n
    for dim in settings.dims:
        for regime in settings.regimes:
            low, high = (m * dim for m in REGIMES[regime])
            kappa = math.sqrt(low * high)
            problem = Problem(dim, torch.tensor([kappa], dtype=torch.float64), size, settings.device, settings.dtype,
                              settings.seed)
            kappa = float(problem.dist.kappa[0])
            mean_resultant = float(mp.bessel_ratio(0.5 * dim - 1, kappa))
            mu = problem.dist.mean_direction[0].double().cpu().numpy()
            for peer in peers_for("sample", problem, settings):
                if peer.skip or peer.name == LIMIT:
                    continue
                guess = peer.estimate(settings.max_call_s) if peer.estimate else None
                if guess is not None and guess > settings.max_call_s:
                    records.append(dict(section="sample", op="sample", peer=peer.name, D=dim, kappa=kappa,
                                        error=f"skipped: predicted {guess:.1f} s > --max-call-s {settings.max_call_s:g}"))
                    continue
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    try:
                        out = peer.fn()
                    except Exception as error:
                        records.append(dict(section="sample", op="sample", peer=peer.name, D=dim, kappa=kappa,
                                            error=f"{type(error).__name__}: {error}"))
                        continue
                x = out.double().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float64)
                finite = np.isfinite(x).all(axis=1)
                u = x[finite] / RADIUS
                t = u @ mu
                z = (t.mean() - mean_resultant) / (t.std(ddof=1) / math.sqrt(t.size)) if t.size > 1 else float("nan")
                records.append(dict(section="sample", op="sample", peer=peer.name, D=dim, kappa=kappa, regime=regime,
                                    dtype=("float64" if peer.name == "scipy" else str(settings.dtype).replace("torch.", "")),
                                    n=size, mean_t=float(t.mean()), A_D=mean_resultant, z=float(z),
                                    max_norm_error=float(np.abs(np.linalg.norm(u, axis=1) - 1).max()),
                                    n_nonfinite=int((~finite).sum())))
    return records


# ---------------------------------------------------------------------------------------------
# Environment and output


def _extension_binary() -> dict | None:
    """Which compiled ``penact._C`` was measured: it is rebuilt in place, apart from the commit."""
    path = Path(penact._C.__file__) if hasattr(penact, "_C") else None
    if path is None or not path.exists():
        return None
    stat = path.stat()
    return dict(file=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                modified=datetime.datetime.fromtimestamp(stat.st_mtime).astimezone().isoformat(timespec="seconds"))


def _uptime() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    return None


def environment(settings: Settings) -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "penact": penact.__version__}
    if _peer_available("scipy", settings) is None:
        import scipy
        versions["scipy"] = scipy.__version__
    if "tfp-jax" in settings.peers and _peer_available("tfp-jax", settings) is None:
        jax, _, tfp = _tfp()[0]
        versions["jax"], versions["tfp"] = jax.__version__, tfp.__version__
    status = git("status", "--porcelain", "--untracked-files=no")
    device = settings.device
    return dict(
        device=str(device),
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        platform=platform.platform(),
        versions=versions,
        git_commit=git("rev-parse", "HEAD"),
        git_dirty=(bool(status) if status is not None else None),
        git_uncommitted=([line.split(None, 1)[-1] for line in status.splitlines()] if status else []),
        extension=_extension_binary(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        uptime_start=_uptime(),
        loadavg_start=list(os.getloadavg()),
        command="penact bench " + " ".join(sys.argv[1:]) if sys.argv else "",
    )


def _describe_extension(extension: dict | None) -> str:
    if not extension:
        return "unknown"
    return f"{extension['file']} sha256 {extension['sha256']}..., built {extension['modified']}"


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_stem(settings: Settings, env: dict) -> str:
    date = env["date"][:10]
    return f"{settings.device.type}-{_slug(env['device_name'])}-{date}" + ("-quick" if settings.quick else "")


def _ms(seconds) -> str:
    return "—" if seconds is None else (f"{seconds * 1e3:.3g}" if seconds < 10 else f"{seconds * 1e3:.0f}")


def _rate(value) -> str:
    if value is None:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.3g}x"


def _peer_cell(result: dict | None) -> str:
    if result is None:
        return ""
    if result["status"] == "ok":
        return _ms(result["time_s"])
    return "skip" if result["status"] == "skipped" else "error"


def grid_table(records: list[dict], peers: tuple[str, ...]) -> list[str]:
    """One line per case: each peer's median time, penact's throughput, how many times faster penact
    is than each peer, the limit's time over penact's, and the bandwidth bound over penact's."""
    names = [name for name in PEERS if name in peers]
    head = (["op", "D", "C", "kappa", "N"] + [f"{name} ms" for name in names] + ["limit ms", "penact rows/s"]
            + [f"{name} / penact" for name in names if name != "penact"] + ["limit / penact", "bw bound / penact"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in records:
        results = record["peers"]
        mine = results.get("penact")
        mine_time = mine["time_s"] if mine and mine["status"] == "ok" else None

        def relative(name):
            other = results.get(name)
            if mine_time is None or other is None or other["status"] != "ok":
                return "—"
            return _x(other["time_s"] / mine_time)

        row = [record["op"], str(record["D"]), str(record["C"] or "-"), record["kappa"], f"{record['N']:.0e}"]
        row += [_peer_cell(results.get(name)) for name in names]
        row += [_peer_cell(results.get(LIMIT)) if LIMIT in results else "—",
                _rate(record["N"] / mine_time) if mine_time else "—"]
        row += [relative(name) for name in names if name != "penact"]
        row += [relative(LIMIT) if LIMIT in results else "—",
                f"{record['bandwidth_bound_s'] / mine_time:.2f}" if mine_time else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def skip_table(records: list[dict]) -> list[str]:
    """Why peers were skipped or failed, each reason once with the cases it covers."""
    reasons: dict[tuple[str, str], int] = {}
    for record in records:
        for name, result in record["peers"].items():
            if result["status"] != "ok":
                reason = re.sub(r"predicted [0-9.]+ s per call", "predicted per call", result["reason"] or "")
                reasons[(name, f"{result['status']}: {reason}")] = reasons.get((name, f"{result['status']}: {reason}"), 0) + 1
    lines = ["| peer | why not measured | cases |", "|---|---|---|"]
    lines += [f"| {name} | {reason} | {count} |" for (name, reason), count in sorted(reasons.items())]
    return lines


def headline_table(headline: dict) -> list[str]:
    entries = headline["ops"]
    names = [name for name in PEERS if any(name in e["peers"] for e in entries.values())]
    head = (["op", "limit", "limit ms"] + [f"{name} (x limit)" for name in names]
            + ["penact, ratio of minimums", "target", "met (medians)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, entry in entries.items():
        limit = entry["peers"][LIMIT]
        row = [op, f"`{entry['limit']}`", _ms(limit["time_s"])]
        for name in names:
            result = entry["peers"].get(name)
            ratio = entry["ratio_to_limit"].get(name)
            row.append(f"{_x(ratio)} ({_ms(result['time_s'])} ms)" if ratio is not None
                       else (result["status"] if result else "—"))
        row += [_x(entry["ratio_of_minimums"].get("penact")), f"<= {entry['target']}x",
                "yes" if entry["met"] else "**no**"]
        lines.append("| " + " | ".join(row) + " |")
    memory = headline["memory"]
    lines += ["", "Peak memory of `sample` (extra resident memory during one call / bytes of its output):", "",
              "| peer | peak MiB | output MiB | peak / output |", "|---|---|---|---|"]
    for name, entry in memory["peers"].items():
        if "skipped" in entry:
            lines.append(f"| {name} | skipped: {entry['skipped']} | | |")
            continue
        peak = entry["peak_bytes"]
        lines.append(f"| {name} | {'—' if peak is None else f'{peak / 2**20:.1f}'} | "
                     f"{entry['output_bytes'] / 2**20:.1f} | {_x(entry['ratio'])} |")
    penact_ratio = memory["peers"].get("penact", {}).get("ratio")
    lines += ["", f"penact target: peak <= {memory['target']}x the output: "
                  f"{'met' if memory['met'] else '**not met**'} ({_x(penact_ratio)})."]
    return lines


def accuracy_tables(records: list[dict]) -> list[str]:
    lines = []
    special = [r for r in records if r["section"] == "special"]
    if special:
        lines += ["Special functions against mpmath (50 digits) at v = D/2 - 1, kappa in {1e-10, regime edges, 1e7}:", "",
                  "| function | peer | dtype | max rel. error | at (D, kappa) | non-finite / points |", "|---|---|---|---|---|---|"]
        for r in special:
            at = "—" if r["worst_point"] is None else f"({r['worst_point']['D']}, {r['worst_point']['kappa']:.3g})"
            bad = f"{r['n_nonfinite']} / {r['n_points']}"
            if r["n_nonfinite"]:
                bad += " at " + ", ".join(f"({p['point']['D']}, {p['point']['kappa']:.3g})->{p['value']}"
                                          for p in r["nonfinite"][:4]) + (" ..." if r["n_nonfinite"] > 4 else "")
            lines.append(f"| {r['op']} | {r['peer']} | {r['dtype']} | {_err(r['max_rel_error'])} | {at} | {bad} |")
    density = [r for r in records if r["section"] == "density"]
    if density:
        lines += ["", "Log-densities against a float64 reference with mpmath normalizers (C = 10, N = 2000 per "
                  "(D, kappa regime); relative error |a - r| / max(|r|, 1), worst over the grid):", "",
                  "| op | peer | dtype | max rel. error | max abs. error | worst at (D, kappa) | non-finite / values |",
                  "|---|---|---|---|---|---|---|"]
        merged: dict[tuple, dict] = {}
        for r in density:
            key = (r["op"], r["peer"], r["dtype"])
            entry = merged.setdefault(key, dict(rel=None, abs=None, at=None, bad=0, total=0, where=[]))
            entry["total"] += r["n_points"]
            entry["bad"] += r["n_nonfinite"]
            if r["n_nonfinite"]:
                entry["where"].append(f"D={r['D']} kappa {r['kappa']}: {r['n_nonfinite']}")
            if r["max_rel_error"] is not None and (entry["rel"] is None or r["max_rel_error"] > entry["rel"]):
                entry.update(rel=r["max_rel_error"], at=f"({r['D']}, {r['kappa']})")
            if r["max_abs_error"] is not None and (entry["abs"] is None or r["max_abs_error"] > entry["abs"]):
                entry["abs"] = r["max_abs_error"]
        for (op, peer, dtype), e in merged.items():
            bad = f"{e['bad']} / {e['total']}" + (f" ({'; '.join(e['where'])})" if e["where"] else "")
            lines.append(f"| {op} | {peer} | {dtype} | {_err(e['rel'])} | {_err(e['abs'])} | {e['at'] or '—'} | {bad} |")
    sample = [r for r in records if r["section"] == "sample"]
    if sample:
        lines += ["", "Samples: z-score of mean(mu . u) against A_D(kappa) from mpmath (|z| > 4 flags a biased "
                  "sampler), largest | ||u|| - 1 |, non-finite rows:", "",
                  "| peer | dtype | D | kappa | mean t | A_D(kappa) | z | max norm error | non-finite |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sample:
            if "error" in r:
                lines.append(f"| {r['peer']} | | {r['D']} | {r['kappa']:.3g} | error: {r['error']} | | | | |")
                continue
            flag = " **(!)**" if abs(r["z"]) > 4 else ""
            lines.append(f"| {r['peer']} | {r['dtype']} | {r['D']} | {r['kappa']:.4g} | {r['mean_t']:.6g} | "
                         f"{r['A_D']:.6g} | {r['z']:+.2f}{flag} | {r['max_norm_error']:.2g} | {r['n_nonfinite']} |")
    return lines


def _err(value) -> str:
    return "—" if value is None else f"{value:.2g}"


def markdown_report(report: dict) -> str:
    env = report["environment"]
    settings = report["settings"]
    lines = [f"# penact bench: {env['device_name']} ({env['device']}), {env['date']}", "",
             f"- command: `{env['command']}`",
             f"- commit {env['git_commit']}"
             + (f" (uncommitted changes in {', '.join(env['git_uncommitted'])})" if env["git_dirty"] else "") + "; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- extension binary: {_describe_extension(env.get('extension'))}",
             f"- CPU: {env['cpu_model']}, {env['cpu_count']} logical CPUs, torch threads {env['torch_threads']} "
             f"(interop {env['torch_interop_threads']}); {env['platform']}",
             f"- machine load: `{env['uptime_start']}` at the start, `{report.get('uptime_end')}` at the end; "
             f"1-minute load seen between cases: {report.get('load_summary')}",
             f"- dtype {settings['dtype']}; copy bandwidth {report['bandwidth']['bytes_per_s'] / 1e9:.2f} GB/s "
             f"({report['bandwidth']['method']})",
             f"- timing: warm-up {settings['warmup']}, then interleaved rounds, {settings['min_repeats']} to "
             f"{settings['max_repeats']} timed calls per peer and case, medians; "
             f"{'CUDA events' if settings['device'].startswith('cuda') else 'time.perf_counter'}; "
             f"wall time of the run {report['wall_s']:.0f} s",
             ""]
    if report.get("headline"):
        h = report["headline"]
        lines += [f"## Headline (issue 2): N = {h['N']}, D = {h['D']}, C = {h['C']}, kappa = {h['kappa']}, {h['dtype']}", "",
                  "Time of each peer as a multiple of the limit's time (lower is better).", ""]
        lines += headline_table(h) + [""]
    cpus = env["cpu_affinity"] or env["cpu_count"] or 1
    loads = [record["load_1min"] for record in report.get("grid", [])] + env["loadavg_start"][:1]
    if max(loads) > cpus:
        lines += [f"**The machine was oversubscribed** (1-minute load up to {max(loads):.1f} on {cpus} CPUs, from other "
                  "processes): a call that needs every torch thread waits for the slowest one to be scheduled, so "
                  "times of a few ms or less are dominated by scheduling (they cluster near multiples of the "
                  "scheduler's time slice), and medians of all peers are inflated. Ratios measured in the same "
                  "interleaved rounds are more trustworthy than absolute times; `min_s` in the JSON is the "
                  "least-disturbed call.", ""]
    if report.get("grid"):
        lines += ["## Grid", "",
                  "Median ms per call; `X / penact` is X's time over penact's (> 1: penact is faster); "
                  "`limit / penact` is the fraction of the limit penact reaches (1 = at the limit); "
                  "`bw bound / penact` the same against the bytes the op must move at the measured copy bandwidth. "
                  "Ops whose cost does not depend on kappa run at kappa ~ D only. Limits: "
                  + "; ".join(f"{op}: `{name}`" for op, name in LIMIT_NAMES.items()) + ".", ""]
        lines += grid_table(report["grid"], tuple(settings["peers"])) + [""]
        lines += ["Peers not measured:", ""] + skip_table(report["grid"]) + [""]
        notes = sorted({f"{name}: {result['note']}" for record in report["grid"]
                        for name, result in record["peers"].items() if result.get("note")})
        lines += ["Notes on the peers: " + "; ".join(notes) + ".", ""]
    if report.get("accuracy"):
        lines += ["## Accuracy", ""] + accuracy_tables(report["accuracy"]) + [""]
    elif report.get("accuracy_skipped"):
        lines += ["## Accuracy", "", f"Skipped: {report['accuracy_skipped']}", ""]
    lines += ["## Method", "", (__doc__ or "").split("\n\n", 2)[-1].strip(), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Throughput (rows or elements per second) against N, one panel per operation and C, one
    colour per peer and one line style per D, at kappa ~ D (or the first regime)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = report["grid"]
    regimes = {r["kappa"] for r in records}
    regime = "~D" if "~D" in regimes else sorted(regimes)[0]
    ops_present = [op for op in OPS if any(r["op"] == op for r in records)]
    classes = sorted({r["C"] for r in records if r["C"] is not None})
    panels = [(op, c) for op in ops_present if op not in SPECIAL_OPS for c in classes]
    panels += [(op, None) for op in ops_present if op in SPECIAL_OPS]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    colours = {"penact": "C0", "composite": "C1", "scipy": "C2", "tfp-jax": "C3", LIMIT: "k"}
    styles = ["-", "--", ":", "-."]
    dims = sorted({r["D"] for r in records})
    for ax, (op, wanted_classes) in zip(axes.flat, panels):
        for dim_index, dim in enumerate(dims):
            chosen = sorted((r for r in records if r["op"] == op and r["D"] == dim and r["kappa"] == regime
                             and r["C"] == wanted_classes), key=lambda r: r["N"])
            for name in PEERS + (LIMIT,):
                points = [(r["N"], r["N"] / r["peers"][name]["time_s"]) for r in chosen
                          if name in r["peers"] and r["peers"][name]["status"] == "ok"]
                if points:
                    ax.plot(*zip(*points), styles[dim_index % len(styles)], marker="o", markersize=3,
                            color=colours[name], label=f"{name} D={dim}")
        title = f"{op}" + ("" if wanted_classes is None else f", C={wanted_classes}") + f", kappa {regime}"
        ax.set(xscale="log", yscale="log", title=title, xlabel="N",
               ylabel="elements/s" if op in SPECIAL_OPS else "rows/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    env = report["environment"]
    figure.suptitle(f"penact bench on {env['device_name']} ({env['torch_threads']} threads), "
                    f"{env['date'][:10]}, {report['settings']['dtype']}", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


class _NoProgress:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark described by parsed ``args``; writes the results and prints the tables."""
    settings = settings_from_args(args)
    started = time.perf_counter()
    env = environment(settings)
    bandwidth = measure_bandwidth(settings.device)
    total = count_grid_cases(settings) + (len(HEADLINE_TARGETS) + 1 if settings.headline else 0) + \
        (3 if settings.accuracy else 0)
    if settings.progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=total, desc="penact bench", unit="case", dynamic_ncols=True, file=sys.stderr)
    else:
        progress = _NoProgress()
    report: dict[str, Any] = dict(environment=env, bandwidth=bandwidth, settings=dict(
        device=str(settings.device), dtype=str(settings.dtype).replace("torch.", ""), dims=settings.dims,
        classes=settings.classes, sizes=settings.sizes, regimes=settings.regimes,
        regime_ranges_times_D={r: REGIMES[r] for r in settings.regimes}, ops=settings.ops, peers=settings.peers,
        warmup=settings.warmup, min_repeats=settings.min_repeats, max_repeats=settings.max_repeats,
        target_s=settings.target_s, max_call_s=settings.max_call_s, quick=settings.quick, seed=settings.seed,
        radius=RADIUS))
    report["unavailable_peers"] = {name: _peer_available(name, settings) for name in settings.peers
                                   if _peer_available(name, settings)}
    try:
        if settings.headline:
            report["headline"] = run_headline(settings, progress)
        report["grid"] = run_grid(settings, bandwidth, progress)
        if settings.accuracy:
            mp = _load_mp_reference()
            if mp is None:
                report["accuracy_skipped"] = "needs mpmath and tests/mp_reference.py (run from a source checkout)"
            else:
                report["accuracy"] = []
                for section in (accuracy_special, accuracy_density, accuracy_sample):
                    progress.set_postfix_str(f"accuracy: {section.__name__}")
                    report["accuracy"] += section(settings, mp)
                    progress.update(1)
    finally:
        progress.close()
    loads = [record["load_1min"] for record in report["grid"]]
    report["load_summary"] = (f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"
                              if loads else None)
    report["uptime_end"] = _uptime()
    report["loadavg_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started

    settings.out.mkdir(parents=True, exist_ok=True)
    stem = settings.out / results_stem(settings, env)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown_report(report)
    stem.with_suffix(".md").write_text(text)
    if settings.plot and report["grid"]:
        plot(report, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem}.json, {stem}.md" + (f", {stem}.png" if settings.plot and report["grid"] else ""))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m penact.bench``, ``benchmarks/run.py``); ``penact bench`` is the same."""
    parser = add_arguments(argparse.ArgumentParser(prog="penact bench", description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())

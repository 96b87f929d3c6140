"""The accuracy of every peer, beside its speed, per family:

- ``special``: the family's functions of the parameters against mpmath at 50 digits: the sphere's
  ``log I_v``, ``A(v, x)`` and ``log C_D`` at ``v = D/2 - 1`` (``tests/mp_reference.py``), the
  rectified ``log z(w; s, m)`` of one coordinate (``log_partition`` at D = 1) over ``s w`` in
  [-1e4, 1e4];
- ``density``: ``log_prob``, ``log_prob_all`` and ``log_marginal`` against the float64 twin with
  the normalizers from mpmath;
- ``sample``: the z-score of a sample statistic's mean against its exact expectation (the
  sphere's ``mu . u`` against ``A_D(kappa)``, the rectified mean coordinate against
  ``E[a_j]``), and the distance of the draws from the support.

Non-finite outputs are counted and shown.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from penact import ops, reference
from .families import ELEMENT_OPS, FamilyBench, mp_log_z
from .harness import Settings
from .peers import (LIMIT, PENACT_SPECIAL, SCIPY_SPECIAL, peers_for, tfp_modules, tfp_rectified_functions,
                    tfp_sphere_functions, unavailable)
from .problems import Problem
from .runs import dtype_name

SECTIONS = ("special", "density", "sample")


def load_mp_reference() -> ModuleType | None:
    """``tests/mp_reference.py`` of the source tree (50-digit references), or None."""
    path = Path(__file__).resolve().parents[2] / "tests" / "mp_reference.py"
    if not path.exists() or importlib.util.find_spec("mpmath") is None:
        return None
    spec = importlib.util.spec_from_file_location("penact_mp_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_section(section: str, settings: Settings, family: FamilyBench, mp: ModuleType) -> list[dict]:
    """The records of one section (``SECTIONS``) for ``family``, each tagged with the family's name."""
    if section == "special":
        records = _SPECIAL[family.name](settings, family, mp) if family.name in _SPECIAL else []
    else:
        records = (accuracy_density if section == "density" else accuracy_sample)(settings, family, mp)
    return [dict(record, family=family.name) for record in records]


def error_summary(values: np.ndarray, truth: np.ndarray, points: list, floor: float = 0.0) -> dict:
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


def _measured(settings: Settings, name: str) -> bool:
    return name in settings.peers and unavailable(name, settings) is None


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().double().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# special


def _special_records(op: str, dtype: torch.dtype, outputs: dict[str, np.ndarray], truth: np.ndarray, points: list,
                     reference_name: str, floor: float = 0.0) -> list[dict]:
    return [dict(section="special", op=op, peer=name, dtype=dtype_name(dtype), reference=reference_name,
                 **error_summary(values, truth, points, floor)) for name, values in outputs.items()]


def _special_sphere(settings: Settings, family: FamilyBench, mp: ModuleType) -> list[dict]:
    """``log I_v``, ``A(v, x)``, ``log C_D`` of each peer against mpmath at ``v = D/2 - 1`` and
    kappa at the edges of the documented range (docs/model.md, section 6) and of each regime."""
    multiples = sorted({m for regime in settings.regimes[family.name] for m in family.kappa_multiples[regime]})
    points = [(dim, kappa) for dim in settings.dims for kappa in [1e-10] + [m * dim for m in multiples] + [1e7]]
    mp_functions = {"log_bessel_iv": lambda dim, x: mp.log_besseli(0.5 * dim - 1, x),
                    "bessel_iv_ratio": lambda dim, x: mp.bessel_ratio(0.5 * dim - 1, x),
                    "vmf_log_normalizer": lambda dim, x: mp.vmf_log_normalizer(dim, x)}
    records = []
    for op in (op for op in ELEMENT_OPS if op in settings.ops):
        for dtype in (torch.float64, torch.float32):
            # every peer sees the same inputs: the dtype-rounded arguments, and the reference at those
            args = [float(torch.tensor(kappa, dtype=dtype)) for _, kappa in points]
            truth = np.array([float(mp_functions[op](dim, x)) for (dim, _), x in zip(points, args)])
            labels = [dict(D=dim, kappa=x) for (dim, _), x in zip(points, args)]
            outputs = {"penact": np.array([float(PENACT_SPECIAL[op](0.5 * dim - 1, dim, torch.tensor(
                [x], dtype=dtype, device=settings.device))) for (dim, _), x in zip(points, args)])}
            if dtype == torch.float64 and _measured(settings, "scipy"):
                with np.errstate(all="ignore"):
                    outputs["scipy"] = np.array([SCIPY_SPECIAL[op](0.5 * dim - 1, dim, np.float64(x))
                                                 for (dim, _), x in zip(points, args)])
            if _measured(settings, "tfp-jax"):
                jnp, fn = tfp_modules()[0][1], tfp_sphere_functions()[op]
                np_dtype = np.float64 if dtype == torch.float64 else np.float32
                outputs["tfp-jax"] = np.array([float(fn(dim if op == "vmf_log_normalizer" else 0.5 * dim - 1,
                                                        jnp.asarray(np.array([x], dtype=np_dtype)))[0])
                                               for (dim, _), x in zip(points, args)])
            records += _special_records(op, dtype, outputs, truth, labels, "mpmath 50 digits (tests/mp_reference.py)")
    return records


# s w from the far lower tail (where the slab's mass is exp(-t^2 / 2)-small) to the far upper one
_RECTIFIED_T = (-1e4, -1e3, -30.0, -8.0, -2.0, -0.5, 0.0, 0.5, 2.0, 8.0, 30.0, 1e3, 1e4)


def _special_rectified(settings: Settings, family: FamilyBench, mp: ModuleType) -> list[dict]:
    """``log z(w; s, m)`` of each peer (``log_partition`` of one coordinate, a class per point)
    against mpmath, for ``t = s w`` in ``_RECTIFIED_T``, ``s`` in {0.5, 2}, ``m`` in {0, 1e-3, 1};
    relative errors floored at 1 (log z crosses zero)."""
    if "log_partition" not in settings.ops:
        return []
    records = []
    for dtype in (torch.float64, torch.float32):
        rounded = lambda value: float(torch.tensor(value, dtype=dtype))  # noqa: E731
        points, truth, outputs = [], [], {}
        for s in (0.5, 2.0):
            for m in (0.0, 1e-3, 1.0):
                s_, m_ = rounded(s), rounded(m)
                w = [rounded(t / s) for t in _RECTIFIED_T]
                points += [dict(t=s_ * w_, s=s_, m=m_) for w_ in w]
                truth += [float(mp_log_z(w_, s_, m_)) for w_ in w]
                weight = torch.tensor(w, dtype=dtype, device=settings.device)[:, None]
                scale = torch.tensor([s_], dtype=dtype, device=settings.device)
                zero_mass = torch.tensor([m_], dtype=dtype, device=settings.device)
                values = {"penact": ops.rectified_log_partition(weight, scale, zero_mass)}
                if _measured(settings, "composite"):
                    values["composite"] = reference.rectified_log_partition(weight, scale, zero_mass)
                if _measured(settings, "tfp-jax"):
                    jnp = tfp_modules()[0][1]
                    values["tfp-jax"] = tfp_rectified_functions()["log_partition"](
                        *(jnp.asarray(t.cpu().numpy()) for t in (weight, scale, zero_mass)))
                for name, value in values.items():
                    outputs.setdefault(name, []).append(_as_numpy(value))
        records += _special_records("log_partition", dtype, {name: np.concatenate(v) for name, v in outputs.items()},
                                    np.array(truth), points, "mpmath 50 digits, closed form with ncdf", floor=1.0)
    return records


_SPECIAL = {"sphere": _special_sphere, "rectified": _special_rectified}


# ---------------------------------------------------------------------------------------------
# density and sample: the same for every family


def accuracy_density(settings: Settings, family: FamilyBench, mp: ModuleType) -> list[dict]:
    """``log_prob``, ``log_prob_all`` and ``log_marginal`` of each peer against the float64 twin
    with the normalizers from mpmath (C = 10, N = 2000 per D and regime); relative errors with
    the denominator floored at 1 (a log-density crosses zero)."""
    records = []
    num_classes, size = 10, 2_000
    wanted = [op for op in ("log_prob", "log_prob_all", "log_marginal") if op in settings.ops]
    for dim in settings.dims:
        for regime in settings.regimes[family.name]:
            # float32-representable inputs, so that float32 and float64 peers see the same values
            base = Problem.of_regime(family, dim, num_classes, regime, size, settings.device, torch.float32,
                                     settings.seed)
            exact = base.cast(torch.float64)
            log_partition = family.mp_log_partition(mp, exact.dist).to(settings.device)
            truth_all = family.log_prob_all(reference, exact.dist, exact.x, log_partition)
            truth = {"log_prob": truth_all.gather(1, exact.labels[:, None])[:, 0], "log_prob_all": truth_all,
                     "log_marginal": torch.logsumexp(truth_all + torch.log_softmax(log_partition, dim=0), dim=1)}
            points = [dict(D=dim, regime=regime, C=num_classes, N=size)]
            for dtype in (torch.float32, torch.float64):
                problem = base.cast(dtype)
                for op in wanted:
                    expected = _as_numpy(truth[op])
                    for peer in peers_for(family, op, problem, settings):
                        # scipy computes in float64 whatever the inputs: its float64 row says it all
                        if peer.skip or peer.name == LIMIT or (peer.name == "scipy" and dtype != torch.float64):
                            continue
                        with warnings.catch_warnings(), np.errstate(all="ignore"):
                            warnings.simplefilter("ignore")
                            values = _as_numpy(peer.fn())
                        records.append(dict(section="density", op=op, peer=peer.name, dtype=dtype_name(dtype),
                                            D=dim, regime=regime,
                                            reference="float64 twin with mpmath normalizers; rel. error floored at 1",
                                            **error_summary(values, expected, points * expected.size, floor=1.0)))
    return records


def accuracy_sample(settings: Settings, family: FamilyBench, mp: ModuleType) -> list[dict]:
    """Samples of each peer of one class per regime: the z-score of the mean of the family's
    statistic against its expectation from mpmath (|z| > 4 flags a biased sampler, or another
    law), the distance from the support, and the count of non-finite rows."""
    records = []
    size = settings.accuracy_sample_n
    for dim in settings.dims:
        for regime in settings.regimes[family.name]:
            problem = Problem.of_regime(family, dim, 1, regime, size, settings.device, settings.dtype, settings.seed)
            expected = family.mp_expectation(mp, problem.dist)
            where = dict(section="sample", op="sample", D=dim, regime=regime, statistic=family.statistic,
                         expectation=family.expectation, support_error=family.support_error)
            for peer in peers_for(family, "sample", problem, settings):
                if peer.skip or peer.name == LIMIT:
                    continue
                guess = peer.estimate(settings.timing.max_call_s) if peer.estimate else None
                if guess is not None and guess > settings.timing.max_call_s:
                    records.append(dict(where, peer=peer.name, error=f"skipped: predicted {guess:.1f} s > "
                                                                      f"--max-call-s {settings.timing.max_call_s:g}"))
                    continue
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    try:
                        x = _as_numpy(peer.fn())
                    except Exception as error:
                        records.append(dict(where, peer=peer.name, error=f"{type(error).__name__}: {error}"))
                        continue
                finite = np.isfinite(x).all(axis=1)
                statistic = family.sample_statistic(problem.dist, x[finite])
                z = ((statistic.mean() - expected) / (statistic.std(ddof=1) / math.sqrt(statistic.size))
                     if statistic.size > 1 else float("nan"))
                records.append(dict(where, peer=peer.name,
                                    dtype=("float64" if peer.name == "scipy" else dtype_name(settings.dtype)),
                                    n=size, mean=float(statistic.mean()), expected=expected, z=float(z),
                                    distance_from_support=family.distance_from_support(problem.dist, x[finite]),
                                    n_nonfinite=int((~finite).sum())))
    return records

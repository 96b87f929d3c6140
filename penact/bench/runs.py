"""The two timed parts of ``penact bench``: the grid (family x D x regime x C x N, every
operation of the family beside its peers and its limit) and each family's headline set (its
issue's targets on the ratios to the limits, and the peak memory of ``sample``)."""
from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Iterator

import torch

from .families import ELEMENT_OPS, PARAMETER_OPS, FamilyBench, Headline
from .harness import Settings, measure, peak_memory, predict, release_memory
from .peers import LIMIT, LIMIT_NAMES, PEERS, peers_for
from .problems import ElementProblem, Problem


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------------
# The grid


Case = tuple[str, int | None, int | None]  # (op, C or None, N or None)


def grid_cases(settings: Settings, family: FamilyBench) -> Iterator[tuple[int, str, int, int, list[Case]]]:
    """``(D, regime, C, N, [(op, C or None, N or None)])`` for each set of inputs of the grid, N
    ascending (so that slow peers can be predicted). An operation independent of the regime runs
    at the family's default regime only (or the first of this run's), an element operation once
    per N (no C), a parameter operation once per C (no N)."""
    ops = [op for op in family.ops if op in settings.ops]
    regimes = settings.regimes[family.name]
    base_regime = family.default_regime if family.default_regime in regimes else regimes[0]
    for dim in settings.dims:
        for regime in regimes:
            for class_index, num_classes in enumerate(settings.classes):
                for size_index, size in enumerate(settings.sizes):
                    cases = []
                    for op in ops:
                        if op not in family.regime_ops and regime != base_regime:
                            continue
                        if op in ELEMENT_OPS:
                            if class_index == 0:
                                cases.append((op, None, size))
                        elif op in PARAMETER_OPS:
                            if size_index == 0:
                                cases.append((op, num_classes, None))
                        else:
                            cases.append((op, num_classes, size))
                    if cases:
                        yield dim, regime, num_classes, size, cases


def count_grid_cases(settings: Settings, family: FamilyBench) -> int:
    return sum(len(cases) for *_, cases in grid_cases(settings, family))


def bytes_moved(op: str, size: int | None, dim: int, num_classes: int | None, itemsize: int) -> int:
    """The bytes an operation must at least read or write (its inputs of size N x D and outputs)."""
    if op in ELEMENT_OPS:
        return 2 * size * itemsize  # read x, write the result
    if op in PARAMETER_OPS:
        return num_classes * (dim + 1) * itemsize  # read W, write [C]
    rows = size * dim * itemsize
    return {"sample": rows, "log_prob": rows + size * itemsize, "log_prob_backward": 2 * rows,
            "log_prob_all": rows + size * num_classes * itemsize, "log_marginal": rows + size * itemsize,
            "rsample_backward": 2 * rows}[op]


def run_grid(settings: Settings, family: FamilyBench, bandwidth: dict, progress) -> list[dict]:
    """Every operation of ``family`` on the grid (see :func:`grid_cases`)."""
    records = []
    history: dict[tuple, list[tuple[int, float]]] = {}
    for dim, regime, num_classes, size, cases in grid_cases(settings, family):
        records += _measure_cases(settings, family, cases, dim, num_classes, size, regime, bandwidth, history, progress)
        release_memory(settings.device)
    return records


def _measure_cases(settings, family, cases, dim, num_classes, size, regime, bandwidth, history, progress) -> list[dict]:
    """The operations ``cases`` on one set of inputs of the grid."""
    itemsize = torch.tensor([], dtype=settings.dtype).element_size()
    problem = (Problem.of_regime(family, dim, num_classes, regime, size, settings.device, settings.dtype, settings.seed)
               if any(op not in ELEMENT_OPS for op, _, _ in cases) else None)
    elements = (ElementProblem(dim, size, family.argument_range(dim, regime), settings.device, settings.dtype)
                if any(op in ELEMENT_OPS for op, _, _ in cases) else None)
    records = []
    for op, case_classes, case_size in cases:
        progress.set_postfix_str(f"{family.name} {op} D={dim} C={case_classes or '-'} {regime} "
                                 f"N={f'{case_size:.0e}' if case_size else '-'}")
        key = (family.name, op, dim, case_classes, regime)
        predicted = {name: predict(history.get(key + (name,), []), case_size) for name in PEERS + (LIMIT,)} \
            if case_size else {}
        predicted = {name: value for name, value in predicted.items() if value is not None}
        results = measure(peers_for(family, op, elements if op in ELEMENT_OPS else problem, settings),
                          settings.timing, predicted)
        for name, result in results.items():
            # a peer's warm-up that ran past the budget predicts the larger sizes too
            seconds = result["time_s"] if result["status"] == "ok" else result["warmup_s"]
            if seconds is not None:
                history.setdefault(key + (name,), []).append((case_size, seconds))
        moved = bytes_moved(op, case_size, dim, case_classes, itemsize)
        records.append(dict(family=family.name, op=op, D=dim, C=case_classes, N=case_size, regime=regime,
                            dtype=dtype_name(settings.dtype), device=str(settings.device),
                            load_1min=os.getloadavg()[0], bytes_moved=moved,
                            bandwidth_bound_s=moved / bandwidth["bytes_per_s"], peers=results))
        progress.update(1)
    return records


# ---------------------------------------------------------------------------------------------
# The headline


def run_headline(settings: Settings, family: FamilyBench, progress, headline: Headline | None = None) -> dict:
    """``family``'s headline set (its own, or ``headline``): the targeted operations timed against
    their limits, and the peak memory of ``sample`` over the bytes of its output."""
    headline = headline or family.headline
    problem = Problem.of_headline(family, headline, settings.device, settings.dtype, settings.seed)
    chosen = dataclasses.replace(settings, peers=settings.headline_peers)
    entries = {}
    for op, target in headline.targets.items():
        progress.set_postfix_str(f"headline {family.name} {op}")
        results = measure(peers_for(family, op, problem, chosen), settings.headline_timing)
        limit, fastest = results[LIMIT]["time_s"], results[LIMIT]["min_s"]
        ratios = {name: (r["time_s"] / limit if r["status"] == "ok" and limit else None) for name, r in results.items()}
        ratios_of_minimums = {name: (r["min_s"] / fastest if r["status"] == "ok" and fastest else None)
                              for name, r in results.items()}
        entries[op] = dict(limit=LIMIT_NAMES[op], target=target, peers=results, ratio_to_limit=ratios,
                           ratio_of_minimums=ratios_of_minimums,
                           met=(ratios.get("penact") is not None and ratios["penact"] <= target))
        progress.update(1)
    report = dict(family=family.name, issue=headline.issue, N=headline.size, D=headline.dim, C=headline.classes,
                  regime=family.headline_regime(headline), dtype=dtype_name(settings.dtype), ops=entries)
    if "sample" in entries:
        progress.set_postfix_str(f"headline {family.name} memory")
        report["memory"] = _sample_memory(family, problem, chosen, entries["sample"]["peers"], headline.memory_target)
        progress.update(1)
    release_memory(settings.device)
    return report


def count_headline_steps(settings: Settings, family: FamilyBench) -> int:
    return len(family.headline.targets) + ("sample" in family.headline.targets)


def _sample_memory(family, problem, settings, timed: dict, target: float | None) -> dict:
    """The median over 3 calls of each peer's peak extra memory in ``sample`` (peers that were
    skipped or failed when timed are skipped here for the same reason)."""
    memory = {}
    for peer in peers_for(family, "sample", problem, settings):
        if timed[peer.name]["status"] != "ok":
            memory[peer.name] = dict(skipped=timed[peer.name]["reason"], status=timed[peer.name]["status"])
            continue
        try:
            runs = [peak_memory(peer.fn, settings.device) for _ in range(3)]
        except Exception as error:
            memory[peer.name] = dict(skipped=f"{type(error).__name__}: {error}", status="error")
            continue
        peaks = [run["peak_bytes"] for run in runs if run["peak_bytes"] is not None]
        output = runs[0]["output_bytes"]
        peak = statistics.median(peaks) if peaks else None
        memory[peer.name] = dict(peak_bytes=peak, output_bytes=output, runs_bytes=peaks, method=runs[0]["method"],
                                 ratio=(peak / output if peak is not None and output else None))
    penact_ratio = memory.get("penact", {}).get("ratio")
    return dict(target=target, peers=memory,
                met=(None if target is None or penact_ratio is None else penact_ratio <= target))

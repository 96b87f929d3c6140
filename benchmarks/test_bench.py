"""pytest-benchmark entry points: ``pytest benchmarks/`` (apart from the test suite in ``tests/``).

Every operation of ``penact bench`` for every peer and its limit, on the issue-2 headline inputs
(``N = 1e5, D = 512, C = 100``, kappa in [50, 500]; override with ``PENACT_BENCH_N``, ``_D``,
``_C``), grouped by operation so that pytest-benchmark's table puts the peers side by side
(``--benchmark-group-by=group``, the default). Peers that are not installed, or whose call would
take longer than ``PENACT_BENCH_MAX_CALL_S`` (default 30 s), are skipped with the reason. The
full grid, the accuracy section and the plots come from ``penact bench`` / ``benchmarks/run.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import pytest
import torch

from penact import bench

N = int(float(os.environ.get("PENACT_BENCH_N", bench.HEADLINE["N"])))
D = int(os.environ.get("PENACT_BENCH_D", bench.HEADLINE["D"]))
C = int(os.environ.get("PENACT_BENCH_C", bench.HEADLINE["C"]))
MAX_CALL_S = float(os.environ.get("PENACT_BENCH_MAX_CALL_S", 30.0))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PEERS = bench.PEERS + (bench.LIMIT,)


def _settings(device: str) -> bench.Settings:
    parser = bench.add_arguments(argparse.ArgumentParser())
    return bench.settings_from_args(parser.parse_args(["--device", device, "--max-call-s", str(MAX_CALL_S)]))


@pytest.fixture(scope="module", params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def problems(device):
    """The headline inputs on ``device`` (one problem for densities, one for special functions)."""
    kappa = torch.linspace(*bench.HEADLINE["kappa"], C, dtype=torch.float64)
    settings = _settings(device)
    return dict(settings=settings,
                density=bench.Problem(D, kappa, N, settings.device, settings.dtype, seed=0),
                special=bench.SpecialProblem(D, N, (0.5 * D, 2.0 * D), settings.device, settings.dtype))


@pytest.mark.parametrize("peer_name", PEERS)
@pytest.mark.parametrize("op", bench.OPS)
def test_operation(benchmark, problems, op, peer_name):
    settings = problems["settings"]
    problem = problems["special" if op in bench.SPECIAL_OPS else "density"]
    peers = {peer.name: peer for peer in bench.peers_for(op, problem, settings)}
    if peer_name not in peers:
        pytest.skip(f"{op} has no {peer_name}")
    peer = peers[peer_name]
    if peer.skip:
        pytest.skip(peer.skip)
    if peer.estimate is not None and (guess := peer.estimate(MAX_CALL_S)) > MAX_CALL_S:
        pytest.skip(f"predicted {guess:.1f} s per call > PENACT_BENCH_MAX_CALL_S = {MAX_CALL_S:g}")
    first = bench._timed_call(peer.fn, peer.clock)  # warm-up (and jit compilation)
    if first > MAX_CALL_S:
        pytest.skip(f"took {first:.1f} s > PENACT_BENCH_MAX_CALL_S = {MAX_CALL_S:g}")
    benchmark.group = f"{op} (N={N}, D={D}, C={C}, {settings.device})"
    benchmark.extra_info.update(op=op, peer=peer_name, note=peer.note, N=N, D=D, C=C)
    fn = peer.fn
    if peer.clock == "cuda":
        def fn():
            out = peer.fn()
            torch.cuda.synchronize()
            return out
    rounds = max(3, min(20, math.ceil(1.0 / max(first, 1e-6))))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def test_bench_writes_results(tmp_path):
    """A tiny end-to-end run of ``penact bench``: it writes the JSON, Markdown and PNG it promises."""
    code = bench.cli(["--D", "64", "--C", "3", "--N", "200,400", "--kappa", "~D", "--no-headline",
                       "--peers", "penact,composite,scipy", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    written = sorted(path.suffix for path in tmp_path.iterdir())
    assert written == [".json", ".md", ".png"]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["environment"]["torch_threads"] >= 1
    ops_measured = {record["op"] for record in report["grid"]}
    assert ops_measured == set(bench.OPS)
    for record in report["grid"]:
        assert record["peers"]["penact"]["status"] == "ok", record
        assert record["peers"]["penact"]["time_s"] > 0
    sections = {record["section"] for record in report["accuracy"]}
    assert sections == {"special", "density", "sample"}

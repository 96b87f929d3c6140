"""pytest-benchmark entry points: ``pytest benchmarks/`` (apart from the test suite in ``tests/``).

Every operation of every family of ``penact bench`` for every peer and its limit, on each family's
headline inputs (``N = 1e5, D = 512, C = 100``; override with ``PENACT_BENCH_N``, ``_D``, ``_C``),
grouped by family and operation so that pytest-benchmark's table puts the peers side by side
(``--benchmark-group-by=group``, the default). Peers that are not installed, have no counterpart,
or (other than penact and the limit) whose call would take longer than ``PENACT_BENCH_MAX_CALL_S``
(default 30 s) are skipped with the reason. The full grid, the accuracy section and the plots come from ``penact bench`` /
``benchmarks/run.py``; the end-to-end tests below run both, and the scripts beside this file, at
tiny sizes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import penact
from penact import bench
from penact.bench.families import ELEMENT_OPS, bench_family
from penact.bench.harness import timed_call
from penact.bench.peers import LIMIT, PEERS, peers_for
from penact.bench.problems import ElementProblem, Problem
from penact.bench.runs import run_headline

HERE = Path(__file__).resolve().parent
# the scripts import the penact of this checkout, as the tests do
SCRIPT_ENV = dict(os.environ,
                  PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
SIZES = {key: int(float(os.environ[f"PENACT_BENCH_{key}"])) for key in ("N", "D", "C")
         if f"PENACT_BENCH_{key}" in os.environ}
MAX_CALL_S = float(os.environ.get("PENACT_BENCH_MAX_CALL_S", 30.0))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(name, op) for name in penact.family_names() for op in bench_family(name).ops]


class _Inputs:
    """Each family's headline inputs on one device, built on first use."""

    def __init__(self, device: str):
        self.settings = bench.parse_settings(["--device", device, "--max-call-s", str(MAX_CALL_S)])
        self._problems: dict[tuple[str, bool], Problem | ElementProblem] = {}

    def headline(self, family):
        return dataclasses.replace(family.headline, size=SIZES.get("N", family.headline.size),
                                   dim=SIZES.get("D", family.headline.dim),
                                   classes=SIZES.get("C", family.headline.classes))

    def problem(self, family, op: str):
        key = (family.name, op in ELEMENT_OPS)
        if key not in self._problems:
            headline, settings = self.headline(family), self.settings
            self._problems[key] = (
                ElementProblem(headline.dim, headline.size, family.argument_range(headline.dim, family.default_regime),
                               settings.device, settings.dtype) if op in ELEMENT_OPS
                else Problem.of_headline(family, headline, settings.device, settings.dtype, seed=0))
        return self._problems[key]


@pytest.fixture(scope="module", params=DEVICES)
def inputs(request) -> _Inputs:
    return _Inputs(request.param)


@pytest.mark.parametrize("peer_name", PEERS + (LIMIT,))
@pytest.mark.parametrize("family_name, op", CASES)
def test_operation(benchmark, inputs, family_name, op, peer_name):
    family = bench_family(family_name)
    problem = inputs.problem(family, op)
    peers = {peer.name: peer for peer in peers_for(family, op, problem, inputs.settings)}
    if peer_name not in peers:
        pytest.skip(f"{op} has no {peer_name}")
    peer = peers[peer_name]
    if peer.skip:
        pytest.skip(peer.skip)
    # the time budget as penact bench applies it: penact and the limit are measured however long they take
    if peer.budgeted and peer.estimate is not None and (guess := peer.estimate(MAX_CALL_S)) > MAX_CALL_S:
        pytest.skip(f"predicted {guess:.1f} s per call > PENACT_BENCH_MAX_CALL_S = {MAX_CALL_S:g}")
    first = timed_call(peer.fn, peer.clock)  # warm-up (and jit compilation)
    if peer.budgeted and first > MAX_CALL_S:
        pytest.skip(f"took {first:.1f} s > PENACT_BENCH_MAX_CALL_S = {MAX_CALL_S:g}")
    headline = inputs.headline(family)
    benchmark.group = f"{family_name} {op} (N={headline.size}, D={headline.dim}, C={headline.classes}, " \
                      f"{inputs.settings.device})"
    benchmark.extra_info.update(family=family_name, op=op, peer=peer_name, note=peer.note, N=headline.size,
                                D=headline.dim, C=headline.classes)
    rounds = max(3, min(20, math.ceil(1.0 / max(first, 1e-6))))
    benchmark.pedantic(_synchronized(peer.fn) if peer.clock == "cuda" else peer.fn, rounds=rounds, iterations=1,
                       warmup_rounds=0)


def _synchronized(fn):
    """``fn`` that waits for the GPU (pytest-benchmark times the host)."""
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    return call


def test_bench_writes_results(tmp_path):
    """A tiny end-to-end run of ``penact bench``: it writes the JSON, Markdown and PNG it promises,
    with every operation of every family, penact measured in every case, and the accuracy sections."""
    code = bench.cli(["--D", "64", "--C", "3", "--N", "200,400", "--regime", "~D,bulk", "--no-headline",
                      "--peers", "penact,composite,scipy,power-spherical", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    written = sorted(path.suffix for path in tmp_path.iterdir())
    assert written == [".json", ".md", ".png"]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["environment"]["torch_threads"] >= 1
    assert report["settings"]["families"] == list(penact.family_names())
    for name in penact.family_names():
        records = [record for record in report["grid"] if record["family"] == name]
        assert {record["op"] for record in records} == set(bench_family(name).ops)
        for record in records:
            assert record["peers"]["penact"]["status"] == "ok", record
            assert record["peers"]["penact"]["time_s"] > 0
        sections = {record["section"] for record in report["accuracy"] if record["family"] == name}
        assert sections == {"special", "density", "sample"}, name
    # a peer without a counterpart in a family says so in that family's cases
    rectified = [record for record in report["grid"] if record["family"] == "rectified"]
    assert {record["peers"]["scipy"]["status"] for record in rectified} == {"n/a"}
    assert {record["peers"]["power-spherical"]["status"] for record in rectified} == {"n/a"}


@pytest.mark.parametrize("family_name", penact.family_names())
def test_headline(family_name):
    """Each family's headline at tiny sizes: ratios to the limits, targets and the memory of ``sample``."""
    family = bench_family(family_name)
    settings = bench.parse_settings(["--quick", "--no-progress"])
    headline = dataclasses.replace(family.headline, size=2_000, dim=64, classes=5)
    result = run_headline(settings, family, bench.NoProgress(), headline)
    assert set(result["ops"]) == set(family.headline.targets)
    for entry in result["ops"].values():
        assert entry["ratio_to_limit"]["penact"] > 0
        assert entry["met"] in (True, False)
    assert result["memory"]["peers"]["penact"]["output_bytes"] == 2_000 * 64 * 4


@pytest.mark.parametrize("script, arguments", [
    ("bench_rectified.py", ["--n", "2000", "--dim", "64", "--classes", "5", "--rounds", "3"]),
    ("bench_rectified.py", ["--n", "2000", "--dim", "64", "--classes", "5", "--rounds", "3", "--tail-heavy"]),
    ("bench_distributions.py", ["--N", "500", "--D", "16", "--C", "5", "--rounds", "3", "--skip", "tfp"]),
])
def test_script_runs(tmp_path, script, arguments):
    """The scripts beside this file keep their command lines (bench_cuda.py needs a GPU: see below)."""
    result = subprocess.run([sys.executable, str(HERE / script), *arguments], capture_output=True, text=True,
                            cwd=HERE.parent, env=SCRIPT_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "target" in result.stdout or "labelled kernel" in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bench_cuda.py measures a GPU")
def test_bench_cuda_runs(tmp_path):
    out = tmp_path / "cuda.json"
    result = subprocess.run([sys.executable, str(HERE / "bench_cuda.py"), "--n", "20000", "--dims", "64",
                             "--classes", "10", "--repeat", "3", "--out", str(out)], capture_output=True, text=True,
                            cwd=HERE.parent, env=SCRIPT_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {row["op"] for row in report["results"]} >= {"sample", "log_prob", "log_prob_backward", "log_prob_all"}

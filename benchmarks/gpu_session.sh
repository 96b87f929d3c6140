#!/usr/bin/env bash
# The prepared check of a session that is lent a GPU (the device tool: one call, ~9 minutes):
#
#   git rev-parse HEAD > .git-commit   (here: the machine gets the working tree without .git)
#   run(command="bash benchmarks/gpu_session.sh", carry=[".wheels", ".git-commit"], timeout_s=560)
#
# in the order of what matters most, each step under its own time limit so that a hang costs only
# that step, everything written to $OUT (at most 8 files come back):
#   env.txt        the GPU, driver, torch, commit
#   build.log      the build (sm_90 only: 80-100 s with 16 jobs)
#   checks.txt     bad labels on CUDA in processes of their own (the crash of 2026-11-27), then
#                  every CUDA operator at small sizes under compute-sanitizer's memcheck
#   tests.txt      the whole suite, 8 workers (a crashing test fails alone)
#   bench.txt/.json  benchmarks/bench_cuda.py
#   ncu.txt        Nsight Compute on the sampler and the labelled log-density
# .wheels (gitignored, carried) holds what the GPU image lacks: the TFP-on-JAX and PowerSpherical peers,
# fetched here with `pip download --no-deps --python-version 3.12 --only-binary=:all: -d .wheels
# tensorflow-probability decorator gast dm-tree power-spherical`.
set -u
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS FILE COMMAND...: run with a limit, append to FILE, note the exit status
  local name=$1 limit=$2 file=$3
  shift 3
  echo "== $name ($(date +%T), limit ${limit}s): $*" >>"$OUT/$file"
  timeout --signal=KILL "$limit" "$@" >>"$OUT/$file" 2>&1
  echo "== $name: exit $?" >>"$OUT/$file"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -1
  echo "commit $(git rev-parse HEAD 2>/dev/null || cat .git-commit 2>/dev/null || echo unknown)"
  git status --porcelain 2>/dev/null | head -20
} >"$OUT/env.txt" 2>&1

if compgen -G ".wheels/*.whl" >/dev/null; then
  step wheels 60 env.txt "$PY" -m pip install --no-deps --no-index --find-links .wheels tensorflow-probability \
    decorator gast dm-tree power-spherical
fi
step build 240 build.log env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 "$PY" -m pip install --no-build-isolation --no-deps \
  --no-index -e .

step bad-labels 120 checks.txt "$PY" -m pytest tests/test_parity.py -q -rfE -k "out_of_range_labels or skip_device_checks or graph_capture"
# Which throw crashes, if one does (each in its own process; exit -11 = SIGSEGV): torch's own C++
# error after CUDA is initialized, penact's from the CUDA glue before any launch, penact's after a
# kernel (the status read back), and the same under cuda-gdb for a backtrace.
for case in "torch.ones(3, device='cuda').view(2)" \
            "ops.vmf_sample(mu, k, y, -1.0, 7, 0)" \
            "ops.vmf_sample(mu, k, torch.tensor([0, 5], device='cuda'), 1.0, 7, 0)"; do
  step "throw: $case" 60 checks.txt "$PY" -c "
import torch; from penact import ops
mu = torch.nn.functional.normalize(torch.randn(5, 40, device='cuda'), dim=1); k = torch.rand(5, device='cuda'); y = torch.zeros(2, dtype=torch.long, device='cuda')
try:
    $case
except Exception as error:
    print(type(error).__name__, str(error).splitlines()[0])"
done
if grep -q "exit 139\|exit 245\|Segmentation" "$OUT/checks.txt" && command -v cuda-gdb >/dev/null; then
  step cuda-gdb 90 checks.txt cuda-gdb -batch -ex run -ex bt --args "$PY" -c "
import torch; from penact import ops
mu = torch.nn.functional.normalize(torch.randn(5, 40, device='cuda'), dim=1)
ops.vmf_sample(mu, torch.rand(5, device='cuda'), torch.tensor([0, 5], device='cuda'), 1.0, 7, 0)"
fi
cat >"$OUT/every_op.py" <<'PY'
# Every CUDA operator once, at small sizes, so that memcheck sees every kernel.
import torch
from penact import ops
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for dim in (2, 3, 70, 1030):
        c, n = 5, 37
        mu = torch.nn.functional.normalize(torch.randn(c, dim, generator=g, dtype=dtype), dim=1).cuda()
        kappa = (torch.rand(c, generator=g, dtype=dtype) * 50).cuda()
        labels = torch.randint(0, c, (n,), generator=g).cuda()
        x = ops.vmf_sample(mu, kappa, labels, 1.5, 1, 0)
        ops.vmf_sample(mu, kappa, labels, 1.5, 1, 0, dtype=torch.bfloat16 if dtype == torch.float32 else None)
        lp = ops.vmf_log_prob(x, mu * kappa[:, None], kappa, labels, 1.5)
        torch.ops.penact.vmf_log_prob_backward(lp, x, mu, labels, 1.5, True, True)
        ops.vmf_log_prob_all(x, mu, kappa, 1.5)
        ops.vmf_rsample_backward(x, x, mu, kappa, labels, 1.5)
        scale, mass = (torch.rand(dim, dtype=dtype) + 0.3).cuda(), torch.rand(dim, dtype=dtype).cuda()
        a = ops.rectified_sample(mu, scale, mass, labels, 2, 0)
        logz = ops.rectified_log_partition(mu, scale, mass)
        ops.rectified_coordinate_stats(mu, scale, mass)
        ops.rectified_log_prob(a, mu, scale, mass, logz, labels)
        ops.rectified_log_prob_all(a, mu, scale, mass, logz)
        torch.ops.penact.rectified_log_prob_backward(lp, a, mu, scale, mass, labels, True, True, True, True)
        ops.log_bessel_iv(kappa, kappa); ops.vmf_log_normalizer(dim, kappa)
torch.cuda.synchronize()
print("every operator ran")
PY
step memcheck 150 checks.txt compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" "$OUT/every_op.py"
rm -f "$OUT/every_op.py"

step tests 300 tests.txt "$PY" -m pytest tests -q -n 8 --timeout 120 -rfE -p no:cacheprovider
step bench 180 bench.txt "$PY" benchmarks/bench_cuda.py --repeat 5 --out "$OUT/bench.json"
step ncu 120 ncu.txt ncu --clock-control none -k "regex:sample_lane_team_kernel|row_kernel" -c 4 \
  --section SpeedOfLight --section Occupancy --section LaunchStats "$PY" -c "
import torch; from penact import ops
mu = torch.nn.functional.normalize(torch.randn(1000, 512, device='cuda'), dim=1); k = torch.rand(1000, device='cuda') * 450 + 50
y = torch.randint(0, 1000, (1000000,), device='cuda'); x = ops.vmf_sample(mu, k, y, 1.0, 1, 0)
ops.vmf_log_prob(x, mu, k, y, 1.0); torch.cuda.synchronize()"

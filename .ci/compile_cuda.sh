#!/usr/bin/env bash
# Compiles penact's CUDA back-end without a GPU and fails on any error or warning (CI has no GPU).
#   1. every csrc/cuda/*.cu with nvcc for each architecture in PENACT_CUDA_ARCHS (default "80 90"):
#      the kernels include no torch header, so nvcc alone suffices;
#   2. the core headers and the torch-free kernel interfaces (csrc/core/*.h, csrc/{launch,special,
#      vmf,rectified}.h) as host-only C++17 (g++), since the CPU back-end compiles them that way;
#   3. the torch glue (csrc/*.cpp with PENACT_WITH_CUDA), syntax only, when the
#      Python found first on PATH has a torch with CUDA headers; skipped with a message otherwise
#      (PENACT_REQUIRE_TORCH_CUDA=1 turns the skip into a failure).
# Usage: .ci/compile_cuda.sh            (NVCC, CXX and PYTHON override the tools)
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
CXX=${CXX:-g++}
PYTHON=${PYTHON:-python}
ARCHS=${PENACT_CUDA_ARCHS:-"80 90"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$work/build.log
: >"$log"

run() {  # echo a command, run it, keep its output in the log; stop on failure
  echo "+ $*" | cut -c1-300
  if ! "$@" >>"$log" 2>&1; then cat "$log"; echo "FAILED: $1" >&2; exit 1; fi
}

gencode=()
for arch in $ARCHS; do gencode+=(-gencode "arch=compute_${arch},code=sm_${arch}"); done

echo "== nvcc $("$NVCC" --version | tail -1)"
for source in csrc/cuda/*.cu; do
  start=$(date +%s)
  run "$NVCC" -std=c++17 -O3 -Icsrc "${gencode[@]}" -Xcompiler=-Wall,-Wextra -Werror all-warnings \
    -c "$source" -o "$work/$(basename "$source").o"
  echo "   $source: $(( $(date +%s) - start )) s"
done

echo "== core headers and kernel interfaces, host only (C++17)"
for header in csrc/core/*.h csrc/launch.h csrc/special.h csrc/vmf.h csrc/rectified.h; do
  echo "#include \"$header\"" >"$work/$(basename "$header").cpp"
  run "$CXX" -std=c++17 -Wall -Wextra -Werror -I. -fsyntax-only "$work/$(basename "$header").cpp"
done

echo "== torch glue (syntax only)"
flags=$("$PYTHON" - <<'PY' 2>/dev/null || true
import glob, os, sys
import torch
from torch.utils import cpp_extension
if torch.version.cuda is None:
    sys.exit(0)
import sysconfig
dirs = cpp_extension.include_paths(device_type="cuda") + [sysconfig.get_paths()["include"]]
for site in sys.path:  # headers of the pip CUDA libraries that torch's CUDA headers include
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
print(" ".join("-isystem " + d for d in dirs if os.path.isdir(d)))
PY
)
if [[ -z "$flags" ]]; then
  if [[ "${PENACT_REQUIRE_TORCH_CUDA:-0}" == 1 ]]; then echo "FAILED: no torch with CUDA headers" >&2; exit 1; fi
  echo "SKIPPED: $PYTHON has no torch with CUDA headers"
else
  # The toolkit's headers first (the pip packages ship a cuda_runtime.h without its crt/ folder),
  # where nvcc itself looks for them (nvcc may be a wrapper script outside the toolkit).
  cuda_include=$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/-isystem \1/p' | head -1)
  for source in csrc/*.cpp; do
    # shellcheck disable=SC2086
    run "$CXX" -std=c++20 -Wall -Wextra -Werror -DPENACT_WITH_CUDA -Icsrc $cuda_include $flags -fsyntax-only "$source"
  done
fi

if grep -i "warning" "$log"; then
  echo "FAILED: warnings above" >&2
  exit 1
fi
echo "OK: CUDA sources compile without warnings for sm_${ARCHS// /, sm_}"

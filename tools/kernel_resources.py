"""Per-kernel proxies of GPU performance that need no GPU: registers, stack (spills), theoretical
occupancy and the static SASS instruction mix of every kernel in csrc/cuda, for one architecture.

    python tools/kernel_resources.py [--arch 90] [--filter sample] [--source REV]

Compiles each csrc/cuda/*.cu to a cubin with nvcc and reads it with cuobjdump (the CUDA toolkit's,
or the pip wheel nvidia-cuda-cuobjdump's: set CUOBJDUMP). With --source REV the sources of that git
revision are compiled instead (a before/after comparison). Static counts are per kernel body, not
per element: divide by what one pass of the body produces (benchmarks/NOTES.md does).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Instruction classes worth counting: the generator's integer work, floating point, special
# functions, communication, memory.
CLASSES = {
    "IMAD": r"IMAD", "LOP3": r"LOP3", "FFMA/FMUL/FADD": r"F(FMA|MUL|ADD)", "DFMA/DMUL/DADD": r"D(FMA|MUL|ADD)",
    "MUFU": r"MUFU", "SHFL": r"SHFL", "ATOM/RED": r"(ATOM|RED)", "LDG": r"LDG", "STG": r"STG", "BRA": r"BRA",
}
REGISTERS_PER_SM, THREADS_PER_BLOCK, MAX_WARPS_PER_SM = 65536, 256, 64


def tool(name: str) -> str:
    found = os.environ.get(name.upper()) or shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: put the CUDA toolkit's bin on PATH or set {name.upper()}")
    return found


def sources(revision: str | None, into: Path) -> Path:
    """The csrc tree of the working copy, or of a git revision extracted into `into`."""
    if revision is None:
        return ROOT / "csrc"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "csrc"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "csrc"


def kernels(cubin: Path) -> dict[str, dict]:
    """{demangled name: {"registers", "stack", "sass": Counter, "instructions"}}."""
    usage = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True, text=True,
                           check=True).stdout
    found = {}
    for name, registers, stack in re.findall(r"Function (\S+):\s+REG:(\d+) STACK:(\d+)", usage):
        found[name] = {"registers": int(registers), "stack": int(stack), "sass": collections.Counter(), "instructions": 0}
    sass = subprocess.run([tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    current = None
    for line in sass.splitlines():
        header = re.match(r"\s+Function : (\S+)", line)
        if header:
            current = found.get(header.group(1))
            continue
        instruction = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if current is not None and instruction:
            opcode = instruction.group(1).split(".")[0]
            current["instructions"] += 1
            for label, pattern in CLASSES.items():
                if re.fullmatch(pattern, opcode):
                    current["sass"][label] += 1
    demangled = subprocess.run(["c++filt"], input="\n".join(found), capture_output=True, text=True).stdout.split("\n")
    return {short(pretty): found[mangled] for mangled, pretty in zip(found, demangled)}


def short(name: str) -> str:
    """The kernel's name and template arguments, without namespaces and parameter list."""
    name = re.sub(r"penact::cuda::\(anonymous namespace\)::", "", name)
    name = name.replace("penact::cuda::", "").replace("penact::", "")
    if name.endswith(")"):  # drop the balanced parameter list at the end
        depth = 0
        for position in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[position], 0)
            if depth == 0:
                return name[:position]
    return name


def occupancy(registers: int) -> float:
    """Resident warps / 64 for blocks of 256 threads (registers allocated per warp in units of 256)."""
    per_warp = -(-registers * 32 // 256) * 256
    blocks = REGISTERS_PER_SM // (per_warp * THREADS_PER_BLOCK // 32)
    return min(blocks * THREADS_PER_BLOCK // 32, MAX_WARPS_PER_SM) / MAX_WARPS_PER_SM


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    parser.add_argument("--source", default=None, help="a git revision whose csrc to compile instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        csrc = sources(args.source, Path(work))
        print(f"| kernel | registers | stack bytes | occupancy (256 threads) | SASS | "
              + " | ".join(CLASSES) + " |")
        print("|---" * (5 + len(CLASSES)) + "|")
        for unit in sorted(csrc.glob("cuda/*.cu")):
            cubin = Path(work) / (unit.stem + ".cubin")
            subprocess.run([tool("nvcc"), "-std=c++17", "-O3", f"-I{csrc}", "-cubin", f"-arch=sm_{args.arch}",
                            "-o", str(cubin), str(unit)], check=True)
            for name, k in sorted(kernels(cubin).items()):
                if args.filter in name:
                    mix = " | ".join(str(k["sass"][label]) for label in CLASSES)
                    print(f"| `{name}` | {k['registers']} | {k['stack']} | {occupancy(k['registers']):.0%} | "
                          f"{k['instructions']} | {mix} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

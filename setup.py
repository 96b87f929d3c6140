"""Builds penact._C: the CPU back-end always, the CUDA back-end when torch has CUDA and a CUDA
toolkit is found (set PENACT_CUDA=0 to skip it, PENACT_CUDA=1 to require it).

Build with the torch already installed: pip install --no-build-isolation -e .
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def cuda_toolkit_root(cuda_version):
    """The toolkit directory: CUDA_HOME if set, else the one whose nvcc, headers and cudart exist.

    Wrapper scripts are common (/usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc), and
    torch would then guess CUDA_HOME=/usr/local and miss -lcudart; so look for the real toolkit.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    if cuda_version:
        candidates.append(f"/usr/local/cuda-{cuda_version}")
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        has_nvcc = os.path.exists(os.path.join(root, "bin", "nvcc"))
        has_headers = os.path.exists(os.path.join(root, "include", "cuda_runtime.h"))
        has_cudart = any(glob.glob(os.path.join(root, lib, "libcudart.so*")) for lib in ("lib64", "lib"))
        if has_nvcc and has_headers and has_cudart:
            return root
    return None


def pip_cuda_include_dirs():
    """Headers of the pip-installed CUDA libraries (cusparse.h, cublas_v2.h, ...) that torch's own
    CUDA headers include: nvidia/cu13/include and the per-library nvidia/*/include folders."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            for path in sorted(glob.glob(os.path.join(site, pattern))):
                if os.path.isdir(path) and path not in dirs:
                    dirs.append(path)
    return dirs


import torch  # noqa: E402

want_cuda = os.environ.get("PENACT_CUDA", "auto")
toolkit = cuda_toolkit_root(torch.version.cuda) if torch.version.cuda and want_cuda != "0" else None
if toolkit:
    os.environ["CUDA_HOME"] = toolkit  # read when torch.utils.cpp_extension is imported
    # Without a visible GPU torch would compile for every architecture it knows; A100 and H100
    # (plus PTX for newer GPUs) unless the builder says otherwise.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
elif want_cuda == "1":
    raise RuntimeError("PENACT_CUDA=1 but torch has no CUDA or no CUDA toolkit was found")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, include_paths  # noqa: E402

csrc = os.path.join(ROOT, "csrc")
sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))]
# torch's headers as system headers: -Wall -Wextra then report our code only (a directory given
# with both -I and -isystem is searched as a system directory).
torch_system_includes = [f"-isystem{path}" for path in include_paths("cuda" if toolkit else "cpu")]
# No errno from libm and no floating-point traps: neither is observed, and either keeps GCC from
# vectorizing loops that call sqrt (errno) or select between floating-point values (traps).
# No loop peeling for alignment: peeling makes the order of vectorized sums depend on where a
# buffer happens to start, and the same (seed, offset) must give bit-identical samples.
cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "--param=vect-max-peeling-for-alignment=0", "-Wall",
             "-Wextra", "-fopenmp", "-DAT_PARALLEL_OPENMP"] + torch_system_includes
if os.environ.get("CI") == "true":
    cxx_flags.append("-Werror")  # CI keeps the compiled code warning-free
extra_link_args = ["-fopenmp"]
include_dirs = [csrc]

if toolkit:
    # csrc/cuda: the kernels (*.cu, nvcc, no torch header) and their torch glue (*.cpp, the C++ compiler).
    sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")) +
                                                         glob.glob(os.path.join(csrc, "cuda", "*.cpp")))]
    include_dirs += pip_cuda_include_dirs()
    nvcc_flags = ["-O3", "-Xcompiler=-Wall,-Wextra", "-DPENACT_WITH_CUDA"]
    if os.environ.get("CI") == "true":
        nvcc_flags += ["-Werror", "all-warnings"]  # nvcc's own warnings and the host compiler's
    extension = CUDAExtension(
        "penact._C",
        sources,
        include_dirs=include_dirs,
        define_macros=[("PENACT_WITH_CUDA", None)],
        extra_compile_args={
            "cxx": cxx_flags + ["-DPENACT_WITH_CUDA"],
            "nvcc": nvcc_flags,
        },
        extra_link_args=extra_link_args,
    )
else:
    extension = CppExtension("penact._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx_flags}, extra_link_args=extra_link_args)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})

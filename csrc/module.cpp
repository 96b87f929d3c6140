// Makes penact._C importable as a Python module; importing it runs the operator registrations
// (TORCH_LIBRARY blocks) of the library it belongs to. The operators are reached through
// torch.ops.penact; the module itself holds only the switch of the device checks (checks.h).
#include <Python.h>
#include <torch/library.h>

#include "checks.h"

// The library's operators are defined family by family (TORCH_LIBRARY_FRAGMENT in special.cpp,
// vmf.cpp, rectified.cpp).
TORCH_LIBRARY(penact, m) { (void)m; }

namespace {

// _set_device_checks(enabled: bool) -> bool: sets the switch, returns its previous value.
PyObject* set_device_checks(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  const bool previous = penact::device_checks_enabled();
  penact::set_device_checks(enabled != 0);
  return PyBool_FromLong(previous ? 1 : 0);
}

PyMethodDef methods[] = {
    {"_set_device_checks", set_device_checks, METH_O,
     "Turns the CUDA operators' value checks (one synchronization per call) on or off; returns the previous setting."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods, nullptr, nullptr, nullptr, nullptr};
  PyObject* module = PyModule_Create(&module_def);
#if defined(PENACT_WITH_CUDA)
  constexpr long kCudaKernels = 1;
#else
  constexpr long kCudaKernels = 0;
#endif
  // Whether this build registered CUDA kernels (tests/test_coverage.py).
  if (module != nullptr && PyModule_AddIntConstant(module, "cuda_kernels", kCudaKernels) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

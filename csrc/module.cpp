// Makes penact._C importable as a Python module; importing it runs the operator registrations
// (TORCH_LIBRARY blocks) of the library it belongs to. The operators are reached through torch.ops.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

// Entry point of mtlkernels._C: runs the bindings every translation unit registered.
#include "registry.h"
#include "solvers/binding.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "mtlkernels C++ extension: exact K-space solvers and CPU Gram/combine kernels";
  m.attr("max_tasks") = mtlkernels::kMaxTasks;
  for (auto& bind : mtlkernels::registry()) bind(m);
}

// Binding of IMTL-G's K-space solve: _C.imtl_solve(gram, constants) → (weights, diagnostics).
#include <string>

#include <pybind11/stl.h>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/imtl.h"

namespace mtlkernels {
namespace {

py::tuple imtl_solve(const Array& gram, const imtl::Constants& constants) {
  const int K = check_gram(gram);
  const double* g = gram.data();
  Array weights(K);
  imtl::Certificate certificate;
  {
    py::gil_scoped_release release;
    certificate = imtl::solve(g, K, weights.mutable_data(), constants);
  }
  py::dict diagnostics;
  diagnostics["fallback"] = certificate.fallback;
  diagnostics["unique"] = certificate.unique;
  diagnostics["rank"] = certificate.rank;
  diagnostics["degenerate"] = certificate.degenerate;
  diagnostics["zero_tasks"] = py::cast(certificate.zero_tasks);
  diagnostics["residual"] = certificate.residual;
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  py::class_<imtl::Constants>(m, "IMTLConstants", "IMTL-G's tolerances and sweep cap (see mtlkernels.methods.imtl)")
      .def(py::init<double, double, double, double, int>(), py::kw_only(), py::arg("pivot_tol"), py::arg("sum_rtol"),
           py::arg("rank_rcond"), py::arg("consistency_rtol"), py::arg("max_sweeps"));
  m.def("imtl_solve", &imtl_solve, py::arg("gram"), py::arg("constants"),
        "IMTL-G weights from Γ [K, K] float64 and the solver's IMTLConstants; returns (weights [K], "
        "{'fallback', 'unique', 'rank', 'degenerate', 'zero_tasks', 'residual'}).");
});

}  // namespace
}  // namespace mtlkernels

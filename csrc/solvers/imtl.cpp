// Binding of IMTL-G's K-space solve: _C.imtl_solve(gram, pivot_tol, rank_rcond) → (weights, diagnostics).
#include <string>

#include <pybind11/stl.h>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/imtl.h"

namespace mtlkernels {
namespace {

py::tuple imtl_solve(const Array& gram, double pivot_tol, double rank_rcond) {
  const int K = check_square(gram);
  const double* g = gram.data();
  for (int j = 0; j < K; ++j)
    if (g[static_cast<size_t>(j) * K + j] < 0.0)
      throw std::invalid_argument("gram has a negative diagonal entry at " + std::to_string(j) + ": it is not J·Jᵀ");
  if (!(pivot_tol >= 0.0 && pivot_tol < 1.0) || !(rank_rcond >= 0.0 && rank_rcond < 1.0))
    throw std::invalid_argument("pivot_tol and rank_rcond must be in [0, 1)");
  Array weights(K);
  imtl::Certificate certificate;
  {
    py::gil_scoped_release release;
    certificate = imtl::solve(g, K, weights.mutable_data(), pivot_tol, rank_rcond);
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
  m.def("imtl_solve", &imtl_solve, py::arg("gram"), py::arg("pivot_tol") = imtl::kPivotTol,
        py::arg("rank_rcond") = imtl::kRankRcond,
        "IMTL-G weights from Γ [K, K] float64, with the Cholesky pivot and eigenvalue-rank tolerances "
        "for Γ's precision (defaults: float64's); returns (weights [K], "
        "{'fallback', 'unique', 'rank', 'degenerate', 'zero_tasks', 'residual'}).");
});

}  // namespace
}  // namespace mtlkernels

// Binding of the K-space PCGrad solve: _C.pcgrad_solve(gram, order, mean) → (weights, diagnostics).
#include <cstdint>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/pcgrad.h"

namespace mtlkernels {
namespace {

py::tuple pcgrad_solve(const Array& gram, const OrderArray& order, bool mean) {
  const int K = check_gram(gram);
  check_order(order, K);
  const double* g = gram.data();
  Array weights(K);
  pcgrad::Certificate certificate;
  {
    py::gil_scoped_release release;
    certificate = pcgrad::solve(g, order.data(), K, mean, weights.mutable_data());
  }
  py::dict diagnostics;
  diagnostics["projections"] = certificate.projections;
  diagnostics["orthogonality_residual"] = certificate.orthogonality_residual;
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  m.def("pcgrad_solve", &pcgrad_solve, py::arg("gram"), py::arg("order"), py::arg("mean") = false,
        "PCGrad weights from Γ [K, K] float64 and visiting orders [K, K] int64 (row i: task i's order); "
        "returns (weights [K], {'projections', 'orthogonality_residual'}).");
});

}  // namespace
}  // namespace mtlkernels

// Binding of the K-space GradVac solve: _C.gradvac_solve(gram, order, targets, beta, eps, always)
// → (weights, diagnostics); targets are updated in place.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/gradvac.h"

namespace mtlkernels {
namespace {

using MutableArray = py::array_t<double, py::array::c_style>;

py::tuple gradvac_solve(const Array& gram, const OrderArray& order, MutableArray targets, double beta, double eps,
                        bool always) {
  const int K = check_gram(gram);
  check_order(order, K);
  if (targets.ndim() != 2 || targets.shape(0) != K || targets.shape(1) != K)
    throw std::invalid_argument("targets must be a C-contiguous float64 [K, K] array with K = " + std::to_string(K));
  if (!(beta >= 0.0 && beta <= 1.0)) throw std::invalid_argument("beta must be in [0, 1]");
  if (!(eps >= 0.0) || !std::isfinite(eps)) throw std::invalid_argument("eps must be a finite number >= 0");
  Array weights(K);
  gradvac::Certificate certificate;
  double* t = targets.mutable_data();
  {
    py::gil_scoped_release release;
    certificate = gradvac::solve(gram.data(), order.data(), K, t, beta, eps, always, weights.mutable_data());
  }
  py::dict diagnostics;
  diagnostics["corrections"] = certificate.corrections;
  diagnostics["target_residual"] = certificate.target_residual;
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  m.def("gradvac_solve", &gradvac_solve, py::arg("gram"), py::arg("order"), py::arg("targets").noconvert(),
        py::arg("beta"), py::arg("eps"), py::arg("always") = true,
        "GradVac weights from Γ [K, K] float64, visiting orders [K, K] int64 and the EMA cosine targets "
        "[K, K] float64 (updated in place); returns (weights [K], {'corrections', 'target_residual'}).");
});

}  // namespace
}  // namespace mtlkernels

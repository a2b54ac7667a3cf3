// Binding of the K-space PCGrad solve: _C.pcgrad_solve(gram, order, mean) → (weights, diagnostics).
#include <cstdint>
#include <string>
#include <vector>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/pcgrad.h"

namespace mtlkernels {
namespace {

using OrderArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Check order is [K, K] and every row a permutation of 0..K-1.
void check_order(const OrderArray& order, int K) {
  if (order.ndim() != 2 || order.shape(0) != K || order.shape(1) != K)
    throw std::invalid_argument("order must be [K, K] with K = " + std::to_string(K) + " (the Gram matrix's size)");
  const int64_t* o = order.data();
  std::vector<char> seen(K);
  for (int i = 0; i < K; ++i) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int t = 0; t < K; ++t) {
      const int64_t j = o[static_cast<size_t>(i) * K + t];
      if (j < 0 || j >= K || seen[j])
        throw std::invalid_argument("order[" + std::to_string(i) + "] is not a permutation of 0.." +
                                    std::to_string(K - 1));
      seen[j] = 1;
    }
  }
}

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

// Binding of the FairGrad K-space solve: _C.fairgrad_solve(gram, constants, alpha) → (weights, diagnostics).
#include <cmath>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/fairgrad.h"

namespace mtlkernels {
namespace {

py::tuple fairgrad_solve(const Array& gram, const fairgrad::Constants& constants, double alpha) {
  const int K = check_gram(gram);
  if (!(alpha > 0.0) || !std::isfinite(alpha)) throw std::invalid_argument("alpha must be a finite number > 0");
  Array weights(K);
  fairgrad::Certificate certificate;
  {
    py::gil_scoped_release release;
    certificate = fairgrad::solve(gram.data(), K, alpha, weights.mutable_data(), constants);
  }
  py::list dropped;
  for (int i = 0; i < K; ++i)
    if (!(weights.data()[i] > 0.0)) dropped.append(i);
  py::dict diagnostics;
  diagnostics["residual"] = certificate.residual;
  diagnostics["kept_residual"] = certificate.kept_residual;
  diagnostics["dropped_tasks"] = dropped;
  diagnostics["iterations"] = certificate.iterations;
  diagnostics["converged"] = certificate.converged;
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  py::class_<fairgrad::Constants>(m, "FairGradConstants", "FairGrad's Newton caps and tolerances (see mtlkernels.methods.fairgrad)")
      .def(py::init<int, double, double, double, double, int, double>(), py::kw_only(), py::arg("max_newton_steps"),
           py::arg("converged_length2"), py::arg("stalled_residual"), py::arg("diverged_beta"), py::arg("max_start_beta"), py::arg("max_halvings"),
           py::arg("flat_rtol"));
  m.def("fairgrad_solve", &fairgrad_solve, py::arg("gram"), py::arg("constants"), py::arg("alpha"),
        "FairGrad weights from Γ [K, K] float64, the solver's FairGradConstants and α > 0: w > 0 with Γw = w^(−1/α); "
        "returns (weights [K], {'residual', 'kept_residual', 'dropped_tasks', 'iterations', 'converged'}).");
});

}  // namespace
}  // namespace mtlkernels

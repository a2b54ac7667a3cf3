// Python binding of the CAGrad K-space solve (solvers/cagrad.h): mtlkernels._C.cagrad_solve.
#include <cmath>
#include <stdexcept>
#include <vector>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/cagrad.h"

namespace {

namespace py = pybind11;
using mtlkernels::Array;

using mtlkernels::cagrad::Constants;

// weights = (1/K + u)·factor for Γ (float64 [K, K]) and c; diagnostics as in methods/cagrad.py.
py::tuple cagrad_solve(const Array& gram, double c, double factor, const Constants& constants) {
  const int K = mtlkernels::check_gram(gram, "the Gram matrix");
  if (!std::isfinite(c) || c < 0) throw std::invalid_argument("c must be a finite number >= 0");
  if (!std::isfinite(factor)) throw std::invalid_argument("factor must be finite");
  const double* g = gram.data();
  double trace = 0.0;
  for (int i = 0; i < K; ++i) trace += g[i * K + i];
  std::vector<double> A(static_cast<size_t>(K) * K, 0.0);
  mtlkernels::cagrad::Result result;
  {
    py::gil_scoped_release release;
    if (trace > 0)
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j) A[i * K + j] = 0.5 * (g[i * K + j] + g[j * K + i]) / trace;
    result = mtlkernels::cagrad::solve_normalized(A, K, c, constants);
  }
  py::array_t<double> weights(K);
  auto w = weights.mutable_unchecked<1>();
  double multiplier_sum = 0.0;
  py::list active_set;
  for (int i = 0; i < K; ++i) {
    const double u = result.multipliers[i];
    w(i) = (1.0 / K + u) * factor;
    multiplier_sum += u;
    if (u > 0) active_set.append(i);
  }
  py::dict diagnostics;
  diagnostics["kkt_residual"] = result.kkt_residual;
  diagnostics["ball_residual"] = result.ball_residual;
  diagnostics["duality_gap"] = result.duality_gap;
  diagnostics["worst_improvement"] = result.worst_improvement * trace;
  diagnostics["dual_objective"] = result.dual_objective * trace;
  diagnostics["multiplier_sum"] = multiplier_sum;
  diagnostics["active_set"] = active_set;
  diagnostics["degenerate"] = result.degenerate;
  diagnostics["iterations"] = result.iterations;
  return py::make_tuple(weights, diagnostics);
}

static mtlkernels::Registration registration([](py::module_& m) {
  py::class_<Constants>(m, "CAGradConstants", "CAGrad's tolerances and iteration caps (see mtlkernels.methods.cagrad)")
      .def(py::init<double, double, double, double, double, double, double, int, int, int, int, int, int, int>(),
           py::kw_only(), py::arg("pivot_tolerance"), py::arg("eigen_rcond"), py::arg("consistency_tolerance"),
           py::arg("rate_tolerance"), py::arg("refine_tolerance"), py::arg("hull_tolerance"),
           py::arg("hull_zero_tolerance"), py::arg("max_sweeps"), py::arg("path_steps_per_task"),
           py::arg("path_steps_extra"), py::arg("refine_rounds_per_task"), py::arg("refine_rounds_extra"),
           py::arg("hull_rounds_per_task"), py::arg("hull_rounds_extra"));
  m.def("cagrad_solve", &cagrad_solve,
        "CAGrad weights (1/K + u)·factor and diagnostics from a float64 Gram matrix [K, K], c >= 0 and the "
        "solver's CAGradConstants",
        py::arg("gram"), py::arg("c"), py::arg("factor"), py::arg("constants"));
});

}  // namespace

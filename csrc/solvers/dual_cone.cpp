// Bindings of the dual-cone solves: _C.upgrad_solve and _C.dualproj_solve(gram, pref, constants)
// → (weights, diagnostics); pref None: 1/K each.
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/dual_cone.h"

namespace mtlkernels {
namespace {

using Solve = dual_cone::Result (*)(const double*, const double*, int, const dual_cone::Constants&, double*);

py::tuple solve(Solve method, const Array& gram, const std::optional<Array>& pref,
                const dual_cone::Constants& constants, bool active_tasks) {
  const int K = check_gram(gram);
  const std::vector<double> p = preferences(pref, K, 1.0 / K);
  Array weights(K);
  dual_cone::Result result;
  {
    py::gil_scoped_release release;
    result = method(gram.data(), p.data(), K, constants, weights.mutable_data());
  }
  py::dict diagnostics;
  diagnostics["kkt_residual"] = result.kkt_residual;
  diagnostics["iterations"] = result.iterations;
  if (active_tasks) {
    py::list active;
    for (int i = 0; i < K; ++i)
      if (weights.data()[i] > p[i]) active.append(i);
    diagnostics["active_tasks"] = active;
  }
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  py::class_<dual_cone::Constants>(m, "DualConeConstants",
                                   "The dual-cone solve's tolerances and caps (see mtlkernels.methods.dual_cone)")
      .def(py::init<double, double, int, int, int>(), py::kw_only(), py::arg("tolerance"), py::arg("dependent_pivot"),
           py::arg("steps_per_task"), py::arg("steps_extra"), py::arg("block_rounds"));
  m.def(
      "upgrad_solve",
      [](const Array& gram, const std::optional<Array>& pref, const dual_cone::Constants& constants) {
        return solve(&dual_cone::upgrad, gram, pref, constants, false);
      },
      py::arg("gram"), py::arg("pref"), py::arg("constants"),
      "UPGrad weights Σᵢ prefᵢ·argmin_{v ≥ eᵢ} vᵀΓv from Γ [K, K] float64 (pref None: 1/K each); returns (weights [K], "
      "{'kkt_residual', 'iterations'}).");
  m.def(
      "dualproj_solve",
      [](const Array& gram, const std::optional<Array>& pref, const dual_cone::Constants& constants) {
        return solve(&dual_cone::dualproj, gram, pref, constants, true);
      },
      py::arg("gram"), py::arg("pref"), py::arg("constants"),
      "DualProj weights argmin_{w ≥ pref} wᵀΓw from Γ [K, K] float64 (pref None: 1/K each); returns (weights [K], "
      "{'kkt_residual', 'iterations', 'active_tasks'}).");
});

}  // namespace
}  // namespace mtlkernels

// Binding of the Nash-MTL K-space solve:
// _C.nash_mtl_solve(gram, previous, reuse, max_norm) → (alpha, weights, diagnostics).
#include <algorithm>
#include <cmath>
#include <string>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/nash_mtl.h"

namespace mtlkernels {
namespace {

py::tuple nash_mtl_solve(const Array& gram, const nash_mtl::Constants& constants, const py::object& previous,
                         bool reuse, double max_norm) {
  const int K = check_gram(gram);
  const double* g = gram.data();
  if (!(max_norm >= 0.0) || !std::isfinite(max_norm))
    throw std::invalid_argument("max_norm must be a finite number >= 0");
  const bool warm_start = !previous.is_none();
  Array warm;
  if (warm_start) {
    warm = previous.cast<Array>();
    if (warm.ndim() != 1 || warm.shape(0) != K)
      throw std::invalid_argument("previous must be a vector [K] with K = " + std::to_string(K));
    for (int i = 0; i < K; ++i)
      if (!std::isfinite(warm.data()[i])) throw std::invalid_argument("previous has a non-finite entry");
  } else if (reuse) {
    throw std::invalid_argument("reuse=True needs the previous weights");
  }
  Array alpha(K), weights(K);
  nash_mtl::Certificate certificate;
  {
    py::gil_scoped_release release;
    double* a = alpha.mutable_data();
    if (reuse) {
      std::copy(warm.data(), warm.data() + K, a);
    } else {
      certificate = nash_mtl::solve_alpha(g, K, warm_start ? warm.data() : nullptr, a, constants);
    }
    nash_mtl::certify_and_clip(g, K, a, max_norm, weights.mutable_data(), certificate);
  }
  py::list dropped;
  for (int i = 0; i < K; ++i)
    if (!(alpha.data()[i] > 0.0)) dropped.append(i);
  py::dict diagnostics;
  diagnostics["residual"] = certificate.residual;
  diagnostics["kept_residual"] = certificate.kept_residual;
  diagnostics["direction_norm"] = certificate.direction_norm;
  diagnostics["clip_scale"] = certificate.clip_scale;
  diagnostics["dropped_tasks"] = dropped;
  diagnostics["iterations"] = certificate.iterations;
  diagnostics["converged"] = certificate.converged;
  return py::make_tuple(alpha, weights, diagnostics);
}

Registration reg([](py::module_& m) {
  py::class_<nash_mtl::Constants>(m, "NashMTLConstants", "Nash-MTL's Newton caps and tolerances (see mtlkernels.methods.nash_mtl)")
      .def(py::init<int, double, double, double>(), py::kw_only(), py::arg("max_newton_steps"),
           py::arg("converged_decrement2"), py::arg("diverged_beta"), py::arg("max_start_beta"));
  m.def("nash_mtl_solve", &nash_mtl_solve, py::arg("gram"), py::arg("constants"), py::arg("previous") = py::none(),
        py::arg("reuse") = false, py::arg("max_norm") = 1.0,
        "Nash-MTL weights from Γ [K, K] float64 and the solver's NashMTLConstants: α > 0 with α⊙(Γα) = 1, warm-started from `previous` "
        "(or reused as is when reuse=True), clipped to sqrt(αᵀΓα) <= max_norm (0: no clipping); returns "
        "(alpha [K] before clipping, weights [K], {'residual', 'kept_residual', 'direction_norm', "
        "'clip_scale', 'dropped_tasks', 'iterations', 'converged'}).");
});

}  // namespace
}  // namespace mtlkernels

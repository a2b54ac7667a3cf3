// Binding of MGDA's K-space solve: _C.mgda_solve(gram, normalization, combination, losses) → dict.
#include <cmath>
#include <string>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/mgda.h"

namespace mtlkernels {
namespace {

mgda::Normalization parse_normalization(const std::string& name) {
  if (name == "none") return mgda::Normalization::none;
  if (name == "l2") return mgda::Normalization::l2;
  if (name == "loss") return mgda::Normalization::loss;
  if (name == "loss+") return mgda::Normalization::loss_plus;
  throw std::invalid_argument("normalization='" + name + "' is not supported; choose one of ['none', 'l2', 'loss', 'loss+']");
}

mgda::Combination parse_combination(const std::string& name) {
  if (name == "original") return mgda::Combination::original;
  if (name == "normalized") return mgda::Combination::normalized;
  throw std::invalid_argument("combination='" + name + "' is not supported; choose one of ['original', 'normalized']");
}

py::dict mgda_solve(const Array& gram, const mgda::Constants& constants, const std::string& normalization,
                    const std::string& combination, const py::object& losses) {
  const int K = check_gram(gram);
  const mgda::Normalization norm = parse_normalization(normalization);
  const mgda::Combination comb = parse_combination(combination);
  const double* g = gram.data();
  const bool uses_losses = norm == mgda::Normalization::loss || norm == mgda::Normalization::loss_plus;
  Array loss_values;
  if (uses_losses) {
    if (losses.is_none())
      throw std::invalid_argument("normalization='" + normalization + "' needs the K loss values: pass losses");
    loss_values = Array::ensure(losses);
    if (!loss_values || loss_values.ndim() != 1 || loss_values.shape(0) != K)
      throw std::invalid_argument("losses must be a 1-D array of K = " + std::to_string(K) + " values");
    for (int i = 0; i < K; ++i) {
      const double v = loss_values.data()[i];
      if (!std::isfinite(v)) throw std::invalid_argument("loss of task " + std::to_string(i) + " is not finite");
      if (v < 0.0)
        throw std::invalid_argument("normalization='" + normalization + "' divides each gradient by its loss; the loss of task " +
                                    std::to_string(i) + " is negative");
    }
  }
  Array weights(K), simplex(K), n(K);
  mgda::Result result;
  {
    py::gil_scoped_release release;
    result = mgda::solve(g, K, norm, comb, uses_losses ? loss_values.data() : nullptr, weights.mutable_data(),
                         simplex.mutable_data(), n.mutable_data(), constants);
  }
  py::dict out;
  out["weights"] = weights;
  out["kkt_residual"] = result.kkt_residual;
  out["objective"] = result.objective;
  out["iterations"] = result.iterations;
  out["support"] = result.support;
  out["simplex_weights"] = simplex;
  out["normalizers"] = n;
  return out;
}

Registration reg([](py::module_& m) {
  py::class_<mgda::Constants>(m, "MGDAConstants", "MGDA's tolerances and iteration cap (see mtlkernels.methods.mgda)")
      .def(py::init<double, double, int, int>(), py::kw_only(), py::arg("tolerance"), py::arg("dependent_pivot"),
           py::arg("cycles_per_task"), py::arg("cycles_extra"));
  m.def("mgda_solve", &mgda_solve, py::arg("gram"), py::arg("constants"), py::arg("normalization") = "none",
        py::arg("combination") = "original", py::arg("losses") = py::none(),
        "MGDA weights from Γ [K, K] float64 and the solver's MGDAConstants (+ K losses for 'loss'/'loss+'): the min-norm point of the "
        "convex hull of the normalised gradients by Wolfe's algorithm. Returns {'weights', 'kkt_residual', "
        "'objective', 'iterations', 'support', 'simplex_weights', 'normalizers'}.");
});

}  // namespace
}  // namespace mtlkernels

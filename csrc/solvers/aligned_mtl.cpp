// Binding of Aligned-MTL's K-space solve:
// _C.aligned_mtl_solve(gram, constants, pref, scale_mode) → (weights, diagnostics).
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "registry.h"
#include "solvers/aligned_mtl.h"
#include "solvers/binding.h"

namespace mtlkernels {
namespace {

py::tuple aligned_mtl_solve(const Array& gram, const aligned_mtl::Constants& constants, const std::optional<Array>& pref,
                            const std::string& scale_mode) {
  const int K = check_gram(gram);
  const std::vector<double> p = preferences(pref, K, 1.0 / K);
  aligned_mtl::ScaleMode mode;
  if (scale_mode == "min") mode = aligned_mtl::ScaleMode::min;
  else if (scale_mode == "median") mode = aligned_mtl::ScaleMode::median;
  else if (scale_mode == "rmse") mode = aligned_mtl::ScaleMode::rmse;
  else throw std::invalid_argument("scale_mode must be 'min', 'median' or 'rmse'; got '" + scale_mode + "'");
  Array weights(K);
  aligned_mtl::Certificate certificate;
  {
    py::gil_scoped_release release;
    certificate = aligned_mtl::solve(gram.data(), K, p.data(), mode, weights.mutable_data(), constants);
  }
  py::dict diagnostics;
  diagnostics["residual"] = certificate.residual;
  diagnostics["rank"] = certificate.rank;
  diagnostics["scale"] = certificate.scale;
  diagnostics["zero_tasks"] = py::cast(certificate.zero_tasks);
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  py::class_<aligned_mtl::Constants>(m, "AlignedMTLConstants", "Aligned-MTL's tolerance and sweep cap (see mtlkernels.methods.aligned_mtl)")
      .def(py::init<double, double, int, int>(), py::kw_only(), py::arg("rank_rcond"), py::arg("zero_rtol"),
           py::arg("max_sweeps"), py::arg("jacobi_max_tasks"));
  m.def("aligned_mtl_solve", &aligned_mtl_solve, py::arg("gram"), py::arg("constants"), py::arg("pref"),
        py::arg("scale_mode"),
        "Aligned-MTL weights from Γ [K, K] float64, the solver's AlignedMTLConstants, the preference p [K] and the "
        "scale_mode ('min', 'median', 'rmse'); returns (weights [K], {'residual', 'rank', 'scale', 'zero_tasks'}).");
});

}  // namespace
}  // namespace mtlkernels

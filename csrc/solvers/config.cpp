// Binding of ConFIG's K-space solve: _C.config_solve(gram, constants, pref) → (weights, diagnostics).
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "registry.h"
#include "solvers/binding.h"
#include "solvers/config.h"

namespace mtlkernels {
namespace {

py::tuple config_solve(const Array& gram, const config::Constants& constants, const std::optional<Array>& pref) {
  const int K = check_gram(gram);
  const std::vector<double> p = preferences(pref, K, 1.0);
  Array weights(K);
  config::Certificate certificate;
  {
    py::gil_scoped_release release;
    certificate = config::solve(gram.data(), K, p.data(), weights.mutable_data(), constants);
  }
  py::dict diagnostics;
  diagnostics["residual"] = certificate.residual;
  diagnostics["equal_cosines"] = certificate.equal_cosines;
  diagnostics["rank"] = certificate.rank;
  diagnostics["length"] = certificate.length;
  diagnostics["zero_tasks"] = py::cast(certificate.zero_tasks);
  return py::make_tuple(weights, diagnostics);
}

Registration reg([](py::module_& m) {
  py::class_<config::Constants>(m, "ConFIGConstants", "ConFIG's tolerances (see mtlkernels.methods.config)")
      .def(py::init<double, double, double, int, int>(), py::kw_only(), py::arg("rank_rcond"), py::arg("zero_rtol"),
           py::arg("consistency_rtol"), py::arg("max_sweeps"), py::arg("jacobi_max_tasks"));
  m.def("config_solve", &config_solve, py::arg("gram"), py::arg("constants"), py::arg("pref"),
        "ConFIG weights from Γ [K, K] float64, the solver's ConFIGConstants and the preference p [K]; returns "
        "(weights [K], {'residual', 'equal_cosines', 'rank', 'length', 'zero_tasks'}).");
});

}  // namespace
}  // namespace mtlkernels

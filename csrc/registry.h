// Each translation unit registers its own bindings, so a new solver or kernel is a new file and
// nothing else changes:
//
//   static mtlkernels::Registration reg([](pybind11::module_& m) { m.def(...); });
//
// module.cpp runs every registered function when Python imports mtlkernels._C.
#pragma once
#include <functional>
#include <vector>

#include <pybind11/pybind11.h>

namespace mtlkernels {

using BindFn = std::function<void(pybind11::module_&)>;

inline std::vector<BindFn>& registry() {
  static std::vector<BindFn> fns;  // function-local: safe against static-init order
  return fns;
}

struct Registration {
  explicit Registration(BindFn fn) { registry().push_back(std::move(fn)); }
};

}  // namespace mtlkernels

// Conventions shared by the solver bindings: Γ arrives as a C-contiguous float64 NumPy array
// [K, K] (a CPU torch tensor's .numpy(), zero-copy) and is checked by check_gram; a solver's
// numeric constants arrive as its Constants struct, bound as a Python class whose values the
// method's Python module defines; results go back as NumPy arrays and a dict of diagnostics; bad
// input raises ValueError (pybind11 maps std::invalid_argument to it).
#pragma once
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace mtlkernels {

namespace py = pybind11;
using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// The largest K of every solver; Python reads it as mtlkernels._C.max_tasks.
constexpr int kMaxTasks = 256;

// Check Γ is [K, K] with 1 ≤ K ≤ kMaxTasks and finite; return K.
inline int check_square(const Array& gram, const char* name = "gram") {
  if (gram.ndim() != 2 || gram.shape(0) != gram.shape(1))
    throw std::invalid_argument(std::string(name) + " must be a square [K, K] matrix");
  const auto K = gram.shape(0);
  if (K < 1 || K > kMaxTasks)
    throw std::invalid_argument(std::string(name) + ": K = " + std::to_string(K) + " is outside [1, " +
                                std::to_string(kMaxTasks) + "]");
  const double* g = gram.data();
  for (py::ssize_t i = 0; i < K * K; ++i)
    if (!std::isfinite(g[i])) throw std::invalid_argument(std::string(name) + " has a non-finite entry");
  return static_cast<int>(K);
}

// check_square, and a non-negative diagonal (Γ = J·Jᵀ): the one check of Γ before a solve.
inline int check_gram(const Array& gram, const char* name = "gram") {
  const int K = check_square(gram, name);
  const double* g = gram.data();
  for (int j = 0; j < K; ++j)
    if (g[static_cast<size_t>(j) * K + j] < 0.0)
      throw std::invalid_argument(std::string(name) + " has a negative diagonal entry at " + std::to_string(j) +
                                  ": it is not J·Jᵀ");
  return K;
}

// The K preferences of a solve: pref, checked to hold K finite numbers ≥ 0, or `uniform` in every
// entry when it is None (the method's default, built here rather than passed from Python).
inline std::vector<double> preferences(const std::optional<Array>& pref, int K, double uniform) {
  if (!pref) return std::vector<double>(K, uniform);
  if (pref->ndim() != 1 || pref->shape(0) != K)
    throw std::invalid_argument("pref_vector must be a vector [K] with K = " + std::to_string(K));
  const double* data = pref->data();
  for (int i = 0; i < K; ++i)
    if (!std::isfinite(data[i]) || data[i] < 0.0)
      throw std::invalid_argument("pref_vector[" + std::to_string(i) + "] must be a finite number >= 0");
  return std::vector<double>(data, data + K);
}

using OrderArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Check visiting orders (PCGrad, GradVac) are [K, K] with every row a permutation of 0..K-1.
inline void check_order(const OrderArray& order, int K) {
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

}  // namespace mtlkernels

// The combination's inner loop, shared by the combination pass (combine_cpu.cpp) and the Gram
// pass that also combines (gram_cpu.cpp, for weights that do not depend on Γ). Included by the
// per-level builds only (see cpu_dispatch.h): everything here is in the level's namespace.
#pragma once
#include "kernels/cpu_tensor.h"

namespace mtlkernels::cpu::MTLK_ISA {

constexpr int kCombineVectors = 4;  // vectors of columns accumulated in registers at once

// out[c] (+)= Σ_k w[k]·x[k·ld + c] for c < cols, in double, with the prefetches of the next
// panel spread over the steps.
template <typename In, typename Out>
inline void combine_columns(const In* x, int64_t ld, int K, const double* w, Out* out, int64_t cols,
                            bool accumulate, PrefetchCursor& prefetch) {
  constexpr int n = lanes<double>;
  constexpr int64_t step = kCombineVectors * n;
  const int prefetches = static_cast<int>((prefetch.lines_left() * step + cols - 1) / std::max<int64_t>(cols, 1));
  int64_t c0 = 0;
  for (; c0 + step <= cols; c0 += step) {
    SimdOf<double, n> acc[kCombineVectors];
    for (int v = 0; v < kCombineVectors; ++v) acc[v] = SimdOf<double, n>{};
    for (int k = 0; k < K; ++k) {
      const In* row = x + k * ld + c0;
      for (int v = 0; v < kCombineVectors; ++v) acc[v] += w[k] * load_as<double, n>(row + v * n);
    }
    for (int v = 0; v < kCombineVectors; ++v) {
      Out* dst = out + c0 + v * n;
      store_as<Out, n, double>(dst, accumulate ? load_as<double, n>(dst) + acc[v] : acc[v]);
    }
    for (int i = 0; i < prefetches; ++i) prefetch.step();
  }
  for (int64_t c = c0; c < cols; ++c) {
    double acc = 0;
    for (int k = 0; k < K; ++k) acc += w[k] * to_float(x[k * ld + c]);
    out[c] = from_acc<Out>(accumulate ? to_float(out[c]) + acc : acc);
  }
}

}  // namespace mtlkernels::cpu::MTLK_ISA

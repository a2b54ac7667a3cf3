// Aligned-MTL K-space solve (Senushkin et al., "Independent Component Alignment for Multi-Task
// Learning", CVPR 2023): Γ/s = V·diag(λ)·Vᵀ over the nonzero gradients (s = max Γᵢᵢ), components
// with λ ≤ rank_rcond·λ_max dropped, w = B·p with B = V·diag(√(λ_chosen/λ))·Vᵀ, λ_chosen by
// scale_mode (min, lower median, mean). Header-only, double precision, K ≤ 256, no Python.
// Mirrors mtlkernels/methods/aligned_mtl.py, whose docstring gives the details.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "solvers/dense.h"

namespace mtlkernels::aligned_mtl {

// Tolerances; their values are defined once, in Python (mtlkernels.methods.aligned_mtl.AlignedMTLConstants).
struct Constants {
  double rank_rcond;  // eigenvalues at or below rank_rcond·λ_max count as zero
  double zero_rtol;   // a component vₖᵀp at or below zero_rtol·‖p‖ counts as 0
  int max_sweeps;     // Jacobi sweeps of the eigendecomposition
  int jacobi_max_tasks;  // Jacobi up to this many tasks, Householder + QL beyond
};

enum class ScaleMode { min, median, rmse };

struct Certificate {
  double residual = 0.0;  // max |BΓB − λ_chosen·P| / λ_chosen (on Γ/s)
  int rank = 0;
  double scale = 0.0;  // σ = √(λ_chosen·s)
  std::vector<int> zero_tasks;
};

inline Certificate solve(const double* gram, int K, const double* pref, ScaleMode mode, double* weights,
                         const Constants& constants) {
  Certificate certificate;
  std::vector<int> index;
  double top = 0.0;
  for (int i = 0; i < K; ++i) {
    weights[i] = 0.0;
    if (gram[i * K + i] > 0.0) index.push_back(i);
    else certificate.zero_tasks.push_back(i);
    top = std::max(top, gram[i * K + i]);
  }
  const int n = static_cast<int>(index.size());
  if (n == 0) return certificate;
  std::vector<double> G(static_cast<size_t>(n) * n), lambda(n), V(static_cast<size_t>(n) * n);
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) G[a * n + b] = gram[index[a] * K + index[b]] / top;
  if (n <= constants.jacobi_max_tasks) dense::symmetric_eigen(G.data(), lambda.data(), V.data(), n, constants.max_sweeps);
  else dense::symmetric_eigen_ql(G.data(), lambda.data(), V.data(), n);
  const double largest = *std::max_element(lambda.begin(), lambda.end());
  std::vector<int> kept;
  std::vector<double> kept_lambda;
  for (int k = 0; k < n; ++k)
    if (lambda[k] > constants.rank_rcond * largest) {
      kept.push_back(k);
      kept_lambda.push_back(lambda[k]);
    }
  certificate.rank = static_cast<int>(kept.size());
  std::sort(kept_lambda.begin(), kept_lambda.end());
  double chosen = kept_lambda.front();
  if (mode == ScaleMode::median) {
    chosen = kept_lambda[(kept_lambda.size() - 1) / 2];
  } else if (mode == ScaleMode::rmse) {
    chosen = 0.0;
    for (double v : kept_lambda) chosen += v;
    chosen /= static_cast<double>(kept_lambda.size());
  }
  std::vector<double> B(static_cast<size_t>(n) * n, 0.0), P(static_cast<size_t>(n) * n, 0.0);
  for (int k : kept) {
    const double factor = std::sqrt(chosen / lambda[k]);
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b) {
        const double outer = V[a * n + k] * V[b * n + k];
        B[a * n + b] += factor * outer;
        P[a * n + b] += outer;
      }
  }
  double p_norm2 = 0.0;
  for (int a = 0; a < n; ++a) p_norm2 += pref[index[a]] * pref[index[a]];
  for (int k : kept) {
    double component = 0.0;
    for (int a = 0; a < n; ++a) component += V[a * n + k] * pref[index[a]];
    if (std::fabs(component) <= constants.zero_rtol * std::sqrt(p_norm2)) continue;
    const double factor = std::sqrt(chosen / lambda[k]) * component;
    for (int a = 0; a < n; ++a) weights[index[a]] += factor * V[a * n + k];
  }
  std::vector<double> GB(static_cast<size_t>(n) * n, 0.0);  // (Γ/s)·B
  for (int a = 0; a < n; ++a)
    for (int c = 0; c < n; ++c) {
      double s = 0.0;
      for (int b = 0; b < n; ++b) s += G[a * n + b] * B[b * n + c];
      GB[a * n + c] = s;
    }
  for (int a = 0; a < n; ++a)
    for (int c = 0; c < n; ++c) {
      double s = 0.0;
      for (int b = 0; b < n; ++b) s += B[a * n + b] * GB[b * n + c];
      certificate.residual = std::max(certificate.residual, std::fabs(s - chosen * P[a * n + c]));
    }
  certificate.residual /= chosen;
  certificate.scale = std::sqrt(chosen * top);
  return certificate;
}

}  // namespace mtlkernels::aligned_mtl

// ConFIG K-space solve (Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics
// Informed Neural Networks", ICLR 2025): β = C⁺p on the cosine matrix C = N⁻¹ΓN⁻¹ of the nonzero
// gradients (x = Uᵀβ = U⁺p, the direction of equal cosines), then w = (nᵀCβ / βᵀCβ)·N⁻¹β, so that
// d = Σwᵢgᵢ = (Σᵢ gᵢ·x̂)·x̂. Header-only, double precision, K ≤ 256, no Python. Mirrors
// mtlkernels/methods/config.py, whose docstring gives the details.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "solvers/dense.h"

namespace mtlkernels::config {

// Tolerances; their values are defined once, in Python (mtlkernels.methods.config.ConFIGConstants).
struct Constants {
  double rank_rcond;        // eigenvalues of C at or below rank_rcond·λ_max are dropped from C⁺
  double zero_rtol;         // βᵀCβ at or below zero_rtol·‖p‖²/λ_max: x = 0, w = 0
  double consistency_rtol;  // ‖Cβ − p‖∞ ≤ this·‖p‖∞: the cosines are exactly ∝ p
  int max_sweeps;           // Jacobi sweeps of the eigendecomposition
  int jacobi_max_tasks;     // Jacobi up to this many tasks, Householder + QL beyond
};

struct Certificate {
  double residual = 0.0;  // ‖C(Cβ − p)‖∞ / (λ_max·‖p‖∞)
  bool equal_cosines = false;
  int rank = 0;
  double length = 0.0;  // Σᵢ gᵢ·x̂
  std::vector<int> zero_tasks;
};

inline Certificate solve(const double* gram, int K, const double* pref, double* weights, const Constants& constants) {
  Certificate certificate;
  std::vector<int> index;
  std::vector<double> norms(K);
  for (int i = 0; i < K; ++i) {
    norms[i] = std::sqrt(std::max(gram[i * K + i], 0.0));
    weights[i] = 0.0;
    if (norms[i] > 0.0) index.push_back(i);
    else certificate.zero_tasks.push_back(i);
  }
  const int n = static_cast<int>(index.size());
  if (n == 0) return certificate;
  std::vector<double> C(static_cast<size_t>(n) * n), lambda(n), V(static_cast<size_t>(n) * n), p(n), beta(n, 0.0),
      C_beta(n, 0.0);
  for (int a = 0; a < n; ++a) {
    p[a] = pref[index[a]];
    for (int b = 0; b < n; ++b) {
      const int i = index[a], j = index[b];
      C[a * n + b] = a == b ? 1.0 : std::clamp(gram[i * K + j] / norms[i] / norms[j], -1.0, 1.0);
    }
  }
  if (n <= constants.jacobi_max_tasks) dense::symmetric_eigen(C.data(), lambda.data(), V.data(), n, constants.max_sweeps);
  else dense::symmetric_eigen_ql(C.data(), lambda.data(), V.data(), n);
  const double top = *std::max_element(lambda.begin(), lambda.end());
  double x_norm2 = 0.0, p_norm2 = 0.0, p_scale = 0.0;
  for (int a = 0; a < n; ++a) {
    p_norm2 += p[a] * p[a];
    p_scale = std::max(p_scale, std::fabs(p[a]));
  }
  for (int k = 0; k < n; ++k) {
    if (!(lambda[k] > constants.rank_rcond * top)) continue;
    ++certificate.rank;
    double coefficient = 0.0;
    for (int a = 0; a < n; ++a) coefficient += V[a * n + k] * p[a];
    x_norm2 += coefficient * coefficient / lambda[k];
    for (int a = 0; a < n; ++a) beta[a] += V[a * n + k] * coefficient / lambda[k];
  }
  double projections = 0.0;  // Σᵢ gᵢ·x = nᵀCβ
  for (int a = 0; a < n; ++a) {
    for (int b = 0; b < n; ++b) C_beta[a] += C[a * n + b] * beta[b];
    projections += norms[index[a]] * C_beta[a];
  }
  if (x_norm2 > constants.zero_rtol * p_norm2 / top) {
    for (int a = 0; a < n; ++a) weights[index[a]] = projections / x_norm2 * beta[a] / norms[index[a]];
    certificate.length = std::fabs(projections) / std::sqrt(x_norm2);
  }
  double normal = 0.0, consistency = 0.0;
  for (int a = 0; a < n; ++a) {
    double row = 0.0;
    for (int b = 0; b < n; ++b) row += C[a * n + b] * (C_beta[b] - p[b]);
    normal = std::max(normal, std::fabs(row));
    consistency = std::max(consistency, std::fabs(C_beta[a] - p[a]));
  }
  certificate.residual = normal / (top * p_scale);
  certificate.equal_cosines = consistency <= constants.consistency_rtol * p_scale;
  return certificate;
}

}  // namespace mtlkernels::config

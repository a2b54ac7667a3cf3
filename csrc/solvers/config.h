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
  double residual = 0.0;  // ‖C(Cβ − p)‖∞ / (λ_max·‖p‖∞) (a lower bound of λ_max on the Cholesky path)
  bool equal_cosines = false;
  int rank = 0;
  double length = 0.0;  // Σᵢ gᵢ·x̂
  std::vector<int> zero_tasks;
};

// β = C⁻¹p by Cholesky when C is provably of full numerical rank, without the eigendecomposition:
// λ_min(C) ≥ 1/‖L⁻¹‖²_F (‖C⁻¹‖₂ ≤ ‖C⁻¹‖_F ≤ ‖L⁻¹‖²_F) above 10·rank_rcond times the Gershgorin
// bound of λ_max (the factor 10 covers the rounding of L⁻¹), so that every eigenvalue is kept and
// C⁺p = C⁻¹p. top: a lower bound of λ_max (the best Rayleigh quotient of a few power steps from 𝟙,
// at least C's unit diagonal), so that the residual it scales is never under-reported. False
// (nothing usable in beta, top) when C is not shown to have full rank.
inline bool solve_full_rank(const std::vector<double>& C, int n, const std::vector<double>& p, const Constants& constants,
                            std::vector<double>& beta, double& top) {
  std::vector<double> L(static_cast<size_t>(n) * n, 0.0), inverse(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) {
      double s = C[i * n + j];
      for (int k = 0; k < j; ++k) s -= L[i * n + k] * L[j * n + k];
      if (i > j) {
        L[i * n + j] = s / L[j * n + j];
      } else {
        if (!(s > 0.0)) return false;
        L[i * n + i] = std::sqrt(s);
      }
    }
  }
  double frobenius2 = 0.0, gershgorin = 0.0;  // ‖L⁻¹‖²_F; max row sum of |C|
  for (int j = 0; j < n; ++j) {  // column j of L⁻¹ by forward substitution of e_j
    for (int i = j; i < n; ++i) {
      double s = i == j ? 1.0 : 0.0;
      for (int k = j; k < i; ++k) s -= L[i * n + k] * inverse[k * n + j];
      inverse[i * n + j] = s / L[i * n + i];
      frobenius2 += inverse[i * n + j] * inverse[i * n + j];
    }
    double row = 0.0;
    for (int k = 0; k < n; ++k) row += std::fabs(C[j * n + k]);
    gershgorin = std::max(gershgorin, row);
  }
  if (!(1.0 / frobenius2 > 10.0 * constants.rank_rcond * gershgorin)) return false;
  std::vector<double> y(n);
  for (int i = 0; i < n; ++i) {
    double s = p[i];
    for (int k = 0; k < i; ++k) s -= L[i * n + k] * y[k];
    y[i] = s / L[i * n + i];
  }
  for (int i = n - 1; i >= 0; --i) {
    double s = y[i];
    for (int k = i + 1; k < n; ++k) s -= L[k * n + i] * beta[k];
    beta[i] = s / L[i * n + i];
  }
  std::vector<double> x(n, 1.0), Cx(n);
  top = 1.0;
  for (int step = 0; step < 4; ++step) {
    double xx = 0.0, xCx = 0.0, CxCx = 0.0;
    for (int a = 0; a < n; ++a) {
      double s = 0.0;
      for (int b = 0; b < n; ++b) s += C[a * n + b] * x[b];
      Cx[a] = s, xx += x[a] * x[a], xCx += x[a] * s, CxCx += s * s;
    }
    top = std::max(top, xCx / xx);
    if (!(CxCx > 0.0)) break;
    const double scale = 1.0 / std::sqrt(CxCx);
    for (int a = 0; a < n; ++a) x[a] = Cx[a] * scale;
  }
  return true;
}

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
  double top = 0.0, x_norm2 = 0.0, p_norm2 = 0.0, p_scale = 0.0;
  for (int a = 0; a < n; ++a) {
    p_norm2 += p[a] * p[a];
    p_scale = std::max(p_scale, std::fabs(p[a]));
  }
  if (solve_full_rank(C, n, p, constants, beta, top)) {
    certificate.rank = n;
    for (int a = 0; a < n; ++a) x_norm2 += p[a] * beta[a];  // pᵀC⁻¹p = βᵀCβ
  } else {
    std::fill(beta.begin(), beta.end(), 0.0);
    if (n <= constants.jacobi_max_tasks) dense::symmetric_eigen(C.data(), lambda.data(), V.data(), n, constants.max_sweeps);
    else dense::symmetric_eigen_ql(C.data(), lambda.data(), V.data(), n);
    top = *std::max_element(lambda.begin(), lambda.end());
    for (int k = 0; k < n; ++k) {
      if (!(lambda[k] > constants.rank_rcond * top)) continue;
      ++certificate.rank;
      double coefficient = 0.0;
      for (int a = 0; a < n; ++a) coefficient += V[a * n + k] * p[a];
      x_norm2 += coefficient * coefficient / lambda[k];
      for (int a = 0; a < n; ++a) beta[a] += V[a * n + k] * coefficient / lambda[k];
    }
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

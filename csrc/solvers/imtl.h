// IMTL-G's K-space solve (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).
//
// nᵢ = √Γᵢᵢ, C = N⁻¹ΓN⁻¹ (cosines); β = C⁻¹𝟙, w = N⁻¹β / Σ(N⁻¹β): d = Σwᵢgᵢ has equal projections
// (Γw)ᵢ/nᵢ on every unit gradient and Σw = 1. Degenerate Γ, as mtlkernels/methods/imtl.py
// documents: zero gradients get weight 0 (all zero: w = 𝟙/K); a singular C, or Σ(N⁻¹β) ≈ 0
// (fallback), gives the impartial weights with Σw = 1 of least ‖N·w‖; none exist: w = 0.
// The pivot and rank tolerances arrive scaled to the precision Γ was rounded to
// (mtlkernels.methods.imtl.tolerances). Double precision, header-only, no Python; K ≤ 256.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "solvers/dense.h"

namespace mtlkernels::imtl {

// The solve's tolerances and Jacobi sweep cap. Their values are defined once, in Python
// (mtlkernels.methods.imtl.IMTLConstants, documented there), and arrive through the binding.
struct Constants {
  double pivot_tol;         // Cholesky pivots of C below this → fallback
  double sum_rtol;          // |Σγ| ≤ this·Σ|γ|: weights cannot sum to 1
  double rank_rcond;        // eigenvalues of C below this·max count as zero
  double consistency_rtol;  // 𝟙 ∈ range(C) when ‖P_null 𝟙‖ ≤ this·‖𝟙‖
  int max_sweeps;           // Jacobi sweeps of the fallback's eigen-decomposition
};

struct Certificate {
  bool fallback = false;
  bool unique = true;
  bool degenerate = false;
  int rank = 0;
  double residual = 0.0;
  std::vector<int> zero_tasks;
};

// max_i |pᵢ − mean p| / max_i Σⱼ|Cᵢⱼ·tⱼ| with tⱼ = nⱼwⱼ and pᵢ = Σⱼ Cᵢⱼtⱼ = d·uᵢ (m active tasks).
inline double equal_projection_residual(const std::vector<double>& C, const std::vector<double>& t, int m) {
  std::vector<double> p(m);
  double mean = 0.0, magnitude = 0.0;
  for (int i = 0; i < m; ++i) {
    double s = 0.0, a = 0.0;
    for (int j = 0; j < m; ++j) {
      s += C[i * m + j] * t[j];
      a += std::fabs(C[i * m + j] * t[j]);
    }
    p[i] = s;
    mean += s;
    magnitude = std::max(magnitude, a);
  }
  if (!(magnitude > 0.0)) return 0.0;
  mean /= m;
  double worst = 0.0;
  for (int i = 0; i < m; ++i) worst = std::max(worst, std::fabs(p[i] - mean));
  return worst / magnitude;
}

// The least-‖β‖ β with C·β ∈ span 𝟙 and Σβᵢ/nᵢ = 1, as weights N⁻¹β in alpha (m); false when
// there is none. Sets cert.rank (C's numerical rank) and cert.unique. From C = V·diag(λ)·Vᵀ: the β
// with C·β ∈ span 𝟙 span C⁺𝟙 (when 𝟙 ∈ range C) and C's null space; the least β with Σβᵢ/nᵢ = 1
// is the projection of 1/n onto that subspace, rescaled; unique when the subspace is a line.
inline bool min_norm_impartial(const std::vector<double>& C, const std::vector<double>& n, int m, double* alpha,
                               Certificate& cert, const Constants& constants) {
  std::vector<double> lambda(m), V(static_cast<size_t>(m) * m);
  dense::symmetric_eigen(C.data(), lambda.data(), V.data(), m, constants.max_sweeps);
  double lambda_max = 0.0;
  for (double l : lambda) lambda_max = std::max(lambda_max, std::fabs(l));
  std::vector<char> in_range(m);
  for (int k = 0; k < m; ++k) {
    in_range[k] = std::fabs(lambda[k]) > constants.rank_rcond * lambda_max;
    cert.rank += in_range[k];
  }
  std::vector<double> coords(m);  // Vₖ·𝟙
  double null_part = 0.0;         // ‖P_null 𝟙‖²
  std::vector<std::vector<double>> basis;
  for (int k = 0; k < m; ++k) {
    double c = 0.0;
    for (int i = 0; i < m; ++i) c += V[i * m + k];
    coords[k] = c;
    if (in_range[k]) continue;
    null_part += c * c;
    std::vector<double> q(m);
    for (int i = 0; i < m; ++i) q[i] = V[i * m + k];
    basis.push_back(std::move(q));
  }
  if (std::sqrt(null_part) <= constants.consistency_rtol * std::sqrt(static_cast<double>(m))) {
    std::vector<double> particular(m, 0.0);  // C⁺𝟙
    for (int k = 0; k < m; ++k) {
      if (!in_range[k]) continue;
      const double f = coords[k] / lambda[k];
      for (int i = 0; i < m; ++i) particular[i] += f * V[i * m + k];
    }
    double norm = 0.0;
    for (double v : particular) norm += v * v;
    norm = std::sqrt(norm);
    if (norm > 0.0) {
      for (double& v : particular) v /= norm;
      basis.push_back(std::move(particular));
    }
  }
  cert.unique = basis.size() == 1;
  const double n_min = *std::min_element(n.begin(), n.end());
  std::vector<double> inverse_norms(m), projected(m, 0.0);
  double inverse_norm2 = 0.0;
  for (int i = 0; i < m; ++i) {
    inverse_norms[i] = n_min / n[i];
    inverse_norm2 += inverse_norms[i] * inverse_norms[i];
  }
  for (const auto& q : basis) {
    double c = 0.0;
    for (int i = 0; i < m; ++i) c += q[i] * inverse_norms[i];
    for (int i = 0; i < m; ++i) projected[i] += c * q[i];
  }
  double projected_norm2 = 0.0, sum = 0.0;
  for (int i = 0; i < m; ++i) {
    projected_norm2 += projected[i] * projected[i];
    alpha[i] = projected[i] / n[i];
    sum += alpha[i];
  }
  if (!(std::sqrt(projected_norm2) > constants.sum_rtol * std::sqrt(inverse_norm2))) return false;
  for (int i = 0; i < m; ++i) alpha[i] /= sum;
  return true;
}

// Weights of the m nonzero gradients from their cosine matrix C and norms n, into alpha.
inline void solve_active(const std::vector<double>& C, const std::vector<double>& n, int m, double* alpha,
                         Certificate& cert, const Constants& constants) {
  std::vector<double> ones(m, 1.0);
  if (dense::cholesky_solve(C.data(), ones.data(), alpha, m, constants.pivot_tol)) {
    double sum = 0.0, magnitude = 0.0;
    for (int i = 0; i < m; ++i) {
      alpha[i] /= n[i];
      sum += alpha[i];
      magnitude += std::fabs(alpha[i]);
    }
    if (std::fabs(sum) > constants.sum_rtol * magnitude) {
      for (int i = 0; i < m; ++i) alpha[i] /= sum;
      cert.rank = m;
      return;
    }
  }
  cert.fallback = true;
  if (min_norm_impartial(C, n, m, alpha, cert, constants)) return;
  cert.unique = false;
  cert.degenerate = true;
  std::fill(alpha, alpha + m, 0.0);
}

// Weights w [K] from Γ [K, K] (row-major, finite, non-negative diagonal).
inline Certificate solve(const double* gram, int K, double* weights, const Constants& constants) {
  Certificate cert;
  std::vector<int> active;
  std::vector<double> n;
  for (int i = 0; i < K; ++i) {
    const double g = gram[static_cast<size_t>(i) * K + i];
    if (g > 0.0) {
      active.push_back(i);
      n.push_back(std::sqrt(g));
    } else {
      cert.zero_tasks.push_back(i);
    }
  }
  std::fill(weights, weights + K, 0.0);
  const int m = static_cast<int>(active.size());
  if (m == 0) {
    std::fill(weights, weights + K, 1.0 / K);
    cert.fallback = true;
    cert.unique = false;
    return cert;
  }
  std::vector<double> C(static_cast<size_t>(m) * m);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j)
      C[i * m + j] = gram[static_cast<size_t>(active[i]) * K + active[j]] / n[i] / n[j];

  std::vector<double> alpha(m);
  solve_active(C, n, m, alpha.data(), cert, constants);
  std::vector<double> scaled(m);
  for (int i = 0; i < m; ++i) {
    weights[active[i]] = alpha[i];
    scaled[i] = n[i] * alpha[i];
  }
  cert.residual = equal_projection_residual(C, scaled, m);
  return cert;
}

}  // namespace mtlkernels::imtl

// PCGrad in K-space (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020), double
// precision, no Python. Task i's projected gradient gᵢ' = cᵢᵀJ starts at cᵢ = eᵢ; for j in
// order[i]: if (Γcᵢ)ⱼ < 0 and Γⱼⱼ > 0, cᵢ[j] −= (Γcᵢ)ⱼ/Γⱼⱼ. Weights w = Σᵢ cᵢ (or their mean).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mtlkernels::pcgrad {

struct Certificate {
  int projections = 0;                  // projections made, over all tasks
  double orthogonality_residual = 0.0;  // max |(Γcᵢ)ⱼ| / Σₖ|Γⱼₖcᵢₖ| right after each projection
};

// Task i's sequential projections: c (K, zero on entry) ends as cᵢ. (Γcᵢ)ⱼ is recomputed from Γ
// at every visit, over the support of cᵢ only (i and the tasks projected off so far), so a visit
// costs O(projections so far) and no rounding accumulates from one projection to the next.
inline Certificate project_task(const double* gram, const int64_t* order_i, int K, int i, double* c) {
  Certificate certificate;
  std::vector<int> support(1, i);
  std::vector<char> in_support(K, 0);
  support.reserve(K);
  in_support[i] = 1;
  c[i] = 1.0;
  for (int t = 0; t < K; ++t) {
    const int j = static_cast<int>(order_i[t]);
    const double* row = gram + static_cast<size_t>(j) * K;
    if (!(row[j] > 0.0)) continue;  // zero gradient gⱼ: nothing to project off
    double inner = 0.0;
    for (int k : support) inner += row[k] * c[k];
    if (!(inner < 0.0)) continue;
    if (!in_support[j]) {
      in_support[j] = 1;
      support.push_back(j);
    }
    c[j] -= inner / row[j];
    ++certificate.projections;
    double after = 0.0, magnitude = 0.0;
    for (int k : support) {
      const double term = row[k] * c[k];
      after += term;
      magnitude += std::fabs(term);
    }
    if (magnitude > 0.0)
      certificate.orthogonality_residual = std::max(certificate.orthogonality_residual, std::fabs(after) / magnitude);
  }
  return certificate;
}

// gram: K×K row-major (symmetric); order: K×K row-major, row i a permutation of 0..K-1;
// weights: K outputs.
inline Certificate solve(const double* gram, const int64_t* order, int K, bool mean, double* weights) {
  Certificate certificate;
  std::vector<double> c(K);
  std::fill(weights, weights + K, 0.0);
  for (int i = 0; i < K; ++i) {
    std::fill(c.begin(), c.end(), 0.0);
    const Certificate task = project_task(gram, order + static_cast<size_t>(i) * K, K, i, c.data());
    certificate.projections += task.projections;
    certificate.orthogonality_residual = std::max(certificate.orthogonality_residual, task.orthogonality_residual);
    for (int k = 0; k < K; ++k) weights[k] += c[k];
  }
  if (mean)
    for (int k = 0; k < K; ++k) weights[k] /= K;
  return certificate;
}

}  // namespace mtlkernels::pcgrad

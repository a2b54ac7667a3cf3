// GradVac in K-space (Wang et al., "Gradient Vaccine", ICLR 2021, Algorithm 1), double precision,
// no Python; the same steps as mtlkernels/methods/gradvac.py's torch solve. Task i's corrected
// gradient gᵢ' = cᵢᵀJ starts at cᵢ = eᵢ; for j ≠ i in order[i], with φ = (Γcᵢ)ⱼ/(‖gᵢ'‖‖gⱼ‖ + eps)
// and the target φ̂ = targets[i, j]: if φ < φ̂, cᵢ[j] += ‖gᵢ'‖(φ̂√(1−φ²) − φ√(1−φ̂²))/(‖gⱼ‖√(1−φ̂²) + eps);
// then φ̂ ← (1 − β)φ̂ + βφ (always, or only after a correction). Weights w = Σᵢ cᵢ.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mtlkernels::gradvac {

struct Certificate {
  int corrections = 0;           // corrections made, over all tasks
  double target_residual = 0.0;  // max over corrections of cos(gᵢ', gⱼ) = φ̂ᵢⱼ's residual, squared form, relative
};

// gram: K×K row-major (symmetrised here); order: K×K row-major, row i a permutation of 0..K-1;
// targets: K×K row-major, updated in place; weights: K outputs.
inline Certificate solve(const double* gram_in, const int64_t* order, int K, double* targets, double beta, double eps,
                         bool always, double* weights) {
  std::vector<double> gram(static_cast<size_t>(K) * K);
  for (int a = 0; a < K; ++a)
    for (int b = 0; b < K; ++b)
      gram[a * K + b] = 0.5 * (gram_in[static_cast<size_t>(a) * K + b] + gram_in[static_cast<size_t>(b) * K + a]);
  Certificate certificate;
  std::vector<double> c(K), inner(K);
  std::fill(weights, weights + K, 0.0);
  const auto squared_norm = [&]() {  // cᵢᵀΓcᵢ
    double s = 0.0;
    for (int k = 0; k < K; ++k) s += c[k] * inner[k];
    return std::max(s, 0.0);
  };
  for (int i = 0; i < K; ++i) {
    std::fill(c.begin(), c.end(), 0.0);
    c[i] = 1.0;
    std::copy(&gram[static_cast<size_t>(i) * K], &gram[static_cast<size_t>(i) * K] + K, inner.begin());
    for (int t = 0; t < K; ++t) {
      const int j = static_cast<int>(order[static_cast<size_t>(i) * K + t]);
      if (j == i) continue;
      const double norm_i = std::sqrt(squared_norm());
      const double norm_j = std::sqrt(std::max(gram[static_cast<size_t>(j) * K + j], 0.0));
      const double denominator = norm_i * norm_j + eps;
      const double cosine = denominator > 0.0 ? inner[j] / denominator : 0.0;
      double& target = targets[static_cast<size_t>(i) * K + j];
      const double phi_hat = target;
      bool corrected = false;
      if (cosine < phi_hat) {
        const double bound = norm_j * std::sqrt(std::max(1.0 - phi_hat * phi_hat, 0.0)) + eps;
        if (bound > 0.0) {
          const double step = norm_i *
                              (phi_hat * std::sqrt(std::max(1.0 - cosine * cosine, 0.0)) -
                               cosine * std::sqrt(std::max(1.0 - phi_hat * phi_hat, 0.0))) /
                              bound;
          c[j] += step;
          const double* row = &gram[static_cast<size_t>(j) * K];
          for (int k = 0; k < K; ++k) inner[k] += step * row[k];
          ++certificate.corrections;
          corrected = true;
          // cos(gᵢ', gⱼ) = φ̂ in squared form, |a|a| − φ̂|φ̂|‖gᵢ'‖²‖gⱼ‖²| over T² + φ̂²‖gⱼ‖²S, with
          // T = Σₖ|Γⱼₖcₖ| and S = Σₐ_b|cₐΓₐ_bc_b| the sizes of the terms a = (Γcᵢ)ⱼ and ‖gᵢ'‖² sum
          double terms = 0.0, squares = 0.0;
          for (int a = 0; a < K; ++a) {
            if (c[a] == 0.0) continue;
            terms += std::fabs(row[a] * c[a]);
            const double* row_a = &gram[static_cast<size_t>(a) * K];
            for (int b = 0; b < K; ++b) squares += std::fabs(c[a] * row_a[b] * c[b]);
          }
          const double norm_j2 = norm_j * norm_j;
          const double magnitude = terms * terms + phi_hat * phi_hat * norm_j2 * squares;
          const double a = inner[j];
          if (magnitude > 0.0)
            certificate.target_residual =
                std::max(certificate.target_residual,
                         std::fabs(a * std::fabs(a) - phi_hat * std::fabs(phi_hat) * squared_norm() * norm_j2) / magnitude);
        }
      }
      if (always || corrected) target = (1.0 - beta) * phi_hat + beta * cosine;
    }
    for (int k = 0; k < K; ++k) weights[k] += c[k];
  }
  return certificate;
}

}  // namespace mtlkernels::gradvac

// FairGrad K-space solve (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024):
// w > 0 with (Γw)ᵢ = wᵢ^(−1/α). Header-only, double precision, K ≤ 256, no Python.
//
// The system is the stationarity condition of the strictly convex f(w) = ½wᵀΓw − Σ φ(wᵢ),
// φ′(x) = x^(−1/α), minimised by damped Newton in βᵢ = wᵢ/sᵢ (sᵢ = Γᵢᵢ^(−α/(α+1)), task i's own
// solution) with the Newton system equilibrated to the cosine matrix C plus the barrier's
// curvature. Zero gradients get weight 0; when f has no minimiser (a non-negative combination of
// the gradients vanishes) the growing tasks are dropped and the rest solved again. Mirrors
// mtlkernels/methods/fairgrad.py, whose docstring gives the details.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "solvers/dense.h"

namespace mtlkernels::fairgrad {

// The solve's caps and tolerances. Their values are defined once, in Python
// (mtlkernels.methods.fairgrad.FairGradConstants, documented there), and arrive through the binding.
struct Constants {
  int max_newton_steps;
  double converged_length2;  // δ² below this: one more full step reaches rounding
  double stalled_residual;   // a step no shorter than the last stops the solve below this backward error
  double diverged_beta;      // an iterate beyond this (× the spread of √m) means f has no minimiser
  double max_start_beta;     // so that growth towards diverged_beta is seen step by step
  int max_halvings;          // Armijo halvings of a damped step
  double flat_rtol;          // a change of f below this fraction of its terms' size is rounding
};

struct Certificate {
  double residual = 0.0;       // maxᵢ |wᵢ^(1/α)(Γw)ᵢ − 1| / (wᵢ^(1/α)Σⱼ|Γᵢⱼwⱼ| + 1) over all tasks
  double kept_residual = 0.0;  // the same over the tasks with wᵢ > 0
  int iterations = 0;
  bool converged = true;
};

namespace detail {

// f in β, ½βᵀMβ − Σ mᵢφ(βᵢ) with M = D C D, D = diag(√m); `size` gets ½|βᵀMβ| + Σ|mᵢφ(βᵢ)|.
inline double objective(const std::vector<double>& C, const std::vector<double>& root_m,
                        const std::vector<double>& beta, int n, double alpha, double& size) {
  double quadratic = 0.0, utility = 0.0, utility_size = 0.0;
  const double p = 1.0 - 1.0 / alpha;
  for (int i = 0; i < n; ++i) {
    double row = 0.0;
    for (int j = 0; j < n; ++j) row += C[i * n + j] * root_m[j] * beta[j];
    quadratic += root_m[i] * beta[i] * row;
    const double term = root_m[i] * root_m[i] * (alpha == 1.0 ? std::log(beta[i]) : std::pow(beta[i], p) / p);
    utility += term;
    utility_size += std::fabs(term);
  }
  size = 0.5 * std::fabs(quadratic) + utility_size;
  return 0.5 * quadratic - utility;
}

struct Round {
  int steps = 0;
  bool converged = false;
  bool diverged = false;
};

inline void mark_growing(const std::vector<double>& growth, const std::vector<double>& beta, int n,
                         std::vector<char>& growing) {
  int largest = 0;
  for (int i = 0; i < n; ++i) {
    growing[i] = growth[i] > 0.25;
    if (beta[i] > beta[largest]) largest = i;
  }
  growing[largest] = 1;
}

inline Round newton(const std::vector<double>& C, const std::vector<double>& root_m, std::vector<double>& beta, int n,
                    double alpha, std::vector<char>& growing, const Constants& constants) {
  std::vector<double> rhs(n), scaled_step(n), step(n), trial(n), growth(n, 0.0), H(static_cast<size_t>(n) * n);
  double backward_error = 0.0;  // max |(Cy)ᵢ − √mᵢβᵢ^(−1/α)| / (Σⱼ|Cᵢⱼyⱼ| + √mᵢβᵢ^(−1/α)), y = √m⊙β
  double previous_length = std::numeric_limits<double>::infinity();
  // a solution's βᵢ may legitimately reach the coupling ratio √mⱼ/√mᵢ (α ≠ 1 and spread scales)
  const double diverged = constants.diverged_beta * *std::max_element(root_m.begin(), root_m.end()) /
                          *std::min_element(root_m.begin(), root_m.end());
  Round round;
  for (int k = 1; k <= constants.max_newton_steps; ++k) {
    backward_error = 0.0;
    for (int i = 0; i < n; ++i) {
      double row = 0.0, magnitude = 0.0;
      for (int j = 0; j < n; ++j) {
        const double term = C[i * n + j] * (root_m[j] * beta[j]);
        row += term;
        magnitude += std::fabs(term);
      }
      const double target = root_m[i] * std::pow(beta[i], -1.0 / alpha);
      rhs[i] = row - target;
      backward_error = std::max(backward_error, std::fabs(rhs[i]) / (magnitude + target));
    }
    std::copy(C.begin(), C.end(), H.begin());
    for (int i = 0; i < n; ++i) H[i * n + i] += std::pow(beta[i], -1.0 / alpha - 1.0) / alpha;
    if (!dense::cholesky_solve(H.data(), rhs.data(), scaled_step.data(), n, 0.0)) {
      mark_growing(growth, beta, n, growing);
      round.steps = k - 1;
      round.diverged = true;
      return round;
    }
    double decrement2 = 0.0, relative = 0.0;
    for (int i = 0; i < n; ++i) {
      decrement2 += rhs[i] * scaled_step[i];
      step[i] = -scaled_step[i] / root_m[i];
      relative = std::max(relative, std::fabs(step[i] / beta[i]));
    }
    const double length = std::max(std::sqrt(std::max(decrement2, 0.0)), relative);
    if (length * length <= constants.converged_length2) {
      for (int i = 0; i < n; ++i) beta[i] += step[i];
      round.steps = k;
      round.converged = true;
      return round;
    }
    double t = 1.0;
    if (length < 0.25) {  // quadratic region: full steps while they shrink, stop at the rounding floor
      if (length >= previous_length && backward_error <= constants.stalled_residual) {
        round.steps = k - 1;
        round.converged = true;
        return round;
      }
      previous_length = length;
    } else {
      // the full step, or 0.99 of the way to the boundary βᵢ = 0, halved until f decreases enough
      for (int i = 0; i < n; ++i)
        if (step[i] < 0.0) t = std::min(t, 0.99 * (beta[i] / -step[i]));
      double size = 0.0, trial_size = 0.0;
      const double current = objective(C, root_m, beta, n, alpha, size);
      for (int h = 0; h < constants.max_halvings; ++h) {
        for (int i = 0; i < n; ++i) trial[i] = beta[i] + t * step[i];
        const double value = objective(C, root_m, trial, n, alpha, trial_size);
        // enough decrease, or no change f can resolve (its rounding): Newton's step is then the guide
        if (value <= current - 0.25 * t * decrement2 || std::fabs(value - current) <= constants.flat_rtol * size) break;
        t *= 0.5;
      }
    }
    double largest = 0.0;
    for (int i = 0; i < n; ++i) {
      growth[i] = t * step[i] / beta[i];
      beta[i] += t * step[i];
      largest = std::max(largest, beta[i]);
    }
    if (largest > diverged) {
      mark_growing(growth, beta, n, growing);
      round.steps = k;
      round.diverged = true;
      return round;
    }
  }
  round.steps = constants.max_newton_steps;
  return round;
}

}  // namespace detail

// Weights w for Γ [K, K] row-major and α > 0.
inline Certificate solve(const double* gram, int K, double alpha, double* weights, const Constants& constants) {
  std::vector<double> norms(K);
  std::vector<char> kept(K);
  for (int i = 0; i < K; ++i) {
    norms[i] = std::sqrt(std::max(gram[i * K + i], 0.0));
    kept[i] = norms[i] > 0.0;
    weights[i] = 0.0;
  }
  Certificate certificate;
  std::vector<int> index;
  std::vector<double> C, root_m, beta;
  std::vector<char> growing;
  for (;;) {
    index.clear();
    for (int i = 0; i < K; ++i)
      if (kept[i]) index.push_back(i);
    const int n = static_cast<int>(index.size());
    if (n == 0) break;
    C.assign(static_cast<size_t>(n) * n, 0.0);
    root_m.assign(n, 0.0);
    double ray = 0.0, diagonal = 0.0;
    double largest_norm = 0.0;
    for (int a = 0; a < n; ++a) largest_norm = std::max(largest_norm, norms[index[a]]);
    // √(sᵢ²Γᵢᵢ) up to a common factor (β does not depend on it): relative to the largest norm
    for (int a = 0; a < n; ++a) root_m[a] = std::pow(norms[index[a]] / largest_norm, (1.0 - alpha) / (1.0 + alpha));
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b) {
        const int i = index[a], j = index[b];
        const double c = gram[i * K + j] / norms[i] / norms[j];
        C[a * n + b] = a == b ? 1.0 : std::clamp(c, -1.0, 1.0);
        ray += root_m[a] * C[a * n + b] * root_m[b];
      }
    for (int a = 0; a < n; ++a) diagonal += root_m[a] * root_m[a];
    // the minimiser of f along β = t·𝟙, kept below max_start_beta
    const double t = ray > 0.0 && std::isfinite(ray) ? std::pow(diagonal / ray, alpha / (alpha + 1.0)) : 1.0;
    beta.assign(n, std::min(t, constants.max_start_beta));
    growing.assign(n, 0);
    const detail::Round round = detail::newton(C, root_m, beta, n, alpha, growing, constants);
    certificate.iterations += round.steps;
    certificate.converged = round.converged;
    if (!round.diverged) {
      for (int a = 0; a < n; ++a)
        weights[index[a]] = beta[a] * std::pow(norms[index[a]], -2.0 * alpha / (alpha + 1.0));
      break;
    }
    for (int a = 0; a < n; ++a)  // no positive solution: drop the cancelling tasks, solve again
      if (growing[a]) kept[index[a]] = 0;
    certificate.converged = true;
  }
  for (int i = 0; i < K; ++i) {  // |wᵢ^(1/α)(Γw)ᵢ − 1| / (wᵢ^(1/α)Σⱼ|Γᵢⱼwⱼ| + 1)
    double row = 0.0, magnitude = 0.0;
    for (int j = 0; j < K; ++j) {
      row += gram[i * K + j] * weights[j];
      magnitude += std::fabs(gram[i * K + j] * weights[j]);
    }
    const double scale = std::pow(weights[i], 1.0 / alpha);
    const double equation = std::fabs(scale * row - 1.0) / (scale * magnitude + 1.0);
    certificate.residual = std::max(certificate.residual, equation);
    if (weights[i] > 0.0) certificate.kept_residual = std::max(certificate.kept_residual, equation);
  }
  return certificate;
}

}  // namespace mtlkernels::fairgrad

// Nash-MTL K-space solve (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022):
// α > 0 with αᵢ·(Γα)ᵢ = 1, then w = α·min(1, max_norm/√(αᵀΓα)). Header-only, double precision,
// K ≤ 256, no Python.
//
// With βᵢ = ‖gᵢ‖·αᵢ and the cosine matrix C = D⁻¹ΓD⁻¹ the system is the stationarity condition
// of f(β) = ½βᵀCβ − Σ log βᵢ, minimised by damped Newton from a warm start rescaled onto the
// optimal ray; steps are measured by δ = max(λ, ‖Δβ/β‖), so every iterate stays > 0. Zero
// gradients get weight 0. When f is unbounded below (a non-negative combination of the gradients
// vanishes, so no positive solution exists) the iterate grows along that combination: once it
// passes diverged_beta, or f's Hessian C + diag(β⁻²) is not positive definite (a rounded Γ whose
// tasks cancel within its rounding), the tasks still growing and the largest βᵢ get weight 0 and
// the others are solved again. Mirrors _solve_newton_torch in mtlkernels/methods/nash_mtl.py,
// whose docstring gives the details.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "solvers/dense.h"

namespace mtlkernels::nash_mtl {

// The solve's tolerances and caps. Their values are defined once, in Python
// (mtlkernels.methods.nash_mtl.NashMTLConstants, documented there), and arrive through the binding.
struct Constants {
  int max_newton_steps;
  double converged_decrement2;  // λ² below this: one more full step reaches rounding
  double diverged_beta;         // an iterate beyond this means f is unbounded below
  double max_start_beta;        // so that growth towards diverged_beta is seen step by step
};

struct Certificate {
  double residual = 0.0;       // ‖α⊙(Γα) − 1‖ over all tasks (α before clipping)
  double kept_residual = 0.0;  // the same over the tasks with αᵢ > 0
  double direction_norm = 0.0; // √(αᵀΓα) before clipping
  double clip_scale = 1.0;     // w = clip_scale·α
  int iterations = 0;          // Newton steps (0 when α was reused)
  bool converged = true;
};

namespace detail {

inline double barrier_objective(const std::vector<double>& C, const std::vector<double>& beta, int n) {
  double quadratic = 0.0, logs = 0.0;
  for (int i = 0; i < n; ++i) {
    double row = 0.0;
    for (int j = 0; j < n; ++j) row += C[i * n + j] * beta[j];
    quadratic += beta[i] * row;
    logs += std::log(beta[i]);
  }
  return 0.5 * quadratic - logs;
}

struct Round {
  int steps = 0;
  bool converged = false;
  bool diverged = false;
};

// The tasks dropped when f is unbounded below: relative last step > 1/4, and the largest βᵢ.
inline void mark_growing(const std::vector<double>& growth, const std::vector<double>& beta, int n,
                         std::vector<char>& growing) {
  int largest = 0;
  for (int i = 0; i < n; ++i) {
    growing[i] = growth[i] > 0.25;
    if (beta[i] > beta[largest]) largest = i;
  }
  growing[largest] = 1;
}

// Minimise f from β > 0 (in place); every iterate stays > 0. f is taken as unbounded below when
// the iterate passes diverged_beta or f's Hessian C + diag(β⁻²) is not positive definite; then
// `growing` marks the tasks whose βᵢ grows (relative step > 1/4) and the task of the largest βᵢ.
inline Round barrier_newton(const std::vector<double>& C, std::vector<double>& beta, int n,
                            std::vector<char>& growing, const Constants& constants) {
  std::vector<double> gradient(n), step(n), trial(n), growth(n, 0.0), H(static_cast<size_t>(n) * n);
  double previous_decrement2 = std::numeric_limits<double>::infinity();
  Round round;
  for (int k = 1; k <= constants.max_newton_steps; ++k) {
    for (int i = 0; i < n; ++i) {
      double row = 0.0;
      for (int j = 0; j < n; ++j) row += C[i * n + j] * beta[j];
      gradient[i] = row - 1.0 / beta[i];
    }
    std::copy(C.begin(), C.end(), H.begin());
    for (int i = 0; i < n; ++i) H[i * n + i] += 1.0 / (beta[i] * beta[i]);
    if (!dense::cholesky_solve(H.data(), gradient.data(), step.data(), n, 0.0)) {
      // f is not convex at β: C's negative curvature outweighs the barrier's
      mark_growing(growth, beta, n, growing);
      round.steps = k - 1;
      round.diverged = true;
      return round;
    }
    double decrement2 = 0.0, barrier_length2 = 0.0;
    for (int i = 0; i < n; ++i) {
      step[i] = -step[i];
      decrement2 -= gradient[i] * step[i];
      barrier_length2 += (step[i] / beta[i]) * (step[i] / beta[i]);
    }
    // the step's length: the Newton decrement λ, or the step in the barrier's local norm when
    // longer (C with negative curvature); |stepᵢ|/βᵢ ≤ length, so β + t·step > 0 for t·length < 1
    const double length = std::max(std::sqrt(std::max(decrement2, 0.0)), std::sqrt(barrier_length2));
    if (length * length <= constants.converged_decrement2) {
      for (int i = 0; i < n; ++i) beta[i] += step[i];
      round.steps = k;
      round.converged = true;
      return round;
    }
    if (length < 0.25) {  // quadratic region: full steps, stop at the rounding floor
      if (decrement2 >= previous_decrement2) {
        round.steps = k - 1;
        round.converged = true;
        return round;
      }
      previous_decrement2 = decrement2;
      for (int i = 0; i < n; ++i) {
        growth[i] = step[i] / beta[i];
        beta[i] += step[i];
      }
      continue;
    }
    bool positive = true;
    for (int i = 0; i < n; ++i) {
      trial[i] = beta[i] + step[i];
      positive = positive && trial[i] > 0.0;
    }
    if (!(positive && barrier_objective(C, trial, n) <= barrier_objective(C, beta, n) - 0.25 * decrement2))
      for (int i = 0; i < n; ++i) step[i] /= 1.0 + length;  // the damped step of self-concordant analysis
    double largest = 0.0;
    for (int i = 0; i < n; ++i) {
      growth[i] = step[i] / beta[i];
      beta[i] += step[i];
      largest = std::max(largest, beta[i]);
    }
    if (largest > constants.diverged_beta) {
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

// α (before clipping) for Γ [K, K] row-major, warm-started from `previous` (nullptr: cold start).
inline Certificate solve_alpha(const double* gram, int K, const double* previous, double* alpha,
                               const Constants& constants) {
  std::vector<double> norms(K);
  std::vector<char> kept(K);
  for (int i = 0; i < K; ++i) {
    norms[i] = std::sqrt(std::max(gram[i * K + i], 0.0));
    kept[i] = norms[i] > 0.0;
    alpha[i] = 0.0;
  }
  Certificate certificate;
  std::vector<int> index;
  std::vector<double> C, beta;
  std::vector<char> growing;
  for (;;) {
    index.clear();
    for (int i = 0; i < K; ++i)
      if (kept[i]) index.push_back(i);
    const int n = static_cast<int>(index.size());
    if (n == 0) break;
    C.assign(static_cast<size_t>(n) * n, 0.0);
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b) {
        const int i = index[a], j = index[b];
        const double c = gram[i * K + j] / norms[i] / norms[j];
        C[a * n + b] = a == b ? 1.0 : std::clamp(c, -1.0, 1.0);
      }
    beta.assign(n, 1.0);
    if (previous != nullptr)
      for (int a = 0; a < n; ++a) {
        const double warm = previous[index[a]] * norms[index[a]];
        if (std::isfinite(warm) && warm > 0.0) beta[a] = warm;
      }
    double ray = 0.0;
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b) ray += beta[a] * C[a * n + b] * beta[b];
    if (std::isfinite(ray) && ray > 0.0) {  // the minimiser of f along the ray, kept below max_start_beta
      const double s = std::min(std::sqrt(n / ray), constants.max_start_beta / *std::max_element(beta.begin(), beta.end()));
      for (double& v : beta) v *= s;
    }
    growing.assign(n, 0);
    const detail::Round round = detail::barrier_newton(C, beta, n, growing, constants);
    certificate.iterations += round.steps;
    certificate.converged = round.converged;
    if (!round.diverged) {
      for (int a = 0; a < n; ++a) alpha[index[a]] = beta[a] / norms[index[a]];
      break;
    }
    for (int a = 0; a < n; ++a)  // no positive solution: drop the cancelling tasks, solve again
      if (growing[a]) kept[index[a]] = 0;
    certificate.converged = true;
  }
  return certificate;
}

// Certificates of α on Γ and the clipped weights w = clip_scale·α (max_norm = 0: no clipping).
inline void certify_and_clip(const double* gram, int K, const double* alpha, double max_norm, double* weights,
                             Certificate& certificate) {
  double all = 0.0, kept = 0.0, quadratic = 0.0;
  for (int i = 0; i < K; ++i) {
    double row = 0.0;
    for (int j = 0; j < K; ++j) row += gram[i * K + j] * alpha[j];
    const double equation = alpha[i] * row - 1.0;
    all += equation * equation;
    if (alpha[i] > 0.0) kept += equation * equation;
    quadratic += alpha[i] * row;
  }
  certificate.residual = std::sqrt(all);
  certificate.kept_residual = std::sqrt(kept);
  certificate.direction_norm = std::sqrt(std::max(quadratic, 0.0));
  certificate.clip_scale =
      max_norm > 0.0 && certificate.direction_norm > max_norm ? max_norm / certificate.direction_norm : 1.0;
  for (int i = 0; i < K; ++i) weights[i] = certificate.clip_scale * alpha[i];
}

}  // namespace mtlkernels::nash_mtl

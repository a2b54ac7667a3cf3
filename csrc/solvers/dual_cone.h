// The dual-cone projection of UPGrad and DualProj (Quinton & Rey, "Jacobian Descent for
// Multi-Objective Optimization", 2024, Proposition 1): v = argmin_{v ≥ u} vᵀΓv, by the active-set
// method of Lawson & Hanson (1974) on the normal equations. Double precision, header-only, no
// Python; the same steps as mtlkernels/methods/dual_cone.py's torch solve.
//
// The free set F (tasks with vᵢ > uᵢ) solves (Γv)_F = 0 with v = u elsewhere, on the cosine matrix
// D⁻¹Γ_FF D⁻¹ (D = diag ‖gᵢ‖), kept as a Cholesky factor: a freed task appends a row (O(|F|²)), a
// task fixed back triggers a refactorisation. The factor survives from one projection to the next
// (UPGrad's K projections share Γ and usually the free set).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace mtlkernels::dual_cone {

// Tolerances and caps; their values are defined once, in Python
// (mtlkernels.methods.dual_cone.DualConeConstants, documented there), and arrive through the binding.
struct Constants {
  double tolerance;        // free task i when (Γv)ᵢ < −tolerance·Σₖ|Γᵢₖvₖ|
  double dependent_pivot;  // a Cholesky pivot² ≤ this: the freed set is linearly dependent
  int steps_per_task, steps_extra;  // at most steps_per_task·K + steps_extra inner steps per projection
};

// The solver's workspace: Γ (symmetrised), the norms, the free set and its Cholesky factor, kept
// between projections on the same Γ.
class Projector {
 public:
  Projector(const double* gram, int K, const Constants& constants)
      : K_(K), k_(constants), G_(static_cast<size_t>(K) * K), n_(K), L_(static_cast<size_t>(K) * K) {
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j)
        G_[i * K + j] = 0.5 * (gram[static_cast<size_t>(i) * K + j] + gram[static_cast<size_t>(j) * K + i]);
    for (int i = 0; i < K; ++i) n_[i] = std::sqrt(std::max(G_[i * K + i], 0.0));
  }

  // v = argmin_{v ≥ u} vᵀΓv, warm-started from the free set of the previous call. Returns the
  // inner steps taken.
  int project(const double* u, double* v) {
    const int K = K_;
    const int max_steps = k_.steps_per_task * K + k_.steps_extra;
    std::vector<double> candidate(K);
    std::vector<char> blocked(K, 0);
    std::copy(u, u + K, v);
    int steps = 0;
    while (steps < max_steps) {
      if (!free_.empty()) {
        ++steps;
        if (!free_solve(u, candidate.data())) {  // the task last freed depends on the others
          blocked[free_.back()] = 1;
          free_.pop_back();
          factored_ = std::min(factored_, static_cast<int>(free_.size()));
          continue;
        }
        int hit = -1;
        double t = 0.0;
        for (size_t p = 0; p < free_.size(); ++p) {
          const int i = free_[p];
          if (!(candidate[i] > u[i])) {
            const double ratio = v[i] > candidate[i] ? (v[i] - u[i]) / (v[i] - candidate[i]) : 0.0;
            if (hit < 0 || ratio < t) hit = static_cast<int>(p), t = ratio;
          }
        }
        if (hit >= 0) {  // step towards the candidate until a free task reaches its bound: fix it
          for (int i = 0; i < K; ++i) v[i] += t * (candidate[i] - v[i]);
          v[free_[hit]] = u[free_[hit]];
          std::vector<int> kept;
          for (size_t p = 0; p < free_.size(); ++p)
            if (static_cast<int>(p) != hit && v[free_[p]] > u[free_[p]]) kept.push_back(free_[p]);
          free_ = kept;
          factored_ = 0;
          for (int i = 0; i < K; ++i) v[i] = std::max(v[i], u[i]);
          continue;
        }
        std::copy(candidate.begin(), candidate.end(), v);
      }
      // the most violated constraint gⱼ·d ≥ 0 among the fixed tasks, relative to its rounding
      std::vector<char> in_free(K, 0);
      for (int i : free_) in_free[i] = 1;
      int j = -1;
      double worst = -k_.tolerance;
      for (int i = 0; i < K; ++i) {
        if (in_free[i] || blocked[i]) continue;
        double multiplier = 0.0, scale = 0.0;
        const double* row = &G_[static_cast<size_t>(i) * K];
        for (int k = 0; k < K; ++k) {
          const double term = row[k] * v[k];
          multiplier += term;
          scale += std::fabs(term);
        }
        if (scale > 0.0 && multiplier / scale < worst) worst = multiplier / scale, j = i;
      }
      if (j < 0) break;
      free_.push_back(j);
    }
    return steps;
  }

  // The KKT residual of v for min_{v ≥ u} vᵀΓv (see mtlkernels.methods.dual_cone.kkt_residual).
  double kkt_residual(const double* u, const double* v) const {
    const int K = K_;
    double u_scale = 0.0, residual = 0.0;
    for (int i = 0; i < K; ++i) u_scale = std::max(u_scale, std::fabs(u[i]));
    for (int i = 0; i < K; ++i) {
      if (u_scale > 0.0) residual = std::max(residual, std::max(0.0, u[i] - v[i]) / u_scale);
      double multiplier = 0.0, scale = 0.0;
      const double* row = &G_[static_cast<size_t>(i) * K];
      for (int k = 0; k < K; ++k) {
        const double term = row[k] * v[k];
        multiplier += term;
        scale += std::fabs(term);
      }
      const double relative = scale > 0.0 ? multiplier / scale : 0.0;
      residual = std::max(residual, std::max(0.0, -relative));
      if (v[i] > u[i]) residual = std::max(residual, std::fabs(relative));
    }
    return residual;
  }

 private:
  // Extend the Cholesky factor of the free set's cosine matrix over free_[factored_..]; false
  // when a pivot² falls to dependent_pivot or below.
  bool factor() {
    const int K = K_;
    for (int p = factored_; p < static_cast<int>(free_.size()); ++p) {
      const int a = free_[p];
      for (int q = 0; q <= p; ++q) {
        const int b = free_[q];
        double s = q == p ? 1.0 : G_[static_cast<size_t>(a) * K + b] / (n_[a] * n_[b]);
        for (int r = 0; r < q; ++r) s -= L_[p * K + r] * L_[q * K + r];
        if (q < p) {
          L_[p * K + q] = s / L_[q * K + q];
        } else {
          if (!(s > k_.dependent_pivot)) return false;
          L_[p * K + p] = std::sqrt(s);
        }
      }
      factored_ = p + 1;
    }
    return true;
  }

  // candidate: u off the free set, and on it the solution of (Γv)_F = 0.
  bool free_solve(const double* u, double* candidate) {
    const int K = K_;
    if (!factor()) return false;
    const int m = static_cast<int>(free_.size());
    std::vector<char> in_free(K, 0);
    for (int i : free_) in_free[i] = 1;
    std::copy(u, u + K, candidate);
    std::vector<double> y(m);
    for (int p = 0; p < m; ++p) {  // rhs −(Γ_{F,fixed} u_fixed)/n, then forward substitution
      const int a = free_[p];
      const double* row = &G_[static_cast<size_t>(a) * K];
      double s = 0.0;
      for (int k = 0; k < K; ++k)
        if (!in_free[k] && u[k] != 0.0) s += row[k] * u[k];
      s = -s / n_[a];
      for (int r = 0; r < p; ++r) s -= L_[p * K + r] * y[r];
      y[p] = s / L_[p * K + p];
    }
    for (int p = m - 1; p >= 0; --p) {  // backward substitution
      double s = y[p];
      for (int r = p + 1; r < m; ++r) s -= L_[r * K + p] * y[r];
      y[p] = s / L_[p * K + p];
    }
    for (int p = 0; p < m; ++p) candidate[free_[p]] = y[p] / n_[free_[p]];
    return true;
  }

  int K_;
  Constants k_;
  std::vector<double> G_, n_, L_;  // L_ row-major K×K, rows/columns in the order of free_
  std::vector<int> free_;
  int factored_ = 0;  // rows of L_ valid for the current free_
};

struct Result {
  double kkt_residual = 0.0;  // the largest over the projections
  int iterations = 0;         // inner steps over all projections
};

// UPGrad: weights = Σᵢ prefᵢ·argmin_{v ≥ eᵢ} vᵀΓv (tasks with prefᵢ = 0 skipped).
inline Result upgrad(const double* gram, const double* pref, int K, const Constants& constants, double* weights) {
  Projector projector(gram, K, constants);
  Result result;
  std::vector<double> u(K, 0.0), v(K);
  std::fill(weights, weights + K, 0.0);
  for (int i = 0; i < K; ++i) {
    if (pref[i] == 0.0) continue;
    u[i] = 1.0;
    result.iterations += projector.project(u.data(), v.data());
    result.kkt_residual = std::max(result.kkt_residual, projector.kkt_residual(u.data(), v.data()));
    for (int k = 0; k < K; ++k) weights[k] += pref[i] * v[k];
    u[i] = 0.0;
  }
  return result;
}

// DualProj: weights = argmin_{w ≥ pref} wᵀΓw.
inline Result dualproj(const double* gram, const double* pref, int K, const Constants& constants, double* weights) {
  Projector projector(gram, K, constants);
  Result result;
  result.iterations = projector.project(pref, weights);
  result.kkt_residual = projector.kkt_residual(pref, weights);
  return result;
}

}  // namespace mtlkernels::dual_cone

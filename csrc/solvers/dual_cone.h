// The dual-cone projection of UPGrad and DualProj (Quinton & Rey, "Jacobian Descent for
// Multi-Objective Optimization", 2024, Proposition 1): v = argmin_{v ≥ u} vᵀΓv, by the active-set
// method of Lawson & Hanson (1974) on the normal equations. Double precision, header-only, no
// Python; the same steps as mtlkernels/methods/dual_cone.py's torch solve.
//
// The free set F (tasks with vᵢ > uᵢ) solves (Γv)_F = 0 with v = u elsewhere, on the cosine matrix
// D⁻¹Γ_FF D⁻¹ (D = diag ‖gᵢ‖), kept as a Cholesky factor: a freed task appends a row (O(|F|²)), a
// task fixed back is removed by a rank-one update of the rows after it (O(|F|²)); when the start
// fixes back several at once, the rows from the first of them are recomputed instead if cheaper.
// Unlike the torch solve, the block rounds append the tasks they free to the factor (the free set
// stays in the order freed, not index order): the same subproblems, and where the freed gradients
// are linearly dependent the independent prefix kept may differ (d is the same).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace mtlkernels::dual_cone {

// multiplier = Σ_{a ∈ rows} vₐ·Γₐ and scale = Σ_{a ∈ rows} |vₐ·Γₐ| (Γ row-major K×K, symmetric:
// row a is column a), in row order: O(K·|support|) per outer step. scale = nullptr: the
// multipliers alone.
inline void accumulate_rows(const double* gram, int K, const int* rows, int n, const double* v,
                            double* multiplier, double* scale) {
  std::fill(multiplier, multiplier + K, 0.0);
  if (scale == nullptr) {
    for (int p = 0; p < n; ++p) {
      const double va = v[rows[p]];
      const double* row = gram + static_cast<size_t>(rows[p]) * K;
      for (int k = 0; k < K; ++k) multiplier[k] += row[k] * va;
    }
    return;
  }
  std::fill(scale, scale + K, 0.0);
  for (int p = 0; p < n; ++p) {
    const double va = v[rows[p]];
    const double* row = gram + static_cast<size_t>(rows[p]) * K;
    for (int k = 0; k < K; ++k) {
      const double term = row[k] * va;
      multiplier[k] += term;
      scale[k] += std::fabs(term);
    }
  }
}

// Tolerances and caps; their values are defined once, in Python
// (mtlkernels.methods.dual_cone.DualConeConstants, documented there), and arrive through the binding.
struct Constants {
  double tolerance;        // free task i when (Γv)ᵢ < −tolerance·Σₖ|Γᵢₖvₖ|
  double dependent_pivot;  // a Cholesky pivot² ≤ this: the freed set is linearly dependent
  int steps_per_task, steps_extra;  // at most steps_per_task·K + steps_extra subproblems per projection
  int block_rounds;                 // rounds of the block-pivoting start
};

// The solver's workspace: Γ (symmetrised), the norms, the free set and its Cholesky factor, kept
// between projections on the same Γ.
class Projector {
 public:
  Projector(const double* gram, int K, const Constants& constants)
      : K_(K), k_(constants), G_(static_cast<size_t>(K) * K), n_(K), L_(static_cast<size_t>(K) * K),
        C_(static_cast<size_t>(K) * K), cosine_ready_(K, 0),
        in_free_(K, 0), blocked_(K, 0), candidate_(K), multiplier_(K), scale_(K), y_(K), x_(K),
        inverse_diagonal_(K), cosine_(K), inverse_cosine_(K), sine_(K) {
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j)
        G_[i * K + j] = 0.5 * (gram[static_cast<size_t>(i) * K + j] + gram[static_cast<size_t>(j) * K + i]);
    for (int i = 0; i < K; ++i) n_[i] = std::sqrt(std::max(G_[i * K + i], 0.0));
  }

  // v = argmin_{v ≥ u} vᵀΓv by Lawson–Hanson from a block-pivoting start (the start only chooses
  // where the exact iteration begins). Returns the subproblems solved.
  int project(const double* u, double* v) {
    const int K = K_;
    const int max_steps = k_.steps_per_task * K + k_.steps_extra;
    bound_.clear();
    for (int k = 0; k < K; ++k)
      if (u[k] != 0.0) bound_.push_back(k);
    std::fill(blocked_.begin(), blocked_.end(), 0);
    std::copy(u, u + K, v);
    int steps = 0;
    // the start: free the tasks the unprojected combination conflicts with, (Γu)ⱼ < 0, and settle;
    // then, while the number of violated constraints falls, free them all at once and settle again
    truncate(0);
    multipliers(u);
    for (int j = 0; j < K; ++j)
      if (multiplier_[j] < 0.0 && !(u[j] != 0.0)) free_.push_back(j), in_free_[j] = 1;
    steps = settle(u, v, steps, max_steps);
    int violated_before = K + 1;
    for (int round = 1; round < k_.block_rounds; ++round) {
      multipliers(v, false);
      std::vector<int> violated;
      for (int i = 0; i < K; ++i)
        if (!in_free_[i] && scale_[i] > 0.0 && multiplier_[i] / scale_[i] < -k_.tolerance) violated.push_back(i);
      if (violated.empty() || static_cast<int>(violated.size()) >= violated_before) break;
      violated_before = static_cast<int>(violated.size());
      for (int i : violated) free_.push_back(i), in_free_[i] = 1;  // appended: the factor grows by their rows
      steps = settle(u, v, steps, max_steps);
    }
    while (steps < max_steps) {
      const int j = most_violated(u, v);
      if (j < 0) break;
      free_.push_back(j);
      in_free_[j] = 1;
      if (!factor()) {  // gⱼ lies in the span of the free gradients: leave it at its bound
        truncate(factored_);
        blocked_[j] = 1;
        continue;
      }
      while (steps < max_steps && !free_.empty()) {  // inner steps
        free_solve(u);
        ++steps;
        int hit = -1;
        double t = 0.0;
        for (size_t p = 0; p < free_.size(); ++p) {
          const int i = free_[p];
          if (!(candidate_[i] > u[i])) {
            const double ratio = v[i] > candidate_[i] ? (v[i] - u[i]) / (v[i] - candidate_[i]) : 0.0;
            if (hit < 0 || ratio < t) hit = static_cast<int>(p), t = ratio;
          }
        }
        if (hit < 0) {
          std::copy(candidate_.begin(), candidate_.end(), v);
          break;
        }
        // step towards the candidate until a free task reaches its bound: fix it (and any other there)
        for (int i : free_) v[i] += t * (candidate_[i] - v[i]);
        v[free_[hit]] = u[free_[hit]];
        for (int p = static_cast<int>(free_.size()) - 1; p >= 0; --p)
          if (!(v[free_[p]] > u[free_[p]])) v[free_[p]] = u[free_[p]], remove(p);
      }
    }
    return steps;
  }

  // A feasible start from free_ (in the order freed): its longest independent prefix, less the tasks
  // whose candidate falls to their bound (all at once, until the candidate is feasible); v is the
  // candidate, or u when no task is left. Returns the steps taken so far.
  int settle(const double* u, double* v, int steps, int max_steps) {
    std::copy(u, u + K_, v);
    while (!free_.empty() && steps < max_steps) {
      if (!factor()) truncate(factored_);  // keep the independent prefix
      if (free_.empty()) break;
      free_solve(u);
      ++steps;
      fixed_.clear();
      for (int p = 0; p < static_cast<int>(free_.size()); ++p)
        if (!(candidate_[free_[p]] > u[free_[p]])) fixed_.push_back(p);
      const bool feasible = fixed_.empty();
      remove_all();
      if (feasible) {
        std::copy(candidate_.begin(), candidate_.end(), v);
        return steps;
      }
    }
    truncate(0);
    return steps;
  }

  // The KKT residual of v for min_{v ≥ u} vᵀΓv (see mtlkernels.methods.dual_cone.kkt_residual).
  double kkt_residual(const double* u, const double* v) {
    const int K = K_;
    double u_scale = 0.0, residual = 0.0;
    for (int i = 0; i < K; ++i) u_scale = std::max(u_scale, std::fabs(u[i]));
    multipliers(v);
    for (int i = 0; i < K; ++i) {
      if (u_scale > 0.0) residual = std::max(residual, std::max(0.0, u[i] - v[i]) / u_scale);
      const double relative = scale_[i] > 0.0 ? multiplier_[i] / scale_[i] : 0.0;
      residual = std::max(residual, std::max(0.0, -relative));
      if (v[i] > u[i]) residual = std::max(residual, std::fabs(relative));
    }
    return residual;
  }

 private:
  // multiplier_ = Γv and scale_ = Σₖ|Γᵢₖvₖ|, over the support of v (the free and bound tasks).
  // every_scale = false: only what the search for a violated constraint reads, at the fixed,
  // unblocked tasks i: (Γv)ᵢ, and Σₖ|Γᵢₖvₖ| at least where (Γv)ᵢ < 0 (elsewhere it may be 0); by
  // rows of Γ over the whole of v (contiguous; v is u off the free set, 0 off the support: the
  // same sums in another order) where that reads fewer entries than gathering the support's.
  void multipliers(const double* v, bool every_scale = true) {
    support_.clear();
    for (int a : bound_)
      if (!in_free_[a] && v[a] != 0.0) support_.push_back(a);
    for (int a : free_)
      if (v[a] != 0.0) support_.push_back(a);
    const int n = static_cast<int>(support_.size());
    if (!every_scale) {
      int fixed = 0;
      for (int i = 0; i < K_; ++i) fixed += !in_free_[i] && !blocked_[i];
      if (fixed < n) {
        fixed_rows(v);
        return;
      }
    }
    accumulate_rows(G_.data(), K_, support_.data(), n, v, multiplier_.data(), every_scale ? scale_.data() : nullptr);
    if (every_scale) return;
    for (int i = 0; i < K_; ++i) {
      double size = 0.0;
      if (!in_free_[i] && multiplier_[i] < 0.0) {
        const double* row = &G_[static_cast<size_t>(i) * K_];
        if (4 * n < K_) {  // a few gathered terms, else the whole row (contiguous; 0 off the support)
          for (int p = 0; p < n; ++p) size += std::fabs(row[support_[p]] * v[support_[p]]);
        } else {
#pragma omp simd reduction(+ : size)
          for (int k = 0; k < K_; ++k) size += std::fabs(row[k] * v[k]);
        }
      }
      scale_[i] = size;
    }
  }

  // multiplier_ = Γv and scale_ = Σₖ|Γᵢₖvₖ| at the fixed, unblocked tasks i, each from its row of
  // Γ and the whole of v (contiguous); 0 at the others.
  void fixed_rows(const double* v) {
    const int K = K_;
    for (int i = 0; i < K; ++i) {
      double sum = 0.0, size = 0.0;
      if (!in_free_[i] && !blocked_[i]) {
        const double* row = &G_[static_cast<size_t>(i) * K];
#pragma omp simd reduction(+ : sum, size)
        for (int k = 0; k < K; ++k) {
          const double term = row[k] * v[k];
          sum += term;
          size += std::fabs(term);
        }
      }
      multiplier_[i] = sum, scale_[i] = size;
    }
  }

  // The fixed, unblocked task whose constraint gⱼ·d ≥ 0 is most violated relative to the rounding
  // of gⱼ·d, beyond tolerance; −1 when none is.
  int most_violated(const double* u, const double* v) {
    (void)u;
    multipliers(v, false);
    int j = -1;
    double worst = -k_.tolerance;
    for (int i = 0; i < K_; ++i) {
      if (in_free_[i] || blocked_[i] || !(scale_[i] > 0.0)) continue;
      const double relative = multiplier_[i] / scale_[i];
      if (relative < worst) worst = relative, j = i;
    }
    return j;
  }

  // Extend the Cholesky factor of the free set's cosine matrix over free_[factored_..]; false
  // when a pivot² falls to dependent_pivot or below (then the rows before that one are kept).
  // Column by column over the new rows: the entries of one column are independent dot products
  // (row by row, each entry would wait for the one before it), in the same arithmetic.
  bool factor() {
    const int K = K_;
    const int first = factored_, m = static_cast<int>(free_.size());
    for (int p = first; p < m; ++p) cosine_row(free_[p]);
    for (int q = 0; q < m; ++q) {
      const double* Lq = &L_[static_cast<size_t>(q) * K];
      if (q >= first) {  // row q is complete left of its diagonal: its pivot
        const double s = 1.0 - dot(Lq, Lq, q);
        if (!(s > k_.dependent_pivot)) return false;
        L_[static_cast<size_t>(q) * K + q] = std::sqrt(s);
        inverse_diagonal_[q] = 1.0 / L_[static_cast<size_t>(q) * K + q];
        factored_ = q + 1;
      }
      const int b = free_[q];
      for (int p = std::max(q + 1, first); p < m; ++p) {
        double* Lp = &L_[static_cast<size_t>(p) * K];
        Lp[q] = (C_[static_cast<size_t>(free_[p]) * K + b] - dot(Lp, Lq, q)) * inverse_diagonal_[q];
      }
    }
    return true;
  }

  // Row a of the cosine matrix Γᵢⱼ/(‖gᵢ‖‖gⱼ‖), computed on first use and kept for the next projections.
  void cosine_row(int a) {
    if (cosine_ready_[a]) return;
    const int K = K_;
    for (int b = 0; b < K; ++b) C_[static_cast<size_t>(a) * K + b] = G_[static_cast<size_t>(a) * K + b] / (n_[a] * n_[b]);
    cosine_ready_[a] = 1;
  }

  // Keep the first m free tasks (their factor rows are valid).
  void truncate(int m) {
    for (size_t p = m; p < free_.size(); ++p) in_free_[free_[p]] = 0;
    free_.resize(m);
    factored_ = std::min(factored_, m);
  }

  // Remove free_[p]: its row and column leave the factor, whose trailing rows are restored by a
  // rank-one update with the removed column (L₃₃'L₃₃'ᵀ = L₃₃L₃₃ᵀ + l l ᵀ).
  void remove(int p) {
    const int K = K_;
    const int m = static_cast<int>(free_.size());
    in_free_[free_[p]] = 0;
    if (p >= factored_) {
      free_.erase(free_.begin() + p);
      return;
    }
    const int n = factored_ - 1 - p;  // factored rows below p
    for (int r = p + 1; r < factored_; ++r) {
      const double* old_row = &L_[static_cast<size_t>(r) * K];
      double* new_row = &L_[static_cast<size_t>(r - 1) * K];
      x_[r - p - 1] = old_row[p];
      for (int c = 0; c < p; ++c) new_row[c] = old_row[c];
      for (int c = p; c < r; ++c) new_row[c] = old_row[c + 1];
    }
    // row by row (contiguous): row i takes the rotations of the rows above it, then its own,
    // cₖ = rₖ/dₖ, sₖ = xₖ/dₖ with rₖ = √(dₖ² + xₖ²) (entries of a unit-diagonal factor: no overflow)
    for (int i = 0; i < n; ++i) {
      double* Li = &L_[static_cast<size_t>(p + i) * K];
      double x = x_[i];
      for (int k = 0; k < i; ++k) {
        const double l = (Li[p + k] + sine_[k] * x) * inverse_cosine_[k];
        Li[p + k] = l;
        x = cosine_[k] * x - sine_[k] * l;
      }
      const double diagonal = Li[p + i];
      const double radius = std::sqrt(diagonal * diagonal + x * x);
      cosine_[i] = radius / diagonal, inverse_cosine_[i] = diagonal / radius, sine_[i] = x / diagonal;
      Li[p + i] = radius;
      inverse_diagonal_[p + i] = 1.0 / radius;
    }
    free_.erase(free_.begin() + p);
    factored_ -= 1;
    (void)m;
  }

  // Remove the free tasks at the positions fixed_ (increasing): by rank-one updates when they are
  // few and late, else by refactorising the rows from the first of them (cheaper when several go:
  // settle can fix back half the set at once). The estimates count multiply-adds.
  void remove_all() {
    if (fixed_.empty()) return;
    const int first = fixed_.front();
    double update_cost = 0.0, refactor_cost = 0.0;
    for (size_t r = 0; r < fixed_.size(); ++r) {
      const double below = std::max(0, factored_ - fixed_[r] - 1) - static_cast<double>(fixed_.size() - 1 - r);
      update_cost += 2.0 * below * below + below * fixed_[r];
    }
    const int kept = static_cast<int>(free_.size() - fixed_.size());
    for (int r = first; r < std::min(kept, factored_); ++r) refactor_cost += 0.5 * r * r;
    if (first >= factored_ || update_cost <= refactor_cost) {
      for (size_t r = fixed_.size(); r-- > 0;) remove(fixed_[r]);
    } else {
      size_t next = 0;
      int kept_so_far = 0;
      for (int p = 0; p < static_cast<int>(free_.size()); ++p) {
        if (next < fixed_.size() && fixed_[next] == p) {
          in_free_[free_[p]] = 0, ++next;
        } else {
          free_[kept_so_far++] = free_[p];
        }
      }
      free_.resize(kept_so_far);
      factored_ = std::min(factored_, first);
    }
    fixed_.clear();
  }

  // candidate_: u off the free set, and on it the solution of (Γv)_F = 0.
  void free_solve(const double* u) {
    const int K = K_;
    const int m = static_cast<int>(free_.size());
    std::copy(u, u + K, candidate_.begin());
    for (int p = 0; p < m; ++p) {  // rhs −(Γ_{F,fixed} u_fixed)/n, then forward substitution
      const int a = free_[p];
      const double* row = &G_[static_cast<size_t>(a) * K];
      const double* Lp = &L_[static_cast<size_t>(p) * K];
      double s = 0.0;
      for (int k : bound_)
        if (!in_free_[k]) s += row[k] * u[k];
      y_[p] = (-s / n_[a] - dot(Lp, y_.data(), p)) * inverse_diagonal_[p];
    }
    for (int p = m - 1; p >= 0; --p) {  // backward substitution, by rows of L (columns of Lᵀ)
      const double* Lp = &L_[static_cast<size_t>(p) * K];
      const double x = y_[p] * inverse_diagonal_[p];
      y_[p] = x;
      for (int r = 0; r < p; ++r) y_[r] -= Lp[r] * x;
    }
    for (int p = 0; p < m; ++p) candidate_[free_[p]] = y_[p] / n_[free_[p]];
  }

  // Σᵣ aᵣbᵣ over r < n, in four interleaved partial sums (independent chains the compiler can
  // pipeline and vectorise; the factor and the substitutions spend their time here).
  static double dot(const double* a, const double* b, int n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int r = 0;
    for (; r + 4 <= n; r += 4) {
      s0 += a[r] * b[r];
      s1 += a[r + 1] * b[r + 1];
      s2 += a[r + 2] * b[r + 2];
      s3 += a[r + 3] * b[r + 3];
    }
    for (; r < n; ++r) s0 += a[r] * b[r];
    return (s0 + s1) + (s2 + s3);
  }

  int K_;
  Constants k_;
  std::vector<double> G_, n_, L_, C_;  // L_ row-major K×K, rows/columns in the order of free_; C_ cosines
  std::vector<char> cosine_ready_;     // the rows of C_ computed
  std::vector<int> free_, bound_, support_;  // bound_: the tasks with uₖ ≠ 0
  std::vector<char> in_free_, blocked_;
  std::vector<double> candidate_, multiplier_, scale_, y_, x_;
  std::vector<double> inverse_diagonal_, cosine_, inverse_cosine_, sine_;  // 1/Lₚₚ; remove's rotations
  std::vector<int> fixed_;  // positions in free_ that settle fixes back
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

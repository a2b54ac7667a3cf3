// MGDA's K-space solve (Sener & Koltun, NeurIPS 2018): w = argmin_{w ∈ Δ} wᵀΓ'w, Γ' = Γ/(n·nᵀ),
// by Wolfe's nearest-point algorithm (Math. Programming 1976) on Γ' alone. Double precision,
// header-only, no Python; the same steps as mtlkernels/methods/mgda.py's torch solver.
//
// Wolfe's subproblem — the point of the affine hull of the active gradients nearest 0 — uses the
// shortest active gradient p_b as base and the unit differences Δ̂ᵢ = (pᵢ − p_b)/‖pᵢ − p_b‖, whose
// Gram M̂ is kept as a Cholesky factor updated row by row as gradients enter (rebuilt when one
// leaves), so norms spanning 1e-20..1e20 keep their relative precision.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace mtlkernels::mgda {

enum class Normalization { none, l2, loss, loss_plus };
enum class Combination { original, normalized };

// The solve's tolerances and iteration cap. Their values are defined once, in Python
// (mtlkernels.methods.mgda.MGDAConstants, documented there), and arrive through the binding.
struct Constants {
  double tolerance;        // Wolfe's optimality test, p·x − ‖x‖² ≥ −tolerance·m·(‖p‖ + m)
  double dependent_pivot;  // an active set whose unit differences have a Cholesky pivot² ≤ this is dependent
  int cycles_per_task, cycles_extra;  // at most cycles_per_task·K + cycles_extra minor cycles
};

struct Result {
  double objective = 0.0;     // wᵀΓ'w = ‖u*‖²
  double kkt_residual = 0.0;  // see kkt_residual()
  int iterations = 0;         // Wolfe's minor cycles
  int support = 0;            // number of wᵢ > 0
};

// Σₖ aₖbₖ with four partial sums (independent chains the compiler can pipeline and vectorise).
inline double dot(const double* a, const double* b, int n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += a[k] * b[k];
    s1 += a[k + 1] * b[k + 1];
    s2 += a[k + 2] * b[k + 2];
    s3 += a[k + 3] * b[k + 3];
  }
  for (; k < n; ++k) s0 += a[k] * b[k];
  return (s0 + s1) + (s2 + s3);
}

// nᵢ = 1, √Γᵢᵢ, Lᵢ or Lᵢ·√Γᵢᵢ; a zero nᵢ becomes 1. ``losses`` may be null for none/l2.
inline void normalizers(const double* gram, int K, Normalization normalization, const double* losses, double* n) {
  for (int i = 0; i < K; ++i) {
    const double norm = std::sqrt(gram[static_cast<size_t>(i) * K + i]);
    double v = 1.0;
    switch (normalization) {
      case Normalization::none: v = 1.0; break;
      case Normalization::l2: v = norm; break;
      case Normalization::loss: v = losses[i]; break;
      case Normalization::loss_plus: v = losses[i] * norm; break;
    }
    n[i] = v > 0.0 ? v : 1.0;
  }
}

// KKT residual of min_{w ∈ Δ} wᵀQw: with g = Qw, λ = wᵀQw, m = Σ wᵢ√Qᵢᵢ, the largest of |gᵢ − λ|
// over the support and max(0, λ − gᵢ) off it, each over m·(√Qᵢᵢ + m); 0 when m = 0.
// Also returns λ through ``objective``.
inline double kkt_residual(const double* Q, const double* w, int K, double* objective) {
  std::vector<double> g(K, 0.0);
  for (int i = 0; i < K; ++i) {
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += Q[static_cast<size_t>(i) * K + j] * w[j];
    g[i] = s;
  }
  double lambda = 0.0, m = 0.0;
  for (int i = 0; i < K; ++i) {
    lambda += w[i] * g[i];
    m += w[i] * std::sqrt(std::max(Q[static_cast<size_t>(i) * K + i], 0.0));
  }
  *objective = lambda;
  if (m == 0.0) return 0.0;
  double worst = 0.0;
  for (int i = 0; i < K; ++i) {
    const double length = std::sqrt(std::max(Q[static_cast<size_t>(i) * K + i], 0.0));
    const double slack = (g[i] - lambda) / (m * (length + m));
    worst = std::max(worst, w[i] > 0.0 ? std::fabs(slack) : std::max(-slack, 0.0));
  }
  return worst;
}

// Wolfe's algorithm on a PSD Q [K, K] (row-major). See min_norm_weights().
class Wolfe {
 public:
  Wolfe(const double* Q, int K, const Constants& constants)
      : k_(constants), Q_(Q), K_(K), length_(K), L_(static_cast<size_t>(K) * K), unit_(K) {
    for (int i = 0; i < K; ++i) length_[i] = std::sqrt(q(i, i));
  }

  // w [K] on the simplex minimising wᵀQw; returns the number of minor cycles.
  int run(double* w, int max_cycles) {
    std::fill(w, w + K_, 0.0);
    int zeros = 0;
    for (int i = 0; i < K_; ++i) zeros += length_[i] == 0.0;
    if (zeros > 0) {  // the min-norm point is 0: spread the weight over the zero gradients
      for (int i = 0; i < K_; ++i) w[i] = length_[i] == 0.0 ? 1.0 / zeros : 0.0;
      return 0;
    }
    active_.assign(1, static_cast<int>(std::min_element(length_.begin(), length_.end()) - length_.begin()));
    lam_.assign(1, 1.0);
    factor_ok_ = rebuild();
    std::vector<double> g(K_), slack(K_), alpha;
    double objective = gradient(g);
    int cycles = 0;
    while (cycles < max_cycles) {
      double m = 0.0;
      for (size_t a = 0; a < active_.size(); ++a) m += lam_[a] * length_[active_[a]];
      for (int i = 0; i < K_; ++i) slack[i] = (g[i] - objective) / (m * (length_[i] + m));
      const int j = static_cast<int>(std::min_element(slack.begin(), slack.end()) - slack.begin());
      if (slack[j] >= -k_.tolerance || std::find(active_.begin(), active_.end(), j) != active_.end()) break;
      const std::vector<int> previous_active = active_;
      const std::vector<double> previous_lam = lam_;
      factor_ok_ = append(j);
      lam_.push_back(0.0);
      bool dependent = false;
      while (cycles < max_cycles) {  // minor cycles
        ++cycles;
        if (!factor_ok_) {
          dependent = true;
          break;
        }
        affine_minimizer(alpha);
        if (std::all_of(alpha.begin(), alpha.end(), [](double a) { return a > 0.0; })) {
          lam_ = alpha;
          break;
        }
        double theta = 0.0;
        int blocking = -1;
        for (size_t a = 0; a < alpha.size(); ++a) {
          if (alpha[a] > 0.0) continue;
          const double ratio = lam_[a] / (lam_[a] - alpha[a]);
          if (blocking < 0 || ratio < theta) theta = ratio, blocking = static_cast<int>(a);
        }
        for (size_t a = 0; a < alpha.size(); ++a) lam_[a] += theta * (alpha[a] - lam_[a]);
        lam_[blocking] = 0.0;
        std::vector<int> kept;
        std::vector<double> kept_lam;
        double total = 0.0;
        for (size_t a = 0; a < lam_.size(); ++a)
          if (lam_[a] > 0.0) kept.push_back(active_[a]), kept_lam.push_back(lam_[a]), total += lam_[a];
        for (double& l : kept_lam) l /= total;
        active_ = kept;
        lam_ = kept_lam;
        factor_ok_ = rebuild();
      }
      const double updated = dependent ? objective : gradient(g);
      if (!(updated < objective)) {  // no progress left at this precision: keep the better point
        active_ = previous_active;
        lam_ = previous_lam;
        break;
      }
      objective = updated;
    }
    for (size_t a = 0; a < active_.size(); ++a) w[active_[a]] = lam_[a];
    return cycles;
  }

 private:
  const Constants& k_;
  double q(int i, int j) const { return Q_[static_cast<size_t>(i) * K_ + j]; }
  double& l(int r, int c) { return L_[static_cast<size_t>(r) * K_ + c]; }

  // Δ̂ᵢ·Δ̂ⱼ for the current base, from Γ' alone.
  double unit_inner(int i, int j) const {
    return (q(i, j) - q(i, base_) - q(j, base_) + q(base_, base_)) / (unit_[i] * unit_[j]);
  }

  // Add row ``j`` to the Cholesky factor of M̂ (rebuild when j is shorter than the base);
  // false when the active gradients become numerically affinely dependent.
  bool append(int j) {
    active_.push_back(j);
    if (length_[j] < length_[base_]) return rebuild();
    return factor_ok_ && add_row(j);
  }

  bool add_row(int j) {
    const double squared = q(j, j) - 2.0 * q(j, base_) + q(base_, base_);
    if (!(squared > 0.0)) return false;
    unit_[j] = std::sqrt(squared);
    const int r = static_cast<int>(others_.size());
    double* row = &l(r, 0);
    for (int c = 0; c < r; ++c) row[c] = (unit_inner(j, others_[c]) - dot(row, &l(c, 0), c)) / l(c, c);
    const double pivot = 1.0 - dot(row, row, r);
    if (!(pivot > k_.dependent_pivot)) return false;
    l(r, r) = std::sqrt(pivot);
    others_.push_back(j);
    return true;
  }

  // Base = the shortest active gradient (first on ties); factor M̂ over the others from scratch.
  bool rebuild() {
    int base_position = 0;
    for (size_t a = 1; a < active_.size(); ++a)
      if (length_[active_[a]] < length_[active_[base_position]]) base_position = static_cast<int>(a);
    base_ = active_[base_position];
    others_.clear();
    for (int i : active_)
      if (i != base_ && !add_row(i)) return false;
    return true;
  }

  // α over active_ (Σα = 1) of the affine hull's point nearest 0: M̂β̂ = −Δ̂ᵀp_b, βᵢ = β̂ᵢ/‖Δᵢ‖.
  void affine_minimizer(std::vector<double>& alpha) {
    const int r = static_cast<int>(others_.size());
    std::vector<double> y(r);
    for (int i = 0; i < r; ++i) {  // L y = rhs
      const int t = others_[i];
      y[i] = (-(q(t, base_) - q(base_, base_)) / unit_[t] - dot(&l(i, 0), y.data(), i)) / l(i, i);
    }
    for (int i = r - 1; i >= 0; --i) {  // Lᵀ β̂ = y, by columns of Lᵀ (rows of L, read contiguously)
      y[i] /= l(i, i);
      const double* row = &l(i, 0);
      for (int k = 0; k < i; ++k) y[k] -= row[k] * y[i];
    }
    alpha.assign(active_.size(), 0.0);
    double sum = 0.0;
    for (size_t a = 0, i = 0; a < active_.size(); ++a) {
      if (active_[a] == base_) continue;
      alpha[a] = y[i] / unit_[others_[i]];
      sum += alpha[a];
      ++i;
    }
    for (size_t a = 0; a < active_.size(); ++a)
      if (active_[a] == base_) alpha[a] = 1.0 - sum;
  }

  // g = Q[:, active]·λ (rows of the symmetric Q, read contiguously); returns λᵀg_active = ‖x‖².
  double gradient(std::vector<double>& g) const {
    std::fill(g.begin(), g.end(), 0.0);
    for (size_t a = 0; a < active_.size(); ++a) {
      const double* row = Q_ + static_cast<size_t>(active_[a]) * K_;
      for (int i = 0; i < K_; ++i) g[i] += row[i] * lam_[a];
    }
    double objective = 0.0;
    for (size_t a = 0; a < active_.size(); ++a) objective += lam_[a] * g[active_[a]];
    return objective;
  }

  const double* Q_;
  int K_;
  std::vector<double> length_, L_, unit_;
  std::vector<int> active_, others_;
  std::vector<double> lam_;
  int base_ = 0;
  bool factor_ok_ = true;
};

// w = argmin_{w ∈ Δ} wᵀQw for a PSD Q [K, K]; returns the number of minor cycles (cap 50·K + 100).
inline int min_norm_weights(const double* Q, int K, double* w, const Constants& constants) {
  return Wolfe(Q, K, constants).run(w, constants.cycles_per_task * K + constants.cycles_extra);
}

// The whole solve from Γ [K, K]: normalisers n, Γ' = sym(Γ)/(n·nᵀ), simplex weights w, and the
// weights applied to the raw gradients (w, or w/n for Combination::normalized).
inline Result solve(const double* gram, int K, Normalization normalization, Combination combination,
                    const double* losses, double* weights, double* simplex, double* n, const Constants& constants) {
  normalizers(gram, K, normalization, losses, n);
  std::vector<double> Q(static_cast<size_t>(K) * K);
  for (int i = 0; i < K; ++i)
    for (int j = 0; j < K; ++j) {
      const size_t ij = static_cast<size_t>(i) * K + j, ji = static_cast<size_t>(j) * K + i;
      Q[ij] = (gram[ij] + gram[ji]) / 2.0 / n[i] / n[j];
    }
  Result result;
  result.iterations = min_norm_weights(Q.data(), K, simplex, constants);
  result.kkt_residual = kkt_residual(Q.data(), simplex, K, &result.objective);
  for (int i = 0; i < K; ++i) {
    weights[i] = combination == Combination::original ? simplex[i] : simplex[i] / n[i];
    result.support += simplex[i] > 0.0;
  }
  return result;
}

}  // namespace mtlkernels::mgda

// CAGrad's K-space solve (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
// NeurIPS 2021), exact, in double precision; the algorithm of mtlkernels/methods/cagrad.py.
//
//   d = argmax_{‖d − g₀‖ ≤ √φ} minᵢ gᵢ·d = g₀ + Jᵀu,  φ = c²‖g₀‖²,  weights 1/K + u.
//
// u(μ) = argmin_{u≥0} ½uᵀAu + (b − μ𝟙)ᵀu (A = Γ/tr Γ, b = A𝟙/K) is the projection of g₀ onto
// {d : gᵢ·d ≥ μ}; μ rises from minᵢ bᵢ along this piecewise-linear path (tasks enter and leave the
// active set S at breakpoints) until uᵀAu = φ; the last face is then re-solved directly and its
// active set checked task by task at each task's own scale. The path stops at μ = 0 when the
// active gradients' hull contains 0 (or a gradient is zero): the degenerate case, d = the
// projection of g₀ onto {d : gᵢ·d ≥ 0}. Header-only, no Python.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "solvers/dense.h"

namespace mtlkernels::cagrad {

// The solve's tolerances and iteration caps. Their values are defined once, in Python
// (mtlkernels.methods.cagrad.CAGradConstants, documented there), and arrive through the binding.
struct Constants {
  double pivot_tolerance, eigen_rcond, consistency_tolerance, rate_tolerance, refine_tolerance, hull_tolerance,
      hull_zero_tolerance;
  int max_sweeps;
  int path_steps_per_task, path_steps_extra, refine_rounds_per_task, refine_rounds_extra, hull_rounds_per_task,
      hull_rounds_extra;
};

struct Result {
  std::vector<double> multipliers;  // u ≥ 0, [K]
  double kkt_residual = 0, ball_residual = 0, duality_gap = 0;
  double worst_improvement = 0, dual_objective = 0;  // in the units of the trace-normalised Gram
  bool degenerate = false;
  int iterations = 0;
};

// A_SS·x = y through M = A_SS/(σσᵀ): Cholesky, or — once Cholesky finds M singular — least squares
// on M's eigen-decomposition without the eigenvalues below eigen_rcond·λ_max, telling a consistent
// singular system (duplicate gradients) from an inconsistent one.
class ActiveSystem {
 public:
  ActiveSystem(const std::vector<double>& A, int K, const std::vector<double>& sigma, const std::vector<int>& S,
               const Constants& constants)
      : k_(constants), n_(static_cast<int>(S.size())), sigma_(n_), M_(static_cast<size_t>(n_) * n_) {
    for (int i = 0; i < n_; ++i) sigma_[i] = sigma[S[i]];
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) M_[i * n_ + j] = A[static_cast<size_t>(S[i]) * K + S[j]] / (sigma_[i] * sigma_[j]);
  }

  // Least-squares x with A_SS·x = y, with one step of iterative refinement; false when
  // inconsistent: the scaled y has a component along a dropped eigenvector v beyond
  // consistency_tolerance relative to |v|ᵀ|y| (its cancellation scale).
  bool solve(const std::vector<double>& y, std::vector<double>& x) {
    std::vector<double> rhs(n_), correction(n_), residual(n_);
    for (int i = 0; i < n_; ++i) rhs[i] = y[i] / sigma_[i];
    const bool consistent = apply_inverse(rhs, x);
    for (int i = 0; i < n_; ++i) {
      double s = rhs[i];
      for (int j = 0; j < n_; ++j) s -= M_[i * n_ + j] * x[j];
      residual[i] = s;
    }
    apply_inverse(residual, correction);
    for (int i = 0; i < n_; ++i) x[i] = (x[i] + correction[i]) / sigma_[i];
    return consistent;
  }

  // z with A_SS·z ≈ 0 involving the last task most: the last unit vector projected onto the dropped
  // eigenvectors' span, unscaled (after an inconsistent solve).
  void null_vector(std::vector<double>& z) const {
    double largest = 0.0;
    for (double e : eigenvalues_) largest = std::max(largest, std::fabs(e));
    z.assign(n_, 0.0);
    for (int k = 0; k < n_; ++k) {
      if (eigenvalues_[k] > k_.eigen_rcond * largest) continue;
      for (int i = 0; i < n_; ++i) z[i] += V_[i * n_ + k] * V_[(n_ - 1) * n_ + k];
    }
    for (int i = 0; i < n_; ++i) z[i] /= sigma_[i];
  }

 private:
  // x = M⁻¹·rhs (Cholesky), or the least-squares solution on the kept eigenvalues once Cholesky has
  // found M singular; false when rhs has a component along a dropped eigenvector (inconsistent).
  bool apply_inverse(const std::vector<double>& rhs, std::vector<double>& x) {
    x.assign(n_, 0.0);
    if (eigenvalues_.empty() && dense::cholesky_solve(M_.data(), rhs.data(), x.data(), n_, k_.pivot_tolerance)) return true;
    if (eigenvalues_.empty()) {
      eigenvalues_.resize(n_);
      V_.resize(static_cast<size_t>(n_) * n_);
      dense::symmetric_eigen(M_.data(), eigenvalues_.data(), V_.data(), n_, k_.max_sweeps);
    }
    double largest = 0.0;
    for (double e : eigenvalues_) largest = std::max(largest, std::fabs(e));
    bool consistent = true;
    std::fill(x.begin(), x.end(), 0.0);
    for (int k = 0; k < n_; ++k) {
      double coefficient = 0.0, magnitude = 0.0;
      for (int i = 0; i < n_; ++i) {
        coefficient += V_[i * n_ + k] * rhs[i];
        magnitude += std::fabs(V_[i * n_ + k] * rhs[i]);
      }
      if (eigenvalues_[k] > k_.eigen_rcond * largest) {
        for (int i = 0; i < n_; ++i) x[i] += coefficient / eigenvalues_[k] * V_[i * n_ + k];
      } else if (std::fabs(coefficient) > k_.consistency_tolerance * magnitude) {
        consistent = false;
      }
    }
    return consistent;
  }

  const Constants& k_;
  int n_;
  std::vector<double> sigma_, M_, eigenvalues_, V_;
};

struct Problem {
  int K;
  std::vector<double> A, b, sigma;  // trace-normalised Γ, gᵢ·g₀, ‖gᵢ‖
  double mean_sq, radius_sq;        // ‖g₀‖², φ
  bool has_zero_row;
  const Constants& k;

  double row_dot(int i, const std::vector<double>& v) const {
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += A[static_cast<size_t>(i) * K + j] * v[j];
    return s;
  }
  double quadratic(const std::vector<double>& v) const {
    double s = 0.0;
    for (int i = 0; i < K; ++i)
      if (v[i] != 0.0) s += v[i] * row_dot(i, v);
    return s;
  }
};

// (u_S, μ) on face S solved directly: A_SS·u_S + b_S = μ𝟙, so u_S = μδ − β with A_SS·δ = 𝟙 and
// A_SS·β = b_S; μ = 0 when `at_zero` (the degenerate case), else the larger root of
// u_SᵀA_SS·u_S = qμ² − 2pμ + b_Sᵀβ = φ (q = 𝟙ᵀδ, p = 𝟙ᵀβ). False when the face is inconsistent.
inline bool face_solution(const Problem& P, const std::vector<int>& S, bool at_zero, std::vector<double>& u_S,
                          double& mu) {
  const int n = static_cast<int>(S.size());
  ActiveSystem system(P.A, P.K, P.sigma, S, P.k);
  std::vector<double> ones(n, 1.0), b_S(n), delta, beta;
  for (int i = 0; i < n; ++i) b_S[i] = P.b[S[i]];
  if (!system.solve(b_S, beta)) return false;
  u_S.resize(n);
  if (at_zero) {
    mu = 0.0;
    for (int i = 0; i < n; ++i) u_S[i] = -beta[i];
    return true;
  }
  if (!system.solve(ones, delta)) return false;
  double q = 0.0, p = 0.0, constant = -P.radius_sq;
  for (int i = 0; i < n; ++i) q += delta[i], p += beta[i], constant += b_S[i] * beta[i];
  const double discriminant = p * p - q * constant;
  if (!(q > 0) || discriminant < 0) return false;
  const double root = std::sqrt(discriminant);
  mu = p >= 0 ? (p + root) / q : constant / (p - root);
  for (int i = 0; i < n; ++i) u_S[i] = mu * delta[i] - beta[i];
  return true;
}

// Re-solve the final face and fix its active set task by task, each task's KKT condition judged at
// its scale (‖gᵢ‖ + min_S‖gⱼ‖)·(‖g₀‖ + √φ): the path's running μ loses the precision of tasks whose
// gradients are many orders of magnitude smaller than the active ones. u is kept when no face passes.
inline void refine(const Problem& P, bool at_zero, std::vector<double>& u) {
  const int K = P.K;
  std::vector<int> S;
  for (int i = 0; i < K; ++i)
    if (u[i] > 0) S.push_back(i);
  const double d_scale = std::sqrt(P.mean_sq) + std::sqrt(P.radius_sq);  // ≥ ‖d‖
  std::vector<double> u_S, candidate(K);
  for (int round = 0; round < P.k.refine_rounds_per_task * K + P.k.refine_rounds_extra && !S.empty(); ++round) {
    double mu;
    if (!face_solution(P, S, at_zero, u_S, mu)) {  // the ball is out of reach: drop the task nearest to leaving
      S.erase(std::min_element(S.begin(), S.end(),
                               [&](int i, int j) { return u[i] * P.sigma[i] < u[j] * P.sigma[j]; }));
      continue;
    }
    const int n = static_cast<int>(S.size());
    int most_negative = 0;
    double lowest = 0.0, largest = 0.0;
    for (int i = 0; i < n; ++i) {
      const double scaled = u_S[i] * P.sigma[S[i]];
      largest = std::max(largest, std::fabs(scaled));
      if (scaled < lowest) lowest = scaled, most_negative = i;
    }
    if (lowest < -P.k.refine_tolerance * largest) {
      S.erase(S.begin() + most_negative);
      continue;
    }
    std::fill(candidate.begin(), candidate.end(), 0.0);
    for (int i = 0; i < n; ++i) candidate[S[i]] = std::max(u_S[i], 0.0);
    double reference_norm = P.sigma[S[0]];  // μ is gᵢ·d of the active tasks, exact to their scale
    for (int i : S) reference_norm = std::min(reference_norm, P.sigma[i]);
    int worst = -1;
    double worst_violation = P.k.refine_tolerance;
    for (int i = 0; i < K; ++i) {
      if (!(P.sigma[i] > 0) || std::find(S.begin(), S.end(), i) != S.end()) continue;
      const double scale = (P.sigma[i] + reference_norm) * d_scale;
      const double violation = (mu - (P.b[i] + P.row_dot(i, candidate))) / scale;
      if (violation > worst_violation) worst_violation = violation, worst = i;
    }
    if (worst >= 0) {
      S.push_back(worst);
      continue;
    }
    u = candidate;
    return;
  }
}

// w on the simplex with Σᵢ wᵢgᵢ ≈ 0 when 0 ∈ conv{gᵢ} (the degenerate case's dual point; the best
// such attempt otherwise): the zero gradients if any, else w ∝ v/‖gᵢ‖ with v from Lawson–Hanson's
// active-set method for min_{v≥0} ‖Σᵢ vᵢĝᵢ‖² + (𝟙ᵀv − 1)² on the unit vectors ĝᵢ (Gram form,
// Q = A/(σσᵀ) + 𝟙𝟙ᵀ): when 0 ∈ conv{ĝᵢ} the minimiser has Σᵢvᵢĝᵢ = 0 and 𝟙ᵀv = 1.
inline std::vector<double> hull_zero_point(const Problem& P) {
  const int K = P.K;
  std::vector<double> w(K, 0.0);
  if (P.has_zero_row) {
    int count = 0;
    for (int i = 0; i < K; ++i) count += !(P.sigma[i] > 0);
    for (int i = 0; i < K; ++i) w[i] = P.sigma[i] > 0 ? 0.0 : 1.0 / count;
    return w;
  }
  std::vector<double> Q(static_cast<size_t>(K) * K), q_sigma(K, std::sqrt(2.0)), z;
  for (int i = 0; i < K; ++i)
    for (int j = 0; j < K; ++j) Q[i * K + j] = P.A[static_cast<size_t>(i) * K + j] / (P.sigma[i] * P.sigma[j]) + 1.0;
  std::vector<bool> passive(K, false);
  for (int round = 0; round < P.k.hull_rounds_per_task * K + P.k.hull_rounds_extra; ++round) {
    int j = -1;
    double best = P.k.hull_tolerance;
    for (int i = 0; i < K; ++i) {
      if (passive[i]) continue;
      double gradient = 1.0;  // −½ × the objective's gradient
      for (int k = 0; k < K; ++k) gradient -= Q[static_cast<size_t>(i) * K + k] * w[k];
      if (gradient > best) best = gradient, j = i;
    }
    if (j < 0) break;
    passive[j] = true;
    while (true) {
      std::vector<int> S;
      for (int i = 0; i < K; ++i)
        if (passive[i]) S.push_back(i);
      if (S.empty()) break;
      ActiveSystem system(Q, K, q_sigma, S, P.k);
      system.solve(std::vector<double>(S.size(), 1.0), z);
      const int n = static_cast<int>(S.size());
      int blocking = -1;
      double ratio = std::numeric_limits<double>::infinity();
      for (int k = 0; k < n; ++k)
        if (z[k] <= 0) {
          const double t = w[S[k]] / (w[S[k]] - z[k]);
          if (t < ratio) ratio = t, blocking = k;
        }
      if (blocking < 0) {
        std::fill(w.begin(), w.end(), 0.0);
        for (int k = 0; k < n; ++k) w[S[k]] = z[k];
        break;
      }
      for (int k = 0; k < n; ++k) w[S[k]] += ratio * (z[k] - w[S[k]]);
      w[S[blocking]] = 0.0;
      for (int i = 0; i < K; ++i) passive[i] = passive[i] && w[i] > 0;
    }
  }
  double total = 0.0;
  for (int i = 0; i < K; ++i) total += (w[i] = std::max(w[i], 0.0) / P.sigma[i]);
  for (double& x : w) x = total > 0 ? x / total : 1.0 / K;
  return w;
}

// The certificate of mtlkernels.methods.cagrad.certificate; `dual_point` empty means u/Σu.
inline void certify(const Problem& P, const std::vector<double>& u, const std::vector<double>& dual_point, double c,
                    Result& out) {
  const int K = P.K;
  const double radius = c * std::sqrt(P.mean_sq);
  std::vector<double> r(K);
  double primal = std::numeric_limits<double>::infinity(), usum = 0.0;
  for (int i = 0; i < K; ++i) {
    r[i] = P.b[i] + P.row_dot(i, u);
    primal = std::min(primal, r[i]);
    usum += u[i];
  }
  const double distance = std::sqrt(std::max(P.quadratic(u), 0.0));
  const double d_scale = std::sqrt(P.mean_sq) + radius;  // ≥ ‖d‖
  std::vector<double> w(K);
  for (int i = 0; i < K; ++i) w[i] = dual_point.empty() ? u[i] / usum : dual_point[i];
  double wb = 0.0;
  for (int i = 0; i < K; ++i) wb += w[i] * P.b[i];
  const double dual = wb + radius * std::sqrt(std::max(P.quadratic(w), 0.0));
  bool any_active = false;
  int smallest = -1;
  for (int i = 0; i < K; ++i)
    if (u[i] > 0) {
      any_active = true;
      if (smallest < 0 || P.sigma[i] < P.sigma[smallest]) smallest = i;
    }
  const bool from_active = any_active && dual_point.empty();
  const double mu = !any_active ? primal : (from_active ? r[smallest] : 0.0);
  const double reference_norm = from_active ? P.sigma[smallest] : 0.0;
  double kkt = 0.0, top = 0.0;
  for (int i = 0; i < K; ++i) {
    top = std::max(top, P.sigma[i]);
    if (P.sigma[i] <= 0) continue;
    const double scale = std::max((P.sigma[i] + reference_norm) * d_scale, std::numeric_limits<double>::min());
    const double violation = u[i] > 0 ? std::fabs(r[i] - mu) : std::max(mu - r[i], 0.0);
    kkt = std::max(kkt, violation / scale);
  }
  top *= d_scale;
  out.kkt_residual = kkt;
  out.ball_residual = radius > 0 ? (distance - radius) / radius : 0.0;
  out.duality_gap = top > 0 ? (dual - primal) / top : 0.0;
  out.worst_improvement = primal;
  out.dual_objective = dual;
}


// ‖Σᵢ wᵢgᵢ‖ ≤ hull_zero_tolerance·Σᵢ wᵢ‖gᵢ‖ (the square root of Γ's rounding).
inline bool is_zero_combination(const Problem& P, const std::vector<double>& w) {
  double scale = 0.0;
  for (int i = 0; i < P.K; ++i) scale += w[i] * P.sigma[i];
  return P.quadratic(w) <= (P.k.hull_zero_tolerance * scale) * (P.k.hull_zero_tolerance * scale);
}

// A degenerate pivot at μ = 0 when the entering task (last of S, uⱼ = 0) depends on the active ones,
// Σₖ zₖgₖ = 0 with mixed signs (e.g. parallel gradients of different norms): move u_S along z (d does
// not change) until an active task's multiplier reaches 0. Returns its position in S, or −1 when z
// has no sign change.
inline int swap(const Problem& P, const std::vector<int>& S, std::vector<double> z, std::vector<double>& u) {
  const int n = static_cast<int>(S.size());
  if (z[n - 1] < 0)
    for (double& x : z) x = -x;
  if (!(z[n - 1] > 0)) return -1;
  double largest = 0.0;  // the sign test on zₖ‖gₖ‖, at each task's scale
  for (int k = 0; k < n; ++k) largest = std::max(largest, std::fabs(z[k] * P.sigma[S[k]]));
  int leaving = -1;
  double ratio = std::numeric_limits<double>::infinity();
  for (int k = 0; k < n; ++k)
    if (z[k] * P.sigma[S[k]] < -P.k.consistency_tolerance * largest && u[S[k]] / -z[k] < ratio)
      ratio = u[S[k]] / -z[k], leaving = k;
  if (leaving < 0) return -1;
  for (int k = 0; k < n; ++k) u[S[k]] = std::max(u[S[k]] + ratio * z[k], 0.0);
  u[S[leaving]] = 0.0;
  return leaving;
}

// Solve for a trace-normalised Gram A (K×K, row-major, symmetric) and c ≥ 0.
inline Result solve_normalized(const std::vector<double>& A, int K, double c, const Constants& constants) {
  Problem P{K, A, std::vector<double>(K), std::vector<double>(K), 0.0, 0.0, false, constants};
  double total = 0.0;
  for (int i = 0; i < K; ++i) {
    double s = 0.0;
    for (int j = 0; j < K; ++j) s += A[static_cast<size_t>(i) * K + j];
    P.b[i] = s / K;
    total += P.b[i];
    P.sigma[i] = std::sqrt(std::max(A[static_cast<size_t>(i) * K + i], 0.0));
    P.has_zero_row |= !(P.sigma[i] > 0);
  }
  P.mean_sq = std::max(total / K, 0.0);
  P.radius_sq = c * c * P.mean_sq;

  Result out;
  std::vector<double>& u = out.multipliers;
  u.assign(K, 0.0);
  std::vector<double> dual_point;
  auto zero_rows_point = [&]() {
    dual_point.assign(K, 0.0);
    int count = 0;
    for (int i = 0; i < K; ++i) count += !(P.sigma[i] > 0);
    for (int i = 0; i < K; ++i)
      if (!(P.sigma[i] > 0)) dual_point[i] = 1.0 / count;
  };

  int first = -1;
  for (int i = 0; i < K; ++i)
    if (P.sigma[i] > 0 && (first < 0 || P.b[i] < P.b[first])) first = i;
  if (P.radius_sq == 0) {  // c = 0 or g₀ = 0: d = g₀; the dual's minimiser is the worst-off task
    out.degenerate = P.mean_sq == 0;
    dual_point.assign(K, 0.0);
    dual_point[std::min_element(P.b.begin(), P.b.end()) - P.b.begin()] = 1.0;
    certify(P, u, dual_point, c, out);
    return out;
  }
  double mu = P.b[first];
  if (P.has_zero_row && mu >= 0) {  // a zero gradient caps μ at 0, already reached by the mean
    out.degenerate = true;
    zero_rows_point();
    certify(P, u, dual_point, c, out);
    return out;
  }

  std::vector<int> S{first};
  std::vector<int> blocked;  // tasks that left without μ moving may not re-enter until it moves (no cycling)
  std::vector<double> ones, delta, rate(K), r(K), z;
  for (int iteration = 1; iteration < P.k.path_steps_per_task * K + P.k.path_steps_extra && !S.empty(); ++iteration) {
    out.iterations = iteration;
    const int n = static_cast<int>(S.size());
    ones.assign(n, 1.0);
    ActiveSystem system(P.A, K, P.sigma, S, P.k);
    if (!system.solve(ones, delta)) {  // the entering gradient depends on the active ones: μ = 0 here
      std::vector<double> hull_point = hull_zero_point(P);
      system.null_vector(z);
      const int leaving = is_zero_combination(P, hull_point) ? -1 : swap(P, S, z, u);
      if (leaving < 0) {  // μ cannot rise: 0 ∈ conv{gᵢ}
        out.degenerate = true;
        dual_point = hull_point;
        break;
      }
      blocked.push_back(S[leaving]);  // d unchanged: u moved along Jᵀz = 0 until this task reached 0
      S.erase(S.begin() + leaving);
      continue;
    }
    for (int i = 0; i < K; ++i) {
      double rate_i = 0.0, r_i = P.b[i];
      for (int k = 0; k < n; ++k) {
        const double a = P.A[static_cast<size_t>(i) * K + S[k]];
        rate_i += a * delta[k];
        r_i += a * u[S[k]];
      }
      rate[i] = rate_i;
      r[i] = r_i;
    }
    double rho = 0.0, p = 0.0, q = 0.0;
    for (int k = 0; k < n; ++k) {
      rho += u[S[k]] * (r[S[k]] - P.b[S[k]]);
      p += u[S[k]] * rate[S[k]];
      q += delta[k] * rate[S[k]];
    }
    const double room = std::max(P.radius_sq - rho, 0.0);
    const double root = std::sqrt(std::max(p * p + q * room, 0.0));
    double step = p + root > 0 ? room / (p + root) : std::numeric_limits<double>::infinity();
    enum { kBall, kCap, kEnter, kLeave } event = kBall;
    int index = -1;
    if (P.has_zero_row && -mu < step) step = std::max(-mu, 0.0), event = kCap;
    for (int i = 0; i < K; ++i) {
      // rows moving with μ (duplicates) never enter
      if (!(P.sigma[i] > 0) || !(rate[i] < 1 - P.k.rate_tolerance) || std::find(S.begin(), S.end(), i) != S.end() ||
          std::find(blocked.begin(), blocked.end(), i) != blocked.end())
        continue;
      const double t = std::max(r[i] - mu, 0.0) / (1 - rate[i]);
      if (t < step) step = t, event = kEnter, index = i;
    }
    for (int k = 0; k < n; ++k) {
      if (!(delta[k] < 0)) continue;
      const double t = -u[S[k]] / delta[k];
      if (t < step) step = t, event = kLeave, index = k;
    }
    for (int k = 0; k < n; ++k) u[S[k]] += step * delta[k];
    mu += step;
    if (step > 0) blocked.clear();
    if (event == kBall) break;
    if (event == kCap) {
      out.degenerate = true;
      zero_rows_point();
      break;
    }
    if (event == kEnter) {
      S.push_back(index);
    } else {
      u[S[index]] = 0.0;
      if (step == 0) blocked.push_back(S[index]);
      S.erase(S.begin() + index);
    }
  }
  for (double& x : u) x = std::max(x, 0.0);
  refine(P, out.degenerate, u);  // after the ball, at μ = 0, or at the iteration cap
  certify(P, u, dual_point, c, out);
  return out;
}

}  // namespace mtlkernels::cagrad

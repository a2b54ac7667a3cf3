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

constexpr double kPivotTolerance = 1e-14;       // Cholesky pivot² of the unit-diagonal active matrix
constexpr double kEigenRcond = 1e-12;           // dropped eigenvalues in the singular case
constexpr double kConsistencyTolerance = 1e-6;  // relative least-squares residual of a consistent system
constexpr double kRefineTolerance = 1e-13;      // per-task KKT test of the final face
constexpr double kHullTolerance = 1e-14;        // stopping test of the hull point's active-set method

struct Result {
  std::vector<double> multipliers;  // u ≥ 0, [K]
  double kkt_residual = 0, ball_residual = 0, duality_gap = 0;
  double worst_improvement = 0, dual_objective = 0;  // in the units of the trace-normalised Gram
  bool degenerate = false;
  int iterations = 0;
};

// A_SS·x = y through M = A_SS/(σσᵀ): Cholesky, or — once Cholesky finds M singular — least squares
// on M's eigen-decomposition, reporting the part of the scaled y in M's null space (non-zero: the
// system is inconsistent).
class ActiveSystem {
 public:
  ActiveSystem(const std::vector<double>& A, int K, const std::vector<double>& sigma, const std::vector<int>& S)
      : n_(static_cast<int>(S.size())), sigma_(n_), M_(static_cast<size_t>(n_) * n_) {
    for (int i = 0; i < n_; ++i) sigma_[i] = sigma[S[i]];
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < n_; ++j) M_[i * n_ + j] = A[static_cast<size_t>(S[i]) * K + S[j]] / (sigma_[i] * sigma_[j]);
  }

  // x with A_SS·x = y; false (least-squares x, null-space part in `null_part`) when inconsistent.
  bool solve(const std::vector<double>& y, std::vector<double>& x, std::vector<double>& null_part) {
    std::vector<double> rhs(n_);
    for (int i = 0; i < n_; ++i) rhs[i] = y[i] / sigma_[i];
    x.assign(n_, 0.0);
    null_part.assign(n_, 0.0);
    bool consistent = true;
    const bool positive_definite =
        eigenvalues_.empty() && dense::cholesky_solve(M_.data(), rhs.data(), x.data(), n_, kPivotTolerance);
    if (!positive_definite) {
      if (eigenvalues_.empty()) {
        eigenvalues_.resize(n_);
        V_.resize(static_cast<size_t>(n_) * n_);
        dense::symmetric_eigen(M_.data(), eigenvalues_.data(), V_.data(), n_);
      }
      double largest = 0.0;
      for (double e : eigenvalues_) largest = std::max(largest, std::fabs(e));
      std::fill(x.begin(), x.end(), 0.0);
      for (int k = 0; k < n_; ++k) {
        double coefficient = 0.0;
        for (int i = 0; i < n_; ++i) coefficient += V_[i * n_ + k] * rhs[i];
        const bool keep = eigenvalues_[k] > kEigenRcond * largest;
        for (int i = 0; i < n_; ++i) {
          if (keep)
            x[i] += coefficient / eigenvalues_[k] * V_[i * n_ + k];
          else
            null_part[i] += coefficient * V_[i * n_ + k];
        }
      }
      double null_sq = 0.0, rhs_sq = 0.0;
      for (int i = 0; i < n_; ++i) null_sq += null_part[i] * null_part[i], rhs_sq += rhs[i] * rhs[i];
      consistent = std::sqrt(null_sq) <= kConsistencyTolerance * std::sqrt(rhs_sq);
      if (consistent) std::fill(null_part.begin(), null_part.end(), 0.0);
    }
    for (int i = 0; i < n_; ++i) x[i] /= sigma_[i];
    return consistent;
  }

 private:
  int n_;
  std::vector<double> sigma_, M_, eigenvalues_, V_;
};

struct Problem {
  int K;
  std::vector<double> A, b, sigma;  // trace-normalised Γ, gᵢ·g₀, ‖gᵢ‖
  double mean_sq, radius_sq;        // ‖g₀‖², φ
  bool has_zero_row;

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
  ActiveSystem system(P.A, P.K, P.sigma, S);
  std::vector<double> ones(n, 1.0), b_S(n), delta, beta, null_part;
  for (int i = 0; i < n; ++i) b_S[i] = P.b[S[i]];
  if (!system.solve(b_S, beta, null_part)) return false;
  u_S.resize(n);
  if (at_zero) {
    mu = 0.0;
    for (int i = 0; i < n; ++i) u_S[i] = -beta[i];
    return true;
  }
  if (!system.solve(ones, delta, null_part)) return false;
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
// its own scale ‖gᵢ‖·(‖g₀‖ + √φ): the path's running μ loses the precision of tasks whose
// gradients are many orders of magnitude smaller than the active ones.
inline void refine(const Problem& P, bool at_zero, std::vector<double>& u) {
  const int K = P.K;
  std::vector<int> S;
  for (int i = 0; i < K; ++i)
    if (u[i] > 0) S.push_back(i);
  const double d_scale = std::sqrt(P.mean_sq) + std::sqrt(P.radius_sq);  // ≥ ‖d‖
  std::vector<double> u_S, candidate(K);
  for (int round = 0; round < 2 * K + 10 && !S.empty(); ++round) {
    double mu;
    if (!face_solution(P, S, at_zero, u_S, mu)) return;
    const int n = static_cast<int>(S.size());
    int most_negative = 0;
    double lowest = 0.0, largest = 0.0;
    for (int i = 0; i < n; ++i) {
      const double scaled = u_S[i] * P.sigma[S[i]];
      largest = std::max(largest, std::fabs(scaled));
      if (scaled < lowest) lowest = scaled, most_negative = i;
    }
    if (lowest < -kRefineTolerance * largest) {
      S.erase(S.begin() + most_negative);
      continue;
    }
    std::fill(candidate.begin(), candidate.end(), 0.0);
    for (int i = 0; i < n; ++i) candidate[S[i]] = std::max(u_S[i], 0.0);
    int worst = -1;
    double worst_violation = kRefineTolerance;
    for (int i = 0; i < K; ++i) {
      if (!(P.sigma[i] > 0) || std::find(S.begin(), S.end(), i) != S.end()) continue;
      const double scale = std::max(P.sigma[i] * d_scale, std::numeric_limits<double>::min());
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

// w on the simplex with Σᵢ wᵢgᵢ ≈ 0, given 0 ∈ conv{gᵢ} (the degenerate case's dual point):
// Lawson–Hanson's active-set method for min_{w≥0} ‖Jᵀw‖² + (𝟙ᵀw − 1)² in Gram form on
// Q = A + 𝟙𝟙ᵀ; as the hull's min-norm point is 0, the minimiser has Jᵀw = 0 and 𝟙ᵀw = 1.
inline std::vector<double> hull_zero_point(const Problem& P) {
  const int K = P.K;
  std::vector<double> Q(P.A), q_sigma(K), w(K, 0.0), z, null_part;
  for (double& x : Q) x += 1.0;
  for (int i = 0; i < K; ++i) q_sigma[i] = std::sqrt(Q[static_cast<size_t>(i) * K + i]);
  std::vector<bool> passive(K, false);
  for (int round = 0; round < 3 * K + 10; ++round) {
    int j = -1;
    double best = kHullTolerance;
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
      ActiveSystem system(Q, K, q_sigma, S);
      system.solve(std::vector<double>(S.size(), 1.0), z, null_part);
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
  for (double& x : w) total += (x = std::max(x, 0.0));
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
  const double mu = !any_active ? primal : (!dual_point.empty() ? 0.0 : r[smallest]);
  double kkt = 0.0, top = 0.0;
  for (int i = 0; i < K; ++i) {
    top = std::max(top, P.sigma[i]);
    if (P.sigma[i] <= 0) continue;
    const double scale = std::max(P.sigma[i] * d_scale, std::numeric_limits<double>::min());
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

// Solve for a trace-normalised Gram A (K×K, row-major, symmetric) and c ≥ 0.
inline Result solve_normalized(const std::vector<double>& A, int K, double c) {
  Problem P{K, A, std::vector<double>(K), std::vector<double>(K), 0.0, 0.0, false};
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
  std::vector<double> ones, delta, null_part, rate(K), r(K);
  bool reached_ball = false;
  for (int iteration = 1; iteration < 50 * K + 100 && !S.empty(); ++iteration) {
    out.iterations = iteration;
    const int n = static_cast<int>(S.size());
    ones.assign(n, 1.0);
    ActiveSystem system(P.A, K, P.sigma, S);
    if (!system.solve(ones, delta, null_part)) {  // μ cannot rise: it reached 0 with 0 ∈ conv{gᵢ}
      out.degenerate = true;
      dual_point = hull_zero_point(P);
      break;
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
      if (!(P.sigma[i] > 0) || !(rate[i] < 1) || std::find(S.begin(), S.end(), i) != S.end()) continue;
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
    if (event == kBall) {
      reached_ball = true;
      break;
    }
    if (event == kCap) {
      out.degenerate = true;
      zero_rows_point();
      break;
    }
    if (event == kEnter) {
      S.push_back(index);
    } else {
      u[S[index]] = 0.0;
      S.erase(S.begin() + index);
    }
  }
  for (double& x : u) x = std::max(x, 0.0);
  if (reached_ball || out.degenerate) refine(P, out.degenerate, u);
  certify(P, u, dual_point, c, out);
  return out;
}

}  // namespace mtlkernels::cagrad

// Small dense linear algebra for the K×K problems (K ≤ 256), in double precision, header-only so
// the same code can later be compiled for the GPU. Row-major, caller-owned storage.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace mtlkernels::dense {

// Solve A x = b for a symmetric positive definite A (n×n) by Cholesky; A and b are not modified.
// Returns false when A is not numerically positive definite (a pivot ≤ tol·max diag).
inline bool cholesky_solve(const double* A, const double* b, double* x, int n, double tol = 1e-14) {
  std::vector<double> L(static_cast<size_t>(n) * n, 0.0);
  double max_diag = 0.0;
  for (int i = 0; i < n; ++i) max_diag = std::max(max_diag, std::fabs(A[i * n + i]));
  for (int j = 0; j < n; ++j) {
    double d = A[j * n + j];
    for (int k = 0; k < j; ++k) d -= L[j * n + k] * L[j * n + k];
    if (!(d > tol * max_diag) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    L[j * n + j] = ljj;
    for (int i = j + 1; i < n; ++i) {
      double s = A[i * n + j];
      for (int k = 0; k < j; ++k) s -= L[i * n + k] * L[j * n + k];
      L[i * n + j] = s / ljj;
    }
  }
  for (int i = 0; i < n; ++i) {  // forward: L y = b
    double s = b[i];
    for (int k = 0; k < i; ++k) s -= L[i * n + k] * x[k];
    x[i] = s / L[i * n + i];
  }
  for (int i = n - 1; i >= 0; --i) {  // backward: Lᵀ x = y
    double s = x[i];
    for (int k = i + 1; k < n; ++k) s -= L[k * n + i] * x[k];
    x[i] = s / L[i * n + i];
  }
  return true;
}

// Solve A x = b for a general A (n×n) by LU with partial pivoting; A and b are not modified.
// Returns false when a pivot is ≤ tol·max|A| (numerically singular).
inline bool lu_solve(const double* A, const double* b, double* x, int n, double tol = 1e-13) {
  std::vector<double> M(A, A + static_cast<size_t>(n) * n);
  std::vector<double> y(b, b + n);
  double scale = 0.0;
  for (size_t i = 0; i < M.size(); ++i) scale = std::max(scale, std::fabs(M[i]));
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r)
      if (std::fabs(M[r * n + c]) > std::fabs(M[p * n + c])) p = r;
    if (!(std::fabs(M[p * n + c]) > tol * scale)) return false;
    if (p != c) {
      for (int k = 0; k < n; ++k) std::swap(M[c * n + k], M[p * n + k]);
      std::swap(y[c], y[p]);
    }
    for (int r = c + 1; r < n; ++r) {
      const double f = M[r * n + c] / M[c * n + c];
      if (f == 0.0) continue;
      for (int k = c; k < n; ++k) M[r * n + k] -= f * M[c * n + k];
      y[r] -= f * y[c];
    }
  }
  for (int i = n - 1; i >= 0; --i) {
    double s = y[i];
    for (int k = i + 1; k < n; ++k) s -= M[i * n + k] * x[k];
    x[i] = s / M[i * n + i];
  }
  return true;
}

// Eigen-decomposition of a symmetric A (n×n) by cyclic Jacobi rotations: A = V diag(w) Vᵀ,
// V's columns the eigenvectors (row-major V[i*n+k] = component i of vector k). Exact to rounding
// for the small K here, and it never fails.
inline void symmetric_eigen(const double* A, double* w, double* V, int n, int max_sweeps = 64) {
  std::vector<double> M(A, A + static_cast<size_t>(n) * n);
  std::fill(V, V + static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) V[i * n + i] = 1.0;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    double off = 0.0, total = 0.0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) (i == j ? total : off) += M[i * n + j] * M[i * n + j];
    if (off <= 1e-30 * (total + off) || off == 0.0) break;
    for (int p = 0; p < n - 1; ++p) {
      for (int q = p + 1; q < n; ++q) {
        const double apq = M[p * n + q];
        if (apq == 0.0) continue;
        const double theta = (M[q * n + q] - M[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double mkp = M[k * n + p], mkq = M[k * n + q];
          M[k * n + p] = c * mkp - s * mkq;
          M[k * n + q] = s * mkp + c * mkq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double mpk = M[p * n + k], mqk = M[q * n + k];
          M[p * n + k] = c * mpk - s * mqk;
          M[q * n + k] = s * mpk + c * mqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = V[k * n + p], vkq = V[k * n + q];
          V[k * n + p] = c * vkp - s * vkq;
          V[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  for (int i = 0; i < n; ++i) w[i] = M[i * n + i];
}

// Minimum-norm least-squares solution of A x = b for a symmetric A: x = A⁺ b, dropping
// eigenvalues below rcond·max|λ|. Returns the numerical rank.
inline int symmetric_pinv_solve(const double* A, const double* b, double* x, int n, double rcond = 1e-12) {
  std::vector<double> w(n), V(static_cast<size_t>(n) * n);
  symmetric_eigen(A, w.data(), V.data(), n);
  double wmax = 0.0;
  for (double v : w) wmax = std::max(wmax, std::fabs(v));
  std::fill(x, x + n, 0.0);
  int rank = 0;
  for (int k = 0; k < n; ++k) {
    if (!(std::fabs(w[k]) > rcond * wmax)) continue;
    ++rank;
    double proj = 0.0;
    for (int i = 0; i < n; ++i) proj += V[i * n + k] * b[i];
    proj /= w[k];
    for (int i = 0; i < n; ++i) x[i] += proj * V[i * n + k];
  }
  return rank;
}

// Eigen-decomposition of a symmetric A (n×n) as symmetric_eigen gives it (A = V diag(w) Vᵀ, V's
// columns the eigenvectors, row-major), in O(n³) with a small constant: Householder reduction to
// tridiagonal form T = QᵀAQ (Q accumulated), then the implicit QL method with Wilkinson-type shifts
// on T, rotating Q's columns along. About 9n³ flops against cyclic Jacobi's ~30n³ over its sweeps,
// so the faster choice beyond n ≈ 8; both are backward stable. Returns false if an eigenvalue
// needed more than max_iterations QL steps (never seen; w and V then hold the partial result).
inline bool symmetric_eigen_ql(const double* A, double* w, double* V, int n, int max_iterations = 60) {
  std::copy(A, A + static_cast<size_t>(n) * n, V);
  std::vector<double> off(n, 0.0);  // sub-diagonal of T: off[i] couples rows i − 1 and i
  auto at = [&](int i, int j) -> double& { return V[static_cast<size_t>(i) * n + j]; };
  // Householder: for row i (from the last), annihilate A[i][0..i−2] with a reflector built from
  // A[i][0..i−1]; the reflector vector stays in row i and u/H in column i, for the accumulation.
  for (int i = n - 1; i > 0; --i) {
    const int last = i - 1;
    double h = 0.0;
    if (last > 0) {
      double scale = 0.0;
      for (int k = 0; k <= last; ++k) scale += std::fabs(at(i, k));
      if (scale == 0.0) {
        off[i] = at(i, last);
      } else {
        for (int k = 0; k <= last; ++k) {
          at(i, k) /= scale;
          h += at(i, k) * at(i, k);
        }
        const double f = at(i, last);
        const double g = f >= 0.0 ? -std::sqrt(h) : std::sqrt(h);
        off[i] = scale * g;
        h -= f * g;
        at(i, last) = f - g;
        double uAu = 0.0;
        for (int j = 0; j <= last; ++j) {
          at(j, i) = at(i, j) / h;
          double p = 0.0;  // (A·u)_j over the leading (last+1)×(last+1) block, lower triangle stored
          for (int k = 0; k <= j; ++k) p += at(j, k) * at(i, k);
          for (int k = j + 1; k <= last; ++k) p += at(k, j) * at(i, k);
          off[j] = p / h;
          uAu += off[j] * at(i, j);
        }
        const double half = uAu / (h + h);
        for (int j = 0; j <= last; ++j) {
          const double uj = at(i, j);
          const double qj = off[j] - half * uj;
          off[j] = qj;
          for (int k = 0; k <= j; ++k) at(j, k) -= uj * off[k] + qj * at(i, k);
        }
      }
    } else {
      off[i] = at(i, last);
    }
    w[i] = h;  // nonzero: row i carries a reflector to accumulate
  }
  w[0] = 0.0;
  off[0] = 0.0;
  for (int i = 0; i < n; ++i) {  // accumulate Q = H₁H₂… in place, diagonal of T into w
    const int last = i - 1;
    if (w[i] != 0.0) {
      for (int j = 0; j <= last; ++j) {
        double g = 0.0;
        for (int k = 0; k <= last; ++k) g += at(i, k) * at(k, j);
        for (int k = 0; k <= last; ++k) at(k, j) -= g * at(k, i);
      }
    }
    w[i] = at(i, i);
    at(i, i) = 1.0;
    for (int j = 0; j <= last; ++j) at(j, i) = at(i, j) = 0.0;
  }
  // implicit QL on T (diagonal w, off-diagonal off[1..n−1] shifted to off[0..n−2])
  for (int i = 1; i < n; ++i) off[i - 1] = off[i];
  off[n - 1] = 0.0;
  const double eps = std::numeric_limits<double>::epsilon();
  bool converged = true;
  for (int l = 0; l < n; ++l) {
    for (int iteration = 0;; ++iteration) {
      int m = l;
      for (; m < n - 1; ++m)  // the first negligible off-diagonal at or after l splits T
        if (std::fabs(off[m]) <= eps * (std::fabs(w[m]) + std::fabs(w[m + 1]))) break;
      if (m == l) break;
      if (iteration == max_iterations) {
        converged = false;
        break;
      }
      double g = (w[l + 1] - w[l]) / (2.0 * off[l]);
      double r = std::hypot(g, 1.0);
      g = w[m] - w[l] + off[l] / (g + (g >= 0.0 ? r : -r));  // shift from the trailing 2×2 block
      double s = 1.0, c = 1.0, p = 0.0;
      int i = m - 1;
      for (; i >= l; --i) {  // chase the bulge up with Givens rotations
        const double f = s * off[i], b = c * off[i];
        r = std::hypot(f, g);
        off[i + 1] = r;
        if (r == 0.0) {  // underflow: T splits here
          w[i + 1] -= p;
          off[m] = 0.0;
          break;
        }
        s = f / r;
        c = g / r;
        g = w[i + 1] - p;
        r = (w[i] - g) * s + 2.0 * c * b;
        p = s * r;
        w[i + 1] = g + p;
        g = c * r - b;
        for (int k = 0; k < n; ++k) {
          const double right = at(k, i + 1);
          at(k, i + 1) = s * at(k, i) + c * right;
          at(k, i) = c * at(k, i) - s * right;
        }
      }
      if (r == 0.0 && i >= l) continue;
      w[l] -= p;
      off[l] = g;
      off[m] = 0.0;
    }
  }
  return converged;
}

}  // namespace mtlkernels::dense

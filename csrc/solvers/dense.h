// Small dense linear algebra for the K×K problems (K ≤ 256), in double precision, header-only so
// the same code can later be compiled for the GPU. Row-major, caller-owned storage.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
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

}  // namespace mtlkernels::dense

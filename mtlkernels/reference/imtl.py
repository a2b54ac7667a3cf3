"""Reference IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021), on full vectors.

uᵢ = gᵢ/‖gᵢ‖; D rows g₁ − gᵢ, U rows u₁ − uᵢ (i = 2..K); α₂..K = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σα₂..K;
d = Σαᵢgᵢ has the same projection d·uᵢ on every unit gradient.

Conventions where the paper's formula is undefined (the same as :class:`mtlkernels.methods.IMTLWeighting`):

- a zero gradient has no unit vector: its weight is 0 and the formula runs on the other tasks;
  when every gradient is zero the weights are 1/K (d = 0 whatever they are);
- when D·Uᵀ is singular (duplicate or parallel gradients, more tasks than dimensions) the
  weights are the impartial ones (Cβ ∈ span 𝟙 with β = N·α, C the cosine matrix) with Σα = 1
  that minimise ‖N·α‖, found here from the SVD of the unit-vector matrix;
- when no such weights exist (the equal-projection direction's weights sum to 0) the weights are 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._result import ReferenceResult

#: D·Uᵀ, equilibrated, counts as singular beyond this condition number
SINGULAR_CONDITION = 1e12
#: singular values of the unit-vector matrix below this fraction of the largest count as zero
#: (the square root of the fast path's eigenvalue threshold 1e-8 on C = UUᵀ)
RANK_RTOL = 1e-4
#: 𝟙 counts as in C's range when its component outside is below this fraction of ‖𝟙‖
CONSISTENCY_RTOL = 1e-3


def imtl(J: Tensor) -> ReferenceResult:
    """IMTL-G weights and direction of the task gradients J [K, N], in float64.

    ``info``: "paper_form" (True when α came from g₁Uᵀ(DUᵀ)⁻¹), "rank" (of the unit vectors),
    "zero_tasks", "degenerate" (True when no impartial weights summing to 1 exist).
    """
    J = J.detach().to(device="cpu", dtype=torch.float64)
    K = J.shape[0]
    norms = torch.linalg.vector_norm(J, dim=1)
    active = (norms > 0).nonzero().flatten()
    zero_tasks = (norms == 0).nonzero().flatten().tolist()
    info: dict = {"zero_tasks": zero_tasks, "degenerate": False}
    if active.numel() == 0:
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        info.update(paper_form=False, rank=0)
        return ReferenceResult(weights @ J, weights, info)

    grads, n = J[active], norms[active]
    units = grads / n[:, None]
    alpha = _paper_form(grads, units)
    info["rank"] = _rank(units)
    info["paper_form"] = alpha is not None
    if alpha is None:
        alpha = _min_norm_impartial(units, n)
        info["degenerate"] = alpha is None
        if alpha is None:
            alpha = torch.zeros_like(n)
    weights = torch.zeros(K, dtype=torch.float64)
    weights[active] = alpha
    return ReferenceResult(weights @ J, weights, info)


def _paper_form(grads: Tensor, units: Tensor) -> Tensor | None:
    """α from the paper's formula, or None when D·Uᵀ is (numerically) singular.

    The paper's task 1 can be any task (the answer is the same); the smallest gradient plays it
    here: it gets the largest weight, so α₁ = 1 − Σα₂..K does not cancel.
    """
    if grads.shape[0] == 1:
        return torch.ones(1, dtype=torch.float64)
    anchor = int(torch.linalg.vector_norm(grads, dim=1).argmin())
    order = [anchor] + [i for i in range(grads.shape[0]) if i != anchor]
    grads, units = grads[order], units[order]
    D = grads[0] - grads[1:]
    U = units[0] - units[1:]
    DU = D @ U.T
    row_scale = DU.abs().amax(dim=1, keepdim=True)
    col_scale = DU.abs().amax(dim=0, keepdim=True)
    if bool((row_scale == 0).any()) or bool((col_scale == 0).any()):
        return None
    if float(torch.linalg.cond(DU / row_scale / col_scale)) > SINGULAR_CONDITION:
        return None
    rest = torch.linalg.solve(DU.T, U @ grads[0])  # αᵀ(DUᵀ) = g₁Uᵀ
    alpha = torch.empty(grads.shape[0], dtype=torch.float64)
    alpha[order] = torch.cat([(1 - rest.sum()).reshape(1), rest])
    return alpha


def _rank(units: Tensor) -> int:
    sigma = torch.linalg.svdvals(units)
    return int((sigma > RANK_RTOL * sigma.max()).sum())


def _min_norm_impartial(units: Tensor, norms: Tensor) -> Tensor | None:
    """Among α with Σα = 1 and d = Σαᵢgᵢ having equal projections on every uᵢ, the one with the
    least ‖N·α‖ (None if there is none).

    With β = N·α the condition is C·β ∈ span(𝟙), C = UUᵀ (the unit vectors' Gram). From the SVD
    U = A·diag(σ)·Bᵀ: if 𝟙 lies in C's range, the solutions span A_r·diag(σ_r⁻²)·A_rᵀ𝟙 and C's
    null space; otherwise (e.g. opposite gradients) only the null space (then d = 0).
    The constraint Σα = 1 reads (1/n)ᵀβ = 1, and the least β is the projection of 1/n onto that
    subspace, rescaled.
    """
    m, N = units.shape
    A, sigma, _ = torch.linalg.svd(units, full_matrices=m > N)
    sigma = torch.cat([sigma, sigma.new_zeros(m - sigma.numel())])
    in_range = sigma > RANK_RTOL * sigma.max()
    A_range, A_null = A[:, in_range], A[:, ~in_range]
    ones = torch.ones(m, dtype=torch.float64)
    basis = [A_null]
    if float(torch.linalg.vector_norm(A_null.T @ ones)) <= CONSISTENCY_RTOL * m**0.5:
        particular = A_range @ ((A_range.T @ ones) / sigma[in_range] ** 2)  # C⁺𝟙
        basis.append((particular / torch.linalg.vector_norm(particular))[:, None])
    Q = torch.cat(basis, dim=1)
    inverse_norms = norms.min() / norms
    projected = Q @ (Q.T @ inverse_norms)
    if float(torch.linalg.vector_norm(projected)) <= 1e-12 * float(torch.linalg.vector_norm(inverse_norms)):
        return None
    alpha = projected / norms
    return alpha / alpha.sum()

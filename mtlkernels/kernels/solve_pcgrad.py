"""On-device PCGrad solve: the sequential projections in coefficient space, one Triton program.

Task i's projected gradient is gᵢ' = cᵢᵀJ with cᵢ = eᵢ at the start; visiting j in order[i]
(i itself included, wherever the order lists it), whenever gᵢ'·gⱼ = (Γcᵢ)ⱼ < 0 and gⱼ ≠ 0,
cᵢ[j] −= (Γcᵢ)ⱼ/Γⱼⱼ. Weights w = Σᵢ cᵢ (or the mean) — the same rule as the torch and C++ solves.
Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kspace



@triton.jit
def _pcgrad_solve_kernel(
    gram_ptr, order_ptr, weights_ptr, projections_ptr, residual_ptr, K, MEAN: tl.constexpr, BLOCK_K: tl.constexpr
):
    # Tasks are independent of each other, so all K coefficient vectors advance together:
    # row i of `coeffs` is cᵢ, and step t visits j = order[i, t] for every task i at once.
    offs = tl.arange(0, BLOCK_K)
    task_mask = offs < K
    coeffs = tl.where(offs[:, None] == offs[None, :], 1.0, 0.0).to(tl.float64)
    projections = 0
    residual = tl.full([], 0.0, tl.float64)  # max |(Γcᵢ)ⱼ| / Σₖ|Γⱼₖcᵢₖ| right after each projection
    stride = kspace.row_stride(K, BLOCK_K)  # Γ's row pitch (kspace.gram_argument)
    for t in range(K):
        j = tl.load(order_ptr + offs * K + t, mask=task_mask, other=0)  # [BLOCK_K]: task i visits j[i]
        gram_rows = tl.load(
            gram_ptr + j[:, None] * stride + offs[None, :], mask=task_mask[:, None] & task_mask[None, :], other=0.0
        ).to(tl.float64)  # row i holds Γ[j[i], :]
        inner = tl.sum(gram_rows * coeffs, axis=1)  # gᵢ'·g_{j[i]}
        norm_sq = tl.load(gram_ptr + j * (stride + 1), mask=task_mask, other=0.0).to(tl.float64)  # ‖g_{j[i]}‖²
        project = (inner < 0.0) & (norm_sq > 0.0) & task_mask  # a visit to i itself too, as listed
        step = tl.where(project, inner / tl.where(project, norm_sq, 1.0), 0.0)
        coeffs = tl.where(offs[None, :] == j[:, None], coeffs - step[:, None], coeffs)
        projections += tl.sum(project.to(tl.int32), axis=0)
        terms = gram_rows * coeffs
        magnitude = tl.sum(tl.abs(terms), axis=1)
        after = tl.abs(tl.sum(terms, axis=1)) / tl.where(magnitude > 0.0, magnitude, 1.0)
        residual = tl.maximum(residual, tl.max(tl.where(project, after, 0.0), axis=0))
    weights = tl.sum(tl.where(task_mask[:, None], coeffs, 0.0), axis=0)
    if MEAN:
        weights = weights / K
    tl.store(weights_ptr + offs, weights, mask=task_mask)
    tl.store(projections_ptr, projections)
    tl.store(residual_ptr, residual)


def pcgrad_solve(gram: Tensor, order: Tensor, mean: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Weights [K] float64 and the diagnostics "projections" (0-d int32) and
    "orthogonality_residual" (0-d float64), all on gram's device.

    gram: Γ [K, K]; order: [K, K] int64, row i the visiting order for task i.
    """
    K = gram.shape[0]
    block, warps = kspace.launch_config(K)
    weights = torch.empty(K, dtype=torch.float64, device=gram.device)
    projections = torch.empty((), dtype=torch.int32, device=gram.device)
    residual = torch.empty((), dtype=torch.float64, device=gram.device)
    _pcgrad_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), order.contiguous(), weights, projections, residual, K,
        MEAN=mean, BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS,
    )
    return weights, {"projections": projections, "orthogonality_residual": residual}


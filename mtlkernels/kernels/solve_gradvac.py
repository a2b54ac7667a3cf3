"""On-device GradVac solve: the sequential corrections in coefficient space, one Triton program.

Wang et al., "Gradient Vaccine", ICLR 2021, Algorithm 1, as the torch and C++ solves run it: task
i's corrected gradient gᵢ' = cᵢᵀJ starts at cᵢ = eᵢ; for j ≠ i in order[i], with φ = (Γcᵢ)ⱼ /
(‖gᵢ'‖‖gⱼ‖ + eps) and the target φ̂ᵢⱼ: if φ < φ̂, cᵢ[j] += ‖gᵢ'‖(φ̂√(1−φ²) − φ√(1−φ̂²))/(‖gⱼ‖√(1−φ̂²) + eps);
then φ̂ᵢⱼ ← (1 − β)φ̂ᵢⱼ + βφ (always, or only after a correction). Weights w = Σᵢ cᵢ.

Tasks are independent of each other, so all K coefficient vectors advance together, as in the
PCGrad solve: step t visits j = order[i, t] for every task i at once. Γcᵢ is kept as row i of a
register tile (updated by a correction as the C++ solve updates it), and so is |cᵢ|ᵀ|Γ| for the
certificate's scale (the C++ solve recomputes that scale; the certificate differs at rounding).
β and eps are constexprs (float64 literals: a runtime Python float would arrive as float32), so a
weighting compiles the kernel once for its options.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import kspace


@triton.jit
def _gradvac_solve_kernel(
    gram_ptr, order_ptr, targets_ptr, weights_ptr, corrections_ptr, residual_ptr, K, BETA: tl.constexpr,
    EPS: tl.constexpr, ALWAYS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_K)
    task_mask = offs < K
    square_mask = task_mask[:, None] & task_mask[None, :]
    # Γ symmetrised, its transpose read from memory (no register transpose)
    stride = kspace.row_stride(K, BLOCK_K)  # Γ's row pitch (kspace.gram_argument)
    G = (kspace.load_square(gram_ptr, K, BLOCK_K)
         + tl.load(gram_ptr + offs[None, :] * stride + offs[:, None], mask=square_mask, other=0.0).to(tl.float64)) / 2.0
    coeffs = tl.where(offs[:, None] == offs[None, :], 1.0, 0.0).to(tl.float64)
    inner = G  # row i: Γcᵢ
    magnitude = tl.abs(G)  # row i: |cᵢ|ᵀ|Γ|
    corrections = 0
    residual = tl.full([], 0.0, tl.float64)
    for t in range(K):
        j = tl.load(order_ptr + offs * K + t, mask=task_mask, other=0).to(tl.int32)  # task i visits j[i]
        visit = task_mask & (j != offs)
        at_j = offs[None, :] == j[:, None]
        dot = tl.sum(tl.where(at_j, inner, 0.0), axis=1)  # gᵢ'·g_{j[i]}
        norm_i = tl.sqrt(tl.maximum(tl.sum(coeffs * inner, axis=1), 0.0))
        norm_j = tl.sqrt(tl.maximum(tl.load(gram_ptr + j * (stride + 1), mask=task_mask, other=0.0).to(tl.float64), 0.0))  # √Γⱼⱼ
        denominator = norm_i * norm_j + EPS
        cosine = tl.where(denominator > 0.0, dot / tl.where(denominator > 0.0, denominator, 1.0), 0.0)
        # φ̂ᵢⱼ from memory and written back below: a row is a permutation, so each entry is read
        # once and written at most once (no register copy of the targets is held)
        target = tl.load(targets_ptr + offs * K + j, mask=task_mask, other=0.0).to(tl.float64)
        root_target = tl.sqrt(tl.maximum(1.0 - target * target, 0.0))
        bound = norm_j * root_target + EPS
        correct = visit & (cosine < target) & (bound > 0.0)
        step = tl.where(
            correct,
            norm_i * (target * tl.sqrt(tl.maximum(1.0 - cosine * cosine, 0.0)) - cosine * root_target)
            / tl.where(correct, bound, 1.0),
            0.0,
        )
        before = tl.sum(tl.where(at_j, coeffs, 0.0), axis=1)
        coeffs = tl.where(at_j, coeffs + step[:, None], coeffs)
        # row i: Γ[j[i], :] of Γ symmetrised, read from memory once the step is known (no register copy of Γ is held)
        # (the offsets summed before the pointer is formed: no loop-invariant pointer tile is held)
        rows = (tl.load(gram_ptr + (j[:, None] * stride + offs[None, :]), mask=square_mask, other=0.0).to(tl.float64)
                + tl.load(gram_ptr + (offs[None, :] * stride + j[:, None]), mask=square_mask, other=0.0).to(tl.float64)) / 2.0
        # cos(gᵢ', gⱼ) = φ̂ in squared form, over the size of its terms (the torch solve's _target_residual)
        terms = tl.sum(tl.abs(rows * coeffs), axis=1)
        inner = inner + step[:, None] * rows
        magnitude = magnitude + (tl.abs(before + step) - tl.abs(before))[:, None] * tl.abs(rows)
        corrections += tl.sum(correct.to(tl.int32), axis=0)
        a = tl.sum(tl.where(at_j, inner, 0.0), axis=1)
        squares = tl.sum(tl.abs(coeffs) * magnitude, axis=1)
        norm_i2 = tl.maximum(tl.sum(coeffs * inner, axis=1), 0.0)
        norm_j2 = norm_j * norm_j
        scale = terms * terms + target * target * norm_j2 * squares
        off_target = tl.abs(a * tl.abs(a) - target * tl.abs(target) * norm_i2 * norm_j2)
        after = tl.where(correct & (scale > 0.0), off_target / tl.where(scale > 0.0, scale, 1.0), 0.0)
        residual = tl.maximum(residual, tl.max(after, axis=0))
        update = visit & (correct | ALWAYS)
        tl.store(targets_ptr + offs * K + j, (1.0 - BETA) * target + BETA * cosine, mask=update)
    weights = tl.sum(tl.where(task_mask[:, None], coeffs, 0.0), axis=0)
    tl.store(weights_ptr + offs, weights, mask=task_mask)
    tl.store(corrections_ptr, corrections)
    tl.store(residual_ptr, residual)


def gradvac_solve(gram: Tensor, order: Tensor, targets: Tensor, beta: float, eps: float, always: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Weights [K] float64 and the diagnostics "corrections" (0-d int32) and "target_residual"
    (0-d float64), all on gram's device; ``targets`` ([K, K] float64, contiguous, on the device)
    is updated in place.

    gram: Γ [K, K]; order: [K, K] int64, row i the visiting order of task i (i itself skipped).
    """
    K = gram.shape[0]
    block, warps = kspace.launch_config(K)
    weights = torch.empty(K, dtype=torch.float64, device=gram.device)
    corrections = torch.empty((), dtype=torch.int32, device=gram.device)
    residual = torch.empty((), dtype=torch.float64, device=gram.device)
    _gradvac_solve_kernel[(1,)](
        kspace.gram_argument(gram, block), order.contiguous(), targets, weights, corrections, residual, K, BETA=float(beta),
        EPS=float(eps), ALWAYS=always, BLOCK_K=block, num_warps=warps, maxnreg=kspace.MAX_REGISTERS,
    )
    return weights, {"corrections": corrections, "target_residual": residual}

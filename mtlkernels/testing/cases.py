"""Public helpers for validation: task-gradient matrices J [K, N], random and adversarial, as
``python -m mtlkernels.validate``, the benchmarks and the test suite use them. Each adversarial case
is ``(name, J)`` with J float64 on the CPU; the same seed gives the same matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor


def random_J(K: int, N: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard normal gradients (drawn in float64, then cast to ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, N, generator=g, dtype=torch.float64).to(dtype)


def conflicting_J(K: int, N: int, seed: int = 0) -> Tensor:
    """Gradients sharing a common component with some rows pushed against it (many conflicts)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(N, generator=g, dtype=torch.float64)
    J = 0.3 * torch.randn(K, N, generator=g, dtype=torch.float64) + common
    J[1::2] -= 2.5 * common
    return J


def against_first_J(K: int, N: int, seed: int = 0) -> Tensor:
    """Standard normal float64 gradients with every odd row pushed against row 0
    (gᵢ −= 1.5·g₀), so tasks conflict."""
    J = torch.randn(K, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    J[1::2] -= 1.5 * J[0]
    return J


def adversarial_cases(K: int, N: int, seed: int = 0) -> list[tuple[str, Tensor]]:
    """Near-collinear, zero, duplicate, opposite, and wildly scaled gradients."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(K, N, generator=g, dtype=torch.float64)
    cases: list[tuple[str, Tensor]] = []

    collinear = base[:1].repeat(K, 1) + 1e-6 * base
    cases.append(("near_collinear", collinear))

    zero = base.clone()
    zero[0] = 0
    cases.append(("zero_row", zero))

    if K >= 2:
        dup = base.clone()
        dup[1] = dup[0]
        cases.append(("duplicate_rows", dup))

        opposite = base.clone()
        opposite[1] = -opposite[0]
        cases.append(("opposite_rows", opposite))

    scales = torch.logspace(-20, 20, K, dtype=torch.float64) if K > 1 else torch.tensor([1e20], dtype=torch.float64)
    cases.append(("scales_1e-20_1e20", base * scales[:, None]))

    cases.append(("conflicting", conflicting_J(K, N, seed)))
    return cases


def rank_deficient_grams(K: int, seed: int = 0) -> list[tuple[str, Tensor]]:
    """Gram matrices as a float32 Gram pass returns them for rank-deficient gradients: formed in
    float64, then rounded to float32, so they are symmetric but can be slightly indefinite. Each
    case is ``(name, Γ)`` with Γ float32 [K, K] on the CPU."""
    g = torch.Generator().manual_seed(seed)
    rank = max(1, K // 2)
    mixing = torch.randn(K, rank, generator=g, dtype=torch.float64)
    low_rank = mixing @ torch.randn(rank, 64, generator=g, dtype=torch.float64)
    wide = torch.randn(K, max(1, K - 2), generator=g, dtype=torch.float64)  # K > N
    scaled = low_rank * torch.logspace(-3, 3, K, dtype=torch.float64)[:, None]
    duplicated = low_rank.clone()
    if K >= 2:
        duplicated[-1] = duplicated[0]
    cases = [("rank_K/2", low_rank), ("K>N", wide), ("rank_K/2_scales_1e±3", scaled), ("duplicate_row", duplicated)]
    return [(f"float32 Γ {name}", (J @ J.T).to(torch.float32)) for name, J in cases]

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

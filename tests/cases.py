"""Task-gradient matrices shared by the tests: the public families of
:mod:`mtlkernels.testing.cases`, which ``python -m mtlkernels.validate`` uses too, and the
per-parameter block lists the Gram and combination kernels are fed."""
from __future__ import annotations

import torch
from _hypothesis import st

from mtlkernels.testing.cases import adversarial_cases, conflicting_J, random_J

__all__ = [
    "adversarial_cases",
    "awkward_blocks",
    "block_lists",
    "block_shapes",
    "conflicting_J",
    "cpu_gram_tolerance",
    "random_J",
    "scaled_gradients",
    "structured_J",
    "structured_gradients",
]


#: Levels of the C++ CPU kernels that multiply float32 J in float32 tiles (csrc/kernels/gram_cpu.cpp)
FLOAT32_TILE_LEVELS = {"avx2"}
#: steps a float32 tile accumulator sums before it is added into float64
FLOAT32_RUN = 32
#: columns of J from which those levels use the float32 tiles
FLOAT32_TILE_MIN_COLUMNS = 1 << 18


def cpu_gram_tolerance(dtype: torch.dtype, level: str, N: int) -> float:
    """tol with |Γ̂ᵢⱼ − Γᵢⱼ| ≤ tol·‖gᵢ‖‖gⱼ‖ for the C++ Gram of J [K, N] of ``dtype`` at CPU ISA ``level``.

    float64 products and sums: 1e-12. float32 J on the float32 tiles (a float32-tile level, N ≥
    2^18): each lane sums ≤ 32 fused products in float32 (one rounding each), so |error| ≤
    γ₃₂·Σ|xᵢyᵢ| ≤ 33·2⁻²⁴‖gᵢ‖‖gⱼ‖ (Higham, *Accuracy and Stability of Numerical Algorithms*,
    §3.1), the float64 sums adding ~1e-16. float16/bfloat16 J: exact products, ≤ 64 terms per
    lane in float32: 1e-5.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return 1e-5
    if dtype == torch.float32 and level in FLOAT32_TILE_LEVELS and N >= FLOAT32_TILE_MIN_COLUMNS:
        return (FLOAT32_RUN + 1) * 2.0**-24
    return 1e-12


def awkward_blocks(K: int, dtype: torch.dtype, long_columns: int = 0, device: str = "cpu", seed: int = 11) -> list[torch.Tensor]:
    """Per-parameter blocks [K, ...] as a model gives them: views with a row stride into one buffer
    (a [K, 3, 4, 5] conv weight starting one element in, an empty block, 1000 columns, an odd
    17-column tail), separate tensors (a [K, 1] block, a transposed one with column stride K, which
    the launchers copy) and, with ``long_columns``, a block of that many columns starting 3 columns
    into its buffer (longer than a panel or a parallel chunk)."""
    buffer = random_J(K, 1 + 60 + 1000 + 17, seed=seed, dtype=dtype).to(device)
    blocks = [
        buffer[:, 1:61].reshape(K, 3, 4, 5),
        buffer[:, 61:61],
        buffer[:, 61:1061],
        buffer[:, 1061:],
        random_J(K, 1, seed=seed + 1, dtype=dtype).to(device),
        random_J(33, K, seed=seed + 2, dtype=dtype).to(device).T,
    ]
    if long_columns:
        blocks.append(random_J(K, long_columns + 6, seed=seed + 3, dtype=dtype).to(device)[:, 3 : 3 + long_columns])
    return blocks


@st.composite
def block_shapes(draw: st.DrawFn, min_width: int = 1, max_width: int = 300, max_blocks: int = 5) -> tuple[int, list[int]]:
    """K in 1..20 tasks and the widths (columns) of 1 to ``max_blocks`` blocks, not all empty: (K, widths)."""
    K = draw(st.integers(1, 20))
    widths = draw(st.lists(st.integers(min_width, max_width), min_size=1, max_size=max_blocks).filter(lambda w: sum(w) > 0))
    return K, widths


@st.composite
def block_lists(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...], device: str) -> tuple[torch.Tensor, list[int]]:
    """A random J [K, N] of one of ``dtypes`` on ``device`` and the widths of the blocks (views of
    J) it splits into, from :func:`block_shapes`: (J, widths)."""
    K, widths = draw(block_shapes())
    J = random_J(K, sum(widths), seed=draw(st.integers(0, 2**16)), dtype=draw(st.sampled_from(dtypes)))
    return J.to(device), widths


def structured_J(K: int, N: int, seed: int, structure: list[int], log_scales: list[float]) -> torch.Tensor:
    """Random rows [K, N], then row i > 0 by ``structure[i]``: 0 kept, 1 zeroed, 2 a copy of row 0,
    3 minus row 0, 4 row 0 tripled; then row i scaled by 10^log_scales[i] (copies become parallel
    rows of other norms)."""
    J = random_J(K, N, seed)
    for i, kind in enumerate(structure[1:K], start=1):
        J[i] = {0: J[i], 1: 0.0 * J[0], 2: J[0], 3: -J[0], 4: 3.0 * J[0]}[kind]
    return J * torch.tensor([10.0**s for s in log_scales[:K]], dtype=torch.float64)[:, None]


@st.composite
def structured_gradients(draw: st.DrawFn, K: tuple[int, int], N: tuple[int, int], log_scales: list[float]) -> torch.Tensor:
    """:func:`structured_J` with K and N drawn from the given ranges, a random seed and structure, and
    each row's log₁₀ scale one of ``log_scales``."""
    k = draw(st.integers(*K))
    structure = draw(st.lists(st.integers(0, 4), min_size=k, max_size=k))
    scales = draw(st.lists(st.sampled_from(log_scales), min_size=k, max_size=k))
    return structured_J(k, draw(st.integers(*N)), draw(st.integers(0, 2**31 - 1)), structure, scales)


@st.composite
def scaled_gradients(draw: st.DrawFn, K: tuple[int, int], N: tuple[int, int], log_scale: float) -> torch.Tensor:
    """random_J [K, N] (K and N drawn from the given ranges, a random seed), row i scaled by 10^sᵢ
    with sᵢ drawn from [−log_scale, log_scale]."""
    k = draw(st.integers(*K))
    J = random_J(k, draw(st.integers(*N)), seed=draw(st.integers(0, 2**31 - 1)))
    exponents = draw(st.lists(st.floats(-log_scale, log_scale), min_size=k, max_size=k))
    return J * torch.tensor([10.0**s for s in exponents], dtype=torch.float64)[:, None]


def assert_option_rejected(method: str, options: dict, message: str, error: type = ValueError, K: int = 3) -> None:
    """A bad option raises ``error`` matching ``message`` both when the method's weighting is built
    and through ``mk.aggregate`` on a [K, 5] J."""
    import pytest

    import mtlkernels as mk

    with pytest.raises(error, match=message):
        mk.methods.make_weighting(method, **options)
    with pytest.raises(error, match=message):
        mk.aggregate(random_J(K, 5), method, **options)

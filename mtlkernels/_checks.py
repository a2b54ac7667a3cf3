"""Input checks shared by every entry point: clear messages that name the problem."""
from __future__ import annotations

import math
from numbers import Real
from typing import Sequence, Union

import torch
from torch import Tensor

#: Task gradients: one [K, N] tensor, or a list of per-parameter blocks [K, n_i] (or [K, *shape_i]).
Jacobian = Union[Tensor, Sequence[Tensor]]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_blocks(J: Jacobian) -> tuple[list[Tensor], bool]:
    """Return J as a list of 2-D blocks [K, n_i] (views, no copy) and whether J was one tensor."""
    if isinstance(J, Tensor):
        if J.dim() != 2:
            raise ValueError(
                f"J must be a 2-D tensor [K, N] (one task gradient per row); got shape {tuple(J.shape)}"
            )
        check_not_transposed(J)
        blocks, single = [J], True
    elif isinstance(J, (list, tuple)):
        if len(J) == 0:
            raise ValueError("J is an empty list: pass at least one [K, n] block of task gradients")
        for i, block in enumerate(J):
            if not isinstance(block, Tensor) or block.dim() < 1:
                raise TypeError(f"J[{i}] must be a tensor [K, ...]; got {type(block).__name__}")
        blocks, single = [b.reshape(b.shape[0], -1) for b in J], False
    else:
        raise TypeError(f"J must be a tensor [K, N] or a list of [K, n_i] tensors; got {type(J).__name__}")

    first = blocks[0]
    K = first.shape[0]
    if K == 0:
        raise ValueError("J has K = 0 task gradients; at least one task is needed")
    for i, block in enumerate(blocks):
        where = "J" if single else f"J[{i}]"
        if block.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where} has dtype {block.dtype}; expected float16, bfloat16, float32 or float64")
        if block.shape[0] != K:
            raise ValueError(f"{where} has {block.shape[0]} rows but J[0] has {K}: every block needs K rows")
        if block.device != first.device or block.dtype != first.dtype:
            raise ValueError(f"{where} is {block.dtype} on {block.device}; J[0] is {first.dtype} on {first.device}")
    if sum(b.shape[1] for b in blocks) == 0:
        raise ValueError("J has N = 0 columns: there is nothing to aggregate")
    return blocks, single


#: a single [K, N] tensor with more rows than this and at least ``TRANSPOSED_RATIO`` times as many
#: rows as columns is taken for a transposed [N, K] one (see :func:`check_not_transposed`)
TRANSPOSED_MIN_ROWS = 1024
TRANSPOSED_RATIO = 64


def check_not_transposed(J: Tensor) -> None:
    """Raise when a 2-D J looks like the task gradients laid out as columns, [N, K].

    More tasks than parameters is legitimate (K > N), so only the shapes no multi-task problem
    has are flagged: over ``TRANSPOSED_MIN_ROWS`` rows and at least ``TRANSPOSED_RATIO`` times as
    many rows as columns (Γ would be a K×K matrix of rank at most K/64, on which Nash-MTL and
    IMTL have no solution). Such a J can still be passed deliberately as a one-block list ``[J]``.
    """
    rows, cols = J.shape
    if rows > TRANSPOSED_MIN_ROWS and rows >= TRANSPOSED_RATIO * cols:
        raise ValueError(
            f"J has shape {tuple(J.shape)}: K = {rows} tasks of N = {cols} parameters looks transposed; "
            f"J holds one task gradient per row, [K, N] — pass J.T (shape {(cols, rows)}). "
            "If there really are that many tasks, pass [J] (a one-block list) to skip this check"
        )


def check_gram(gram: Tensor) -> int:
    """Check a Gram matrix is a square [K, K] float tensor with K >= 1; return K."""
    if not isinstance(gram, Tensor) or gram.dim() != 2 or (K := gram.shape[0]) != gram.shape[1]:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"the Gram matrix must be a square [K, K] tensor; got {shape}")
    if K == 0:
        raise ValueError("the Gram matrix is empty (K = 0); at least one task is needed")
    if gram.dtype not in FLOAT_DTYPES:
        raise TypeError(f"the Gram matrix has dtype {gram.dtype}; expected a floating dtype")
    return K


def check_losses(losses: Tensor | Sequence[float] | None, K: int) -> Tensor | None:
    """Return the K loss values as a detached float64 tensor (or None): on the CPU, checked
    finite; a tensor on another device (CUDA) stays there and only its size is checked here —
    reading its values would make the host wait for the device. Its values are checked where they
    are read: on the host by a host solve (:meth:`mtlkernels.methods.base.Weighting.__call__`
    moves them there), on the device by a Triton solve (MGDA's gives NaN weights for a loss that is
    not finite or, with a loss normalisation, negative)."""
    if losses is None:
        return None
    if isinstance(losses, Tensor) and losses.device.type != "cpu":
        values = losses.detach().to(torch.float64).reshape(-1)
        if values.numel() != K:
            raise ValueError(f"got {values.numel()} losses for K = {K} tasks")
        return values
    values = torch.as_tensor(
        [float(l) for l in losses] if not isinstance(losses, Tensor) else losses.detach(),
        dtype=torch.float64,
    ).reshape(-1).cpu()
    if values.numel() != K:
        raise ValueError(f"got {values.numel()} losses for K = {K} tasks")
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"loss of task(s) {bad} is not finite (NaN or Inf)")
    return values


def check_option(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise a ValueError naming the option when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


def check_real(name: str, value: object, *, minimum: float = -math.inf, strict: bool = False) -> float:
    """``value`` as a finite Python float ≥ ``minimum`` (> when ``strict``), else a ValueError naming
    the option. Accepts Python and NumPy reals and 0-d real tensors; rejects bools and complex values."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name}={value!r} must be a real number; got {type(value).__name__}")
    number = float(value)
    low_ok = number > minimum if strict else number >= minimum
    if not math.isfinite(number) or not low_ok:
        bound = f" {'>' if strict else '≥'} {minimum:g}" if minimum > -math.inf else ""
        raise ValueError(f"{name}={value!r} must be a finite number{bound}")
    return number


def check_optional_bool(name: str, value: object) -> bool | None:
    """``value`` when it is True, False or None, else a ValueError naming the option (so that a
    string such as "yes" or "false" is not taken for its truth value)."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True, False or None")
    return value


def check_weights(weights: object, K: int) -> Tensor:
    """The K weights as a real tensor: a tensor or a sequence of real numbers; a ValueError names a
    wrong shape, a TypeError a complex, boolean or non-numeric input."""
    if not isinstance(weights, Tensor):
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise TypeError(f"weights must be a tensor or a sequence of K = {K} numbers; got {type(weights).__name__}")
        for k, w in enumerate(weights):
            if isinstance(w, bool) or not isinstance(w, Real):
                raise TypeError(f"weights[{k}]={w!r} is not a real number")
        weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    if weights.is_complex() or weights.dtype == torch.bool:
        raise TypeError(f"weights have dtype {weights.dtype}; expected real numbers")
    if weights.dim() != 1 or weights.shape[0] != K:
        raise ValueError(f"weights must have shape [{K}] for K = {K} tasks; got {tuple(weights.shape)}")
    return weights

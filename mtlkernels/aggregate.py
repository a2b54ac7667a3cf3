"""The functional API: J → Γ → K-space solve → d = wᵀJ.

    res = mtlkernels.aggregate(J, "cagrad", c=0.5)
    res.direction  # [N] (or a list of blocks), always res.weights @ J up to rounding
    res.weights    # [K]
    res.gram       # [K, K]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ._checks import Jacobian, as_blocks, check_optional_bool
from . import backend as _backend
from . import combine as _combine
from . import gram as _gram
from .combine import blocks_of_outputs, check_cpp_outputs, combine_blocks, combine_cpp, gram_and_combine_cpp, output_blocks
from .gram import CppBlocks, gram_blocks, gram_blocks_float64, gram_cpp
from .methods import Solution, Weighting, make_weighting


@dataclass
class AggregationResult:
    """What one aggregation produced.

    Attributes:
        direction: d = Σₖ wₖ·gₖ: [N] for a [K, N] J, a list of [n_i] for a list of blocks, or the
            ``out`` tensors when given.
        weights: [K] float64 weights, as solved: a weight can leave the float32 range while its
            term wₖ·gₖ does not (PCGrad projecting a 1e20 gradient off a 1e-20 one gives ~1e40).
        gram: Γ = J·Jᵀ [K, K] as accumulated (float64 on the CPU).
        method: the method's name.
        diagnostics: the solver's certificate and facts (see each method's docs).
    """

    direction: Tensor | list[Tensor]
    weights: Tensor
    gram: Tensor
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def norms(self) -> Tensor:
        """‖gₖ‖ for every task, [K]."""
        return self.gram.diagonal().clamp_min(0).sqrt()

    @property
    def cosine(self) -> Tensor:
        """Pairwise cosine similarities Γᵢⱼ/(‖gᵢ‖‖gⱼ‖), [K, K]; 0 where a gradient is zero."""
        n = self.norms
        denom = n[:, None] * n[None, :]
        return torch.where(denom > 0, self.gram / torch.where(denom > 0, denom, 1), 0)

    @property
    def conflicts(self) -> Tensor:
        """Number of task pairs i < j with gᵢ·gⱼ < 0 (a 0-d tensor; no host sync)."""
        return torch.triu(self.gram < 0, diagonal=1).sum()

    def scalars(self, losses: Tensor | Sequence[float] | None = None) -> dict[str, float]:
        """The aggregation's facts as a flat ``{name: float}``, for ``SummaryWriter.add_scalars``
        or ``wandb.log``: ``weight/{k}``, ``grad_norm/{k}`` (‖gₖ‖), ``cosine/{i}_{j}`` for i < j,
        ``conflicts``, ``loss/{k}`` when ``losses`` are given, and ``solver/{name}`` for each
        scalar diagnostic of the solve (numbers and flags; task lists, per-task vectors and
        names are left to :attr:`diagnostics`).

        Everything on the device is packed into one tensor and read once, when called.
        """
        K = self.gram.shape[0]
        rows, cols = torch.triu_indices(K, K, offset=1).unbind()
        parts = [self.weights, self.norms, self.cosine[rows, cols], self.conflicts]
        names = [f"weight/{k}" for k in range(K)] + [f"grad_norm/{k}" for k in range(K)]
        names += [f"cosine/{i}_{j}" for i, j in zip(rows.tolist(), cols.tolist())] + ["conflicts"]
        if losses is not None:
            values = losses.detach() if isinstance(losses, Tensor) else torch.tensor(
                [float(l) for l in losses], dtype=torch.float64)
            if values.numel() != K:
                raise ValueError(f"got {values.numel()} losses for K = {K} tasks")
            parts.append(values)
            names += [f"loss/{k}" for k in range(K)]
        on_host: dict[str, float] = {}
        for key, value in self.diagnostics.items():
            if isinstance(value, Tensor) and value.dim() == 0:
                parts.append(value)
                names.append(f"solver/{key}")
            elif isinstance(value, (bool, int, float)):
                on_host[f"solver/{key}"] = float(value)
        device = self.gram.device
        packed = torch.cat([p.detach().to(device=device, dtype=torch.float64).reshape(-1) for p in parts]).cpu()
        return {**dict(zip(names, packed.tolist())), **on_host}


def diagonal_is_finite(gram: Tensor) -> bool:
    """Whether Γ's diagonal holds no NaN/Inf. A float64 CPU Γ is read through its trace, one op
    (~1 µs against ~5 for an elementwise test): a NaN/Inf on the diagonal makes it non-finite, and
    a trace that overflows (entries ≳ 1e308/K) only sends the caller on to :func:`nonfinite_tasks`,
    which names no task then."""
    if gram.dtype == torch.float64 and gram.device.type == "cpu":
        return math.isfinite(gram.trace().item())
    return bool(torch.isfinite(gram.diagonal()).all())


def nonfinite_tasks(gram: Tensor, blocks: list[Tensor] | None = None, scale: float = 1.0) -> tuple[Tensor, list[int]]:
    """The tasks whose gradient holds NaN or Inf, read off Γ's diagonal, and the Γ to go on with.

    For a Γ whose diagonal was seen to be non-finite. A Γ accumulated in float32 (CUDA) overflows
    for gradients ≳ 1e19: when the ``blocks`` it came from are given, it is recomputed in float64
    (÷ ``scale``², for gradients of scaled losses) so that only a real NaN/Inf in J is named, and
    that Γ is returned.
    """
    if blocks is not None and gram.dtype != torch.float64:
        gram = gram_blocks_float64(blocks)
        if scale != 1.0:
            gram = gram / scale**2
    return gram, (~torch.isfinite(gram.diagonal())).nonzero().flatten().tolist()


class Aggregator:
    """A method with its options (and state, for Nash-MTL), applied to task gradients.

    Args:
        method: "mean", "pcgrad", "cagrad", "nash_mtl", "imtl" or "mgda", or a built Weighting.
        backend: "auto" (default), "torch", "cpp" or "triton", for the Gram, the solve and the
            combination alike.
        check_finite: raise when a task gradient holds NaN/Inf (read off Γ's diagonal, no extra
            pass over J). Default ``None``: check on the CPU, where it is free; skip on CUDA, where
            reading the answer costs a host synchronisation (a non-finite gradient then gives
            non-finite weights and direction). ``True`` checks everywhere, ``False`` nowhere.
            A float32-accumulated Γ (CUDA) that overflowed — gradients ≳ 1e19 — is recomputed in
            float64 when checked, so only a real NaN/Inf in J raises.
        **options: the method's options (see its Weighting class).
    """

    def __init__(
        self, method: str | Weighting = "mean", *, backend: str = "auto", check_finite: bool | None = None, **options: Any
    ):
        if isinstance(method, Weighting):
            self.weighting = make_weighting(method, **options)
        else:
            self.weighting = make_weighting(method, backend=backend, **options)
        self.backend = backend
        self.check_finite = check_optional_bool("check_finite", check_finite)

    @property
    def method(self) -> str:
        return self.weighting.name

    def __call__(
        self,
        J: Jacobian,
        *,
        losses: Tensor | Sequence[float] | None = None,
        out: Sequence[Tensor] | None = None,
        accumulate: bool = False,
    ) -> AggregationResult:
        """Aggregate the task gradients J ([K, N] or list of [K, n_i] blocks).

        ``losses`` are needed by loss-normalised MGDA; ``out``/``accumulate`` write the direction
        into given tensors (e.g. ``.grad``) as :func:`mtlkernels.combine` does. J is read as
        values (as ``torch.optim`` reads ``.grad``): the result never requires grad, on any backend.
        """
        blocks, single = as_blocks(J)
        outs = output_blocks(blocks, out) if out is not None else None
        device = blocks[0].device
        check = self.check_finite if self.check_finite is not None else device.type == "cpu"
        cpp = _backend.resolve("gram", _gram._IMPLS, self.backend, device) == "cpp"
        if cpp and self.one_pass(device, out_given=out is not None, check=check):
            return self._call_one_pass(blocks, single, losses, out, outs, accumulate, check)
        described = CppBlocks(blocks) if cpp else None  # checked and described once for both passes
        gram = gram_cpp(described) if described is not None else self.gram(blocks)
        if check and not diagonal_is_finite(gram):
            gram, bad = nonfinite_tasks(gram, blocks)
            if bad:
                raise ValueError(f"task gradient(s) {bad} contain a non-finite entry (NaN or Inf)")
        solution, weights = self.solve(gram, losses, blocks[0].device)
        if outs is None:
            outs = [torch.empty(b.shape[1], dtype=b.dtype, device=b.device) for b in blocks]
            accumulate = False
            direction: Tensor | list[Tensor] = outs[0] if single else outs
        else:
            direction = list(out)  # type: ignore[arg-type]
        if described is not None and _backend.resolve("combine", _combine._IMPLS, self.backend, device) == "cpp":
            if len(outs) != len(blocks):  # one J written into several outputs
                described = CppBlocks(blocks_of_outputs(blocks, outs))
            if out is not None:
                check_cpp_outputs(described.blocks, outs)
            combine_cpp(weights, described, outs, accumulate)
        else:
            self.combine(weights, blocks, outs, accumulate)
        return AggregationResult(direction, weights, gram, self.method, solution.diagnostics)

    def one_pass(self, device: torch.device, *, out_given: bool, check: bool) -> bool:
        """Whether a call computes Γ and the direction in one pass over J: the weights do not read
        Γ (the mean), both passes run in C++, and no finite check must leave given outputs as they
        were (the pass writes them before Γ's diagonal is known), so ``out=`` with the check on
        takes two passes."""
        return (
            not self.weighting.reads_gram
            and not (out_given and check)
            and _backend.resolve("gram", _gram._IMPLS, self.backend, device) == "cpp"
            and _backend.resolve("combine", _combine._IMPLS, self.backend, device) == "cpp"
        )

    def _call_one_pass(
        self,
        blocks: list[Tensor],
        single: bool,
        losses: Tensor | Sequence[float] | None,
        out: Sequence[Tensor] | None,
        outs: list[Tensor] | None,
        accumulate: bool,
        check: bool,
    ) -> AggregationResult:
        """__call__ for :meth:`one_pass`: the weights first (from a zero Γ, which they do not
        read), then Γ and d = wᵀJ by one pass, then the finite check on Γ's diagonal."""
        K = blocks[0].shape[0]
        solution, weights = self.solve(torch.zeros(K, K, dtype=torch.float64), losses, blocks[0].device)
        if outs is None:
            outs = [torch.empty(b.shape[1], dtype=b.dtype, device=b.device) for b in blocks]
            accumulate = False
            direction: Tensor | list[Tensor] = outs[0] if single else outs
        else:
            direction = list(out)  # type: ignore[arg-type]
        gram = gram_and_combine_cpp(weights, blocks_of_outputs(blocks, outs), outs, accumulate)
        if check and not diagonal_is_finite(gram):
            gram, bad = nonfinite_tasks(gram, blocks)
            if bad:
                raise ValueError(f"task gradient(s) {bad} contain a non-finite entry (NaN or Inf)")
        return AggregationResult(direction, weights, gram, self.method, solution.diagnostics)

    # The steps of a call, also run by the optimizer wrappers (which add their own checks and
    # reductions between them).
    def gram(self, blocks: list[Tensor]) -> Tensor:
        """Γ = J·Jᵀ of checked blocks [K, n_i], in the backend's accumulation dtype."""
        return gram_blocks(blocks, self.backend)

    def solve(self, gram: Tensor, losses: Tensor | Sequence[float] | None, device: torch.device) -> tuple[Solution, Tensor]:
        """The method's K-space solve on Γ: its solution and the weights as float64 on ``device``."""
        solution = self.weighting(gram, losses)
        return solution, solution.weights.to(device=device, dtype=torch.float64)

    def combine(self, weights: Tensor, blocks: list[Tensor], outs: list[Tensor], accumulate: bool) -> None:
        """d = wᵀJ written (or added, with ``accumulate``) into ``outs`` matched to the blocks."""
        combine_blocks(weights, blocks, outs, accumulate, self.backend)

    def state_dict(self) -> dict[str, Any]:
        return self.weighting.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weighting.load_state_dict(state)

    def reset(self) -> None:
        self.weighting.reset()

    def __repr__(self) -> str:
        return f"Aggregator({self.weighting!r}, backend={self.backend!r})"


def aggregate(
    J: Jacobian,
    method: str = "mean",
    *,
    losses: Tensor | Sequence[float] | None = None,
    backend: str = "auto",
    check_finite: bool | None = None,
    out: Sequence[Tensor] | None = None,
    accumulate: bool = False,
    **options: Any,
) -> AggregationResult:
    """One stateless aggregation: ``Aggregator(method, **options)(J, losses=losses)``.

    Stateful methods (Nash-MTL's warm start and ``update_weights_every``) need an
    :class:`Aggregator` kept across steps; this function starts from a fresh state every call.
    """
    agg = Aggregator(method, backend=backend, check_finite=check_finite, **options)
    return agg(J, losses=losses, out=out, accumulate=accumulate)


class NashMTLAggregator(Aggregator):
    """Stateful Nash-MTL applied to task gradients, ``agg(J)`` once per training step.

    Same options as :class:`mtlkernels.methods.NashMTLWeighting`; ``state_dict``/
    ``load_state_dict``/``reset`` carry α and the step counter across steps (the warm start and
    ``update_weights_every``), which :func:`aggregate` — fresh state every call — cannot.
    """

    def __init__(self, *, backend: str = "auto", check_finite: bool | None = None, **options: Any) -> None:
        super().__init__("nash_mtl", backend=backend, check_finite=check_finite, **options)

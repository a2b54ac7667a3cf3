"""The K-space half of every method: a *weighting* maps the Gram matrix Γ (and, for some
methods, the K loss values) to the K weights w of the direction d = Σₖ wₖ·gₖ.

A method is a :class:`Weighting` subclass that holds its options (checked in ``__init__``), its
numeric constants (a frozen dataclass, :attr:`Weighting.constants`) and its solves:

- :meth:`Weighting.solve_torch` — the readable float64 version; every method has it;
- :meth:`Weighting.solve_cpp` — calls its ``mtlkernels._C`` entry point, when it has one;
- :meth:`Weighting.solve_triton` — calls its on-device launcher in ``mtlkernels.kernels``,
  imported inside the method, when it has one.

The C++ and Triton solves receive the constants from the method (a bound C++ struct; kernel
constexprs), so their values are written once; a method whose tolerances follow the precision Γ
was rounded to derives them from Γ's dtype in :meth:`Weighting.for_precision`. Everything else is
done here, once for every method: the choice of backend and the fallback to torch beyond a
backend's K limit (:func:`mtlkernels.backend.resolve`), the checks of Γ, the host/device and dtype
moves, and the diagnostics contract.

Diagnostics contract: every backend of a method reports the same keys. The host solves (torch,
cpp) give Python scalars (float, int, bool, str), lists of task indices for task sets, and
tensors for per-task vectors. On a CUDA Γ the on-device solve (triton) gives tensors on Γ's
device so that nothing waits for the GPU: 0-d tensors for scalars and [K] bool masks for task
sets; on a CPU Γ (the interpreter) its diagnostics are put in the host form, so there every
backend gives the same types. :func:`host_diagnostics` turns the device form into the host form;
:func:`diagnostics_to_python` makes everything plain Python, for logging.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from .. import backend as _backend
from .._checks import check_gram, check_losses
from .._extension import extension


@dataclass
class Solution:
    """Weights of one K-space solve and the solver's diagnostics.

    Attributes:
        weights: [K] float64 weights, on the device of the Gram matrix.
        diagnostics: certificate and solver facts, e.g. ``{"kkt_residual": 3e-16, "iterations": 4}``
            (see the module docstring for the types).
    """

    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> "Solution":
        """The weights and the tensor diagnostics on ``device``."""
        diagnostics = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.diagnostics.items()}
        return Solution(self.weights.to(device), diagnostics)


def host_diagnostics(diagnostics: dict[str, Any]) -> dict[str, Any]:
    """Diagnostics in the host solves' form: 0-d tensors → Python numbers and bools, [K] bool
    masks (task sets) → lists of task indices; per-task vectors stay tensors. Reads device
    tensors, so on CUDA it waits for the GPU."""
    out: dict[str, Any] = {}
    for key, value in diagnostics.items():
        if isinstance(value, Tensor) and (value.dim() == 0 or value.dtype == torch.bool):
            value = value.detach().cpu()
            value = value.item() if value.dim() == 0 else value.nonzero().flatten().tolist()
        out[key] = value
    return out


def diagnostics_to_python(diagnostics: dict[str, Any]) -> dict[str, Any]:
    """Diagnostics of any backend as plain Python values, for logging: :func:`host_diagnostics`,
    then the remaining tensors (per-task vectors) as (nested) lists of numbers."""
    return {k: v.tolist() if isinstance(v, Tensor) else v for k, v in host_diagnostics(diagnostics).items()}


#: id(constants) → (constants, its C++ struct); holding the constants keeps their id unique
_CPP_CONSTANTS: dict[int, tuple[Any, Any]] = {}


def cpp_constants(constants: Any) -> Any:
    """A method's constants (a frozen dataclass) as the C++ struct bound under the same class name
    and field names in ``mtlkernels._C`` (e.g. ``CAGradConstants``), built once per object."""
    entry = _CPP_CONSTANTS.get(id(constants))
    if entry is None:
        entry = _CPP_CONSTANTS[id(constants)] = (constants, getattr(extension(), type(constants).__name__)(**asdict(constants)))
    return entry[1]


def host_gram(gram: Tensor) -> Tensor:
    """Γ as a C-contiguous float64 CPU tensor, checked: a ValueError names a non-finite entry or a
    negative diagonal entry (then Γ is not J·Jᵀ of real gradients)."""
    gram = gram.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("the Gram matrix has a non-finite entry (NaN or Inf)")
    negative = (gram.diagonal() < 0).nonzero().flatten().tolist()
    if negative:
        raise ValueError(f"the Gram matrix has negative diagonal entries at {negative}: it is not J·Jᵀ")
    return gram


_W = TypeVar("_W", bound="Weighting")


class Weighting(ABC):
    """Γ [K, K] (+ losses [K]) → weights [K].

    Class attributes:
        name: the method name used by :func:`mtlkernels.aggregate`.
        constants: the method's numeric constants (tolerances, iteration caps), a frozen
            dataclass instance, or None when it has none.
        backends: the backends the method implements: unless the subclass sets it, "torch" and
            those of the ``solve_cpp`` / ``solve_triton`` it defines.
        per_task_state: the keys of ``state_dict()`` holding one entry per task (1-D [K]); a
            step over some of the tasks keeps the others' entries (:mod:`mtlkernels.optim.tasks`).
        reads_gram: whether the weights depend on Γ's values (True but for the mean).
    """

    name: ClassVar[str]
    constants: ClassVar[Any] = None
    backends: ClassVar[tuple[str, ...]] = ("torch",)
    per_task_state: ClassVar[tuple[str, ...]] = ()
    #: False for a method whose weights do not depend on Γ's values (the mean): then Γ and the
    #: direction can be computed in one pass over J (see :class:`mtlkernels.Aggregator`)
    reads_gram: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "backends" not in cls.__dict__:
            cls.backends = ("torch",) + tuple(
                name for name in ("cpp", "triton") if getattr(cls, f"solve_{name}") is not getattr(Weighting, f"solve_{name}")
            )

    def __init__(self, *, backend: str = "auto") -> None:
        self.backend = _backend.check_backend(backend)

    @property
    def needs_losses(self) -> bool:
        """True when the weights depend on the loss values (e.g. MGDA "loss")."""
        return False

    # -- what a method provides ---------------------------------------------------------------
    @abstractmethod
    def solve_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """The torch solve: Γ a checked float64 CPU tensor (:func:`host_gram`), losses float64 CPU
        (or None). Returns CPU weights; the caller moves them to Γ's device."""

    def solve_cpp(self, gram: Tensor, losses: Tensor | None) -> tuple[np.ndarray, dict[str, Any]]:
        """The C++ solve: Γ a contiguous float64 CPU tensor, unchecked (the extension checks it),
        K ≤ the extension's limit. Returns (weights [K] as a NumPy array, diagnostics)."""
        raise NotImplementedError

    def solve_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        """The on-device solve: Γ float32/float64 on its device (checked when on the CPU), K ≤ the
        Triton limit; losses float64 on Γ's device when :attr:`needs_losses`, else None."""
        raise NotImplementedError

    def check_inputs(self, gram: Tensor, losses: Tensor | None) -> None:
        """Method-specific checks before any solve (e.g. loss signs); raise ValueError. Γ itself
        is checked by the backend layer."""

    def for_precision(self, dtype: torch.dtype) -> "Weighting":
        """The weighting that solves a Γ of ``dtype`` (as the caller gave it, before the generic
        layer moves it to float64 or float32): ``self``, unless the method's constants follow the
        precision Γ was rounded to (IMTL's singularity tolerances); then a copy whose
        :attr:`constants` are those for ``dtype``, which every backend's solve reads."""
        return self

    def with_constants(self: _W, constants: Any) -> _W:
        """``self`` when ``constants`` is already its :attr:`constants`, else a shallow copy holding
        ``constants`` (the copy :meth:`for_precision` returns for a Γ of another precision)."""
        if constants is self.constants:
            return self
        weighting = copy.copy(self)
        weighting.constants = constants
        return weighting

    # -- the generic layer ----------------------------------------------------------------------
    def resolve_backend(self, gram: Tensor) -> str:
        """The backend that solves Γ: :attr:`backend`, or torch beyond that backend's K limit."""
        if gram.is_cpu and _backend.cpp_on_cpu(self.backends, self.backend, gram.shape[0]):
            return "cpp"
        return _backend.resolve(f"{self.name} solve", self.backends, self.backend, gram.device, gram.shape[0])

    def __call__(self, gram: Tensor, losses: Tensor | None = None) -> Solution:
        K = check_gram(gram)
        if losses is not None:
            losses = check_losses(losses, K)
        elif self.needs_losses:
            raise ValueError(f"{self!r} needs the K loss values: pass losses=")
        backend = self.resolve_backend(gram)
        if losses is not None and losses.device.type != "cpu" and backend != "triton":
            losses = check_losses(losses.cpu(), K)  # a host solve reads them on the host: check there
        self.check_inputs(gram, losses)
        weighting = self.for_precision(gram.dtype)
        if backend == "cpp":
            return weighting._run_cpp(gram, losses)
        if backend == "triton":
            return weighting._run_triton(gram, losses)
        return weighting._run_torch(gram, losses)

    def _run_torch(self, gram: Tensor, losses: Tensor | None) -> Solution:
        solution = self.solve_torch(host_gram(gram), losses)
        return solution if gram.device.type == "cpu" else solution.to(gram.device)

    def _run_cpp(self, gram: Tensor, losses: Tensor | None) -> Solution:
        G = gram.detach() if gram.requires_grad else gram  # a CPU tensor: the cpp backend runs on no other
        if G.dtype is not torch.float64 or not G.is_contiguous():
            G = G.to(torch.float64).contiguous()
        weights, diagnostics = self.solve_cpp(G, losses)
        return Solution(torch.from_numpy(weights), diagnostics)

    def _run_triton(self, gram: Tensor, losses: Tensor | None) -> Solution:
        if gram.dtype not in (torch.float32, torch.float64):
            gram = gram.to(torch.float32)
        if gram.device.type == "cpu":  # free here; on CUDA a non-finite Γ gives non-finite weights
            host_gram(gram)
        if losses is not None:
            losses = losses.to(device=gram.device, non_blocking=True) if self.needs_losses else None
        solution = self.solve_triton(gram.detach(), losses)
        if gram.device.type == "cpu":  # the interpreter: reading the values costs nothing
            solution.diagnostics = host_diagnostics(solution.diagnostics)
        return solution

    # -- state (stateless by default) -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless; got state keys {sorted(state)}")

    def reset(self) -> None:
        """Forget any state carried between steps."""

    def options(self) -> dict[str, Any]:
        """The constructor options, for ``repr`` and logging."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


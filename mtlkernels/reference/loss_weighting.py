"""Float64 references of the loss-weighting methods, written from the papers as objectives.

Each gives the scalar the paper differentiates (or its update rule) in plain float64 PyTorch, so
that a test takes its gradients with autograd — independently of the wrappers in
:mod:`mtlkernels.optim.loss_weighting`, which write the weights wₖ of Σₖ wₖ·Lₖ in closed form.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def famo_objective(losses: Tensor, logits: Tensor, min_losses: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """FAMO's scalarised loss (Liu et al., NeurIPS 2023, Sec. 3): c·Σᵢ zᵢ·log(Lᵢ − bᵢ + ε), z =
    softmax(ξ), with c = (Σᵢ zᵢ/(Lᵢ − bᵢ + ε))⁻¹ a constant of the backward (detached)."""
    b = torch.zeros_like(losses) if min_losses is None else min_losses.to(losses)
    z = torch.softmax(logits.to(torch.float64).detach(), 0).to(losses)
    shifted = losses - b + eps
    c = 1.0 / (z / shifted.detach()).sum()
    return c * (z * shifted.log()).sum()


def famo_logit_step(
    logits: Tensor, moments: tuple[Tensor, Tensor, int], before: Tensor, after: Tensor,
    lr: float, weight_decay: float, min_losses: Tensor | None = None, eps: float = 1e-8,
) -> tuple[Tensor, tuple[Tensor, Tensor, int]]:
    """One logit update of FAMO's Algorithm 2: δ = log(L⁻ − b + ε) − log(L⁺ − b + ε), the gradient
    ∂(softmax(ξ)·δ)/∂ξ by autograd plus weight_decay·ξ, then one Adam step (Kingma & Ba 2015,
    β = (0.9, 0.999), ε̂ = 1e-8) written out element by element."""
    b = torch.zeros_like(before) if min_losses is None else min_losses.to(torch.float64)
    delta = (before.double() - b + eps).log() - (after.double() - b + eps).log()
    xi = logits.detach().double().clone().requires_grad_()
    (grad,) = torch.autograd.grad((torch.softmax(xi, 0) * delta).sum(), xi)
    grad = grad + weight_decay * xi.detach()
    m, v, t = moments
    t += 1
    new_logits, new_m, new_v = [], [], []
    for i in range(len(grad)):
        mi = 0.9 * float(m[i]) + 0.1 * float(grad[i])
        vi = 0.999 * float(v[i]) + 0.001 * float(grad[i]) ** 2
        m_hat, v_hat = mi / (1 - 0.9**t), vi / (1 - 0.999**t)
        new_logits.append(float(xi.detach()[i]) - lr * m_hat / (math.sqrt(v_hat) + 1e-8))
        new_m.append(mi)
        new_v.append(vi)
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    return as_tensor(new_logits), (as_tensor(new_m), as_tensor(new_v), t)


def uw_objective(losses: Tensor, log_variances: Tensor) -> Tensor:
    """Uncertainty weighting (Kendall et al., CVPR 2018, eq. 7 with s = log σ²):
    Σᵢ 1/(2σᵢ²)·Lᵢ + log σᵢ = Σᵢ ½e^{−sᵢ}·Lᵢ + ½sᵢ."""
    return sum(0.5 * torch.exp(-log_variances[i]) * losses[i] + 0.5 * log_variances[i] for i in range(len(losses)))


def dwa_weights(epoch_averages: Sequence[Sequence[float]], temperature: float, K: int) -> list[float]:
    """Dynamic weight average (Liu et al., CVPR 2019, eq. 7): λₖ = K·exp(wₖ/T)/Σᵢ exp(wᵢ/T) with
    wₖ = L̄ₖ(t−1)/L̄ₖ(t−2) from the last two epochs' average losses (``epoch_averages``, oldest
    first); 1 for every task while fewer than two epochs are done."""
    if len(epoch_averages) < 2:
        return [1.0] * K
    older, newer = epoch_averages[-2], epoch_averages[-1]
    e = [math.exp(newer[k] / older[k] / temperature) for k in range(K)]
    return [K * ek / sum(e) for ek in e]


def gradnorm_loss(weights: Tensor, layer_norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float) -> Tensor:
    """GradNorm's L_grad (Chen et al., ICML 2018, eq. 2): Σᵢ |Gᵢ − Ḡ·rᵢ^α| with Gᵢ = wᵢ·‖∇_W Lᵢ‖,
    Ḡ = mean(G), rᵢ = L̃ᵢ/mean(L̃), L̃ᵢ = Lᵢ/Lᵢ(0); the target Ḡ·rᵢ^α is a constant (detached).
    Differentiate with respect to ``weights``."""
    G = weights * layer_norms
    ratio = losses / initial_losses
    r = ratio / ratio.mean()
    target = (G.mean() * r**alpha).detach()
    return (G - target).abs().sum()

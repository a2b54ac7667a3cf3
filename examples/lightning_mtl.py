"""A LightningModule with a gradient-conflict method: manual optimisation around the wrapper that
``configure_optimizers`` returns, flat diagnostics through ``self.log_dict``, and checkpoints
that carry the method's state (Nash-MTL's warm start) through Lightning's save and resume.

    python examples/lightning_mtl.py [--method nash_mtl] [--epochs 4] [--out examples/out/lightning]

Three regression tasks on synthetic data share an MLP trunk; the metrics (per-task weights,
gradient norms, cosines, losses, the solver's certificate) go to Lightning's CSVLogger.
"""
from __future__ import annotations

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mtlkernels as mk

TASKS = ("depth", "seg", "normal")
WRAPPERS = {"pcgrad": mk.PCGrad, "cagrad": mk.CAGrad, "nash_mtl": mk.NashMTL, "imtl": mk.IMTL, "mgda": mk.MGDA}


class MultiTaskModule(L.LightningModule):
    """A shared trunk, one head per task; each training step is one multi-task step."""

    def __init__(self, method: str = "nash_mtl", lr: float = 1e-2, width: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # the wrapper's backward replaces Lightning's
        self.trunk = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.heads = nn.ModuleDict({task: nn.Linear(width, 1) for task in TASKS})

    def configure_optimizers(self) -> mk.MultiTaskOptimizer:
        # state that matters on resume: PCGrad's generator; Nash-MTL solving every 3rd step and
        # reusing α in between (the authors' update_weights_every speed-up)
        options = {"pcgrad": {"seed": 0}, "nash_mtl": {"update_weights_every": 3}}.get(self.hparams.method, {})
        base = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return WRAPPERS[self.hparams.method](base, task_names=TASKS, **options)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        z = self.trunk(x)
        losses = {task: nn.functional.mse_loss(head(z).squeeze(1), y[:, k]) for k, (task, head) in enumerate(self.heads.items())}
        opt = self.optimizers()  # Lightning's proxy of the wrapper configure_optimizers returned
        opt.zero_grad()
        opt.backward(losses)  # the multi-task backward (not self.manual_backward): d = Σ wₖ·gₖ into .grad
        opt.step()
        self.log_dict(opt.diagnostics(flat=True), on_step=True, on_epoch=False)


def make_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """Three tasks pulling the trunk apart: y_k = ±tanh(x·a_k) with partly opposite directions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    a = torch.randn(8, 3, generator=g)
    a[:, 1] = -a[:, 0] + 0.3 * a[:, 1]
    return TensorDataset(x, torch.tanh(x @ a) * torch.tensor([1.0, 2.0, 0.5]))


def trainer(out: str, epochs: int, name: str) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=CSVLogger(out, name=name),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="nash_mtl", choices=sorted(WRAPPERS), help="the gradient-conflict method")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of 4 batches; the run stops and resumes halfway")
    parser.add_argument("--out", default=os.path.join("examples", "out", "lightning"), help="logs and the checkpoint")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    loader = lambda: DataLoader(make_data(), batch_size=16, shuffle=False)  # noqa: E731

    # one run straight through
    L.seed_everything(0, verbose=False)
    straight = MultiTaskModule(args.method)
    straight_trainer = trainer(args.out, args.epochs, "straight")
    straight_trainer.fit(straight, loader())

    # the same run stopped halfway, saved, and resumed from the checkpoint in a fresh module
    L.seed_everything(0, verbose=False)
    first = MultiTaskModule(args.method)
    halfway = trainer(args.out, args.epochs // 2, "first_half")
    halfway.fit(first, loader())
    checkpoint = os.path.join(args.out, "halfway.ckpt")
    halfway.save_checkpoint(checkpoint)
    resumed = MultiTaskModule(args.method)
    resumed_trainer = trainer(args.out, args.epochs, "resumed")
    resumed_trainer.fit(resumed, loader(), ckpt_path=checkpoint)

    gap = max(float((a - b).detach().abs().max()) for a, b in zip(straight.parameters(), resumed.parameters()))
    saved = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]
    print(f"{args.method}: after {args.epochs} epochs, straight vs stopped-and-resumed: max |Δθ| = {gap:.1e}")
    print(f"the checkpoint holds the method's state: {sorted(saved['method'])}, task names {saved['task_names']}")
    return {"straight": straight_trainer.optimizers[0], "resumed": resumed_trainer.optimizers[0], "checkpoint": checkpoint, "gap": gap,
            "metrics": os.path.join(args.out, "straight", "version_0", "metrics.csv")}


if __name__ == "__main__":
    main()

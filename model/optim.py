"""The paper's update rule and learning-rate schedule (section 5).

    v <- 0.9 v - 0.0005 * lr * w - lr * grad
    w <- w + v

The learning rate sits inside the velocity, so a rate change scales only new steps; PyTorch's
SGD multiplies the whole velocity by the current rate. Both are offered (`paper`, `torch`).
"""

from __future__ import annotations

import torch
from torch.optim import SGD, Optimizer


class PaperSGD(Optimizer):
    """SGD with momentum and weight decay exactly as written in the paper."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(w)
                v = state["velocity"]
                v.mul_(mom).add_(w, alpha=-wd * lr).add_(w.grad, alpha=-lr)
                w.add_(v)
        return loss


def make_optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    if kind == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "torch":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'paper' or 'torch', got {kind!r}")


class PlateauSchedule:
    """Divide the learning rate by `factor` when validation top-1 error has not improved for
    `patience` epochs, at most `max_drops` times ("reduced three times prior to termination")."""

    def __init__(
        self, optimizer: Optimizer, patience: int = 2, factor: float = 10.0, max_drops: int = 3
    ):
        self.optimizer, self.patience, self.factor, self.max_drops = (
            optimizer,
            patience,
            factor,
            max_drops,
        )
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, error: float) -> bool:
        """Record one epoch's validation error; return True when the rate was dropped."""
        if error < self.best:
            self.best, self.bad_epochs = error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience or self.drops >= self.max_drops:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] /= self.factor
        self.drops += 1
        self.bad_epochs = 0
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.drops = state["best"], state["bad_epochs"], state["drops"]

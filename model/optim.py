"""The paper's update rule and learning-rate schedule (section 5).

    v <- 0.9 v - 0.0005 * lr * w - lr * grad
    w <- w + v

The learning rate sits inside the velocity, so a rate change scales only new steps; PyTorch's
SGD multiplies the whole velocity by the current rate. Both are offered (`paper`, `torch`).

The rate itself: `lr` is the paper's rate for batches of 128, scaled linearly to the global
batch, ramped up over the warm-up steps, and divided by 10 on each plateau drop (plateau.py).
"""

from __future__ import annotations

import torch
from torch.optim import SGD, Optimizer

from .config import TrainConfig


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


def make_optimizer(kind: str, groups: list[dict], momentum: float) -> Optimizer:
    """`groups` as from `param_groups`; each group's rate is set by `set_rate` before a step."""
    if kind == "paper":
        return PaperSGD(groups, lr=0.0, momentum=momentum)
    if kind == "torch":
        return SGD(groups, lr=0.0, momentum=momentum)
    raise ValueError(f"optimizer must be 'paper' or 'torch', got {kind!r}")


def optimizer_for(
    model: torch.nn.Module, config: TrainConfig, fresh: set[str] | None = None
) -> Optimizer:
    """The optimiser a run's settings describe (after `init.resolve` filled the bias options);
    when fine-tuning, the layers not in `fresh` learn at `pretrained_lr_mult` times the rate."""
    groups = param_groups(
        model,
        weight_decay=config.weight_decay,
        bias_lr_mult=config.bias_lr_mult,
        bias_decay=config.bias_decay,
    )
    if config.init_checkpoint and config.pretrained_lr_mult != 1.0:
        from .finetune import split_pretrained

        groups = split_pretrained(groups, model, fresh or set(), config.pretrained_lr_mult)
    return make_optimizer(config.optimizer, groups, config.momentum)


def param_groups(
    model: torch.nn.Module, *, weight_decay: float, bias_lr_mult: float = 1.0, bias_decay: bool
) -> list[dict]:
    """Weights, and biases with their own rate multiplier and (optionally no) weight decay, as
    Caffe's lr_mult / decay_mult and cuda-convnet's bias settings have them."""
    weights = [p for name, p in model.named_parameters() if not name.endswith("bias")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return [
        {"params": weights, "lr_mult": 1.0, "weight_decay": weight_decay},
        {
            "params": biases,
            "lr_mult": bias_lr_mult,
            "weight_decay": weight_decay if bias_decay else 0.0,
        },
    ]


def set_rate(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def scaled_lr(lr: float, global_batch: int, reference_batch: int = 128) -> float:
    """The linear scaling rule (Goyal et al. 2017): `lr` is the rate for batches of 128."""
    return lr * global_batch / reference_batch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up over the first `warmup_steps` steps (1/W, 2/W, ..., 1), then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

"""The paper's update rule against a hand computation, rate scaling and warm-up."""

import pytest
import torch

from alexnet.model.optim import (
    PaperSGD,
    make_optimizer,
    param_groups,
    scaled_lr,
    set_rate,
    warmup_factor,
)


def test_paper_sgd_matches_hand_computation_across_a_rate_change():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.0005)
    grads = [[0.5, -1.0], [0.25, 0.5], [-1.0, 2.0], [0.1, 0.1]]
    rates = [0.1, 0.1, 0.01, 0.01]  # the rate drops before step 3
    hw, hv = [1.0, -2.0], [0.0, 0.0]
    for g, lr in zip(grads, rates, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        hv = [0.9 * v - 0.0005 * lr * wi - lr * gi for v, wi, gi in zip(hv, hw, g, strict=True)]
        hw = [wi + v for wi, v in zip(hw, hv, strict=True)]
        assert w.tolist() == pytest.approx(hw, abs=1e-15)


def test_paper_and_torch_forms_differ_only_after_a_rate_change():
    def run(kind, rates):
        w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        opt = make_optimizer(kind, [{"params": [w], "weight_decay": 0.0}], momentum=0.9)
        for lr in rates:
            opt.param_groups[0]["lr"] = lr
            w.grad = torch.tensor([1.0], dtype=torch.float64)
            opt.step()
        return w.item()

    assert run("paper", [0.1] * 3) == pytest.approx(run("torch", [0.1] * 3))
    assert run("paper", [0.1, 0.1, 0.01]) != pytest.approx(run("torch", [0.1, 0.1, 0.01]))
    with pytest.raises(ValueError):
        make_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 0.9)


def test_the_rate_scales_with_the_global_batch():
    assert scaled_lr(0.01, 128) == pytest.approx(0.01)
    assert scaled_lr(0.01, 32) == pytest.approx(0.0025)
    assert scaled_lr(0.01, 2 * 128) == pytest.approx(0.02)


def test_warmup_is_linear_per_step_then_flat():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_bias_groups_take_their_own_rate_and_decay():
    model = torch.nn.Linear(3, 2)
    groups = param_groups(model, weight_decay=5e-4, bias_lr_mult=2.0, bias_decay=False)
    opt = make_optimizer("paper", groups, momentum=0.9)
    set_rate(opt, 0.01)
    (weights, biases) = opt.param_groups
    assert weights["params"] == [model.weight] and biases["params"] == [model.bias]
    assert (weights["lr"], weights["weight_decay"]) == (0.01, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (0.02, 0.0)

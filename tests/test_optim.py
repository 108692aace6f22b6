"""The paper's update rule against a hand computation, and the plateau schedule."""

import pytest
import torch

from alexnet.model.optim import PaperSGD, PlateauSchedule, make_optimizer


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
        opt = make_optimizer(kind, [w], lr=rates[0], momentum=0.9, weight_decay=0.0)
        for lr in rates:
            opt.param_groups[0]["lr"] = lr
            w.grad = torch.tensor([1.0], dtype=torch.float64)
            opt.step()
        return w.item()

    assert run("paper", [0.1] * 3) == pytest.approx(run("torch", [0.1] * 3))
    assert run("paper", [0.1, 0.1, 0.01]) != pytest.approx(run("torch", [0.1, 0.1, 0.01]))
    with pytest.raises(ValueError):
        make_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 0.0)


def test_plateau_schedule_drops_at_most_three_times():
    opt = PaperSGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    schedule = PlateauSchedule(opt, patience=2, max_drops=3)
    errors = [0.9, 0.8, 0.8, 0.8] + [0.8] * 10
    drops = [schedule.step(e) for e in errors]
    assert drops[:4] == [False, False, False, True]  # two epochs without improvement
    assert sum(drops) == 3
    assert schedule.lr == pytest.approx(1e-5)
    restored = PlateauSchedule(opt)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict()

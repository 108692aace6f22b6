"""When the rate drops: the noise-aware rule and the paper's, on scripted validation metrics."""

import math

import pytest
import torch

from alexnet.model.config import TrainConfig, config_from_dict
from alexnet.model.distributed import setup_world
from alexnet.model.evaluate import evaluate
from alexnet.model.plateau import NoisePlateau, PaperPlateau, plateau_schedule, watched

# A validation loss that falls by ~0.04 an epoch under noise of +-0.06: two epochs worse than
# the best happen on the way down (epochs 6-7 and 11-12), as on 400 validation images.
DESCENT = [2.30, 2.25, 2.16, 2.08, 1.98, 2.06, 2.03, 1.90, 1.88, 1.83, 1.87, 1.85, 1.74, 1.71]
SE = 0.05  # the standard error of a mean loss over 400 images


def decisions(rule, values, se=SE) -> list[int]:
    """The epochs (from 1) after which `rule` dropped the rate."""
    return [epoch for epoch, v in enumerate(values, 1) if rule.step(v, se)]


def test_the_noise_rule_keeps_the_rate_on_a_noisy_descent_the_paper_rule_cuts_short():
    assert decisions(PaperPlateau(patience=2), DESCENT) == [7, 12]
    assert decisions(NoisePlateau(patience=4), DESCENT) == []


def test_the_noise_rule_drops_on_a_real_plateau_after_its_patience():
    flat = [1.70, 1.73, 1.69, 1.72, 1.71, 1.70, 1.72]  # no gain beyond one standard error
    rule = NoisePlateau(patience=4)
    # the last gain beyond the noise is epoch 13's (1.74 against 1.83); 4 epochs later it drops
    assert decisions(rule, DESCENT + flat) == [17]
    assert rule.scale == pytest.approx(0.1)


def test_the_margin_is_the_metrics_own_noise():
    # Gains smaller than the margin do not count: epoch 12's 1.83 against 1.88 is a gain on
    # 50,000 images (standard error 0.005), not on 400.
    assert decisions(NoisePlateau(patience=3), DESCENT, se=0.005) == []
    assert decisions(NoisePlateau(patience=3), DESCENT, se=0.05) == [12]
    assert decisions(NoisePlateau(patience=3, margin=0.0, min_delta=0.05), DESCENT) == [12]
    # with a short window the rule is the paper's
    assert decisions(NoisePlateau(patience=2), DESCENT, se=0.005) == [7, 12]


def test_the_noise_rule_waits_for_a_first_gain_beyond_the_noise_and_drops_at_most_max_drops():
    at_chance = [2.303, 2.301, 2.304, 2.302, 2.305, 2.303, 2.302]
    rule = NoisePlateau(patience=2, max_drops=2)
    assert decisions(rule, at_chance, se=0.01) == []
    staircase = [2.0, 2.0, 2.0, 2.0, 1.5, 1.5, 1.5, 1.5, 1.0, 1.0, 1.0, 1.0]
    # its first epoch a gain, none in the next two: a drop; at the new rate a gain, none after
    assert decisions(rule, staircase, se=0.01) == [3, 7]
    assert rule.drops == 2 and rule.scale == pytest.approx(0.01)
    assert decisions(rule, [0.5, 0.5, 0.5, 0.5], se=0.01) == []  # no third drop


def test_a_rule_restored_from_its_state_decides_as_the_original():
    for make in (lambda: NoisePlateau(patience=3), lambda: PaperPlateau(patience=2)):
        straight, first, then = make(), make(), make()
        later = [e for e in decisions(straight, DESCENT + [1.75] * 6) if e > 8]
        decisions(first, DESCENT[:8])
        then.load_state_dict(first.state_dict())
        assert [8 + e for e in decisions(then, DESCENT[8:] + [1.75] * 6)] == later != []


def test_paper_rule_waits_for_a_first_improvement_and_drops_at_most_three_times():
    schedule = PaperPlateau(patience=2, max_drops=3)
    at_chance = [2.303, 2.303, 2.304, 2.303, 2.305, 2.303]
    assert [schedule.step(m) for m in at_chance] == [False] * 6  # no drop at chance
    assert schedule.scale == 1
    learning = [2.2, 2.1, 2.1, 2.1]  # improves twice, then a real plateau of two epochs
    assert [schedule.step(m) for m in learning] == [False, False, False, True]
    assert schedule.scale == pytest.approx(0.1)
    assert [schedule.step(2.1) for _ in range(5)] == [False] * 5  # must improve at the new rate
    drops = [schedule.step(m) for m in [2.0, 2.0, 2.0, 1.9, 1.9, 1.9, 1.8, 1.8, 1.8]]
    assert sum(drops) == 2 and schedule.drops == 3 and schedule.scale == pytest.approx(1e-3)


def test_paper_rule_min_delta_ignores_small_improvements():
    schedule = PaperPlateau(patience=1, min_delta=0.05)
    assert [schedule.step(m) for m in [1.0, 0.9, 0.88, 0.87]] == [False, False, True, False]


def test_settings_choose_the_rule_and_its_patience():
    noise = plateau_schedule(TrainConfig(plateau_margin=2.0))
    assert isinstance(noise, NoisePlateau) and (noise.patience, noise.margin) == (4, 2.0)
    paper = plateau_schedule(TrainConfig(plateau_rule="paper"))
    assert isinstance(paper, PaperPlateau) and paper.patience == 2
    assert plateau_schedule(TrainConfig(plateau_rule="paper", patience=5)).patience == 5
    # a checkpoint written before the setting existed resumes under the rule it was trained by
    assert config_from_dict({"epochs": 3}).plateau_rule == "paper"
    assert config_from_dict({"plateau_rule": "noise"}).plateau_rule == "noise"


def test_watched_metrics_carry_their_standard_errors():
    metrics = {"val_loss": 1.5, "val_loss_se": 0.04, "top1_error": 0.4, "images": 400}
    assert watched("loss", metrics) == (1.5, 0.04)
    assert watched("error", metrics) == pytest.approx((0.4, math.sqrt(0.4 * 0.6 / 400)))


def test_evaluate_reports_the_standard_error_of_the_mean_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(n, 3, 2, 2), torch.randint(0, 3, (n,))) for n in (5, 7, 4)]
    result = evaluate(model, batches, setup_world())
    x, y = (torch.cat(t) for t in zip(*batches, strict=True))
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none").double()
    assert result["loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert result["loss_se"] == pytest.approx(losses.std().item() / math.sqrt(16), rel=1e-4)

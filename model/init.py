"""Initialisation presets: each a table of weight std and bias per layer, visible in one place.

paper    section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7 ("to
         provide the ReLUs with positive inputs"), 0 in conv1, conv3 and the output layer fc8.
caffe    BVLC's bvlc_alexnet (train_val.prototxt): N(0, 0.01), fc6 and fc7 N(0, 0.005); biases
         0.1 where the paper has 1 ("initialization to 1 gave flat loss"); every bias learns at
         twice the rate with no weight decay (lr_mult 2, decay_mult 0).
kaiming  He et al. 2015: N(0, 2 / fan_in) weights, biases 0; the modern control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from torch import nn

from .config import TrainConfig

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
HE = "he"  # std = sqrt(2 / fan_in)


@dataclass(frozen=True)
class InitPreset:
    std: dict[str, float | str]  # per layer: a weight std, or HE
    bias: dict[str, float]
    bias_lr_mult: float = 1.0  # the biases' learning rate, relative to the weights'
    bias_decay: bool = True  # weight decay on the biases too


PRESETS = {
    "paper": InitPreset(
        std=dict.fromkeys(LAYERS, 0.01),
        bias=dict(conv1=0, conv2=1, conv3=0, conv4=1, conv5=1, fc6=1, fc7=1, fc8=0),
    ),
    "caffe": InitPreset(
        std={**dict.fromkeys(LAYERS, 0.01), "fc6": 0.005, "fc7": 0.005},
        bias=dict(conv1=0, conv2=0.1, conv3=0, conv4=0.1, conv5=0.1, fc6=0.1, fc7=0.1, fc8=0),
        bias_lr_mult=2.0,
        bias_decay=False,
    ),
    "kaiming": InitPreset(std=dict.fromkeys(LAYERS, HE), bias=dict.fromkeys(LAYERS, 0.0)),
}


def weight_std(layer: nn.Conv2d | nn.Linear, std: float | str) -> float:
    if std != HE:
        return float(std)
    fan_in = layer.weight[0].numel()  # in_channels / groups x kernel area, or in_features
    return math.sqrt(2.0 / fan_in)


def initialise(layers: dict[str, nn.Conv2d | nn.Linear], preset: str) -> None:
    """Draw every named layer's weights and set its biases as the preset says."""
    if preset not in PRESETS:
        raise ValueError(f"init must be one of {', '.join(PRESETS)}, got {preset!r}")
    table = PRESETS[preset]
    for name, layer in layers.items():
        nn.init.normal_(layer.weight, 0.0, weight_std(layer, table.std[name]))
        nn.init.constant_(layer.bias, table.bias[name])


def resolve(config: TrainConfig) -> TrainConfig:
    """`config` with the bias settings it leaves open (None) taken from its preset."""
    preset = PRESETS.get(config.init)
    if preset is None:
        raise ValueError(f"init must be one of {', '.join(PRESETS)}, got {config.init!r}")
    return replace(
        config,
        bias_lr_mult=preset.bias_lr_mult if config.bias_lr_mult is None else config.bias_lr_mult,
        bias_decay=preset.bias_decay if config.bias_decay is None else config.bias_decay,
    )

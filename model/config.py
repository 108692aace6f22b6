"""The training settings: one frozen dataclass, stored in every checkpoint as a plain dict.

Defaults are the paper's (section 5). The module imports nothing heavy, so the command line
can show these defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 90
    batch_size: int = 128  # per process; the global batch is this times torchrun's processes
    lr: float = 0.01  # for a global batch of 128, scaled linearly to the global batch
    warmup_epochs: float = 0.0  # linear ramp of the rate over this many epochs, per step
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "paper"  # or "torch": PyTorch's SGD form
    init: str = "caffe"  # an initialisation preset of model/init.py
    bias_lr_mult: float | None = None  # None: the preset's
    bias_decay: bool | None = None  # None: the preset's
    input_scale: str = "pixels"  # or "unit": crops divided by the channel std
    plateau_on: str = "loss"  # the validation metric the plateau rule watches, or "error"
    min_delta: float = 0.0  # how much better the metric must get to count as improving
    patience: int = 2  # epochs without improvement before the rate drops 10x
    max_drops: int = 3
    mean: str = "image"  # or "channel"
    lighting_std: float = 0.1
    columns: int = 2
    lrn: bool = True
    dropout: float = 0.5
    seed: int = 0
    num_threads: int | None = None  # DALI CPU threads; None: all cores
    keep_every: int = 0  # also keep checkpoints/epoch_N.pt every N epochs; 0: last/best only
    tensorboard: bool = False  # also write scalars to RUN/tensorboard
    init_checkpoint: str | None = None  # start from these weights (fine-tuning)
    train_layers: str | None = None  # e.g. "fc6,fc7,fc8": only these learn; None: all
    pretrained_lr_mult: float = 1.0  # rate of the layers taken from init_checkpoint
    # The network's conventions (model/alexnet.py); fine-tuning takes them from init_checkpoint.
    lrn_form: str = "paper"  # or "caffe": k=1, alpha divided by the window size
    crop: int = 224  # the input side; 227 for Caffe's network
    conv1_padding: int = 2  # 0 in Caffe's network
    pool_ceil: bool = False  # Caffe's pooling rounds its output size up
    pool_before_norm: bool = False  # CaffeNet's order


INIT_PRESETS = ("paper", "caffe", "kaiming")  # the tables of model/init.py

# The settings that shape the network beyond columns/lrn/dropout: a fine-tuned run keeps its
# source's.
NETWORK_SETTINGS = ("lrn_form", "crop", "conv1_padding", "pool_ceil", "pool_before_norm")

# Settings that may differ between a run and its resumption.
RESUMABLE = {"epochs", "num_threads", "keep_every", "tensorboard", "init_checkpoint"}


def config_from_dict(d: dict) -> TrainConfig:
    """The config a checkpoint stored; keys this version does not know are ignored."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def changed_settings(old: TrainConfig, new: TrainConfig) -> list[str]:
    """The settings that differ between a run and a resumption of it, as "name old -> new"."""
    return [
        f"{f.name} {getattr(old, f.name)} -> {getattr(new, f.name)}"
        for f in fields(new)
        if f.name not in RESUMABLE and getattr(old, f.name) != getattr(new, f.name)
    ]

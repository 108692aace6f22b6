"""Fine-tuning: a run that starts from another run's weights (`init_checkpoint`: a checkpoint,
or a run folder for its best.pt), such as an imported reference network (model/reference.py).

The new run takes the source's network settings (columns, LRN and its form, crop size, conv1
padding, pooling), since the weights only mean something in that network; fc8 starts afresh
when the class count differs (model/checkpoint.py `start_from`). `train_layers` trains only
the named layers and freezes the rest; `pretrained_lr_mult` scales the learning rate of every
layer that came from the source (Caffe's lr_mult for fine-tuning).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths

from .config import NETWORK_SETTINGS, TrainConfig, config_from_dict, with_settings
from .init import LAYERS

log = logging.getLogger(__name__)

INHERITED = ("columns", "lrn", *NETWORK_SETTINGS)


def source_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's best.pt."""
    path = Path(path)
    return RunPaths(path).best if path.is_dir() else path


def inherit_network(config: TrainConfig) -> TrainConfig:
    """`config` with its init checkpoint's network settings (unchanged without one)."""
    if not config.init_checkpoint:
        return config
    from .checkpoint import load_checkpoint

    path = source_checkpoint(config.init_checkpoint)
    saved = load_checkpoint(path, mmap=True)
    theirs = config_from_dict(saved["config"])
    changed = {k: getattr(theirs, k) for k in INHERITED if getattr(theirs, k) != getattr(config, k)}
    if changed:
        log.info("the network's settings of %s: %s", path, changed)
    return with_settings(config, init_checkpoint=str(path), **changed)


def layer_keys(model: torch.nn.Module) -> dict[str, str]:
    """The state-dict prefix of each learned layer: {"conv1": "features.0", ...}."""
    prefix = {id(m): k for k, m in model.named_modules()}
    return {name: prefix[id(m)] for name, m in model.layers().items()}


def fresh_layers(model: torch.nn.Module, config: TrainConfig) -> set[str]:
    """The layers not taken from the init checkpoint: fc8 when its class count differs."""
    from .checkpoint import load_checkpoint

    if not config.init_checkpoint:
        return set(LAYERS)
    weights = load_checkpoint(source_checkpoint(config.init_checkpoint), mmap=True)["model"]
    own = model.state_dict()
    return {
        name
        for name, key in layer_keys(model).items()
        if f"{key}.weight" not in weights
        or weights[f"{key}.weight"].shape != own[f"{key}.weight"].shape
    }


def freeze(model: torch.nn.Module, train_layers: str | None, *, say: bool = False) -> list[str]:
    """Only the named layers ("fc6,fc7,fc8") learn (said in a log line with `say`); returns
    them. None: all learn."""
    if not train_layers:
        return list(LAYERS)
    names = [n.strip() for n in train_layers.split(",") if n.strip()]
    unknown = [n for n in names if n not in LAYERS]
    if unknown or not names:
        raise AlexnetError(
            f"{{train_layers}} names {', '.join(unknown) or 'no layer'}: use layer names "
            f"from {', '.join(LAYERS)}, comma-separated",
            param="train_layers",
        )
    for name, layer in model.layers().items():
        layer.requires_grad_(name in names)
    if say:
        log.info("training %s only; the other layers stay as loaded", ", ".join(names))
    return names


def split_pretrained(
    groups: list[dict], model: torch.nn.Module, fresh: set[str], mult: float
) -> list[dict]:
    """Each parameter group twice: the parameters of `fresh` layers as they are, the rest
    (taken from the init checkpoint) with the rate multiplied by `mult`."""
    new = {id(p) for name in fresh for p in model.layers()[name].parameters()}
    out = []
    for g in groups:
        for pretrained in (True, False):
            params = [p for p in g["params"] if (id(p) not in new) == pretrained]
            scale = mult if pretrained else 1.0
            out.append({**g, "params": params, "lr_mult": g["lr_mult"] * scale})
    return out

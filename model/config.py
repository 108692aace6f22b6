"""The training settings: one frozen dataclass, TrainConfig, stored in every checkpoint as a
plain dict; the network's own settings are one AlexNetConfig inside it (`network`), the one
place they live, read as `config.crop` and set by the same flat names (`with_settings`).

Defaults are the paper's (section 5). Each field says, beside its default, what it is (the
help `alexnet train` shows; `{field}` in it names that field's flag) and what values it takes
(`kind`: a name the command line maps to its own check): `alexnet train`'s options are made
from this table (cli/options.py names the few flags that are not the field's name), so a new
setting is one line here. The module
imports nothing heavy, so the command line can show these defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

INIT_PRESETS = ("paper", "caffe", "kaiming")  # the tables of model/init.py


def setting(default, help: str, kind: str = "", *, choices=()):
    """A field of TrainConfig with its description. `kind`: count (1 or more), count0 (0 or
    more), int, rate (above 0), amount (0 or more), probability ([0, 1)), switch (on/off),
    file (an existing file), path (an existing file or
    folder), text; or `choices`, the values it takes."""
    meta = {"help": help, "kind": kind, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AlexNetConfig:
    """The network (model/alexnet.py): its class count and the settings that shape it. The
    conventions of networks trained elsewhere (Caffe's bvlc_alexnet, model/reference.py) are
    settings here too."""

    num_classes: int = 1000  # a run's: its manifest's classes
    columns: int = setting(2, "2: the paper's grouped network; 1: one column.", choices=(1, 2))
    lrn: bool = setting(True, "Local response normalisation after conv1 and conv2.", "switch")
    dropout: float = setting(0.5, "Dropout probability in fc6 and fc7.", "probability")
    init: str = setting(
        "paper",
        "Initialisation preset: paper (section 5), caffe (bvlc_alexnet), kaiming.",
        choices=INIT_PRESETS,
    )
    lrn_form: str = setting(
        "paper",
        "LRN form: the paper's (k=2), or Caffe's (k=1, alpha divided by the window).",
        choices=("paper", "caffe"),
    )
    crop: int = setting(224, "The network's input side (227 for Caffe's network).", "count")
    conv1_padding: int = setting(2, "conv1's padding (0 in Caffe's network).", "count0")
    pool_ceil: bool = setting(False, "Pooling rounds its output size up (Caffe's).", "switch")
    pool_before_norm: bool = setting(
        False, "Max-pool before LRN in conv1 and conv2 (CaffeNet's order).", "switch"
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(90, "Passes over the data.", "count")
    batch_size: int = setting(
        128,
        "Images per batch and process (the global batch is this times torchrun's processes).",
        "count",
    )
    lr: float = setting(
        0.01,
        "Learning rate for a global batch of 128; the rate used is lr x global batch / 128.",
        "rate",
    )
    warmup_epochs: float = setting(
        0.0,
        "Ramp the rate up linearly over this many epochs (recommended above a global batch of "
        "1024).",
        "amount",
    )
    momentum: float = setting(0.9, "SGD momentum.", "amount")
    weight_decay: float = setting(
        5e-4,
        "Weight decay (inside the velocity, as the paper writes it).",
        "amount",
    )
    optimizer: str = setting(
        "paper", "The paper's update rule, or PyTorch's SGD form.", choices=("paper", "torch")
    )
    bias_lr_mult: float | None = setting(
        None,
        "Biases' learning rate relative to the weights' (default: the preset's; caffe 2, else 1).",
        "amount",
    )
    bias_decay: bool | None = setting(
        None, "Weight decay on biases too (default: the preset's; caffe off, else on).", "switch"
    )
    input_scale: str = setting(
        "pixels",
        "What the network sees: mean-subtracted 0-255 pixels (paper), or those divided by the "
        "channel std.",
        choices=("pixels", "unit"),
    )
    plateau_rule: str = setting(
        "noise",
        "When the rate drops 10x. noise: the best validation metric of the last {patience} "
        "epochs is not better than the best before them by more than {plateau_margin} standard "
        "errors (robust on small validation sets). paper: the metric has not beaten its best "
        "for {patience} epochs in a row (the paper's rule, with {plateau_on} error).",
        choices=("noise", "paper"),
    )
    plateau_on: str = setting(
        "loss",
        "Validation metric the plateau rule watches (the paper: error).",
        choices=("loss", "error"),
    )
    plateau_margin: float = setting(
        1.0,
        "The noise rule's margin, in standard errors of the watched metric (from its "
        "per-image values: about 0.05 nats of loss on 400 images, 0.005 on 50,000).",
        "amount",
    )
    min_delta: float = setting(
        0.0,
        "How much more the watched metric must improve to count (loss in nats, error as a "
        "fraction).",
        "amount",
    )
    patience: int | None = setting(
        None,
        "Epochs the plateau rule waits (default: the rule's; noise 4, paper 2). Neither drops "
        "the rate before a first improvement at the current rate.",
        "count",
    )
    max_drops: int = setting(3, "Most times the rate drops 10x.", "count0")
    mean: str = setting(
        "image",
        "Subtract the mean image (paper) or the channel mean.",
        choices=("image", "channel"),
    )
    lighting_std: float = setting(
        0.1, "Std of the PCA lighting alphas (in eigenvalue units); 0 turns it off.", "amount"
    )
    seed: int = setting(0, "Seed of the initialisation, order and augmentation.", "int")
    num_threads: int | None = setting(
        None,
        "DALI CPU threads for decoding (default: all cores).",
        "count",
    )
    keep_every: int = setting(
        0,
        "Also keep checkpoints/epoch_N.pt every N epochs (0: last.pt and best.pt only).",
        "count0",
    )
    tensorboard: bool = setting(
        False,
        "Also write the epoch scalars to RUN/tensorboard (pip install 'alexnet[tensorboard]').",
        "switch",
    )
    init_checkpoint: str | None = setting(
        None,
        "Start from this checkpoint's weights, or a run's best (fine-tuning); fc8 starts afresh "
        "when its class count differs, and the network's conventions come with the weights.",
        "path",
    )
    train_layers: str | None = setting(
        None, "Only these layers learn, e.g. fc6,fc7,fc8 (default: all).", "text"
    )
    pretrained_lr_mult: float = setting(
        1.0, "Learning rate of the layers taken from the initial checkpoint, relative.", "amount"
    )

    # The network's shape and conventions (fine-tuning takes them from init_checkpoint); each
    # is set by its own flag, as the fields above (`with_settings`, cli/options.py).
    network: AlexNetConfig = field(
        default_factory=lambda: AlexNetConfig(init="caffe"), metadata={"nested": True}
    )
    eval_protocol: str = setting(
        "paper",
        "Test-time preprocessing. paper: the shorter side to 256, the central 256x256 patch, "
        "its centre crop. caffe: the whole image squashed to 256x256, the crop at "
        "(256 - crop) // 2 (Caffe's test phase; import-weights sets it for Caffe files).",
        choices=("paper", "caffe"),
    )

    @property
    def squash(self) -> bool:
        """Evaluation squashes each image to 256x256 (eval_protocol caffe)."""
        return self.eval_protocol == "caffe"

    def __getattr__(self, name: str):
        """The network's settings read as the config's own (`config.crop`): they live in
        `network`, and are set with `with_settings`."""
        if name in NETWORK_FIELDS:
            return getattr(self.network, name)
        raise AttributeError(f"TrainConfig has no setting {name!r}")


# The network's settings (every AlexNetConfig field but the class count, which the data sets).
NETWORK_FIELDS = tuple(f.name for f in fields(AlexNetConfig) if f.name != "num_classes")

# Of those, the conventions beyond columns/lrn/dropout/init: a fine-tuned run keeps its
# source's.
NETWORK_SETTINGS = ("lrn_form", "crop", "conv1_padding", "pool_ceil", "pool_before_norm")


# Settings that may differ between a run and its resumption.
RESUMABLE = {"epochs", "num_threads", "keep_every", "tensorboard", "init_checkpoint"}
RESUMABLE |= {"eval_protocol"}  # evaluation only: training's crops do not depend on it


def setting_fields(config: TrainConfig | None = None) -> list[tuple]:
    """Every setting as (field, value in `config`, default: TrainConfig()), the network's
    among them: what `alexnet train`'s options are made from."""
    config = config or TrainConfig()
    own = [(f, getattr(config, f.name)) for f in fields(TrainConfig) if f.name != "network"]
    network = [(f, getattr(config.network, f.name)) for f in fields(AlexNetConfig)]
    return own + [(f, v) for f, v in network if f.name in NETWORK_FIELDS]


def setting_names() -> set[str]:
    return {f.name for f, _ in setting_fields()}


def with_settings(config: TrainConfig, **settings) -> TrainConfig:
    """`config` with `settings` (flat names: `crop` as `epochs`) replaced."""
    network = {k: settings.pop(k) for k in list(settings) if k in NETWORK_FIELDS}
    return replace(config, network=replace(config.network, **network), **settings)


def config_from_dict(d: dict) -> TrainConfig:
    """The config a checkpoint stored (its network nested, or, in older checkpoints, flat);
    keys this version does not know are ignored."""
    d = {"plateau_rule": "paper", **d}  # the only rule before the setting existed
    flat = {**d, **(d.get("network") or {})}
    return with_settings(TrainConfig(), **{k: v for k, v in flat.items() if k in setting_names()})


def changed_settings(old: TrainConfig, new: TrainConfig) -> list[str]:
    """The settings that differ between a run and a resumption of it, as "name old -> new"."""
    return [
        f"{f.name} {getattr(old, f.name)} -> {value}"
        for f, value in setting_fields(new)
        if f.name not in RESUMABLE and getattr(old, f.name) != value
    ]

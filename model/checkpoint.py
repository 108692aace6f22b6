"""Checkpoints: one dict {model, optimizer, schedule, epoch, step, config, classes,
fingerprint, rng, checksum, version}, and the network rebuilt from one.

Written to a temporary file and moved into place, loaded with `weights_only=True`; the config
is a plain dict so a checkpoint can be checked against the current settings before use.

Each checkpoint carries xxh3-128 checksums of its own contents (`checksum`: every tensor's
bytes, dtype, shape and place, and every plain value), taken when it is written: "weights"
covers all but the optimizer's state, "optimizer" that state. Every load checks "weights"
before the weights are used (a resumption and `alexnet verify` check both), so bytes changed
in place (a bad disk, a broken copy) are an error naming the file and its repair, never a
silent answer. Checkpoints written before checksums existed load with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import xxhash

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write, check_space, make_folder
from alexnet.pipeline.layout import RunPaths
from alexnet.pipeline.manifest import Manifest

from .alexnet import AlexNet
from .config import (
    TrainConfig,
    changed_settings,
    config_from_dict,
    setting_names,
    with_settings,
)
from .distributed import World

log = logging.getLogger(__name__)

VERSION = 1


def save_state(path: str | Path, state: dict, version: int = VERSION) -> Path:
    """Write one dict of tensors and plain values atomically, stamped with `version`."""
    state = {**state, "version": version}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(
    path: str | Path, what: str, fix: str, version: int = VERSION, *, mmap: bool = False
) -> dict:
    """Read a dict written by `save_state` (weights only), or fail saying how to remake it.

    With `mmap` the tensors are mapped from the file and read only when used: for a caller that
    copies what it needs at once (a checkpoint's weights, not its momentum)."""
    path = Path(path)
    if not path.is_file():
        raise AlexnetError(f"{path} is missing: {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise AlexnetError(f"{path} is not a readable {what} ({type(e).__name__}): {fix}") from e
    if not isinstance(state, dict) or state.get("version") != version:
        raise AlexnetError(f"{path} was not written by this version of alexnet: {fix}")
    return state


def checkpoint_state(
    model: torch.nn.Module,
    config: TrainConfig,
    manifest: Manifest,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: dict | None = None,
    epoch: int = 0,
    step: int = 0,
    **extra,
) -> dict:
    """The dict every checkpoint holds, trained, fine-tuned or imported (no optimizer: its
    state is empty): `step` batches into `epoch` (0: the epoch is complete), and `extra` keys
    beside (the learning curve, where imported weights came from)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "schedule": schedule or {},
        "epoch": epoch,
        "step": step,
        "config": asdict(config),
        "num_classes": len(manifest.classes),
        "classes": manifest.classes,
        "fingerprint": manifest.fingerprint,
        "rng": {"torch": torch.get_rng_state()},
        **extra,
    }


def digest(tree) -> str:
    """xxh3-128 of a checkpoint's part: each tensor's place, dtype, shape and bytes, each plain
    value's place and repr, in the dict's order (which saving and loading keep)."""
    h = xxhash.xxh3_128()

    def walk(node, place: str) -> None:
        if isinstance(node, torch.Tensor):
            t = node.detach().cpu().contiguous()
            h.update(f"{place}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{place}/{k!r}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{place}/{i}")
        else:
            h.update(f"{place}={type(node).__name__}:{node!r};".encode())

    walk(tree, "")
    return h.hexdigest()


PARTS = ("weights", "optimizer")  # what `checksum` covers; loads for inference check the first


def checksums(state: dict, parts: Iterable[str] = PARTS) -> dict[str, str]:
    """The checksums of `state`'s parts: "optimizer" is its optimizer state, "weights" all the
    rest (the network, its settings and classes, the schedule and RNG)."""
    skip = {"checksum", "version"}
    split = {
        "weights": {k: v for k, v in state.items() if k not in skip | {"optimizer"}},
        "optimizer": state.get("optimizer", {}),
    }
    return {part: digest(split[part]) for part in parts}


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint with its checksums (see the module's docstring)."""
    state = {k: v for k, v in state.items() if k != "checksum"}
    return save_state(path, {**state, "checksum": checksums(state)})


KEYS = ("model", "optimizer", "schedule", "epoch", "step", "config", "classes", "fingerprint")
_UNCHECKED: set[Path] = set()  # checkpoints without checksums already warned about


def repair(path: Path, state: dict) -> str:
    """What remakes a damaged checkpoint: the import it came from, the run's other checkpoint,
    or training."""
    if "imported" in state:
        return "import the weights again (`alexnet import-weights` with {force})"
    other = path.with_name("last.pt")
    if path.name != "last.pt" and other.is_file():
        return f"use {other} instead, resume from it ({{resume}}), or train again"
    return "resume from an epoch_N.pt kept beside it, or train again (`alexnet train`)"


class Corrupted(AlexnetError):
    """A checkpoint whose contents no longer match its checksums: `problem` and `fix`."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; to repair: {fix}")
        self.problem, self.fix = problem, fix


def check_checksums(path: Path, state: dict, parts: Iterable[str] = ("weights",)) -> None:
    """Refuse a checkpoint whose `parts` no longer match the checksums written with it (one
    Corrupted error); warn once about one written before checkpoints carried checksums."""
    recorded = state.get("checksum")
    if not isinstance(recorded, dict):
        if path.resolve() not in _UNCHECKED:
            _UNCHECKED.add(path.resolve())
            log.warning(
                "%s was written before checkpoints carried checksums: it is used unchecked "
                "(saving it again, e.g. by training on, adds them)",
                path,
            )
        return
    parts = [p for p in parts if p in recorded]
    wrong = [p for p, h in checksums(state, parts).items() if h != recorded[p]]
    if wrong:
        raise Corrupted(
            f"{path} is corrupted: its {' and '.join(wrong)} no longer match the checksum "
            "written with them",
            repair(path, state),
        )


def load_checkpoint(path: str | Path, *, mmap: bool = False, whole: bool = False) -> dict:
    """A checkpoint, its weights checked against their checksum (with `whole`, the optimizer's
    state too: what resuming uses) before anything uses them. The one way every command and
    `load()` read a checkpoint."""
    fix = "train first (`alexnet train`, or alexnet.fit)"
    state = load_state(path, "checkpoint", fix, mmap=mmap)
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise AlexnetError(
            f"{path} lacks {', '.join(missing)}: it was not written by `alexnet train`; {fix}"
        )
    check_checksums(Path(path), state, PARTS if whole else ("weights",))
    return state


def build_network(
    config: TrainConfig,
    num_classes: int,
    device: torch.device,
    weights: dict[str, torch.Tensor] | None = None,
) -> AlexNet:
    """The network `config` describes, on `device` (channels-last on GPUs): initialised by the
    config's preset, or holding `weights` (a state dict, e.g. a checkpoint's "model"), which it
    then uses as they are, without a random initialisation first or a copy on the CPU."""
    shape = replace(config.network, num_classes=num_classes)
    if weights is None:
        model = AlexNet(shape)
    else:
        model = AlexNet(shape, device="meta")
        model.load_state_dict(weights, assign=True)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def start_from(model: torch.nn.Module, path: str | Path, world: World) -> None:
    """Fine-tuning: the weights of another run's checkpoint; fc8 stays freshly initialised
    when that run had another number of classes."""
    weights = load_checkpoint(path)["model"]
    own = model.state_dict()
    fc8 = [f"classifier.{len(model.classifier) - 1}.{p}" for p in ("weight", "bias")]
    differ = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
    if set(differ) - set(fc8):
        raise AlexnetError(
            f"{path} holds another network ({', '.join(differ)} differ): fine-tune from a "
            "checkpoint with the same {columns}"
        )
    model.load_state_dict({k: v for k, v in weights.items() if k not in differ}, strict=False)
    if world.main:
        log.info("starting from the weights of %s", path)
        if differ:
            log.info(
                "%s has %d classes, this run %d: fc8 starts afresh",
                path,
                len(weights[fc8[1]]),
                len(own[fc8[1]]),
            )


def check_resumable(saved: dict, config: TrainConfig, manifest: Manifest, path: Path) -> None:
    changed = changed_settings(config_from_dict(saved["config"]), config)
    if changed:
        raise AlexnetError(
            f"{path} was trained with other settings ({'; '.join(changed)}): "
            "resume with the same settings, or train into a new {run}"
        )
    if saved["fingerprint"] != manifest.fingerprint:
        raise AlexnetError(
            f"{path} was trained on other data than the current manifest "
            f"({len(saved['classes'])} classes, fingerprint {saved['fingerprint']}): "
            "train into a new {run}"
        )


def saved_config(path: str | Path) -> TrainConfig:
    """The settings a checkpoint was trained with."""
    return config_from_dict(load_checkpoint(path)["config"])


def training_config(
    config: TrainConfig | None, resume_from: Path | None, settings: dict
) -> TrainConfig:
    """The settings of a run about to start or resume: `config` (default: a new run's
    defaults, or on resume the checkpoint's own settings) with `settings` given again on top.
    The one rule for `fit(run, resume=..., **settings)`, which `alexnet train` calls."""
    unknown = sorted(set(settings) - setting_names())
    if unknown:
        raise AlexnetError(
            f"unknown training setting(s) {', '.join(unknown)}: the settings are TrainConfig's "
            "fields (model/config.py)"
        )
    if config is None:
        config = saved_config(resume_from) if resume_from else TrainConfig()
    return with_settings(config, **settings)


def restore(source: Path, model, optimizer, schedule, config, manifest, world) -> dict:
    """Load a checkpoint to resume from into the model, optimizer and schedule (refusing one
    of other settings or other data), and the torch RNG; returns the checkpoint's dict."""
    saved = load_checkpoint(source, whole=True)
    check_resumable(saved, config, manifest, source)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    torch.set_rng_state(saved["rng"]["torch"])
    if world.main:
        at = f", batch {saved['step']}" if saved["step"] else ""
        log.info("resuming %s at epoch %d%s", source, saved["epoch"] + 1, at)
    return saved


def check_room(paths: RunPaths, model: torch.nn.Module) -> None:
    """Refuse to start training when RUN/checkpoints cannot be written or has no room for
    the checkpoints a run keeps (weights and momenta, a temporary copy while saving)."""
    make_folder(paths.checkpoints)
    one = 2 * sum(p.numel() * p.element_size() for p in model.parameters())
    old = sum(p.stat().st_size for p in (paths.last, paths.best) if p.exists())
    check_space(paths.checkpoints, 3 * one - old, "training's checkpoints")

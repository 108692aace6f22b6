"""Checkpoints: one dict {model, optimizer, schedule, epoch, step, config, rng, version}.

Written to a temporary file and moved into place, loaded with `weights_only=True`; the config
is a plain dict so a checkpoint can be checked against the current settings before use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write

VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> Path:
    state = {**state, "version": VERSION}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AlexnetError(f"{path} is missing: train first with `alexnet train --run RUN`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise AlexnetError(
            f"{path} is not a readable checkpoint ({type(e).__name__}): "
            "retrain, or pass another --checkpoint"
        ) from e
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise AlexnetError(f"{path} was not written by this version of alexnet: retrain")
    return state

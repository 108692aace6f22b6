"""Why a training run stops before its last epoch, as errors a face prints in one line:
the loss became NaN or infinite (nothing of that step is saved), or the run was interrupted
(Ctrl-C, SIGTERM: the last finished step is saved, and `resume` continues from it)."""

from __future__ import annotations

from pathlib import Path

from alexnet.pipeline.errors import AlexnetError


class NonFinite(AlexnetError):
    """The training loss became NaN or infinite; nothing of that step was saved."""

    def __init__(self, batch: int, message: str = ""):
        self.batch = batch
        super().__init__(message or f"the training loss is not finite at batch {batch + 1}")

    def at(self, epoch: int, skip: int, kept: Path | None) -> NonFinite:
        where = f"epoch {epoch + 1}, step {skip + self.batch + 1}"
        keep = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint was saved"
        return NonFinite(
            self.batch,
            f"the training loss became NaN or infinite at {where}; {keep}. "
            "Lower {lr} or add {warmup_epochs}, and train into a new {run}",
        )


class Interrupted(AlexnetError):
    exit_code = 130  # what a shell reports for Ctrl-C

    def __init__(self, path: Path | None, epoch: int, step: int, *, finished: bool = False):
        if finished:  # the signal came after the last batch: the run is complete
            super().__init__(f"interrupted: after the last epoch; kept {path}")
        elif path is None:
            super().__init__(
                f"interrupted: stopped in epoch {epoch + 1} before its first batch; no "
                "checkpoint kept (none was made yet)"
            )
        else:
            super().__init__(
                f"interrupted: stopped in epoch {epoch + 1} after batch {step}; kept {path}. "
                "Continue with the same settings plus {resume}"
            )

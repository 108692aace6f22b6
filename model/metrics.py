"""The learning curve of a run: RUN/metrics.jsonl (one JSON line per epoch), its plot
RUN/curves.png (training loss and validation top-1/top-5 error against epochs), the line the
trainer logs per epoch, and optionally TensorBoard scalars under RUN/tensorboard."""

from __future__ import annotations

import json
from pathlib import Path

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.files import atomic_write
from alexnet.pipeline.layout import RunPaths


def read_metrics(run: str | Path) -> list[dict]:
    path = RunPaths(run).metrics
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run: str | Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl with `history` and redraw curves.png."""
    paths = RunPaths(run)

    def write(tmp: str) -> None:
        Path(tmp).write_text("".join(json.dumps(m) + "\n" for m in history))

    atomic_write(paths.metrics, write)
    plot_curves(history, paths.curves)


def plot_curves(history: list[dict], path: Path) -> None:
    """Training and validation loss (with its standard error) and validation top-1/top-5
    error against epochs, the rate drops marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [m["epoch"] for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["loss"] for m in history], "o-", label="training")
    val = [m["val_loss"] for m in history]
    ax1.plot(epochs, val, "s-", label="validation")
    if all("val_loss_se" in m for m in history):  # +-1 standard error, the plateau rule's unit
        se = [m["val_loss_se"] for m in history]
        low, high = ([v + sign * e for v, e in zip(val, se, strict=True)] for sign in (-1, 1))
        ax1.fill_between(epochs, low, high, alpha=0.25, color="C1")
    for m, after in zip(history, history[1:], strict=False):
        if after["lr"] < m["lr"]:
            for ax in (ax1, ax2):
                ax.axvline(m["epoch"] + 0.5, color="gray", linestyle="--", linewidth=1)
    ax1.set(xlabel="epoch (dashed: rate / 10)", ylabel="cross-entropy loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [100 * m["top1_error"] for m in history], "o-", label="top-1")
    ax2.plot(epochs, [100 * m["top5_error"] for m in history], "s-", label="top-5")
    ax2.set(xlabel="epoch", ylabel="validation error (%)", title="error", ylim=(0, 100))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def epoch_line(m: dict, eta_seconds: float | None, dropped: str | None = None) -> str:
    """One epoch's summary as the trainer logs it, with the whole run's remaining time."""
    line = (
        f"epoch {m['epoch']}  loss {m['loss']:.4f}  "
        f"val loss {m['val_loss']:.4f} ±{m['val_loss_se']:.3f}  "
        f"top-1 {100 * m['top1_error']:.2f}%  top-5 {100 * m['top5_error']:.2f}%  "
        f"lr {m['lr']:.3g}  {m['images_per_s']:.0f} img/s  wait {100 * m['data_wait']:.0f}%"
    )
    if eta_seconds is not None:
        line += f"  run ETA {format_duration(eta_seconds)}"
    if dropped:
        line += f"  (validation {dropped} stopped improving: rate / 10)"
    return line


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TensorBoard:
    """Scalars of every epoch under RUN/tensorboard (torch's SummaryWriter), when asked for."""

    SCALARS = ("loss", "val_loss", "top1_error", "top5_error", "lr", "images_per_s")

    def __init__(self, run: str | Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise AlexnetError(
                    "{tensorboard} needs the tensorboard package: "
                    "pip install 'alexnet[tensorboard]'"
                ) from None
            self.writer = SummaryWriter(str(RunPaths(run).tensorboard))

    def add(self, m: dict) -> None:
        if self.writer is not None:
            for name in self.SCALARS:
                self.writer.add_scalar(name, m[name], m["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

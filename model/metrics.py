"""The learning curve of a run: RUN/metrics.jsonl (one JSON line per epoch) and its plot,
RUN/curves.png (training loss and validation top-1/top-5 error against epochs)."""

from __future__ import annotations

import json
from pathlib import Path

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
    """Training loss and validation top-1/top-5 error against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [m["epoch"] for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["loss"] for m in history], "o-")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
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

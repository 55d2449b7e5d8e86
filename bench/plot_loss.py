"""Draw the loss curve of a training run from its ``loss.csv`` (columns step, seconds, loss, ...).

    python bench/plot_loss.py runs/tiny/loss.csv docs/learning_curve.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def plot_loss_curve(csv_path: Path, png_path: Path, window: int = 50) -> None:
    """Per-update loss (faint) and its moving mean over ``window`` updates, log scale, against updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    mean = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.6, label="loss per update")
    ax.plot(steps, mean, color="tab:blue", linewidth=1.6, label=f"mean of {window} updates")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("flow-matching loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    plot_loss_curve(args.csv, args.png)


if __name__ == "__main__":
    main()

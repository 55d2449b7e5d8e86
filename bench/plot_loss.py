"""Draw the loss curve of a training run from its ``loss.csv`` (columns step, seconds, loss, ...), and
under it the held-out MCD-DTW from ``heldout.csv`` (step, baseline_mcd_dtw, mcd_dtw) when there is one.

    python bench/plot_loss.py runs/tiny/loss.csv docs/learning_curve.png [--heldout runs/tiny/heldout.csv]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def plot_loss_curve(csv_path: Path, png_path: Path, window: int = 50, heldout_csv: Path | None = None) -> None:
    """Per-update loss (faint) and its moving mean over ``window`` updates, log scale, against updates;
    with an existing ``heldout_csv``, a second panel of held-out MCD-DTW against the same updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    probes = read_rows(heldout_csv) if heldout_csv is not None and heldout_csv.exists() else []
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    mean = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    fig, axes = plt.subplots(2 if probes else 1, 1, figsize=(7, 6 if probes else 3.5), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.6, label="loss per update")
    ax.plot(steps, mean, color="tab:blue", linewidth=1.6, label=f"mean of {window} updates")
    ax.set_yscale("log")
    ax.set_ylabel("flow-matching loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if probes:
        ax = axes[1, 0]
        probe_steps = [int(r["step"]) for r in probes]
        ax.plot(probe_steps, [float(r["mcd_dtw"]) for r in probes], "o-", color="tab:red", label="model")
        ax.axhline(
            float(probes[0]["baseline_mcd_dtw"]), color="gray", linestyle="--", label="recording of another sentence"
        )
        ax.set_ylabel("held-out MCD-DTW (dB)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax.set_xlabel("optimizer update")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--heldout", type=Path, help="heldout.csv of the same run")
    args = parser.parse_args()
    plot_loss_curve(args.csv, args.png, heldout_csv=args.heldout)


if __name__ == "__main__":
    main()

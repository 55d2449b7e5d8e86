"""The evaluation report: a markdown summary, per-item rows, and audio + mel pictures of a few items."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flowtts.audio import write_audio
from flowtts.evaluation.heldout import EvalItem

SYSTEMS = {
    "model": "the candidate model",
    "untrained": "untrained model, same architecture (baseline)",
    "other_sentence": "real recording of another sentence by the same speaker (baseline)",
}


# metric -> (column title, format); the judged ones appear only when measured.
COLUMNS = {
    "mcd_dtw": ("MCD-DTW (dB)", "{:.2f}"),
    "mel_l1": ("log-mel L1", "{:.3f}"),
    "duration_error": ("duration error", "{:.1%}"),
    "wer": ("ASR WER", "{:.1%}"),
    "speaker_sim": ("speaker similarity (higher is better)", "{:.3f}"),
}


def summary_table(summary: dict[str, float]) -> str:
    rows = sorted({key.rsplit("/", 1)[0] for key in summary})
    metrics = [m for m in COLUMNS if any(key.endswith(f"/{m}") for key in summary)]
    lines = [
        "| system | duration | " + " | ".join(COLUMNS[m][0] for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for row in rows:
        system, mode = row.split("/")
        cells = [COLUMNS[m][1].format(summary[f"{row}/{m}"]) if f"{row}/{m}" in summary else "-" for m in metrics]
        lines.append(f"| {system} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    model_uri: str,
    summary: dict[str, float],
    rows: list[dict],
    items: list[EvalItem],
    generated: list[torch.Tensor],
    *,
    vocoder: str | None = None,
    examples: int = 4,
) -> Path:
    """Write ``report.md``, ``scores.json`` and, for the first ``examples`` items, a wav and a PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scores.json").write_text(json.dumps({"summary": summary, "items": rows}, indent=1))
    lines = [
        f"# Held-out evaluation of `{model_uri}`",
        "",
        f"{len(items)} held-out clips, each synthesised with another clip of the same speaker as reference.",
        "Lower is better for every column but speaker similarity. Systems: "
        + "; ".join(f"**{k}**: {v}" for k, v in SYSTEMS.items()),
        "",
        summary_table(summary),
        "",
        "## Examples (ground-truth duration)",
        "",
    ]
    decoder = _vocoder(vocoder)
    for index, (item, mel) in enumerate(zip(items[:examples], generated[:examples], strict=False)):
        stem = f"item{index:02d}"
        _plot(out_dir / f"{stem}.png", item, mel)
        audio = decoder.decode(mel.T.unsqueeze(0).to(torch.float32))[0]
        write_audio(out_dir / f"{stem}.wav", audio, decoder.sample_rate)
        lines += [
            f"- `{item.audio_file}` ({item.speaker}): {item.text}  ",
            f"  ![{stem}]({stem}.png) [{stem}.wav]({stem}.wav)",
        ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _vocoder(vocoder: str | None):
    from flowtts.synthesis import load_vocoder

    return load_vocoder(vocoder)


def _plot(path: Path, item: EvalItem, generated: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for ax, mel, title in ((axes[0], item.mel, "recording"), (axes[1], generated, "generated")):
        ax.imshow(mel.T.numpy(), origin="lower", aspect="auto", vmin=-11.5, vmax=3)
        ax.set_title(title)
        ax.set_ylabel("mel bin")
    axes[1].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

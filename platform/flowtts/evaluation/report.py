"""The evaluation report: ``scores.json`` (summary and per-item rows), ``report.md`` (the summary table and
the worst items) and ``report.html`` (every item, worst first, with audio and a mel picture), beside the
wavs and PNGs of every item."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flowtts.audio import write_audio
from flowtts.evaluation.heldout import EvalItem, ItemScore, as_rows
from flowtts.evaluation.report_html import ItemFiles, ItemView, render_html, worst_first
from flowtts.synthesis.vocoder import Vocoder

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
    "substitution_rate": ("subst.", "{:.1%}"),
    "deletion_rate": ("del.", "{:.1%}"),
    "insertion_rate": ("ins.", "{:.1%}"),
    "cer": ("CER", "{:.1%}"),
    "sim_o": ("SIM-o (to the prompt)", "{:.3f}"),
    "speaker_sim": ("similarity to the recording", "{:.3f}"),
}


def summary_cells(summary: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows (one per system and duration mode) of the measured metrics."""
    rows = sorted({key.rsplit("/", 1)[0] for key in summary})
    metrics = [m for m in COLUMNS if any(key.endswith(f"/{m}") for key in summary)]
    cells = []
    for row in rows:
        values = [COLUMNS[m][1].format(summary[f"{row}/{m}"]) if f"{row}/{m}" in summary else "-" for m in metrics]
        cells.append([*row.split("/"), *values])
    return ["system", "duration", *(COLUMNS[m][0] for m in metrics)], cells


def summary_table(summary: dict[str, float]) -> str:
    headers, rows = summary_cells(summary)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_report(
    out_dir: Path,
    model_uri: str,
    summary: dict[str, float],
    scores: list[ItemScore],
    items: list[EvalItem],
    mels: dict[str, list[torch.Tensor]],
    *,
    vocoder: str | Path | Vocoder | None = None,
    examples: int = 4,
) -> Path:
    """Write ``scores.json``, for every item a PNG and three wavs, ``report.html`` and ``report.md`` (with
        the ``examples`` worst items); ``mels`` are the candidate's by duration mode. ``vocoder``: a Vocos folder
    or repo id (``flowtts.synthesis.load_vocoder``; None: Griffin-Lim) or a loaded one. Returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scores.json").write_text(json.dumps({"summary": summary, "items": as_rows(scores)}, indent=1))
    decoder = _vocoder(vocoder)
    candidate = {(s.duration_mode, s.audio_file): s for s in scores if s.system == "model"}
    views = []
    for index, (item, mel) in enumerate(zip(items, mels["estimate"], strict=True)):
        files = _write_media(out_dir, f"item{index:02d}", item, mel, decoder)
        views.append(ItemView(item, candidate["estimate", item.audio_file], candidate["truth", item.audio_file], files))
    (out_dir / "report.html").write_text(render_html(model_uri, summary_cells(summary), views), encoding="utf-8")
    lines = [
        f"# Held-out evaluation of `{model_uri}`",
        "",
        f"{len(items)} held-out clips, each synthesised with another clip of the same speaker as reference.",
        "Lower is better for every column but the similarities. Systems: "
        + "; ".join(f"**{k}**: {v}" for k, v in SYSTEMS.items()),
        "",
        summary_table(summary),
        "",
        "Every item, worst first, with audio: [report.html](report.html).",
        "",
        "## The worst items (estimated duration)",
        "",
    ]
    for view in worst_first(views)[:examples]:
        heard = f" (heard: {view.heard.transcript})" if view.heard.transcript is not None else ""
        lines += [
            f"- `{view.item.audio_file}` ({view.item.speaker}): {view.item.text}{heard}  ",
            f"  ![{view.files.mel}]({view.files.mel}) [{view.files.generated}]({view.files.generated})",
        ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _vocoder(vocoder: str | Path | Vocoder | None) -> Vocoder:
    if vocoder is not None and not isinstance(vocoder, str | Path):
        return vocoder  # already loaded (the judges' one, for instance)
    from flowtts.synthesis import load_vocoder

    return load_vocoder(vocoder)


def _write_media(out_dir: Path, stem: str, item: EvalItem, generated: torch.Tensor, decoder: Vocoder) -> ItemFiles:
    files = ItemFiles(f"{stem}-prompt.wav", f"{stem}-recording.wav", f"{stem}.wav", f"{stem}.png")
    for name, mel in ((files.prompt, item.ref_mel), (files.recording, item.mel), (files.generated, generated)):
        audio = decoder.decode(mel.T.unsqueeze(0).to(torch.float32))[0]
        write_audio(out_dir / name, audio, decoder.sample_rate)
    _plot(out_dir / files.mel, item, generated)
    return files


def _plot(path: Path, item: EvalItem, generated: torch.Tensor) -> None:
    """A small picture, one pixel per frame and mel bin: the recording above, the generated mel below (low
    frequencies at the bottom of each), on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(item.mel.shape[0], generated.shape[0])
    floor = -11.5

    def band(mel: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(mel.T.flip(0), (0, width - mel.shape[0]), value=floor)

    gap = torch.full((4, width), 3.0)
    plt.imsave(path, torch.cat([band(item.mel), gap, band(generated)]).numpy(), vmin=floor, vmax=3.0, origin="upper")

"""``report.html``: one row per held-out item, worst first, with what was to be said and what the ASR judge
heard, the numbers, three players (prompt, recording, generated) and a mel picture. Self-contained: the
wavs and PNGs lie beside it under relative names; no script, no network. All text is escaped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from flowtts.evaluation.heldout import EvalItem, ItemScore


@dataclass(frozen=True)
class ItemFiles:
    """Relative names of an item's files beside the report."""

    prompt: str  # the reference clip the model was conditioned on
    recording: str  # the held-out clip's own recording
    generated: str  # the candidate at the estimated duration
    mel: str  # PNG: recording above, generated below


@dataclass(frozen=True)
class ItemView:
    item: EvalItem
    heard: ItemScore  # the candidate at the estimated duration: what serving would say
    truth: ItemScore  # the candidate at the recording's duration
    files: ItemFiles


def worst_first(views: list[ItemView]) -> list[ItemView]:
    """By WER when an ASR judge ran (MCD-DTW breaks ties), else by MCD-DTW; at the estimated duration."""
    return sorted(views, key=lambda v: (-(v.heard.wer or 0.0), -v.heard.mcd_dtw, v.item.audio_file))


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; }
.heard { color: #a33; }
.small { color: #666; font-size: 0.85em; }
audio { width: 14em; display: block; }
"""


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _number(value: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if value is None else fmt.format(value)


def _summary(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _player(label: str, name: str) -> str:
    return f'<span class="small">{escape(label)}</span><audio controls preload="none" src="{escape(name)}"></audio>'


def _row(rank: int, view: ItemView) -> str:
    item, heard, files = view.item, view.heard, view.files
    said = f"<div>{escape(item.text)}</div>"
    if heard.transcript is not None:
        said += f'<div class="heard">heard: {escape(heard.transcript) or "(nothing)"}</div>'
    words = ""
    if heard.reference_words is not None:
        words = (
            f'<div class="small">S {heard.substitutions} · D {heard.deletions} · I {heard.insertions}'
            f" of {heard.reference_words} words</div>"
        )
    duration = (heard.frames - heard.target_frames) / heard.target_frames
    cells = [
        f'<td class="num">{rank}</td>',
        f"<td><code>{escape(item.audio_file)}</code>"
        f'<div class="small">speaker {escape(item.speaker)}; prompt <code>{escape(item.ref_audio_file)}</code>'
        "</div></td>",
        f"<td>{said}</td>",
        f'<td class="num">{_percent(heard.wer)}{words}</td>',
        f'<td class="num">{_percent(heard.cer)}</td>',
        f'<td class="num">{_number(heard.sim_o)}</td>',
        f'<td class="num">{_number(heard.speaker_sim)}</td>',
        f'<td class="num">{heard.mcd_dtw:.2f}<div class="small">{view.truth.mcd_dtw:.2f} at true length</div></td>',
        f'<td class="num">{duration:+.1%}<div class="small">{heard.frames} vs {heard.target_frames} frames</div></td>',
        "<td>"
        + _player("prompt", files.prompt)
        + _player("recording", files.recording)
        + _player("generated", files.generated)
        + "</td>",
        f'<td><img src="{escape(files.mel)}" alt="log-mel of {escape(item.audio_file)}" width="300"></td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


COLUMNS = (
    "#",
    "clip",
    "text",
    "WER",
    "CER",
    "SIM-o",
    "similarity to recording",
    "MCD-DTW (dB)",
    "duration error",
    "audio",
    "mel (recording / generated)",
)


def render_html(model_uri: str, summary: tuple[list[str], list[list[str]]], views: list[ItemView]) -> str:
    """The page: the summary table (headers, formatted rows), then every item, worst first."""
    ordered = worst_first(views)
    by = "word error rate" if any(v.heard.wer is not None for v in views) else "MCD-DTW (no ASR judge)"
    rows = "\n".join(_row(rank, view) for rank, view in enumerate(ordered, start=1))
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Held-out evaluation of {escape(model_uri)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Held-out evaluation of <code>{escape(model_uri)}</code></h1>
<p>{len(views)} held-out clips, each synthesised from another clip of the same speaker (the prompt).
Lower is better except for the similarities. The systems are the candidate (<b>model</b>), an untrained model
of the same architecture and the real recording of another sentence by the same speaker.</p>
{_summary(*summary)}
<h2>Items, worst first by {escape(by)}</h2>
<p class="small">The candidate at the estimated duration (its duration predictor, else the byte-ratio rule),
as serving would say it. SIM-o: speaker similarity to the prompt; audio is vocoded from the mels.</p>
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""

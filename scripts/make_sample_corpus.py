#!/usr/bin/env python3
"""Generate the small Vietnamese demo corpus shipped in ``samples/vi-demo/``.

The speech is synthetic: espeak-ng (Northern Vietnamese voice ``vi``) renders each sentence,
then SoX trims the leading/trailing silence, pads 0.1 s at each end, resamples to 24 kHz
and peak-normalises to -1 dBFS. The output is 24000 Hz mono 16-bit PCM WAV.

Standard library only; needs the ``espeak-ng`` and ``sox`` programs on PATH
(Debian: ``apt-get install -y espeak-ng sox libsox-fmt-all``).

Usage::

    python3 scripts/make_sample_corpus.py            # writes samples/vi-demo/
    python3 scripts/make_sample_corpus.py --out DIR  # writes somewhere else

The output is deterministic for a given espeak-ng / SoX version (SoX runs with ``-D -R``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import wave
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "samples" / "vi-demo"

SAMPLE_RATE = 24000
MIN_SECONDS = 1.5
MAX_SECONDS = 6.0

# (speaker id, espeak-ng voice, pitch -p, speed -s). Clip i (1-based) -> SPEAKERS[(i - 1) % 2].
SPEAKERS = [
    ("demo_m", "vi+m3", 40, 160),
    ("demo_f", "vi+f2", 65, 170),
]

# 48 sentences written for this project. Numbers are written as words; no digits,
# abbreviations or symbols, so the text matches what espeak-ng says.
SENTENCES = [
    # everyday speech
    "Chào buổi sáng, hôm nay trời đẹp quá.",
    "Em đi chợ mua ít rau và một con cá.",
    "Mẹ tôi đang nấu canh chua trong bếp.",
    "Cuối tuần này cả nhà sẽ về quê thăm ông bà.",
    "Anh ấy thường uống cà phê sữa đá mỗi sáng.",
    "Chúng mình hẹn nhau ở quán phở đầu ngõ nhé.",
    "Con mèo nhỏ nằm ngủ say bên cửa sổ.",
    "Tôi quên mang ô nên bị ướt hết áo.",
    "Bạn nhớ tắt đèn trước khi ra khỏi phòng.",
    "Chiếc xe đạp cũ vẫn chạy rất tốt.",
    "Cô giáo khen cả lớp học bài chăm chỉ.",
    "Buổi tối, bố thích đọc báo và nghe nhạc.",
    "Tiếng chim hót líu lo ngoài vườn.",
    "Cảm ơn bạn rất nhiều vì đã giúp đỡ tôi.",
    "Xin lỗi, tôi đến muộn vì tắc đường.",
    "Hoa đào nở rộ khắp phố phường mỗi dịp Tết.",
    # short news style
    "Sáng nay, nhiều tỉnh miền Bắc có mưa rào và dông.",
    "Giá xăng dầu trong nước được điều chỉnh giảm nhẹ.",
    "Thành phố vừa khánh thành một cây cầu mới bắc qua sông.",
    "Hàng nghìn du khách đã đến tham quan vịnh Hạ Long.",
    "Đội tuyển bóng đá giành chiến thắng trong trận giao hữu.",
    "Nông dân đồng bằng sông Cửu Long đang vào vụ thu hoạch lúa.",
    "Một tuyến xe buýt điện mới bắt đầu hoạt động từ hôm nay.",
    "Các trường học chuẩn bị đón học sinh trở lại sau kỳ nghỉ hè.",
    "Nhiệt độ ở vùng núi phía Bắc có thể xuống rất thấp vào ban đêm.",
    "Lễ hội đèn lồng ở phố cổ thu hút đông đảo người dân.",
    "Bệnh viện tỉnh vừa đưa vào sử dụng một khu khám bệnh mới.",
    "Chợ nổi Cái Răng tấp nập thuyền bè từ sáng sớm.",
    # questions
    "Dạo này bạn và gia đình có khỏe không?",
    "Hôm nay là thứ mấy vậy?",
    "Ga tàu gần nhất ở đâu ạ?",
    "Cuối tuần này bạn có rảnh không?",
    "Món này giá bao nhiêu tiền hả chị?",
    "Sao hôm qua anh không đến dự tiệc?",
    "Bạn thích mùa xuân hay mùa thu hơn?",
    "Tối nay em đã ăn cơm với mẹ chưa?",
    "Mấy giờ thì chuyến bay đi Đà Nẵng cất cánh?",
    "Ai là người vẽ bức tranh đẹp này?",
    # numbers written as words
    "Lớp tôi có ba mươi hai học sinh.",
    "Bà ngoại năm nay đã tám mươi lăm tuổi.",
    "Chuyến tàu khởi hành lúc bảy giờ rưỡi sáng.",
    "Cuốn sách này dày hơn hai trăm trang.",
    "Tôi mua ba ký cam với giá năm mươi nghìn đồng.",
    "Ngôi chùa này được xây dựng cách đây gần một nghìn năm.",
    "Từ nhà tôi đến trường mất khoảng mười lăm phút đi bộ.",
    "Mỗi ngày tôi cố gắng uống đủ hai lít nước.",
    "Cây cầu dài hơn bốn trăm mét bắc qua hai bờ sông.",
    "Ông tôi có sáu người con và mười hai người cháu.",
]

LICENCE_NOTE = """Synthetic data generated for this project. No third-party recordings or text corpora were used: the
sentences were written for this project and the audio was produced locally by espeak-ng. The GPL-3.0 licence
of espeak-ng covers the program, not the audio it outputs. The corpus is dedicated to the public domain under
CC0-1.0 terms (no rights reserved) and may be redistributed with the project under its own terms."""


def tool_version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[0].strip()


def dpkg_version(pkg: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def check_sentences() -> None:
    if len(SENTENCES) != 48:
        raise SystemExit(f"expected 48 sentences, got {len(SENTENCES)}")
    if len(set(SENTENCES)) != len(SENTENCES):
        raise SystemExit("sentences are not distinct")
    for s in SENTENCES:
        if unicodedata.normalize("NFC", s) != s:
            raise SystemExit(f"not NFC: {s!r}")
        if s != s.strip() or "  " in s or "|" in s or "\n" in s:
            raise SystemExit(f"bad whitespace or '|': {s!r}")
        if any(ch.isdigit() for ch in s):
            raise SystemExit(f"digits not allowed: {s!r}")


def espeak_cmd(voice: str, pitch: int, speed: int, raw: Path, text: str) -> list[str]:
    return ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text]


def sox_cmd(raw: Path, out: Path) -> list[str]:
    return [
        "sox",
        "-D",
        "-R",
        str(raw),
        "-b",
        "16",
        "-e",
        "signed-integer",
        str(out),
        "silence",
        "1",
        "0.01",
        "0.1%",
        "reverse",
        "silence",
        "1",
        "0.01",
        "0.1%",
        "reverse",
        "pad",
        "0.1",
        "0.1",
        "gain",
        "-3",
        "rate",
        "-v",
        str(SAMPLE_RATE),
        "gain",
        "-n",
        "-1",
    ]


def wav_info(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
    return rate, ch, width, n / rate


def fmt_minsec(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds - 60 * int(seconds // 60):04.1f} s"


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: samples/vi-demo)")
    args = ap.parse_args(argv)

    for prog in ("espeak-ng", "sox"):
        if shutil.which(prog) is None:
            raise SystemExit(f"{prog} not found; install with: apt-get install -y espeak-ng sox libsox-fmt-all")
    check_sentences()

    out: Path = args.out
    wavs = out / "wavs"
    if wavs.exists():
        shutil.rmtree(wavs)
    wavs.mkdir(parents=True)

    rows: list[tuple[str, str, str]] = []  # (rel path, text, speaker)
    durations: dict[str, list[float]] = {spk[0]: [] for spk in SPEAKERS}
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vi-demo-") as tmp:
        raw = Path(tmp) / "raw.wav"
        for i, text in enumerate(SENTENCES, start=1):
            spk, voice, pitch, speed = SPEAKERS[(i - 1) % len(SPEAKERS)]
            name = f"demo_{i:04d}.wav"
            dst = wavs / name
            subprocess.run(espeak_cmd(voice, pitch, speed, raw, text), check=True)
            subprocess.run(sox_cmd(raw, dst), check=True)
            rate, ch, width, dur = wav_info(dst)
            if (rate, ch, width) != (SAMPLE_RATE, 1, 2):
                raise SystemExit(f"{name}: unexpected format rate={rate} ch={ch} width={width}")
            if not (MIN_SECONDS <= dur <= MAX_SECONDS):
                bad.append(f"{name}: {dur:.3f} s  {text}")
            durations[spk].append(dur)
            rows.append((f"wavs/{name}", text, spk))
            print(f"{name}  {spk}  {dur:5.2f} s  {text}")

    write_text(out / "metadata.csv", "audio_file|text\n" + "".join(f"{p}|{t}\n" for p, t, _ in rows))
    write_text(out / "speakers.csv", "audio_file|speaker\n" + "".join(f"{p}|{s}\n" for p, _, s in rows))

    all_d = [d for ds in durations.values() for d in ds]
    total = sum(all_d)
    wav_bytes = sum(f.stat().st_size for f in wavs.iterdir())
    espeak_v = tool_version(["espeak-ng", "--version"]).split("  Data at")[0]
    sox_v = tool_version(["sox", "--version"]).replace("sox:", "").strip()
    pkg_e, pkg_s = dpkg_version("espeak-ng"), dpkg_version("sox")
    if pkg_e:
        espeak_v += f" (Debian {pkg_e})"
    if pkg_s:
        sox_v += f" (Debian {pkg_s})"

    spk_rows = "\n".join(
        f"| `{s}` | `{v}` | {p} | {sp} | {len(durations[s])} | {fmt_minsec(sum(durations[s]))} |"
        for s, v, p, sp in SPEAKERS
    )
    sox_line = " ".join(sox_cmd(Path("raw.wav"), Path("OUT.wav")))
    readme = f"""# vi-demo: tiny synthetic Vietnamese sample corpus for `make demo`

A small Vietnamese TTS corpus in the F5-TTS "CSV + wavs" layout, shipped inside the repository so that the
demo runs without any external data. The speech is **synthetic** (espeak-ng formant synthesis): it is for
exercising the data pipeline, training loop and serving code, not for judging voice quality.

This folder is generated by `scripts/make_sample_corpus.py`; do not edit it by hand, re-run the script.

## Contents

| path | what |
|---|---|
| `wavs/` | {len(rows)} clips, `demo_0001.wav` ... `demo_{len(rows):04d}.wav` |
| `metadata.csv` | header `audio_file\\|text`, then one row per clip: `wavs/NAME.wav\\|TEXT` |
| `speakers.csv` | header `audio_file\\|speaker`, one row per clip ({len(SPEAKERS)} speaker ids) |
| `README.md` | this file |

## Numbers

- Clips: **{len(rows)}** (one sentence each, {len(set(t for _, t, _ in rows))} distinct sentences)
- Total duration: **{total:.1f} s** ({fmt_minsec(total)})
- Clip duration: min **{min(all_d):.3f} s**, max **{max(all_d):.3f} s**, mean {total / len(all_d):.3f} s
- Size of `wavs/`: {wav_bytes / 2**20:.2f} MiB
- Every file: 24000 Hz, mono, 16-bit signed PCM WAV

### Speakers

Two espeak-ng voice variants of the Northern Vietnamese voice `vi`, each with a fixed pitch (`-p`) and speed
(`-s`, words per minute). Clip *i* (1-based) belongs to speaker `(i - 1) mod 2`.

| speaker id | espeak-ng voice | pitch -p | speed -s | clips | duration |
|---|---|---|---|---|---|
{spk_rows}

## metadata.csv format

- UTF-8 without BOM, LF line endings, Unicode NFC text.
- First line is the header `audio_file|text`; every other line is `wavs/NAME.wav|TEXT`, paths relative to this
  folder. Readable with Python `csv.reader(f, delimiter="|")` (no field is quoted; no text contains `|`).
- Texts have no leading/trailing whitespace. Numbers are written as words, and there are no digits,
  abbreviations or symbols, so the text matches what espeak-ng says.
- Sentences (written by hand for this project): everyday speech, short news style, questions, and sentences
  with numbers written as words.

## How it was made

- `{espeak_v}` (Debian package `espeak-ng`), voice `vi`. Native output is 22050 Hz mono 16-bit.
- `{sox_v}` (Debian packages `sox`, `libsox-fmt-all`).
- Install: `apt-get install -y espeak-ng sox libsox-fmt-all`; generate: `python3 scripts/make_sample_corpus.py`.
- Per clip:

  ```
  espeak-ng -v VOICE -p PITCH -s SPEED -w raw.wav "TEXT"
  {sox_line}
  ```

  `silence ... reverse ... reverse` trims leading and trailing silence (threshold 0.1%), `pad 0.1 0.1` adds
  0.1 s of digital silence at each end, `gain -3` leaves headroom so that the resampler does not clip
  (espeak-ng output peaks near full scale), `rate -v 24000` resamples (very high quality) to 24 kHz,
  `gain -n -1` peak-normalises to -1 dBFS. `-D` turns dither off and `-R` makes the output repeatable.

## Known limitations

- Formant synthesis: tones and vowel quality are approximate and prosody is flat.

## Licence

{LICENCE_NOTE}
"""
    write_text(out / "README.md", readme)

    print(f"\n{len(rows)} clips, total {total:.2f} s, wavs/ {wav_bytes} bytes ({wav_bytes / 2**20:.2f} MiB)")
    if bad:
        print(f"clips outside {MIN_SECONDS:.1f}-{MAX_SECONDS:.1f} s:", *bad, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

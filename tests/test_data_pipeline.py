"""Preprocessing: metadata parsing, every rejection reason, the held-out split, and the Ray Data pipeline
end to end (dev corpus mel parity, determinism, atomic output replacement)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from local_services import service_env

from data_pipelines import (
    MetadataError,
    OutputExistsError,
    PreprocessConfig,
    PreprocessResult,
    preprocess_corpus,
)
from data_pipelines.processing import read_clip_bytes
from data_pipelines.reading import Reason, RowRejected, check_clip_path, read_metadata
from data_pipelines.splitting import heldout_by_fraction, heldout_by_list
from data_pipelines.writing import split_by_size
from flowtts.audio import load_audio, log_mel_spectrogram
from flowtts.shards import SHARD_SCHEMA, decode_mel, read_table, shard_files
from flowtts.storage import resolve
from flowtts.text import TextFrontend, Vocab
from flowtts.training.data import dataset_text_frontend
from tests.helpers import REPO
from tests.helpers.corpus import tone, write_text, write_wav

# --- builders ---------------------------------------------------------------------------------------------


def good_corpus(folder: Path, n_clips: int, speakers: int = 2) -> Path:
    """Clips of distinct lengths and texts, speakers alternating, F5 format with speakers.csv."""
    names = [f"wavs/c{i:03d}.wav" for i in range(n_clips)]
    for i, name in enumerate(names):
        write_wav(folder / name, seconds=0.5 + 0.05 * i, rate=(24000, 16000, 22050)[i % 3])
    write_text(folder / "metadata.csv", ["audio_file|text"] + [f"{n}|Câu số {i} ở đây." for i, n in enumerate(names)])
    write_text(
        folder / "speakers.csv",
        ["audio_file|speaker"] + [f"{n}|s{i % speakers}" for i, n in enumerate(names)],
    )
    return folder


def rejection_lines(out: Path) -> dict[int, tuple[str, str]]:
    rows = [json.loads(line) for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {"line", "audio_file", "reason", "detail"} and row["detail"] for row in rows)
    return {row["line"]: (row["reason"], row["audio_file"]) for row in rows}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def staging_leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- Ray (the session's private local Ray is conftest's ray_local) --------------------------------------------


@pytest.fixture
def run(ray_local, tmp_path: Path):
    def _run(corpus: Path, out: Path | None = None, **options) -> PreprocessResult:
        options.setdefault("num_workers", 2)
        return preprocess_corpus(PreprocessConfig(corpus=corpus, out=out or tmp_path / "out", **options))

    return _run


# --- parsing (no Ray) --------------------------------------------------------------------------------------


def test_f5_metadata_with_bom_crlf_quotes_and_line_numbers(tmp_path: Path):
    path = write_text(
        tmp_path / "metadata.csv",
        [
            "audio_file|text",
            'a.wav|"Một | hai ""ba"""',
            "",
            'b.wav|"dòng đầu',
            'dòng hai"',
            'c.wav|"Chào," cô nói',
            "d.wav|bình thường",
            "e.wav|x|y",
        ],
        bom=True,
        newline="\r\n",
    )
    table = read_metadata(resolve(path))
    assert table.format == "f5" and table.rows_read == 5
    assert [(r.line, r.audio_file, r.text) for r in table.rows] == [
        (2, "a.wav", 'Một | hai "ba"'),
        (7, "d.wav", "bình thường"),
    ]
    assert [(r.line, r.audio_file, r.reason) for r in table.rejections] == [
        (4, "b.wav", Reason.MALFORMED_ROW),  # a quoted field across two lines
        (6, "c.wav", Reason.MALFORMED_ROW),  # a leading quote that does not close the field
        (8, "e.wav", Reason.MALFORMED_ROW),  # an unquoted '|' in the text
    ]


def test_ljspeech_metadata_prefers_normalized_text_and_keeps_leading_quotes(tmp_path: Path):
    path = write_text(
        tmp_path / "metadata.csv",
        [
            'LJ001|"Quoted" text, 1 word|"Quoted" text, one word',
            "LJ002|Only raw text|",
            "LJ003|two|fields|extra",
        ],
    )
    table = read_metadata(resolve(path))
    assert table.format == "ljspeech"
    assert [(r.line, r.audio_file, r.text) for r in table.rows] == [
        (1, "wavs/LJ001.wav", '"Quoted" text, one word'),
        (2, "wavs/LJ002.wav", "Only raw text"),
    ]
    assert [(r.line, r.reason) for r in table.rejections] == [(3, Reason.MALFORMED_ROW)]
    with pytest.raises(MetadataError, match="audio_file\\|text"):
        read_metadata(resolve(path), "f5")


def test_clip_paths_must_stay_inside_the_corpus(tmp_path: Path):
    corpus = tmp_path / "corpus"
    write_wav(corpus / "wavs" / "in.wav")
    outside = write_wav(tmp_path / "outside.wav")
    (corpus / "wavs" / "out_link.wav").symlink_to(outside)
    (corpus / "wavs" / "in_link.wav").symlink_to(corpus / "wavs" / "in.wav")
    root = resolve(corpus)
    assert read_clip_bytes(root, "./wavs/in_link.wav") == (corpus / "wavs" / "in.wav").read_bytes()
    for audio_file, reason in [
        ("../outside.wav", Reason.PATH_OUTSIDE_CORPUS),
        ("wavs/../../outside.wav", Reason.PATH_OUTSIDE_CORPUS),
        (str(outside), Reason.PATH_OUTSIDE_CORPUS),
        ("s3://bucket/outside.wav", Reason.PATH_OUTSIDE_CORPUS),
        ("wavs/out_link.wav", Reason.PATH_OUTSIDE_CORPUS),
        ("wavs/none.wav", Reason.MISSING_FILE),
        ("wavs", Reason.UNREADABLE_AUDIO),
    ]:
        with pytest.raises(RowRejected) as caught:
            check_clip_path(audio_file)  # on the driver: the spelling
            read_clip_bytes(root, audio_file)  # where the audio is read: links, existence, file type
        assert caught.value.reason == reason, audio_file


def test_heldout_fraction_is_stratified_deterministic_and_independent_of_order():
    speakers = {f"wavs/{s}_{i}.wav": s for s in ("a", "b", "c") for i in range({"a": 40, "b": 2, "c": 1}[s])}
    choice = heldout_by_fraction(speakers, 0.1, seed=7)
    reversed_choice = heldout_by_fraction(dict(reversed(list(speakers.items()))), 0.1, seed=7)
    assert choice == reversed_choice
    held_per_speaker = {s: sum(speakers[a] == s for a in choice.audio_files) for s in "abc"}
    assert held_per_speaker == {"a": 4, "b": 1, "c": 0}  # b keeps one clip on each side, c's only clip trains
    assert heldout_by_fraction(speakers, 0.1, seed=8).audio_files != choice.audio_files
    listed = heldout_by_list(speakers, ["./wavs/a_1.wav", "wavs/zz.wav"])
    assert listed.audio_files == {"wavs/a_1.wav"} and listed.unmatched == ["wavs/zz.wav"]


def test_shards_split_by_mel_bytes_in_order():
    table = pa.table({"n_frames": list(range(10)), "mel": [b"x" * 100] * 10})
    parts = split_by_size(table, 250)
    assert [p.num_rows for p in parts] == [3, 3, 3, 1]
    assert pa.concat_tables(parts).equals(table)


# --- the pipeline through Ray ------------------------------------------------------------------------------


def test_dev_corpus_end_to_end(run, dev_corpus: Path, tmp_path: Path):
    result = run(dev_corpus, holdout_fraction=0.05, seed=3)
    assert (result.kept + result.heldout, result.rejected, result.rows_read) == (300, 0, 300)
    train, heldout = read_table(tmp_path / "out"), read_table(tmp_path / "out", "heldout")
    assert train.schema.equals(SHARD_SCHEMA) and heldout.schema.equals(SHARD_SCHEMA)
    assert train["n_frames"].to_pylist() == sorted(train["n_frames"].to_pylist())  # length-bucketed order
    assert set(train["audio_file"].to_pylist()).isdisjoint(heldout["audio_file"].to_pylist())
    info = manifest(tmp_path / "out")
    assert info["heldout"]["audio_files"] == sorted(heldout["audio_file"].to_pylist())
    speakers = {"dev_m3", "dev_f2", "dev_m7", "dev_f4"}
    assert set(info["hours"]["per_speaker"]) == speakers
    assert set(train["speaker"].to_pylist()) == set(heldout["speaker"].to_pylist()) == speakers  # stratified
    assert info["hours"]["total"] == pytest.approx(956.1 / 3600, abs=1e-3)
    assert sum(info["duration_histogram"]["counts"]) == 300 and info["counts"]["rejected"] == 0
    rows = train.to_pylist() + heldout.to_pylist()
    texts = [row["text"] for row in rows]
    assert Vocab.load(tmp_path / "out" / "vocab.txt") == Vocab.from_texts(texts)

    # every non-24 kHz clip (incl. 44.1 kHz stereo) and every 10th other clip against flowtts's own mel
    checked = [
        r for i, r in enumerate(rows) if i % 10 == 0 or sf.info(dev_corpus / r["audio_file"]).samplerate != 24000
    ]
    assert len(checked) > 90
    worst = 0.0
    with single_torch_thread():  # 2 threads on 2 busy cores oversubscribe: several times slower
        for row in checked:
            reference = log_mel_spectrogram(load_audio(dev_corpus / row["audio_file"]))[0].T  # [frames, 100]
            stored = decode_mel(row["mel"], row["n_frames"])
            assert stored.shape == reference.shape
            assert row["duration"] == pytest.approx(row["n_frames"] * 256 / 24000, abs=256 / 24000)
            error = (stored - reference).abs()
            assert torch.all(error <= reference.abs() * 2**-11 + 1e-6), row["audio_file"]  # float16 rounding
            worst = max(worst, float(error.max()))
    assert worst < 5e-3


def test_every_rejection_reason_is_reported(run, tmp_path: Path):
    corpus = tmp_path / "corpus"
    wavs = corpus / "wavs"
    write_wav(wavs / "good.wav")
    write_wav(wavs / "good2.wav", seconds=1.2)
    write_wav(wavs / "stereo44.wav", rate=44100, channels=2, subtype="FLOAT")
    (wavs / "zero.wav").write_bytes(b"")
    (wavs / "fake.wav").write_bytes(b"this is a text file, not a wave file\n" * 20)
    whole = write_wav(wavs / "truncated.wav", seconds=1.0).read_bytes()
    (wavs / "truncated.wav").write_bytes(whole[: len(whole) // 2])  # header promises twice the frames
    write_wav(wavs / "silent.wav", amplitude=0.0)
    write_wav(wavs / "short.wav", seconds=0.2)
    write_wav(wavs / "long.wav", seconds=2.5)
    write_wav(wavs / "empty.wav")
    nan = tone(1.0)
    nan[100] = np.nan
    sf.write(wavs / "nan.wav", nan, 24000, subtype="FLOAT")
    for name in ("nfd", "pipe", "three", "lonely", "badquote"):
        write_wav(wavs / f"{name}.wav", seconds=0.9)
    outside = write_wav(tmp_path / "outside.wav")
    (wavs / "link_out.wav").symlink_to(outside)
    (wavs / "link_in.wav").symlink_to(wavs / "good2.wav")
    nfd_text = unicodedata.normalize("NFD", "  Tiếng Việt   có dấu ")
    lines = {
        2: "wavs/good.wav|Xin chào.",
        3: "wavs/stereo44.wav|Âm thanh nổi.",
        4: "wavs/missing.wav|Không có tệp.",
        5: "wavs/zero.wav|Tệp rỗng.",
        6: "wavs/fake.wav|Tệp giả.",
        7: "wavs/truncated.wav|Bị cắt.",
        8: "wavs/silent.wav|Im lặng.",
        9: "wavs/short.wav|Ngắn.",
        10: "wavs/long.wav|Dài quá.",
        11: "wavs/empty.wav|   ",
        12: "../outside.wav|Bên ngoài.",
        13: f"{outside}|Đường dẫn tuyệt đối.",
        14: "wavs/link_out.wav|Liên kết ra ngoài.",
        15: "./wavs/good.wav|Lặp lại.",
        16: f"wavs/nfd.wav|{nfd_text}",
        17: 'wavs/pipe.wav|"Một | hai ""ba"""',
        18: "wavs/three.wav|a|b",
        19: "wavs/lonely.wav",
        20: 'wavs/badquote.wav|"Chào," cô nói',
        21: "wavs/link_in.wav|Liên kết bên trong.",
        22: "wavs/nan.wav|Số không hợp lệ.",
    }
    write_text(corpus / "metadata.csv", ["audio_file|text", *lines.values()])

    result = run(corpus, max_duration=2.0)

    out = tmp_path / "out"
    expected = {
        4: Reason.MISSING_FILE,
        5: Reason.UNREADABLE_AUDIO,
        6: Reason.UNREADABLE_AUDIO,
        7: Reason.TRUNCATED_AUDIO,
        8: Reason.SILENT,
        9: Reason.TOO_SHORT,
        10: Reason.TOO_LONG,
        11: Reason.EMPTY_TEXT,
        12: Reason.PATH_OUTSIDE_CORPUS,
        13: Reason.PATH_OUTSIDE_CORPUS,
        14: Reason.PATH_OUTSIDE_CORPUS,
        15: Reason.DUPLICATE_ROW,
        18: Reason.MALFORMED_ROW,
        19: Reason.MALFORMED_ROW,
        20: Reason.MALFORMED_ROW,
        22: Reason.UNREADABLE_AUDIO,
    }
    reported = rejection_lines(out)
    assert {line: reason for line, (reason, _) in reported.items()} == {k: str(v) for k, v in expected.items()}
    assert reported[13][1] == str(outside) and reported[15][1] == "./wavs/good.wav"
    kept = {row["audio_file"]: row for row in read_table(out).to_pylist()}
    assert set(kept) == {
        "wavs/good.wav",
        "wavs/stereo44.wav",
        "wavs/nfd.wav",
        "wavs/pipe.wav",
        "wavs/link_in.wav",
    }
    assert kept["wavs/nfd.wav"]["text"] == "Tiếng Việt có dấu"
    assert kept["wavs/pipe.wav"]["text"] == 'Một | hai "ba"'
    assert kept["wavs/stereo44.wav"]["duration"] == pytest.approx(1.0, abs=1e-3)
    assert {row["speaker"] for row in kept.values()} == {"default"}
    counts = manifest(out)["counts"]
    assert counts["rows_read"] == 21 and counts["kept"] == 5 and counts["rejected"] == 16 == result.rejected
    assert counts["rejected_by_reason"] == {str(r): list(expected.values()).count(r) for r in Reason}


def test_ljspeech_corpus_with_bom_and_crlf(run, tmp_path: Path):
    corpus = tmp_path / "lj"
    for clip_id in ("LJ001-0001", "LJ001-0002"):
        write_wav(corpus / "wavs" / f"{clip_id}.wav", seconds=0.8)
    write_text(
        corpus / "metadata.csv",
        [
            "LJ001-0001|Printing, in 1 sense|Printing, in one sense",
            "LJ001-0002|in being comparatively modern.|",
        ],
        bom=True,
        newline="\r\n",
    )
    run(corpus)
    table = read_table(tmp_path / "out").sort_by("audio_file")
    assert table["audio_file"].to_pylist() == ["wavs/LJ001-0001.wav", "wavs/LJ001-0002.wav"]
    assert table["text"].to_pylist() == ["Printing, in one sense", "in being comparatively modern."]
    assert manifest(tmp_path / "out")["inputs"]["format"] == "ljspeech"


def test_rerun_gives_identical_output_and_fingerprint(run, tmp_path: Path):
    corpus = good_corpus(tmp_path / "corpus", 24)
    copy = shutil.copytree(corpus, tmp_path / "copy", copy_function=shutil.copy)  # same content, new mtimes
    first = run(corpus, tmp_path / "a", shard_mb=0.1, holdout_fraction=0.2)
    second = run(copy, tmp_path / "b", shard_mb=0.1, holdout_fraction=0.2, num_workers=1)
    assert (first.kept, first.heldout) == (second.kept, second.heldout) == (20, 4)
    assert len(shard_files(tmp_path / "a")) > 1  # several shards, ordered by length across them
    for split in ("shards", "heldout"):
        names = sorted(p.name for p in (tmp_path / "a" / split).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "b" / split).iterdir())
        for name in names:
            assert (tmp_path / "a" / split / name).read_bytes() == (tmp_path / "b" / split / name).read_bytes()
    for name in ("vocab.txt", "rejected.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    frames = read_table(tmp_path / "a")["n_frames"].to_pylist()
    assert frames == sorted(frames)
    info_a, info_b = manifest(tmp_path / "a"), manifest(tmp_path / "b")
    assert info_a["inputs"]["fingerprint_sha256"] == info_b["inputs"]["fingerprint_sha256"]
    assert info_a["heldout"]["audio_files"] == info_b["heldout"]["audio_files"]
    assert set(info_a["hours"]["per_speaker"]) == {"s0", "s1"}
    held = set(info_a["heldout"]["audio_files"])
    assert held.isdisjoint(read_table(tmp_path / "a")["audio_file"].to_pylist())
    assert {f"wavs/c{i:03d}.wav" for i in range(24)} - held == set(read_table(tmp_path / "a")["audio_file"].to_pylist())


def test_existing_output_is_refused_or_replaced_atomically(run, tmp_path: Path):
    corpus = good_corpus(tmp_path / "corpus", 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(corpus, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    write_text(tmp_path / "broken.csv", ["not|a header"])
    with pytest.raises(MetadataError):
        run(corpus, out, metadata=tmp_path / "broken.csv", format="f5", overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not staging_leftovers(out)

    result = run(corpus, out, overwrite=True)
    assert result.kept == 4 and not (out / "keep.txt").exists() and not staging_leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rejected.jsonl", "shards", "vocab.txt"]


def test_lowercase_front_end_is_applied_and_recorded_for_training(run, tmp_path: Path):
    corpus = tmp_path / "corpus"
    for name in ("a", "b"):
        write_wav(corpus / "wavs" / f"{name}.wav")
    write_text(corpus / "metadata.csv", ["audio_file|text", "wavs/a.wav|Xin Chào.", "wavs/b.wav|Hà Nội 5 giờ."])
    run(corpus, text_frontend="vietnamese", lowercase=True)
    out = tmp_path / "out"
    assert sorted(read_table(out)["text"].to_pylist()) == ["hà nội năm giờ.", "xin chào."]
    assert (manifest(out)["settings"]["text_frontend"], manifest(out)["settings"]["lowercase"]) == ("vietnamese", True)
    assert dataset_text_frontend(out) == TextFrontend(normalizer="vietnamese", lowercase=True)
    assert not any(token != token.lower() for token in Vocab.load(out / "vocab.txt").tokens)


def test_holdout_list_vocab_extension_and_vietnamese_front_end(run, tmp_path: Path):
    corpus = tmp_path / "corpus"
    for name in ("a", "b", "c"):
        write_wav(corpus / "wavs" / f"{name}.wav")
    write_text(
        corpus / "metadata.csv",
        ["audio_file|text", "wavs/a.wav|Năm 2024.", "wavs/b.wav|Có 5 người.", "wavs/c.wav|Chào bạn."],
    )
    holdout = write_text(tmp_path / "heldout.txt", ["# evaluation clips", "wavs/b.wav", "wavs/gone.wav"])
    base = Vocab([" ", "C", "N", "a", "c", "h", "m", "n", "o", "ă", "."])
    base.save(tmp_path / "base_vocab.txt")

    result = run(corpus, holdout_list=holdout, vocab=tmp_path / "base_vocab.txt", text_frontend="vietnamese")

    out = tmp_path / "out"
    assert (result.kept, result.heldout) == (2, 1)
    assert read_table(out, "heldout")["audio_file"].to_pylist() == ["wavs/b.wav"]
    texts = dict(zip(*read_table(out).select(["audio_file", "text"]).to_pydict().values(), strict=True))
    assert texts["wavs/a.wav"] == "Năm hai nghìn không trăm hai mươi tư."
    info = manifest(out)
    assert info["settings"]["text_frontend"] == "vietnamese"
    assert info["heldout"]["method"] == "list" and info["heldout"]["audio_files"] == ["wavs/b.wav"]
    assert info["heldout"]["unmatched_list_entries"] == ["wavs/gone.wav"]
    vocab = Vocab.load(out / "vocab.txt")
    assert vocab.tokens[: len(base)] == base.tokens  # old ids unchanged
    assert info["vocab"]["missing_characters"] == vocab.tokens[len(base) :] == sorted(vocab.tokens[len(base) :])
    all_texts = [*texts.values(), *read_table(out, "heldout")["text"].to_pylist()]
    assert all(not vocab.missing(text) for text in all_texts) and info["vocab"]["size"] == len(vocab)


# --- entry point: the CLI with a private local Ray (`ray job submit`: test_cluster_autoscaling, test_platform_e2e) ---


@pytest.mark.integration
def test_cli_runs_with_a_local_ray_and_refuses_an_existing_output(tmp_path: Path):
    corpus = good_corpus(tmp_path / "corpus", 6)
    command = [sys.executable, "jobs/preprocess.py", "--corpus", str(corpus), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [*command, "--num-cpus", "2", "--holdout-fraction", "0.3"],
        cwd=REPO,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("kept 4, held out 2, rejected 0 of 6 rows") and "audio-hours/min" in summary
    refused = subprocess.run(command, cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr

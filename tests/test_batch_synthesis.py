"""Batch synthesis (``jobs/synthesize_batch.py``) on Ray Data with input, voices and output on a real S3 API (moto
on loopback): the right rows written and manifested, every bad row refused with its reason, a row equal to the
single-row ``Synthesizer``, an actor killed mid-run, a driver killed mid-run and the command run again, a rerun
of a complete job, another job on the same output, ``--overwrite``, best of N."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import soundfile as sf
import torch
from mlflow import MlflowClient

from data_pipelines import BatchRequest, OutputExistsError, synthesize_batch
from flowtts.storage import Location, resolve
from flowtts.synthesis import JudgeRequiredError, SamplingSettings, SynthesisOptions, Synthesizer
from flowtts.voices import VoiceStore
from tests.helpers import REPO, SAMPLE_CORPUS, load_job
from tests.helpers.asr import write_ctc_asr
from tests.helpers.locations import upload
from tests.helpers.models import save_tiny_model

pytestmark = pytest.mark.integration

SR = 24000
NO_VOCOS = "nobody-here/no-vocos"  # not cached: Griffin-Lim, deterministic
TEXTS = [line.split("|", 1)[1] for line in (SAMPLE_CORPUS / "metadata.csv").read_text().splitlines()[1:]]
REF_TEXT = TEXTS[0]
SAMPLING = SamplingSettings(nfe=4)
JOB_SEED = 11
MAX_TEXT_CHARS = 200
DEADLINE_S = 240


def good_rows() -> list[dict]:
    """Eight rows that must be written: a reference file, a stored voice, a [lan] tag, per-row seed/speed/nfe."""
    rows = []
    for index in range(8):
        text = TEXTS[1 + index % (len(TEXTS) - 1)].split(",")[0]
        row = {"id": f"line-{index:02d}", "text": text}
        row.update({"voice": "lan"} if index % 2 else {"ref_audio": "refs/lan.wav", "ref_text": REF_TEXT})
        rows.append(row)
    rows[2]["seed"] = "7"
    rows[3]["speed"] = "1.3"
    rows[4]["nfe"] = "2"
    rows[6]["text"] = f"{TEXTS[2].split(',')[0]} [lan] {TEXTS[3].split(',')[0]}"
    return rows


BAD_ROWS = [  # (row, reason)
    ({"id": "", "text": "Xin chào."}, "bad_id"),
    ({"id": "../escape", "text": "Xin chào."}, "bad_id"),
    ({"id": "/abs", "text": "Xin chào."}, "bad_id"),
    ({"id": "twice", "text": "Xin chào.", "voice": "lan"}, "duplicate_id"),
    ({"id": "twice", "text": "Chào em.", "voice": "lan"}, "duplicate_id"),
    ({"id": "empty", "text": "  ", "voice": "lan"}, "empty_text"),
    ({"id": "unknown-chars", "text": "Xin chào ✓", "voice": "lan"}, "unknown_characters"),
    ({"id": "no-voice", "text": "Xin chào."}, "missing_voice"),
    ({"id": "ghost", "text": "Xin chào.", "voice": "nobody"}, "unknown_voice"),
    (
        {"id": "lost-ref", "text": "Xin chào.", "ref_audio": "refs/missing.wav", "ref_text": REF_TEXT},
        "unreadable_reference",
    ),
    (
        {"id": "fake-ref", "text": "Xin chào.", "ref_audio": "refs/fake.wav", "ref_text": REF_TEXT},
        "unreadable_reference",
    ),
    ({"id": "long", "text": "a" * (MAX_TEXT_CHARS + 1), "voice": "lan"}, "text_too_long"),
    ({"id": "fast", "text": "Xin chào.", "voice": "lan", "speed": "fast"}, "invalid_option"),
]
COLUMNS = ["id", "text", "voice", "ref_audio", "ref_text", "seed", "speed", "nfe"]


def all_rows() -> list[dict]:
    """The good rows with the bad ones interleaved: row numbers (1-based) are positions in this list."""
    good, bad = good_rows(), [row for row, _ in BAD_ROWS]
    return [row for pair in zip(good, bad, strict=False) for row in pair] + bad[len(good) :]


def expected_rejections() -> dict[int, str]:
    reasons = {id(row): reason for row, reason in BAD_ROWS}
    return {number: reasons[id(row)] for number, row in enumerate(all_rows(), start=1) if id(row) in reasons}


def write_inputs(folder: Path, rows: list[dict]) -> Path:
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "lan.wav").write_bytes((SAMPLE_CORPUS / "wavs" / "demo_0001.wav").read_bytes())
    (folder / "refs" / "fake.wav").write_bytes(b"not audio\n" * 50)
    with open(folder / "lines.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return folder / "lines.csv"


def store_voice(uri: str) -> None:
    audio, rate = sf.read(SAMPLE_CORPUS / "wavs" / "demo_0002.wav", dtype="float32")
    VoiceStore(uri).create(audio, rate, TEXTS[1], name="lan")


def actor_pids() -> list[int]:
    """The RowSynthesizer actors of this process' Ray cluster: children of a raylet that names its GCS."""
    gcs = ray.get_runtime_context().gcs_address.encode()
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            parent = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()[1]
            parent_cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if b"RowSynthesizer" in cmdline and gcs in parent_cmdline:
            pids.append(int(name))
    return pids


def wait_for(condition, what: str, timeout_s: float = DEADLINE_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def batch_request(model: Path, input_uri: str, out_uri: str, voices: str, **changes) -> BatchRequest:
    options = {
        "model": str(model),
        "input": input_uri,
        "out": out_uri,
        "voices": voices,
        "sampling": SAMPLING,
        "seed": JOB_SEED,
        "concurrency": 2,
        "cpus_per_actor": 0.5,
        "rows_per_batch": 2,
        "max_text_chars": MAX_TEXT_CHARS,
        "load_options": {"vocoder": NO_VOCOS},
        **changes,
    }
    return BatchRequest(**options)


def manifest(out: Location):
    with out.join("manifest.parquet").open_input() as f:
        return pq.read_table(f)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("batch-model") / "model", TEXTS, seed=3)


@pytest.fixture(scope="module")
def s3_job(ray_local, s3_server, model, tmp_path_factory):
    """The job on S3, with one of its two actors killed (SIGKILL) once the first row is written."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.items():
            patch.setenv(key, value)
        boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket="batch")
        local = write_inputs(tmp_path_factory.mktemp("batch-input"), all_rows()).parent
        inputs = upload(local, resolve("s3://batch/in"))
        store_voice("s3://batch/voices")
        out = resolve("s3://batch/out")
        job = batch_request(model, inputs.join("lines.csv").uri, out.uri, "s3://batch/voices")
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(result=synthesize_batch(job)), daemon=True)
        runner.start()
        wait_for(lambda: out.join("_state/done").files(".json"), "the first written row")
        pids = wait_for(actor_pids, "the actors' processes")
        for pid in pids:  # both actors: the one writing rows is among them
            os.kill(pid, signal.SIGKILL)
        runner.join(DEADLINE_S)
        assert "result" in outcome, "the job did not finish after an actor was killed"
        yield {"job": job, "out": out, "result": outcome["result"], "killed": pids, "manifest": manifest(out)}


def test_rows_are_written_once_and_bad_rows_refused_with_their_reason(s3_job, model):
    result, out, table = s3_job["result"], s3_job["out"], s3_job["manifest"]
    good = [row["id"] for row in good_rows()]
    assert (result.rows, result.written, result.rejected) == (len(all_rows()), len(good), len(BAD_ROWS))
    # the killed actors' batches ran again; a row an actor wrote before dying is not written twice
    assert len(good) - 2 * 2 <= result.synthesized <= len(good)
    assert table["id"].to_pylist() == good  # input order, each row once, after an actor was lost
    assert table["path"].to_pylist() == [f"audio/{row_id}.wav" for row_id in good]
    assert sorted(f.relative_to(out) for f in out.files(recursive=True)) == sorted(
        ["job.json", "manifest.parquet", "rejected.jsonl", *table["path"].to_pylist()]
    )  # the staged rows and per-row records are gone; nothing but the outputs
    assert table["model_uri"].to_pylist() == [str(model)] * len(good)
    assert table["seed"].to_pylist()[:3] == [JOB_SEED, JOB_SEED, 7]
    assert table["nfe"].to_pylist()[4] == 2 and set(table["nfe"].to_pylist()) == {2, SAMPLING.nfe}
    assert table["voice"].to_pylist()[:2] == ["refs/lan.wav", "lan"]

    refused = [json.loads(line) for line in out.join("rejected.jsonl").read_text().splitlines()]
    assert {row["row"]: row["reason"] for row in refused} == expected_rejections()
    by_reason = {row["reason"]: row for row in refused}
    assert "id" not in by_reason["bad_id"] and "'✓'" in by_reason["unknown_characters"]["message"]
    assert "nobody" in by_reason["unknown_voice"]["message"]
    assert "refs/missing.wav" in next(r for r in refused if r.get("id") == "lost-ref")["message"]
    assert result.rejected_by_reason["duplicate_id"] == 2 and result.rejected_by_reason["bad_id"] == 3


def test_a_row_equals_the_single_row_synthesizer(s3_job, model, request):
    out, table = s3_job["out"], s3_job["manifest"]
    synth = Synthesizer.from_pretrained(model, vocoder=NO_VOCOS)
    stored = VoiceStore("s3://batch/voices")
    lan = stored.lookup("lan")
    voices = {
        "refs/lan.wav": synth.prepare_reference(SAMPLE_CORPUS / "wavs" / "demo_0001.wav", REF_TEXT),
        "lan": synth.prepare_reference(stored.read_audio(lan), lan.transcript),
    }
    rows = {row["id"]: row for row in good_rows()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors (0.5 CPU): Griffin-Lim turns thread-order float noise into 1e-2
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for index in (0, 2, 6):  # a reference file; a stored voice with its own seed; a [lan] tag
        entry = table.slice(index, 1).to_pylist()[0]
        row = rows[entry["id"]]
        options = SynthesisOptions(sampling=SAMPLING, seed=int(row.get("seed", JOB_SEED)))
        expected = synth.synthesize(row["text"], voices[entry["voice"]], options, voices={"lan": voices["lan"]})
        written, rate = sf.read(io.BytesIO(out.join(entry["path"]).read_bytes()), dtype="float32")
        assert rate == SR and len(written) == len(expected.audio)
        assert np.abs(written - expected.audio).max() <= 1e-4  # 16-bit PCM: at most half a step of 2**-15
        assert entry["duration_s"] == pytest.approx(len(written) / SR, abs=1e-6)


def test_reruns_do_nothing_another_job_is_refused_overwrite_replaces_best_of_n(
    s3_job, model, s3_env, tmp_path, monkeypatch
):
    job, out = s3_job["job"], s3_job["out"]
    before = {f.uri: f.fs.get_file_info(f.path).mtime for f in out.files("wav", recursive=True)}
    again = synthesize_batch(job)
    assert (again.synthesized, again.written, again.rejected) == (0, len(good_rows()), len(BAD_ROWS))
    assert {f.uri: f.fs.get_file_info(f.path).mtime for f in out.files("wav", recursive=True)} == before

    with pytest.raises(OutputExistsError, match=r"differs in sampling\); pass --overwrite"):
        synthesize_batch(batch_request(model, job.input, out.uri, job.voices, sampling=SamplingSettings(nfe=2)))

    rows = [BAD_ROWS[1][0], good_rows()[0]]
    small = upload(write_inputs(tmp_path / "small", rows).parent, resolve("s3://batch/small"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # tracked when one is set
    judges = {"asr": str(write_ctc_asr(tmp_path / "asr")), "speaker": None, "allow_download": False, "device": "cpu"}
    with pytest.raises(JudgeRequiredError, match="needs an ASR judge"):
        batch_request(model, small.join("lines.csv").uri, out.uri, job.voices, candidates=2)
    replaced = synthesize_batch(
        batch_request(
            model, small.join("lines.csv").uri, out.uri, job.voices, overwrite=True, candidates=2, judges=judges
        )
    )
    assert (replaced.rows, replaced.written, replaced.rejected) == (2, 1, 1)
    left = sorted(f.relative_to(out) for f in out.files(recursive=True))
    assert left == ["audio/line-00.wav", "job.json", "manifest.parquet", "rejected.jsonl"]
    (entry,) = manifest(out).to_pylist()
    assert entry["candidates"] == 2 and entry["seed"] == JOB_SEED
    assert len(entry["chosen_seeds"]) == 1 and entry["chosen_seeds"][0] in (JOB_SEED, JOB_SEED + 1)  # s + i + k*n
    assert "../escape" in out.join("rejected.jsonl").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("flowtts-batch-synthesis").experiment_id])
    assert run.data.metrics["rows"] == 2 and run.data.metrics["rejected/bad_id"] == 1
    assert run.data.tags["flowtts.model_version"] == model.name and run.data.params["out"] == out.uri


def test_a_killed_driver_is_resumed_by_running_the_command_again(s3_job, model, tmp_path):
    """The job as users run it, attached to a running cluster; its driver killed (SIGKILL) mid-run."""
    inputs = write_inputs(tmp_path / "in", all_rows())
    store_voice(str(tmp_path / "voices"))
    out = tmp_path / "out"
    command = [sys.executable, "jobs/synthesize_batch.py", "--model", str(model), "--vocoder", NO_VOCOS]
    command += ["--input", str(inputs), "--out", str(out), "--voices", str(tmp_path / "voices")]
    command += ["--nfe", str(SAMPLING.nfe), "--seed", str(JOB_SEED), "--concurrency", "1", "--cpus-per-actor", "0.5"]
    command += ["--rows-per-batch", "1", "--max-text-chars", str(MAX_TEXT_CHARS)]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "_state" / "done"
    try:
        wait_for(lambda: done.is_dir() and any(done.iterdir()), "the first written row")
    finally:
        driver.kill()
        driver.wait()
    wait_for(lambda: not actor_pids(), "the killed job's actor to be gone")  # Ray ends a dead driver's actors
    written_before = {p.stem for p in done.iterdir()}
    assert 0 < len(written_before) < len(good_rows()) and not (out / "manifest.parquet").exists()

    job = load_job("synthesize_batch")  # the same command again, here: attached to the same cluster
    rerun = synthesize_batch(job.request_from_args(job.parse_args(command[2:])))
    assert rerun.synthesized == len(good_rows()) - len(written_before)  # only the rows not yet written
    resumed = pq.read_table(out / "manifest.parquet")
    assert resumed.equals(s3_job["manifest"])  # what an uninterrupted run writes, row for row


def test_job_level_faults_exit_2_before_any_work(model, tmp_path, capsys):
    job = load_job("synthesize_batch")
    inputs = write_inputs(tmp_path / "in", good_rows()[:1])
    common = ["--vocoder", NO_VOCOS, "--nfe", "2"]
    cases = [
        (["--model", str(tmp_path / "none"), "--input", str(inputs)], "does not exist"),
        (["--model", str(model), "--input", str(tmp_path / "gone.csv")], f"input {tmp_path / 'gone.csv'} does not"),
        (["--model", str(model), "--input", str(tmp_path / "in" / "refs" / "lan.wav")], "unknown format '.wav'"),
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cases.append((["--model", str(model), "--input", str(inputs), "--out", str(tmp_path / "taken")], "not a batch"))
    for args, message in cases:
        argv = [*args, *common] + ([] if "--out" in args else ["--out", str(tmp_path / "out")])
        assert job.main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

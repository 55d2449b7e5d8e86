"""Preprocessing, evaluation and the duration job (its readers, and the job end to end on Ray Train) on a real
S3 API (moto's server on loopback, reached through ``AWS_ENDPOINT_URL``): the same rows and rejections as a
local run, atomic output with the manifest as commit marker, identical re-runs, and clean errors naming the URI."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from local_services import LocalS3Server
from mlflow.tracking import MlflowClient

from data_pipelines import OutputExistsError, PreprocessConfig, preprocess_corpus
from flowtts.checkpoint import load_bundle, save_checkpoint
from flowtts.config import DurationPredictorConfig
from flowtts.evaluation.gate import evaluate
from flowtts.evaluation.heldout import heldout_duration_mape
from flowtts.model import build_model
from flowtts.model_source import local_model, resolve_model_source
from flowtts.shards import read_table
from flowtts.storage import Location, StorageError, resolve
from flowtts.text import Vocab
from flowtts.training import TrainingData, dataset_vocab
from flowtts.training.duration_fitting import DurationExamples, train_duration_predictor
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.corpus import write_text, write_wav
from tests.helpers.locations import shard_bytes, upload
from tests.helpers.models import small_model_config
from tests.helpers.shards import write_dataset
from trainer.duration_job import DurationJob, run_duration_training

pytestmark = pytest.mark.integration
OUTPUTS = ("manifest.json", "rejected.jsonl", "shards", "vocab.txt")


def mixed_corpus(folder: Path, good: int = 6) -> Path:
    """``good`` clips of the sample corpus (2 speakers) and one row for each rejection an object store can
    show (no links there): missing, empty, not audio, truncated, too short, a folder, '..', duplicate, bad row."""
    wavs = folder / "wavs"
    names = [f"wavs/demo_{i:04d}.wav" for i in range(1, good + 1)]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE_CORPUS / name, folder / name)
    (wavs / "zero.wav").write_bytes(b"")
    (wavs / "fake.wav").write_bytes(b"not a wave file\n" * 20)
    whole = write_wav(wavs / "cut.wav", seconds=1.0).read_bytes()
    (wavs / "cut.wav").write_bytes(whole[: len(whole) // 2])
    write_wav(wavs / "short.wav", seconds=0.1)
    write_wav(wavs / "sub" / "inner.wav")
    bad = [
        "wavs/missing.wav|Không có tệp.",
        "wavs/zero.wav|Tệp rỗng.",
        "wavs/fake.wav|Tệp giả.",
        "wavs/cut.wav|Bị cắt.",
        "wavs/short.wav|Ngắn.",
        "wavs/sub|Một thư mục.",
        "../outside.wav|Bên ngoài.",
        f"./{names[0]}|Lặp lại.",
        "wavs/lonely.wav",
    ]
    texts = [line.split("|", 1)[1] for line in (SAMPLE_CORPUS / "metadata.csv").read_text().splitlines()[1:]]
    write_text(
        folder / "metadata.csv",
        ["audio_file|text", *[f"{n}|{t}" for n, t in zip(names, texts[:good], strict=True)], *bad],
    )
    speakers = (SAMPLE_CORPUS / "speakers.csv").read_text().splitlines()[: good + 1]
    write_text(folder / "speakers.csv", speakers)
    return folder


def run(corpus: str | Path, out: str | Path, **options):
    return preprocess_corpus(PreprocessConfig(corpus=corpus, out=out, num_workers=2, **options))


def rejections(out: Location) -> list[tuple[int, str, str]]:
    rows = [json.loads(line) for line in out.join("rejected.jsonl").read_text().splitlines()]
    return [(row["line"], row["audio_file"], row["reason"]) for row in rows]


def test_s3_to_s3_keeps_the_rows_of_a_local_run_and_reruns_identically(ray_local, s3_bucket, tmp_path):
    local_corpus = mixed_corpus(tmp_path / "corpus")
    corpus = upload(local_corpus, resolve(f"{s3_bucket}/corpora/mixed"))
    out = resolve(f"{s3_bucket}/data/mixed")

    local = run(local_corpus, tmp_path / "out", holdout_fraction=0.3)
    remote = run(corpus.uri, out.uri, holdout_fraction=0.3)

    assert (remote.kept, remote.heldout, remote.rejected, remote.rows_read) == (4, 2, 9, 15)
    assert remote.rejected_by_reason == local.rejected_by_reason
    assert rejections(out) == rejections(resolve(tmp_path / "out"))
    reasons = {line: reason for line, _, reason in rejections(out)}
    assert reasons == {
        8: "missing_file",
        9: "unreadable_audio",
        10: "unreadable_audio",
        11: "truncated_audio",
        12: "too_short",
        13: "unreadable_audio",  # a folder (a prefix on S3)
        14: "path_outside_corpus",
        15: "duplicate_row",
        16: "malformed_row",
    }
    assert shard_bytes(out) == shard_bytes(resolve(tmp_path / "out"))  # the same rows, byte for byte
    assert out.join("vocab.txt").read_bytes() == (tmp_path / "out" / "vocab.txt").read_bytes()
    assert {f.relative_to(out).split("/")[0] for f in out.files(recursive=True)} == {*OUTPUTS, "heldout"}
    first = shard_bytes(out)

    with pytest.raises(OutputExistsError, match=f"{out.uri} exists; pass --overwrite"):
        run(corpus.uri, out.uri, holdout_fraction=0.3)
    again = run(corpus.uri, out.uri, holdout_fraction=0.3, overwrite=True)
    assert (again.kept, again.heldout, again.rejected) == (4, 2, 9)
    assert shard_bytes(out) == first
    bucket = resolve(s3_bucket)
    assert sorted({f.relative_to(bucket).split("/")[1] for f in bucket.files(recursive=True)}) == ["mixed"]
    assert not [f for f in bucket.files(recursive=True) if ".staging-" in f.uri]  # staging prefix removed


def test_holdout_list_and_base_vocab_are_read_from_s3(ray_local, s3_bucket, tmp_path):
    corpus = mixed_corpus(tmp_path / "corpus")
    files = tmp_path / "lists"
    files.mkdir()
    Vocab([" ", ".", "a", "n"]).save(files / "base_vocab.txt")
    write_text(files / "heldout.txt", ["# evaluation clips", "wavs/demo_0002.wav", "wavs/gone.wav"])
    lists = upload(files, resolve(f"{s3_bucket}/lists"))

    remote = run(
        corpus, tmp_path / "s3", holdout_list=lists.join("heldout.txt").uri, vocab=lists.join("base_vocab.txt").uri
    )
    local = run(corpus, tmp_path / "disk", holdout_list=files / "heldout.txt", vocab=files / "base_vocab.txt")

    assert (remote.kept, remote.heldout) == (local.kept, local.heldout) == (5, 1)
    assert read_table(tmp_path / "s3", "heldout")["audio_file"].to_pylist() == ["wavs/demo_0002.wav"]
    vocab = (tmp_path / "s3" / "vocab.txt").read_bytes()
    assert vocab == (tmp_path / "disk" / "vocab.txt").read_bytes()
    assert Vocab.load(tmp_path / "s3" / "vocab.txt").tokens[:4] == [" ", ".", "a", "n"]  # the base's ids kept


def test_failed_overwrite_leaves_the_s3_output_as_it_was(ray_local, s3_bucket, tmp_path):
    corpus = upload(mixed_corpus(tmp_path / "corpus", good=2), resolve(f"{s3_bucket}/corpus"))
    out = resolve(f"{s3_bucket}/out")
    run(corpus.uri, out.uri)
    before = {f.relative_to(out): f.read_bytes() for f in out.files(recursive=True)}
    broken = resolve(f"{s3_bucket}/broken.csv")
    broken.write_text("not|a header\n")
    with pytest.raises(ValueError, match="broken.csv"):
        run(corpus.uri, out.uri, metadata=broken.uri, format="f5", overwrite=True)
    assert {f.relative_to(out): f.read_bytes() for f in out.files(recursive=True)} == before
    assert sorted(before) == ["manifest.json", "rejected.jsonl", "shards/shard-00000.parquet", "vocab.txt"]


def small_model(vocab_size: int, **overrides):
    torch.manual_seed(0)
    config = small_model_config(vocab_size, depth=1, **overrides)
    return build_model(config)


def test_evaluation_and_duration_readers_read_a_dataset_on_s3(s3_env, s3_bucket, tmp_path):
    local = write_dataset(tmp_path / "data", SAMPLE_CORPUS, count=6, heldout=2)
    remote = upload(local, resolve(f"{s3_bucket}/datasets/demo")).uri
    vocab = dataset_vocab(remote)
    assert vocab == dataset_vocab(local)
    folder = save_checkpoint(small_model(len(vocab)), tmp_path / "model", vocab)
    from_s3 = evaluate(resolve_model_source(str(folder)), remote, nfe=2, out_dir=tmp_path / "eval-s3")
    from_disk = evaluate(resolve_model_source(str(folder)), local, nfe=2, out_dir=tmp_path / "eval-local")
    assert from_s3.summary == from_disk.summary and "model/truth/mcd_dtw" in from_s3.summary
    assert read_table(remote, "heldout").equals(read_table(local, "heldout"))

    data = TrainingData.from_folder(remote, vocab)  # what the duration job's worker reads
    on_disk = TrainingData.from_folder(local, vocab)
    assert len(data) == 6 and [data.text(i) for i in range(6)] == [on_disk.text(i) for i in range(6)]
    model = small_model(len(vocab)).eval()
    assert heldout_duration_mape(model, vocab, remote) == heldout_duration_mape(model, vocab, local)
    with pytest.raises(FileNotFoundError, match=f"no parquet shards in {s3_bucket}/datasets/none/heldout"):
        evaluate(resolve_model_source(str(folder)), f"{s3_bucket}/datasets/none", nfe=2)


def test_duration_job_fits_and_measures_on_a_dataset_on_s3(ray_local, s3_bucket, tmp_path, monkeypatch):
    """The duration job end to end with ``--data s3://...`` (one Ray Train worker, which reaches S3 through
    the session Ray's runtime_env): it registers the predictor that the same fit on the local copy of the
    dataset gives, and reports that predictor's held-out errors on the local copy."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = write_dataset(tmp_path / "data", SAMPLE_CORPUS, count=6, heldout=2)
    remote = upload(local, resolve(f"{s3_bucket}/datasets/demo")).uri
    vocab = dataset_vocab(local)
    # a base that has a predictor (no new random init) and no dropout: the fit here equals the job's exactly
    predictor = DurationPredictorConfig(dim=32, dropout=0.0)
    folder = save_checkpoint(small_model(len(vocab), duration_predictor=predictor), tmp_path / "base", vocab)
    job = DurationJob(
        model=str(folder),
        data=remote,
        steps=3,
        batch_size=4,
        storage=tmp_path / "runs",
        name="dur-s3",
        cpus_per_worker=0.5,
        registered_model="flowtts-dur-s3",
        predictor=predictor,
    )
    outcome = run_duration_training(job)

    expected = load_bundle(folder).model  # the same fit here, from the local copy, on one thread as the worker
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        examples = DurationExamples(TrainingData.from_folder(local, vocab))
        losses = train_duration_predictor(expected, examples, steps=3, batch_size=4)
        errors = heldout_duration_mape(expected, vocab, local)
    finally:
        torch.set_num_threads(threads)

    metrics = outcome.metrics
    assert set(errors) == {"duration_mape_predictor", "duration_mape_byte_ratio"}
    assert all(math.isfinite(metrics[key]) for key in ["duration_loss", *errors]), metrics
    assert metrics["duration_loss"] == pytest.approx(losses[-1], rel=1e-5)
    for key, value in errors.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5), key
    run = MlflowClient(outcome.tracking_uri).get_run(outcome.mlflow_run_id)
    assert run.data.params["duration_job.data"] == remote
    assert len(MlflowClient(outcome.tracking_uri).get_metric_history(outcome.mlflow_run_id, "duration_loss")) == 3

    checkpoints = sorted((tmp_path / "runs" / "dur-s3").glob("checkpoint_*/model"))
    assert len(checkpoints) == 1, list((tmp_path / "runs" / "dur-s3").iterdir())
    assert outcome.registration.model_uri == "models:/flowtts-dur-s3@candidate"
    with local_model(resolve_model_source(outcome.registration.model_uri, outcome.tracking_uri)) as registered:
        trained = load_bundle(registered)
    assert trained.info["duration_predictor_steps"] == 3 and trained.vocab == vocab
    base = load_bundle(folder).model.state_dict()
    fitted = [key for key in base if key.startswith("duration_predictor.")]
    assert fitted and any(not torch.equal(trained.model.state_dict()[key], base[key]) for key in fitted)
    for key, value in trained.model.state_dict().items():
        if key in fitted:
            assert torch.allclose(value, expected.state_dict()[key], atol=1e-6), key
        else:
            assert torch.equal(value, base[key]), key  # the CFM stays the base's


def preprocess_main():
    spec = importlib.util.spec_from_file_location("preprocess_job", REPO / "jobs" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_errors_name_the_missing_bucket_prefix_or_refused_output(s3_env, s3_bucket, tmp_path, capsys):
    main = preprocess_main()
    corpus = upload(mixed_corpus(tmp_path / "corpus", good=1), resolve(f"{s3_bucket}/corpus"))
    resolve(f"{s3_bucket}/taken/manifest.json").write_text("{}")
    cases = {
        "s3://no-such-bucket-flowtts/corpus": "bucket s3://no-such-bucket-flowtts does not exist",
        f"{s3_bucket}/no/such/prefix": f"corpus folder {s3_bucket}/no/such/prefix does not exist",
    }
    for source, message in cases.items():
        assert main(["--corpus", source, "--out", f"{s3_bucket}/out"]) == 2
        assert message in capsys.readouterr().err
    assert main(["--corpus", corpus.uri, "--out", "s3://no-such-bucket-flowtts/out"]) == 2
    assert "output s3://no-such-bucket-flowtts/out: bucket s3://no-such-bucket-flowtts does not exist" in (
        capsys.readouterr().err
    )
    assert main(["--corpus", corpus.uri, "--out", f"{s3_bucket}/taken"]) == 2
    assert f"output {s3_bucket}/taken exists; pass --overwrite" in capsys.readouterr().err
    assert main(["--corpus", corpus.uri, "--out", f"{s3_bucket}/out", "--holdout-fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "holdout_fraction" in err and "1.5" in err


def test_bad_credentials_are_a_clean_error_naming_the_uri(tmp_path, monkeypatch, capsys):
    server = LocalS3Server(tmp_path / "moto-auth", extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    env = server.start()  # every request is authenticated, and no key is known
    try:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(StorageError, match="s3://some-bucket/corpus") as caught:
            resolve("s3://some-bucket/corpus").is_dir()
        assert "ACCESS_DENIED" in str(caught.value) or "InvalidAccessKeyId" in str(caught.value), caught.value
        assert preprocess_main()(["--corpus", "s3://some-bucket/corpus", "--out", "s3://some-bucket/out"]) == 2
        assert "s3://some-bucket/corpus" in capsys.readouterr().err
    finally:
        server.stop()

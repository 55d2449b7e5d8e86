"""Ray Serve end to end on 127.0.0.1: a tiny model registered in an embedded (sqlite) MLflow, loaded by
alias; batching, both HTTP APIs (and the official ``openai`` client), voices, errors, overload,
timeouts and a rolling model update. No network: everything is built in a temporary folder.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import soundfile as sf

from flowtts.synthesis import init_vocos_folder
from serve.app import build_application
from serve.settings import ServeSettings
from tests.helpers import FIXTURES, REPO, require
from tests.helpers.asr import write_ctc_asr
from tests.helpers.audio import decode_stream_wav
from tests.helpers.editing import FADE, HOP, kept_runs
from tests.helpers.models import save_tiny_model
from tests.helpers.registry import register_checkpoints

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

CORPUS = REPO / "samples" / "vi-demo"
API_KEY = "test-key"
REGISTERED = "flowtts-test"
FRAME_CAP = 2000  # max_batch_frames of the main app: at most ~3 rows per generate call
TIMEOUT = 180


def corpus_rows() -> list[tuple[Path, str]]:
    lines = (CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [(CORPUS / path, text) for path, text in (line.split("|", 1) for line in lines)]


ROWS = corpus_rows()
TEXTS_ALL = [text for _, text in ROWS]
REF_PATH, REF_TEXT = ROWS[0]
TEXTS = [text for _, text in ROWS[1:17]]
LONG_TEXT = " ".join(text for _, text in ROWS[20:32])  # more than one chunk for a short transcript


def write_speaker_model(folder: Path) -> Path:
    """A tiny randomly initialised WavLM x-vector model (the speaker judge), as tests/test_judges.py builds it."""
    import torch
    import transformers

    from tests.helpers.asr import ENCODER, feature_extractor

    torch.manual_seed(0)
    config = transformers.WavLMConfig(
        **ENCODER, tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=8
    )
    transformers.WavLMForXVector(config).save_pretrained(folder)
    feature_extractor().save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(audio: np.ndarray, rate: int = 24000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pcm(content: bytes) -> np.ndarray:
    return np.frombuffer(content, dtype="<i2").astype(np.int32)


# ---------------------------------------------------------------- assets: tiny model, vocoder, registry


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as monkeypatch:
        # the folders are named "checkpoint": flowtts.model_source.download_model looks for artifacts/checkpoint
        versions = [
            save_tiny_model(root / "v1" / "checkpoint", TEXTS_ALL, 0),
            save_tiny_model(root / "v2" / "checkpoint", TEXTS_ALL, 1),
        ]
        tracking = f"sqlite:///{root}/mlflow.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        register_checkpoints(tracking, root / "artifacts", versions, REGISTERED)
        mlflow.MlflowClient(tracking, tracking).set_registered_model_alias(REGISTERED, "production", "1")
    return {
        "root": root,
        "tracking_uri": tracking,
        "vocoder": init_vocos_folder(root / "vocos", dim=32, intermediate_dim=64, num_layers=1),
        "local_model": versions[0],
    }


@pytest.fixture(scope="module")
def cluster():
    """A private local Ray (or the session's, if one is up) and Serve on a free loopback port."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=tempfile.mkdtemp(prefix="ray-serve-", dir="/tmp"),
        )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    if started:
        ray.shutdown()


def main_settings(assets) -> ServeSettings:
    return ServeSettings.from_args(
        {
            "model_uri": f"models:/{REGISTERED}@production",
            "tracking_uri": assets["tracking_uri"],
            "vocoder": str(assets["vocoder"]),
            "voices_uri": str(assets["root"] / "voices"),
            "api_key": API_KEY,
            "default_nfe": 4,
            # streams chunked as whole files are, so that a stream can be compared sample for sample with the
            # file (the short first chunk of streams is tested in test_serve_resilience)
            "streaming": {"first_chunk_bytes": 0},
            "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.5, "max_batch_frames": FRAME_CAP},
            "limits": {
                "max_text_chars": 600,
                "max_reference_seconds": 4.0,
                "max_upload_bytes": 300_000,
                "nfe_range": [2, 8],
            },
        },
        environ={},
    )


SMALL = {"ray_actor_options": {"num_cpus": 0.25}, "num_replicas": 1}  # one replica: no autoscaling


def deploy_main(assets):
    serve.run(
        build_application(
            main_settings(assets), model_options={**SMALL, "max_ongoing_requests": 32}, ingress_options=SMALL
        ),
        name="flowtts",
        route_prefix="/",
    )


@pytest.fixture(scope="module")
def base(cluster, assets):
    deploy_main(assets)
    return cluster


@pytest.fixture(scope="module")
def http():
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    return session


@pytest.fixture(scope="module")
def voice(base, http):
    """A voice uploaded as multipart/form-data (the JSON form is tested below)."""
    response = http.post(
        f"{base}/v1/voices",
        files={"audio": ("ref.wav", REF_PATH.read_bytes(), "audio/wav")},
        data={"transcript": REF_TEXT, "name": "lan"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    return response.json()


def model_stats() -> dict:
    return serve.get_deployment_handle("TTSModel", "flowtts").get_stats.remote().result()


def tts(http, base, **body) -> requests.Response:
    return http.post(f"{base}/v1/tts", json=body, timeout=TIMEOUT)


# ---------------------------------------------------------------- batching


def test_sixteen_concurrent_requests_are_batched_and_equal_their_solo_results(base, http, voice):
    def request(index: int) -> requests.Response:
        barrier.wait()
        return tts(http, base, text=TEXTS[index], voice=voice["id"], seed=100 + index, response_format="pcm")

    done_before = len(model_stats()["batches"])
    barrier = threading.Barrier(16)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(request, range(16)))
    assert [r.status_code for r in together] == [200] * 16, [r.text for r in together if r.status_code != 200]
    batches = model_stats()["batches"][done_before:]
    assert sum(b["requests"] for b in batches) == 16
    assert max(b["requests"] for b in batches) > 1, batches
    calls = [call for b in batches for call in b["calls"]]
    assert max(call["items"] for call in calls) > 1, calls
    assert all(call["padded_frames"] <= FRAME_CAP for call in calls if call["items"] > 1), calls
    assert len(calls) > len(batches), "the frame cap should split the big batch into several generate calls"

    barrier = threading.Barrier(1)
    for index, batched in enumerate(together):
        alone = request(index)
        assert alone.status_code == 200
        assert alone.headers["X-Seed"] == batched.headers["X-Seed"] == str(100 + index)
        a, b = pcm(batched.content), pcm(alone.content)
        assert a.shape == b.shape and a.size > 0
        assert np.abs(a - b).max() <= 2, f"request {index} differs from its solo result"  # 16-bit LSBs


# ---------------------------------------------------------------- native API


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_native_tts_returns_each_format_with_its_headers(base, http, voice, fmt):
    response = tts(http, base, text=TEXTS[0], voice=voice["name"], seed=7, response_format=fmt)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}[fmt]
    )
    assert response.headers["X-Model-Version"] == f"{REGISTERED}/1"
    assert (response.headers["X-Seed"], response.headers["X-Duration-Rule"]) == ("7", "byte_ratio")
    audio, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    assert rate == 24000 and len(audio) > 0.5 * rate


def test_inline_reference_and_seed_reproducibility(base, http):
    body = {
        "text": TEXTS[1],
        "ref_audio": b64(REF_PATH.read_bytes()),
        "ref_text": REF_TEXT,
        "response_format": "pcm",
        "nfe": 2,
        "speed": 1.2,
        "cfg_strength": 1.5,
        "sway_sampling_coef": 0.0,
    }
    first = tts(http, base, **body)
    assert first.status_code == 200, first.text
    seed = int(first.headers["X-Seed"])  # drawn by the server and reported
    again = tts(http, base, **body, seed=seed)
    np.testing.assert_array_equal(pcm(again.content), pcm(first.content))


def test_long_text_streams_chunk_by_chunk(base, http, voice):
    body = {"text": LONG_TEXT, "voice": voice["id"], "seed": 3}
    with http.post(f"{base}/v1/tts", json={**body, "stream": True}, stream=True, timeout=TIMEOUT) as streamed:
        assert streamed.status_code == 200, streamed.text
        assert int(streamed.headers["X-Chunks"]) >= 2
        pieces, arrivals = [], []
        for piece in streamed.iter_content(chunk_size=None):
            pieces.append(piece)
            arrivals.append(time.monotonic())
    assert len(pieces) >= 3  # header + audio of the first chunk, then later chunks as they are ready
    audio, rate = decode_stream_wav(b"".join(pieces))
    whole = tts(http, base, **body, response_format="wav")
    expected, _ = sf.read(io.BytesIO(whole.content), dtype="float32")
    assert rate == 24000 and len(audio) == len(expected)
    # the same cross-faded samples; the whole file is peak-limited as one, the stream clipped per sample
    peak = np.abs(audio).max()
    np.testing.assert_allclose(audio * min(1.0, 0.999 / max(peak, 1e-9)), expected, atol=3e-4)


# ---------------------------------------------------------------- OpenAI API


def test_openai_client_create_and_streaming(base, voice):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT)
    speech = client.audio.speech.create(
        model="flowtts",
        voice="lan",
        input=TEXTS[2],
        response_format="wav",
        speed=1.0,
        extra_body={"seed": 11},
    )
    audio, rate = sf.read(io.BytesIO(speech.content), dtype="float32")
    assert rate == 24000 and len(audio) > 0
    mp3 = client.audio.speech.create(model="tts-1", voice={"id": voice["id"]}, input=TEXTS[2])  # default mp3
    assert sf.info(io.BytesIO(mp3.content)).format == "MP3"
    with client.audio.speech.with_streaming_response.create(
        model="flowtts", voice=voice["id"], input=TEXTS[2], response_format="pcm", extra_body={"seed": 11}
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        streamed = b"".join(response.iter_bytes())
    np.testing.assert_allclose(pcm(streamed) / 32767, audio, atol=2 / 32767)


def test_openai_sse_stream_format(base, http, voice):
    response = http.post(
        f"{base}/v1/audio/speech",
        timeout=TIMEOUT,
        json={
            "model": "flowtts",
            "voice": voice["id"],
            "input": TEXTS[3],
            "response_format": "pcm",
            "stream_format": "sse",
        },
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == len(TEXTS[3])
    assert sum(len(base64.b64decode(e["audio"])) for e in events[:-1]) > 0


# ---------------------------------------------------------------- voices


def test_voice_crud_with_json_upload(base, http, voice):
    created = http.post(
        f"{base}/v1/voices",
        timeout=TIMEOUT,
        json={"audio": b64(ROWS[1][0].read_bytes()), "transcript": ROWS[1][1]},
    )
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["id"].startswith("voice_") and info["name"] is None and info["transcript"] == ROWS[1][1]
    assert http.get(f"{base}/v1/voices/{info['id']}").json() == info
    listed = [v["id"] for v in http.get(f"{base}/v1/voices").json()["voices"]]
    assert voice["id"] in listed and info["id"] in listed
    assert tts(http, base, text=TEXTS[4], voice=info["id"]).status_code == 200
    deleted = http.delete(f"{base}/v1/voices/{info['id']}")
    assert deleted.json() == {"id": info["id"], "deleted": True}
    for response in (
        http.get(f"{base}/v1/voices/{info['id']}"),
        tts(http, base, text=TEXTS[4], voice=info["id"]),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "voice_not_found"


# ---------------------------------------------------------------- errors


def error_cases(base: str, voice: dict) -> list[tuple[str, str, dict, int, str, str | None]]:
    """(method, path, requests kwargs, status, error code, the request field it is about: None for none, and
    on the OpenAI routes, whose errors keep OpenAI's {"code", "message"})."""
    ref = b64(REF_PATH.read_bytes())
    tone = (0.3 * np.sin(np.arange(24000 * 5) / 24000 * 2 * np.pi * 220)).astype(np.float32)
    speak = {"text": TEXTS[0], "voice": voice["id"]}
    return [
        (
            "post",
            "/v1/tts",
            {"data": b'{"text": "x",', "headers": {"Content-Type": "application/json"}},
            400,
            "malformed_json",
            None,
        ),
        (
            "post",
            "/v1/tts",
            {"json": {"text": "x", "ref_audio": "###", "ref_text": "a"}},
            400,
            "malformed_base64",
            "ref_audio",
        ),
        ("post", "/v1/tts", {"json": {"voice": voice["id"]}}, 422, "invalid_request", "text"),
        ("post", "/v1/tts", {"json": {**speak, "ref_audio": ref, "ref_text": "a"}}, 422, "invalid_request", None),
        (
            "post",
            "/v1/tts",
            {"json": {**speak, "stream": True, "response_format": "aac"}},
            422,
            "invalid_request",
            None,
        ),
        ("post", "/v1/tts", {"json": {**speak, "nfe": 64}}, 422, "invalid_option", "nfe"),
        ("post", "/v1/tts", {"json": {**speak, "candidates": 9}}, 422, "invalid_option", "candidates"),
        ("post", "/v1/tts", {"json": {**speak, "candidates": 2}}, 422, "judge_required", "candidates"),  # no judge
        (
            "post",
            "/v1/audio/speech",
            {"json": {"model": "m", "voice": "lan", "input": "a", "candidates": 2}},
            422,
            "judge_required",
            None,
        ),
        ("post", "/v1/tts", {"json": {"text": "a", "ref_audio": ref}}, 422, "transcript_required", "ref_text"),
        ("post", "/v1/tts", {"json": {**speak, "text": "Chào. [anna] Chào."}}, 404, "voice_not_found", "text"),
        ("post", "/v1/tts", {"json": {**speak, "text": "Chào. [lan speed=9] Chào."}}, 422, "invalid_option", "text"),
        ("post", "/v1/tts", {"json": {**speak, "text": "[lan]"}}, 422, "empty_text", "text"),
        ("post", "/v1/tts", {"json": {**speak, "speed": 9.0}}, 422, "invalid_option", "speed"),
        ("post", "/v1/tts", {"json": {**speak, "text": "こんにちは"}}, 422, "unknown_characters", "text"),
        ("post", "/v1/tts", {"json": {**speak, "text": "…!?"}}, 422, "unspeakable_text", "text"),
        (
            "post",
            "/v1/tts",
            {"json": {"text": "a", "ref_audio": b64(b"not audio at all" * 50), "ref_text": "a"}},
            422,
            "invalid_audio",
            "ref_audio",
        ),
        (
            "post",
            "/v1/tts",
            {"json": {"text": "a", "ref_audio": b64(wav_bytes(tone[:2400])), "ref_text": "a"}},
            422,
            "invalid_reference_audio",
            "ref_audio",
        ),
        ("post", "/v1/tts", {"json": {**speak, "text": "a" * 601}}, 413, "text_too_long", "text"),
        (
            "post",
            "/v1/tts",
            {"json": {"text": "a", "ref_audio": b64(wav_bytes(tone)), "ref_text": "a"}},
            413,
            "reference_too_long",
            "ref_audio",
        ),
        (
            "post",
            "/v1/tts",
            {"json": {"text": "a", "ref_audio": b64(bytes(320_000)), "ref_text": "a"}},
            413,
            "upload_too_large",
            "ref_audio",
        ),
        (
            "post",
            "/v1/tts",
            {"json": {"text": "a", "ref_audio": b64(bytes(400_000)), "ref_text": "a"}},
            413,
            "payload_too_large",
            None,
        ),
        ("post", "/v1/tts", {"json": {**speak, "voice": "voice_" + "0" * 24}}, 404, "voice_not_found", "voice"),
        ("post", "/v1/tts", {"json": {**speak, "voice": "../../etc/passwd"}}, 404, "voice_not_found", "voice"),
        (
            "post",
            "/v1/audio/speech",
            {"json": {"model": "m", "voice": "alloy", "input": "a"}},
            404,
            "voice_not_found",
            None,
        ),
        (
            "post",
            "/v1/audio/speech",
            {"json": {"model": "m", "voice": "lan", "input": "a", "speed": 5}},
            422,
            "invalid_request",
            None,
        ),
        (
            "post",
            "/v1/audio/speech",
            {"json": {"model": "m", "voice": "lan", "input": "a" * 4097}},
            413,
            "text_too_long",
            None,
        ),
        (
            "post",
            "/v1/voices",
            {"json": {"audio": ref, "transcript": REF_TEXT, "name": "lan"}},
            409,
            "voice_name_taken",
            "name",
        ),
        ("post", "/v1/voices", {"json": {"audio": ref, "transcript": "   "}}, 422, "transcript_required", "transcript"),
        ("post", "/v1/voices", {"files": {"transcript": (None, "a")}}, 422, "invalid_request", "audio"),
        ("get", "/v1/voices/voice_" + "f" * 24, {}, 404, "voice_not_found", None),
        ("delete", "/v1/voices/nope", {}, 404, "voice_not_found", None),
        ("get", "/v1/nothing-here", {}, 404, "not_found", None),
        ("get", "/v1/tts", {}, 405, "method_not_allowed", None),
    ]


def test_every_error_has_its_status_and_json_body_and_the_replica_keeps_serving(base, http, voice):
    for method, path, kwargs, status, code, field in error_cases(base, voice):
        response = getattr(http, method)(f"{base}{path}", timeout=TIMEOUT, **kwargs)
        assert response.status_code == status, (path, code, response.text)
        body = response.json()
        if code == "judge_required":
            assert "judges.asr_model" in body["error"]["message"]
        keys = {"code", "message"} | ({"field"} if field else set())
        assert set(body) == {"error"} and set(body["error"]) == keys, body
        assert body["error"]["code"] == code, (path, body)
        assert body["error"].get("field") == field, (path, body)
        assert body["error"]["message"]
    assert tts(http, base, text=TEXTS[5], voice=voice["id"]).status_code == 200
    assert http.get(f"{base}/healthz").status_code == 200


# ---------------------------------------------------------------- several voices in one text


def test_voice_tags_switch_voices_and_equal_each_segment_alone_up_to_the_cross_fades(base, http, voice):
    second = http.post(
        f"{base}/v1/voices",
        json={"audio": b64(ROWS[2][0].read_bytes()), "transcript": ROWS[2][1], "name": "minh"},
        timeout=TIMEOUT,
    )
    assert second.status_code == 201, second.text
    segments = [(TEXTS[0], "lan", 1.0), (TEXTS[1], "minh", 1.3), (TEXTS[2], voice["id"], 1.0)]
    text = f"{TEXTS[0]} [minh speed=1.3] {TEXTS[1]} [{voice['id']}] {TEXTS[2]}"
    before = len(model_stats()["batches"])
    together = tts(http, base, text=text, voice="lan", seed=5, response_format="pcm")
    assert together.status_code == 200, together.text
    batches = model_stats()["batches"][before:]
    assert [b["requests"] for b in batches] == [1]  # every chunk of every segment in one batch
    alone, seed = [], 5
    for segment_text, name, speed in segments:
        reply = tts(http, base, text=segment_text, voice=name, seed=seed, speed=speed, response_format="pcm")
        assert reply.status_code == 200, reply.text
        alone.append(pcm(reply.content))
        seed += int(reply.headers["X-Chunks"])
    assert int(together.headers["X-Chunks"]) == seed - 5 == sum(c["items"] for c in batches[0]["calls"])
    mixed, fade = pcm(together.content), int(0.15 * 24000)
    assert len(mixed) == sum(len(a) for a in alone) - 2 * fade
    start = 0
    for index, audio in enumerate(alone):  # away from the joins, each segment's own samples (PCM16: +-1)
        inner = slice(fade if index else 0, len(audio) - (fade if index < 2 else 0))
        assert np.abs(mixed[start:][inner] - audio[inner]).max() <= 1
        start += len(audio) - fade
    unknown = tts(http, base, text="Chào. [anna] Chào [bao] nhé.", voice="lan")
    assert unknown.status_code == 404 and "[anna]" in unknown.json()["error"]["message"]


# ---------------------------------------------------------------- an official file with an ASR model


@pytest.fixture(scope="module")
def official(cluster, assets):
    """The shared official fixture as downloaded (model.safetensors + vocab.txt, lowercase only), served
    with its config.json and a tiny local CTC model that hears every clip as "a": it transcribes references
    and is the ASR judge of candidates, with a tiny speaker judge (its similarity breaks the ASR judge's ties)."""
    pytest.importorskip("transformers")
    folder = require(FIXTURES / "dit-v1-tiny")
    asr = str(write_ctc_asr(assets["root"] / "asr"))
    settings = ServeSettings.from_args(
        {
            "model_uri": str(folder / "model.safetensors"),
            "model_config": str(folder / "config.json"),
            "asr_model": asr,
            "judges": {"asr_model": asr, "speaker_model": str(write_speaker_model(assets["root"] / "wavlm"))},
            "vocoder": str(assets["vocoder"]),
            "voices_uri": str(assets["root"] / "official-voices"),
            "default_nfe": 4,
            "limits": {"nfe_range": [2, 8]},
        },
        environ={},
    )
    serve.run(
        build_application(settings, model_options=SMALL, ingress_options=SMALL),
        name="official",
        route_prefix="/official",
    )
    yield f"{cluster}/official"
    serve.delete("official")


def test_an_official_file_serves_as_downloaded_and_reads_capitals_lowercased(official):
    body = {"text": "Xin chào", "ref_audio": b64(REF_PATH.read_bytes()), "ref_text": REF_TEXT, "seed": 1}
    response = requests.post(f"{official}/v1/tts", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert "X-Ref-Text" not in response.headers and len(response.content) > 1000
    card = requests.get(f"{official}/v1/models", timeout=TIMEOUT).json()["data"][0]
    assert card["uri"].endswith("model.safetensors") and card["config"]["vocab_size"] == 143
    assert card["config"]["text_frontend"] == {"normalizer": "vietnamese", "lowercase": True}


def test_the_asr_model_transcribes_empty_references_and_stores_the_voice_transcript(official):
    upload = requests.post(
        f"{official}/v1/voices",
        files={"audio": ("ref.wav", REF_PATH.read_bytes(), "audio/wav")},
        data={"transcript": "", "name": "heard"},
        timeout=TIMEOUT,
    )
    assert upload.status_code == 201, upload.text
    assert upload.json()["transcript"] == "a"
    assert requests.get(f"{official}/v1/voices/heard", timeout=TIMEOUT).json()["transcript"] == "a"
    inline = {"text": "Xin chào", "ref_audio": b64(ROWS[3][0].read_bytes()), "seed": 2}
    for stream in (False, True):
        response = requests.post(f"{official}/v1/tts", json={**inline, "stream": stream}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.headers["X-Ref-Text"] == "a"
    stored = requests.post(f"{official}/v1/tts", json={"text": "Xin chào", "voice": "heard"}, timeout=TIMEOUT)
    assert stored.status_code == 200 and "X-Ref-Text" not in stored.headers


def test_candidates_share_one_call_and_the_judges_choice_comes_back_in_the_headers(official):
    body = {"text": "Xin chào", "ref_audio": b64(REF_PATH.read_bytes()), "ref_text": REF_TEXT, "seed": 11}
    handle = serve.get_deployment_handle("TTSModel", "official")
    before = len(handle.get_stats.remote().result()["batches"])
    best = requests.post(
        f"{official}/v1/tts", json={**body, "candidates": 3, "response_format": "pcm"}, timeout=TIMEOUT
    )
    assert best.status_code == 200, best.text
    batches = handle.get_stats.remote().result()["batches"][before:]
    assert [[c["items"] for c in b["calls"]] for b in batches] == [[3]]  # three candidates, one sample() call
    scores = json.loads(best.headers["X-Candidate-Scores"])
    assert best.headers["X-Candidates"] == "3" and best.headers["X-Chunks"] == "1"
    assert [(s["chunk"], s["seed"]) for s in scores] == [(0, 11), (0, 12), (0, 13)]
    assert len({s["cer"] for s in scores}) == 1  # the ASR judge hears "a" in all: the speaker judge decides
    chosen = max(scores, key=lambda s: s["similarity"])["seed"]
    assert best.headers["X-Chosen-Seed"] == str(chosen) and best.headers["X-Seed"] == "11"
    alone = requests.post(
        f"{official}/v1/tts", json={**body, "seed": chosen, "response_format": "pcm"}, timeout=TIMEOUT
    )
    assert alone.headers["X-Candidates"] == "1" and "X-Candidate-Scores" not in alone.headers
    assert np.abs(pcm(best.content) - pcm(alone.content)).max() <= 1  # that seed's own result (PCM16: +-1)
    stream = requests.post(
        f"{official}/v1/tts", json={**body, "candidates": 3, "stream": True, "response_format": "pcm"}, timeout=TIMEOUT
    )
    assert stream.status_code == 200 and stream.headers["X-Candidates"] == "3"
    assert "X-Chosen-Seed" not in stream.headers  # headers leave before the choice: a stream chooses chunk by chunk
    streamed, whole = pcm(stream.content) / 32767, pcm(best.content) / 32767  # the same choice, chunk by chunk
    peak = np.abs(streamed).max()  # the whole file is peak-limited as one, the stream clipped per sample
    np.testing.assert_allclose(streamed * min(1.0, 0.999 / max(peak, 1e-9)), whole, atol=3e-4)
    card = requests.get(f"{official}/v1/models", timeout=TIMEOUT).json()["data"][0]
    assert card["config"]["judges"]["speaker_model"].endswith("wavlm") and card["config"]["judges"]["device"] == "cpu"


def test_api_key_is_required_except_for_health(base, voice):
    anonymous = requests.post(f"{base}/v1/tts", json={"text": TEXTS[0], "voice": voice["id"]}, timeout=TIMEOUT)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.get(f"{base}/v1/voices", headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT)
    assert wrong.status_code == 401
    assert requests.get(f"{base}/healthz", timeout=TIMEOUT).json()["status"] == "ok"


# ---------------------------------------------------------------- overload and timeouts


@pytest.fixture(scope="module")
def busy(base, assets):
    """A second application with a one-request queue, 429 + Retry-After, no batching; local model folder."""
    settings = ServeSettings.from_args(
        {
            "model_uri": str(assets["local_model"]),
            "vocoder": str(assets["vocoder"]),
            "voices_uri": str(assets["root"] / "voices"),
            "default_nfe": 8,
            "batching": {"max_batch_size": 4},
            "limits": {"max_text_chars": 600},
        },
        environ={},
    )
    model_options = {
        **SMALL,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "backpressure_config": {"status_code": 429, "retry_after_s": 2},
        "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "max_batch_frames": 2048},
    }
    serve.run(
        build_application(settings, model_options=model_options, ingress_options=SMALL),
        name="busy",
        route_prefix="/busy",
    )
    return f"{base}/busy"


def test_user_config_sets_batching_at_run_time(busy):
    stats = serve.get_deployment_handle("TTSModel", "busy").get_stats.remote().result()
    assert (stats["max_batch_size"], stats["batch_wait_timeout_s"], stats["max_batch_frames"]) == (
        1,
        0.0,
        2048,
    )


def test_overload_gets_429_with_retry_after_quickly_and_nothing_hangs(busy, voice):
    body = {"text": LONG_TEXT[:300], "voice": voice["id"]}

    def request(_: int) -> tuple[requests.Response, float]:
        barrier.wait()
        start = time.monotonic()
        response = requests.post(f"{busy}/v1/tts", json=body, timeout=TIMEOUT)
        return response, time.monotonic() - start

    barrier = threading.Barrier(8)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(request, range(8)))
    statuses = sorted(r.status_code for r, _ in results)
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1 and statuses.count(429) >= 4, statuses
    for response, seconds in results:
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "2"
            assert response.json()["error"]["code"] == "overloaded"
            assert seconds < 10
    assert requests.post(f"{busy}/v1/tts", json=body, timeout=TIMEOUT).status_code == 200


def test_request_timeout_gives_408_and_the_replica_recovers(busy, voice):
    slow = requests.post(
        f"{busy}/v1/tts",
        json={"text": LONG_TEXT, "voice": voice["id"]},
        timeout=TIMEOUT,
        headers={"x-request-timeout-seconds": "0.5"},
    )
    assert slow.status_code == 408
    ok = requests.post(f"{busy}/v1/tts", json={"text": TEXTS[0], "voice": voice["id"]}, timeout=TIMEOUT)
    assert ok.status_code == 200


# ---------------------------------------------------------------- registry, models, rolling update


def test_models_endpoint_names_the_registered_version(base, http):
    card = http.get(f"{base}/v1/models").json()["data"][0]
    assert (card["name"], card["version"], card["alias"], card["id"]) == (
        REGISTERED,
        "1",
        "production",
        f"{REGISTERED}/1",
    )
    assert card["run_id"] and card["config"]["backbone"] == "DiT" and card["config"]["vocab_size"] > 100


def test_moving_the_alias_and_redeploying_rolls_the_model_without_failing_requests(base, http, voice, assets):
    mlflow.MlflowClient(assets["tracking_uri"], assets["tracking_uri"]).set_registered_model_alias(
        REGISTERED, "production", "2"
    )
    statuses, versions = [], []
    stop = threading.Event()

    def keep_requesting():
        while not stop.is_set():
            response = tts(http, base, text=TEXTS[6], voice=voice["id"], seed=1)
            statuses.append(response.status_code)
            versions.append(response.headers.get("X-Model-Version"))

    worker = threading.Thread(target=keep_requesting)
    worker.start()
    try:
        deploy_main(assets)  # returns when the new replicas are up
        card = http.get(f"{base}/v1/models").json()["data"][0]
        final = tts(http, base, text=TEXTS[6], voice=voice["id"], seed=1)  # the voice outlives the replicas
    finally:
        stop.set()
        worker.join(TIMEOUT)
    assert (card["version"], card["alias"]) == ("2", "production")
    assert final.status_code == 200 and final.headers["X-Model-Version"] == f"{REGISTERED}/2"
    assert statuses and set(statuses) == {200}, statuses
    assert versions[0] == f"{REGISTERED}/1"


# ---------------------------------------------------------------- speech editing and the synthesis knobs

EDIT_PATH, EDIT_TEXT = ROWS[1]
EDIT_SPANS = [[0.6, 1.0], [1.5, 1.9]]


def edit(http, base, **fields) -> requests.Response:
    body = {
        "audio": b64(EDIT_PATH.read_bytes()),
        "text": EDIT_TEXT,
        "new_text": TEXTS[3],
        "spans": EDIT_SPANS,
        "nfe": 2,
        **fields,
    }
    return http.post(f"{base}/v1/edit", json=body, timeout=TIMEOUT)


def test_edit_keeps_the_recording_outside_the_spans_sample_for_sample(base, http):
    response = edit(http, base, durations=[0.5, 0.3], seed=5, response_format="wav")
    assert response.status_code == 200, response.text
    assert (response.headers["X-Seed"], response.headers["X-Duration-Rule"]) == ("5", "given")
    original, _ = sf.read(EDIT_PATH, dtype="int16")
    edited, rate = sf.read(io.BytesIO(response.content), dtype="int16")
    new_frames = [round(0.5 * rate / HOP), round(0.3 * rate / HOP)]
    runs = kept_runs(EDIT_SPANS, new_frames, len(original))
    for index, (start, end, at) in enumerate(runs):  # bitwise, away from the fades next to the spans
        head, tail = (FADE if index > 0 else 0), (FADE if index < len(runs) - 1 else 0)
        assert np.array_equal(edited[at + head : at + end - start - tail], original[start + head : end - tail]), index
    spans = [tuple(map(float, span.split("-"))) for span in response.headers["X-Edited-Spans"].split(",")]
    for (first, last), frames, (run_start, run_end, at) in zip(spans, new_frames, runs, strict=False):
        assert first == pytest.approx((at + run_end - run_start) / rate, abs=1e-3)
        assert last - first == pytest.approx(frames * HOP / rate, abs=1e-3)
    assert edit(http, base, durations=[0.5, 0.3], seed=5, response_format="wav").content == response.content


def test_edit_and_knob_errors_are_422_naming_the_field(base, http, voice):
    cases = [
        (edit(http, base, spans=[[1.5, 1.9], [0.6, 1.0]]), "invalid_edit", "spans[1]"),
        (edit(http, base, spans=[[0.6, 1.6], [1.5, 1.9]]), "invalid_edit", "overlap"),
        (edit(http, base, spans=[[0.6, 9.0]]), "invalid_edit", "ends after the recording"),
        (edit(http, base, durations=[0.5]), "invalid_edit", "durations has 1 entries for 2 spans"),
        (edit(http, base, spans=[[0.6]]), "invalid_edit", "spans[0]"),
        (edit(http, base, nfe=64), "invalid_option", "nfe=64"),
        (edit(http, base, target_rms=2), "invalid_option", "target_rms=2"),
        (tts(http, base, text=TEXTS[0], voice=voice["id"], ode_method="rk4"), "invalid_request", "ode_method"),
        (tts(http, base, text=TEXTS[0], voice=voice["id"], fix_duration=600), "invalid_option", "fix_duration"),
        (tts(http, base, text=TEXTS[0], voice=voice["id"], cross_fade_duration=3), "invalid_option", "cross_fade"),
        (tts(http, base, text=TEXTS[0], voice=voice["id"], target_rms=0), "invalid_option", "target_rms=0"),
        (
            http.post(
                f"{base}/v1/audio/speech",
                json={"model": "m", "voice": "lan", "input": "a", "fix_duration": -1},
                timeout=TIMEOUT,
            ),
            "invalid_option",
            "fix_duration=-1",
        ),
    ]
    for response, code, named in cases:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code and named in response.json()["error"]["message"], response.text


def test_knobs_change_the_audio_as_they_say(base, http, voice):
    speak = {"text": LONG_TEXT, "voice": voice["id"], "seed": 2, "nfe": 2, "response_format": "pcm"}
    plain = tts(http, base, **speak)
    assert plain.status_code == 200 and int(plain.headers["X-Chunks"]) >= 2
    chunks = int(plain.headers["X-Chunks"])
    butt = tts(http, base, **speak, cross_fade_duration=0)
    assert pcm(butt.content).size - pcm(plain.content).size == int(0.15 * 24000) * (chunks - 1)
    midpoint = tts(http, base, **speak, ode_method="midpoint")
    assert midpoint.status_code == 200 and pcm(midpoint.content).size == pcm(plain.content).size
    # the rule itself is tested on a random model (tests/test_editing.py); this model's zero-initialised
    # output layer makes every flow zero, so here the batch log shows the rule the replica sampled with
    assert {call["ode_method"] for call in model_stats()["batches"][-1]["calls"]} == {"midpoint"}
    fixed = tts(http, base, **{**speak, "text": TEXTS[0]}, fix_duration=4.0)
    assert fixed.headers["X-Duration-Rule"] == "fixed"
    louder = tts(http, base, **speak, target_rms=0.9)
    assert louder.status_code == 200 and not np.array_equal(pcm(louder.content), pcm(plain.content))
    body = {"model": "m", "voice": voice["id"], "input": TEXTS[0], "seed": 4, "response_format": "pcm"}
    quiet = http.post(f"{base}/v1/audio/speech", json={**body, "remove_silence": True}, timeout=TIMEOUT)
    whole = tts(http, base, text=TEXTS[0], voice=voice["id"], seed=4, response_format="pcm", remove_silence=True)
    assert quiet.status_code == whole.status_code == 200
    assert np.abs(pcm(quiet.content) - pcm(whole.content)).max() <= 2

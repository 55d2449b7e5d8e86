"""Serving under load and under failure, at a small size on 127.0.0.1: liveness apart from synthesis,
readiness, bounded load with malformed requests mixed in, a SIGKILLed model replica, the 413 of an
oversized body, streamed formats, the OpenAI drop-in extras, CORS, and flowtts' metrics read back from
Ray's Prometheus endpoint.
"""

from __future__ import annotations

import io
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf

from flowtts.synthesis import init_vocos_folder
from serve.app import build_application
from serve.settings import ServeSettings
from tests.helpers.audio import decode_with_ffmpeg
from tests.helpers.models import save_tiny_model
from tests.test_serve import LONG_TEXT, REF_PATH, REF_TEXT, TEXTS, TEXTS_ALL, free_port

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

APP = "resilient"
TIMEOUT = 120
SMALL = {"ray_actor_options": {"num_cpus": 0.25}, "num_replicas": 1}  # one replica: no autoscaling
MODEL_OPTIONS = {
    **SMALL,
    "max_ongoing_requests": 8,
    "max_queued_requests": 16,
    "backpressure_config": {"status_code": 429, "retry_after_s": 1},
    "health_check_period_s": 2,
    "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "max_batch_frames": 4096},
}
SIX_SENTENCES = " ".join(TEXTS[:6])


@pytest.fixture(scope="module")
def cluster():
    """A private local Ray exporting metrics on a known port (or the session's, if one is up), and Serve."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _metrics_export_port=free_port(),
            _temp_dir=tempfile.mkdtemp(prefix="ray-res-", dir="/tmp"),
        )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    metrics_port = ray._private.worker.global_worker.node.metrics_export_port
    yield {"base": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    serve.shutdown()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def base(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("resilient")
    settings = ServeSettings.from_args(
        {
            "model_uri": str(save_tiny_model(root / "model", TEXTS_ALL, 0)),
            "vocoder": str(init_vocos_folder(root / "vocos", dim=32, intermediate_dim=64, num_layers=1)),
            "voices_uri": str(root / "voices"),
            "default_nfe": 2,
            "limits": {"max_text_chars": 600, "nfe_range": [2, 4], "max_upload_bytes": 300_000},
            "openai": {"max_input_chars": 900, "voices": {"alloy": "lan"}},
            "cors_origins": ["http://studio.example"],
        },
        environ={},
    )
    app = build_application(settings, model_options=MODEL_OPTIONS, ingress_options=SMALL)
    serve.run(app, name=APP, route_prefix="/")
    return cluster["base"]


@pytest.fixture(scope="module")
def voice(base):
    response = requests.post(
        f"{base}/v1/voices",
        files={"audio": ("ref.wav", REF_PATH.read_bytes(), "audio/wav")},
        data={"transcript": REF_TEXT, "name": "lan"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    return response.json()


def model_pid() -> int:
    return serve.get_deployment_handle("TTSModel", APP).get_stats.remote().result()["pid"]


def tts(base: str, **body) -> requests.Response:
    return requests.post(f"{base}/v1/tts", json=body, timeout=TIMEOUT)


class HealthWatch:
    """Polls ``/healthz`` in a thread; records every answer's status and seconds."""

    def __init__(self, base: str):
        self.base, self.results, self.stop = base, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                status = requests.get(f"{self.base}/healthz", timeout=5).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.results.append((status, time.monotonic() - start))
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(10)


# ---------------------------------------------------------------- probes


def test_healthz_is_the_ingress_alone_and_readyz_names_the_model(base, voice):
    health = requests.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{base}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["model_version"]


# ---------------------------------------------------------------- load


def mixed_requests(voice: dict, count: int) -> list[tuple[str, dict]]:
    """Valid short requests with malformed ones mixed in (about one in three)."""
    rng = random.Random(0)
    bad = [
        {"data": b'{"text": "a", "voice": '},  # malformed JSON: 400
        {"json": {"text": "xin chào", "voice": "nobody"}},  # unknown voice: 404
        {"json": {"text": "xin chào", "voice": voice["id"], "nfe": 64}},  # out of range: 422
        {"json": {"text": "a" * 700, "voice": voice["id"]}},  # too long: 413
        {"json": {"voice": voice["id"]}},  # no text: 422
    ]
    out = []
    for index in range(count):
        if index % 3 == 2:
            out.append(("bad", rng.choice(bad)))
        else:
            out.append(("good", {"json": {"text": TEXTS[index % 8][:60], "voice": voice["id"], "seed": index}}))
    return out


def test_load_with_malformed_requests_has_no_5xx_and_healthz_stays_fast(base, voice):
    def send(item):
        kind, kwargs = item
        response = requests.post(f"{base}/v1/tts", timeout=TIMEOUT, **kwargs)
        return kind, response.status_code, response.headers.get("Retry-After")

    with HealthWatch(base) as watch, ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, mixed_requests(voice, 240)))
    statuses = [status for _, status, _ in results]
    slowest = max(seconds for _, seconds in watch.results)
    print(f"load: {sorted(Counter(statuses).items())}; {len(watch.results)} /healthz probes, slowest {slowest:.3f} s")
    assert not [s for s in statuses if s >= 500], statuses
    assert all(retry for _, status, retry in results if status == 429)
    assert {status for kind, status, _ in results if kind == "bad"} <= {400, 404, 413, 422, 429}
    good = [status for kind, status, _ in results if kind == "good"]
    assert set(good) <= {200, 429} and good.count(200) >= 20, sorted(good)
    assert watch.results and all(status == 200 and seconds < 1.5 for status, seconds in watch.results), max(
        watch.results, key=lambda r: r[1]
    )


def test_a_killed_model_replica_gives_503_or_429_then_200_within_30_s(base, voice):
    body = {"text": TEXTS[1][:60], "voice": voice["id"]}
    outcomes, stop = [], threading.Event()

    def keep_requesting():
        while not stop.is_set():
            response = requests.post(f"{base}/v1/tts", json=body, timeout=TIMEOUT)
            outcomes.append((time.monotonic(), response.status_code, response.headers.get("Retry-After")))

    workers = [threading.Thread(target=keep_requesting) for _ in range(6)]
    for worker in workers:
        worker.start()
    try:
        loaded = time.monotonic() + 60  # the load is flowing: answers come back before the kill
        while time.monotonic() < loaded and not any(s == 200 for _, s, _ in outcomes):
            time.sleep(0.1)
        assert any(s == 200 for _, s, _ in outcomes), outcomes
        pid = model_pid()
        os.kill(pid, signal.SIGKILL)  # a replica of the app this module started
        killed = time.monotonic()
        deadline = killed + 60
        while time.monotonic() < deadline and not any(t > killed + 1 and s == 200 for t, s, _ in outcomes):
            time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(TIMEOUT)
    after = [(t, s, r) for t, s, r in outcomes if t > killed]
    failures = [(s, r) for _, s, r in after if s != 200]
    assert {s for s, _ in failures} <= {503, 429}, failures
    assert all(retry for _, retry in failures)
    first_ok = min(t for t, s, _ in after if s == 200 and t > killed + 1)
    print(f"kill: 200 again {first_ok - killed:.1f} s after SIGKILL; failures {sorted(Counter(failures).items())}")
    assert first_ok - killed < 30
    assert model_pid() != pid


# ---------------------------------------------------------------- bodies, streams, OpenAI


def test_a_40_mb_body_gets_the_413_json(base):
    response = requests.post(
        f"{base}/v1/tts",
        data=b'{"text": "' + b"a" * (40 * 1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac", "pcm"])
def test_every_streamable_format_streams_and_decodes(base, voice, fmt):
    body = {"text": SIX_SENTENCES, "voice": voice["id"], "seed": 5, "response_format": fmt, "stream": True}
    with requests.post(f"{base}/v1/tts", json=body, stream=True, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.text
        assert response.headers["X-Accel-Buffering"] == "no"
        pieces = [piece for piece in response.iter_content(chunk_size=None) if piece]
    assert int(response.headers["X-Chunks"]) >= 2 and len(pieces) >= 2
    data = b"".join(pieces)
    if fmt == "pcm":
        samples = len(data) // 2
    elif fmt == "wav":
        samples = (len(data) - 44) // 2
    elif fmt == "flac":  # announces no length: FFmpeg reads it, libsndfile does not
        samples = len(decode_with_ffmpeg(data)[0])
    else:
        samples = len(sf.read(io.BytesIO(data), dtype="float32")[0])
    assert samples > 24000  # several seconds of speech at 24 kHz


def test_streaming_sends_a_short_first_chunk(base, voice):
    body = {"text": SIX_SENTENCES, "voice": voice["id"], "seed": 5, "response_format": "pcm"}
    streamed = tts(base, **body, stream=True)
    whole = tts(base, **body)
    assert int(streamed.headers["X-Chunks"]) == int(whole.headers["X-Chunks"]) + 1
    assert abs(len(streamed.content) - len(whole.content)) < 0.2 * len(whole.content)


def test_openai_names_voices_listing_instructions_and_aac(base, voice):
    listing = requests.get(f"{base}/v1/audio/voices", timeout=TIMEOUT).json()
    assert listing["aliases"] == {"alloy": "lan"} and listing["voices"][:2] == ["alloy", "lan"]
    request = {"model": "tts-1", "voice": "alloy", "input": TEXTS[2], "instructions": "cheerful"}
    mp3 = requests.post(f"{base}/v1/audio/speech", json=request, timeout=TIMEOUT)
    assert mp3.status_code == 200 and mp3.headers["X-Instructions-Ignored"] == "true"
    assert mp3.headers["X-Accel-Buffering"] == "no" and sf.info(io.BytesIO(mp3.content)).format == "MP3"
    aac = requests.post(f"{base}/v1/audio/speech", json={**request, "response_format": "aac"}, timeout=TIMEOUT)
    assert aac.status_code == 200 and aac.headers["content-type"] == "audio/aac"
    assert aac.content[:2] in (b"\xff\xf1", b"\xff\xf9")  # ADTS sync word
    long_input = " ".join([LONG_TEXT] * 3)[:850]  # over /v1/tts' 600, within the OpenAI route's 900
    assert requests.post(f"{base}/v1/audio/speech", json={**request, "input": long_input}, timeout=TIMEOUT).ok
    too_long = requests.post(f"{base}/v1/audio/speech", json={**request, "input": "a" * 901}, timeout=TIMEOUT)
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "text_too_long"


def test_cors_only_for_configured_origins(base):
    allowed = requests.options(
        f"{base}/v1/tts",
        headers={"Origin": "http://studio.example", "Access-Control-Request-Method": "POST"},
        timeout=TIMEOUT,
    )
    assert allowed.status_code == 204 and allowed.headers["Access-Control-Allow-Origin"] == "http://studio.example"
    other = requests.get(f"{base}/healthz", headers={"Origin": "http://evil.example"}, timeout=TIMEOUT)
    assert "Access-Control-Allow-Origin" not in other.headers


# ---------------------------------------------------------------- metrics


def samples_of(text: str, prefix: str) -> list[tuple[str, float]]:
    """(labels, value) of every Prometheus sample whose name is ``prefix``."""
    out = []
    for line in text.splitlines():
        if line.startswith(prefix + "{") or line.startswith(prefix + " "):
            labels, value = line.rsplit(" ", 1)
            out.append((labels, float(value)))
    return out


def test_flowtts_metrics_reach_rays_prometheus_endpoint(cluster, base, voice):
    for _ in range(2):  # the second one finds the prepared reference in the replica's cache
        body = {"text": TEXTS[3][:60], "voice": voice["id"], "stream": True, "response_format": "mp3"}
        assert tts(base, **body).status_code == 200
    assert tts(base, text="xin chào", voice="nobody").status_code == 404

    def complete(text: str) -> bool:
        requests_ = [labels for labels, _ in samples_of(text, "ray_flowtts_requests_total")]
        cache = samples_of(text, "ray_flowtts_reference_cache_total")
        return (
            any('route="/v1/tts"' in r and 'status="200"' in r for r in requests_)
            and any('route="/v1/tts"' in r and 'status="404"' in r for r in requests_)
            and any('result="hit"' in labels and value > 0 for labels, value in cache)
            and all(
                samples_of(text, name)
                for name in (
                    "ray_flowtts_audio_seconds_total",
                    "ray_flowtts_time_to_first_audio_seconds_bucket",
                    "ray_flowtts_real_time_factor_bucket",
                    "ray_flowtts_batch_rows_bucket",
                    "ray_flowtts_queue_depth",
                )
            )
        )

    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline and not complete(text):
        time.sleep(2)
        text = requests.get(cluster["metrics"], timeout=10).text
    assert complete(text), [line for line in text.splitlines() if "flowtts" in line][:40]
    assert sum(value for _, value in samples_of(text, "ray_flowtts_audio_seconds_total")) > 1.0
    ttfa = samples_of(text, "ray_flowtts_time_to_first_audio_seconds_count")
    assert any('streamed="true"' in labels and value >= 2 for labels, value in ttfa), ttfa
    assert all(np.isfinite(value) for _, value in samples_of(text, "ray_flowtts_real_time_factor_sum"))

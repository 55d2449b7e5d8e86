"""Fast tests of the serving pieces that need no Ray: formats, voice store, batch packing, settings."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pytest
import soundfile as sf

from flowtts.model_source import ModelSourceError, resolve_model_source
from flowtts.synthesis import SamplingSettings, lead_chunks
from flowtts.synthesis.batching import GenerateWork, plan_generate_calls
from flowtts.voices import VoiceNameTakenError, VoiceNotFoundError, VoiceStore
from serve.audio_formats import (
    FORMATS,
    STREAMABLE_FORMATS,
    StreamEncoder,
    UnsupportedFormatError,
    content_type,
    encode_audio,
    pcm16_bytes,
    streaming_wav_header,
)
from serve.openai_compat import speech_voices
from serve.references import LRUCache
from serve.settings import OpenAISettings, ServeSettings
from tests.helpers import REPO
from tests.helpers.audio import decode_stream_wav, decode_with_ffmpeg

RATE = 24000


def tone(seconds: float = 1.0, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- audio formats


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in ("pcm", "aac")])
def test_every_file_format_decodes_back_to_the_same_length_and_rate(fmt):
    audio = tone(1.0)
    data, rate = sf.read(io.BytesIO(encode_audio(audio, RATE, fmt)), dtype="float32")
    assert rate == RATE
    assert abs(len(data) - len(audio)) <= 0.01 * RATE  # codecs may pad a few ms
    if fmt in ("wav", "flac"):  # lossless: the 16-bit samples come back exactly
        np.testing.assert_allclose(data, np.round(audio * 32767) / 32768, atol=1e-4)


def test_pcm_is_headerless_16_bit_little_endian_and_clipped():
    audio = np.array([0.0, 0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    raw = pcm16_bytes(audio)
    assert encode_audio(audio, RATE, "pcm") == raw
    np.testing.assert_array_equal(np.frombuffer(raw, "<i2"), [0, 16384, -16384, 32767, -32767])


def test_streamed_wav_is_header_plus_the_pcm_of_each_chunk():
    chunks = [tone(0.3, 200), tone(0.2, 300)]
    stream = streaming_wav_header(RATE) + b"".join(pcm16_bytes(c) for c in chunks)
    samples, rate = decode_stream_wav(stream)
    assert rate == RATE
    np.testing.assert_allclose(samples, np.concatenate(chunks), atol=1 / 32767)
    assert len(streaming_wav_header(RATE)) == 44


def test_unknown_format_is_refused_by_name():
    with pytest.raises(UnsupportedFormatError, match="'aiff'.*mp3"):
        content_type("aiff")
    assert content_type("mp3") == "audio/mpeg"
    with pytest.raises(UnsupportedFormatError, match="'aac' cannot be streamed"):
        StreamEncoder("aac", RATE)


def test_aac_is_an_adts_stream_ffmpeg_reads_back():
    data = encode_audio(tone(1.0), RATE, "aac")
    assert data[:2] in (b"\xff\xf1", b"\xff\xf9")  # ADTS sync word, MPEG-4 / MPEG-2
    samples, rate = decode_with_ffmpeg(data)
    assert rate == RATE and abs(len(samples) - RATE) <= 2048  # the encoder's priming and padding
    assert 0.2 < np.abs(samples[2048:-2048]).max() < 0.6


@pytest.mark.parametrize("fmt", STREAMABLE_FORMATS)
def test_stream_encoders_emit_bytes_before_the_end_and_decode_to_the_whole(fmt):
    audio = tone(3.0)
    encoder = StreamEncoder(fmt, RATE)
    pieces = [encoder.encode(chunk) for chunk in np.array_split(audio, 6)]
    last = encoder.finish()
    # incremental: most of the stream is out before finish() (Ogg pages hold up to about a second)
    assert sum(map(len, pieces)) > 0.6 * (sum(map(len, pieces)) + len(last)) and sum(1 for p in pieces if p) >= 3
    data = b"".join(pieces) + last
    if fmt == "pcm":
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32767
    elif fmt == "wav":
        samples, rate = decode_stream_wav(data)
    elif fmt == "flac":  # a streamed FLAC announces no length: libsndfile cannot read it, FFmpeg (browsers) can
        samples, rate = decode_with_ffmpeg(data)
    else:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert fmt == "pcm" or rate == RATE
    assert abs(len(samples) - len(audio)) <= 0.08 * RATE  # mp3 and opus pad a few frames
    if fmt in ("wav", "pcm", "flac"):  # lossless
        np.testing.assert_allclose(samples[: len(audio)], audio, atol=1e-4)


def test_lead_chunks_start_with_a_short_clause_and_keep_every_word():
    text = "Hôm nay trời đẹp quá, chúng ta đi chơi nhé. Tôi rất thích đi dạo trong công viên. Mọi người đều vui vẻ."
    chunks = lead_chunks(text, 120, 48)
    assert chunks[0] == "Hôm nay trời đẹp quá," and len(chunks) == 2  # the rest fits one chunk of 120 bytes
    assert " ".join(chunks).split() == text.split()
    words = "một hai ba bốn năm sáu bảy tám chín mười mười một mười hai"
    assert lead_chunks(words, 120, 19) == ["một hai ba bốn", "năm sáu bảy tám chín mười mười một mười hai"]
    assert lead_chunks("Xin chào bạn.", 120, 48) == ["Xin chào bạn."]  # short text: one chunk


# ---------------------------------------------------------------- voice store


def test_voice_store_round_trip_list_lookup_delete(tmp_path):
    store = VoiceStore(str(tmp_path / "voices"))
    voice = store.create(tone(1.5), RATE, "xin chào", name="lan")
    assert voice.id.startswith("voice_") and voice.duration_s == pytest.approx(1.5)
    # another store on the same location (another replica, or after a restart) sees it
    other = VoiceStore(str(tmp_path / "voices"))
    assert other.get(voice.id) == voice
    assert other.lookup("lan") == voice and other.lookup(voice.id) == voice
    audio, rate = sf.read(io.BytesIO(other.read_audio(voice)), dtype="float32")
    assert rate == RATE
    np.testing.assert_array_equal(audio, tone(1.5))
    second = other.create(tone(0.5), RATE, "một hai")
    assert [v.id for v in store.list()] == [voice.id, second.id]
    with pytest.raises(VoiceNameTakenError, match="'lan'"):
        store.create(tone(0.5), RATE, "ba", name="lan")
    store.delete(voice.id)
    with pytest.raises(VoiceNotFoundError):
        other.get(voice.id)
    assert [v.id for v in other.list()] == [second.id]


def test_voice_ids_that_could_name_a_path_are_never_opened(tmp_path):
    store = VoiceStore(str(tmp_path / "voices"))
    (tmp_path / "secret.json").write_text('{"id": "x"}')
    for bad in ("../secret", "/etc/passwd", "voice_../../secret", "voice_" + "g" * 24):
        with pytest.raises(VoiceNotFoundError):
            store.get(bad)
        with pytest.raises(VoiceNotFoundError):
            store.lookup(bad)


def test_voice_store_accepts_pyarrow_uris(tmp_path):
    store = VoiceStore(f"file://{tmp_path}/uri-voices")
    voice = store.create(tone(0.4), RATE, "a")
    assert (tmp_path / "uri-voices" / voice.id / "voice.json").is_file()


def test_lru_cache_evicts_the_least_recently_used():
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert (cache.hits, cache.misses) == (3, 1)


# ---------------------------------------------------------------- batch packing


@dataclass(frozen=True)
class Item:
    total_frames: int
    tag: str


KEY = SamplingSettings(nfe=8, cfg_strength=2.0, sway_sampling_coef=-1.0, use_epss=True)


def test_calls_are_grouped_by_sampling_settings_and_keep_every_item():
    other = replace(KEY, nfe=16)
    works = [
        GenerateWork((Item(100, "a0"), Item(80, "a1")), KEY),
        GenerateWork((Item(90, "b0"),), other),
        GenerateWork((Item(120, "c0"),), KEY),
    ]
    calls = plan_generate_calls(works, max_batch_frames=10_000)
    assert [c.sampling for c in calls] == [KEY, other]
    assert sorted(calls[0].slots) == [(0, 0), (0, 1), (2, 0)]
    assert calls[0].request_count == 2
    assert [i.tag for i in calls[0].items] == ["c0", "a0", "a1"]  # longest first
    for call in calls:
        for (w, i), item in zip(call.slots, call.items, strict=True):
            assert works[w].items[i] is item


def test_frame_cap_splits_a_long_request_and_runs_oversized_items_alone():
    works = [
        GenerateWork(tuple(Item(300, f"x{i}") for i in range(5)), KEY),
        GenerateWork((Item(2000, "huge"),), KEY),
    ]
    calls = plan_generate_calls(works, max_batch_frames=1000)
    assert [len(c.items) for c in calls] == [1, 3, 2]
    assert calls[0].items[0].tag == "huge" and calls[0].padded_frames == 2000
    assert all(c.padded_frames <= 1000 for c in calls[1:])
    assert sum(len(c.items) for c in calls) == 6


# ---------------------------------------------------------------- settings and model URIs


def test_settings_take_args_over_environment_over_defaults():
    env = {
        "FLOWTTS_MODEL_URI": "models:/env@prod",
        "FLOWTTS_VOICES_URI": "s3://b/voices",
        "FLOWTTS_API_KEY": "k",
    }
    settings = ServeSettings.from_args({"model_uri": "/ckpt", "batching": {"max_batch_size": 4}}, environ=env)
    assert settings.model_uri == "/ckpt" and settings.voices_uri == "s3://b/voices"
    assert settings.api_key.get_secret_value() == "k"
    assert settings.batching.max_batch_size == 4 and settings.batching.batch_wait_timeout_s == 0.05
    assert ServeSettings.from_args({}, environ={}).model_uri == "models:/flowtts@production"


def test_settings_reject_unknown_fields_and_bad_ranges():
    with pytest.raises(ValueError, match="max_batch_sise"):
        ServeSettings.from_args({"batching": {"max_batch_sise": 4}}, environ={})
    with pytest.raises(ValueError, match="nfe_range"):
        ServeSettings.from_args({"limits": {"nfe_range": [8, 4]}}, environ={})
    with pytest.raises(ValueError, match="default_nfe=2"):
        ServeSettings.from_args({"default_nfe": 2}, environ={})


def test_local_model_uri_must_be_an_existing_folder(tmp_path):
    (tmp_path / "flowtts.json").write_text("{}")  # what marks a checkpoint folder of ours
    source = resolve_model_source(str(tmp_path))
    assert (source.kind, source.load_uri, source.version) == ("folder", str(tmp_path), None)
    with pytest.raises(ModelSourceError, match="not a checkpoint folder"):
        resolve_model_source(str(tmp_path / "missing"))
    with pytest.raises(ModelSourceError, match="http://x"):
        resolve_model_source("http://x/y")
    run = resolve_model_source("runs:/abc123/checkpoint")
    assert (run.kind, run.run_id) == ("run", "abc123")


# ---------------------------------------------------------------- the Serve config file


def test_config_yaml_is_a_valid_serve_config_for_our_builder():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_app
    from serve.ingress import TTSIngress
    from serve.model_deployment import TTSModel
    from serve.settings import BatchingSettings

    path = REPO / "serve" / "config.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    assert app.import_path == "serve.app:build_app" and build_app.__name__ == "build_app"
    assert app.route_prefix == "/" and config.http_options.host == "127.0.0.1"
    settings = ServeSettings.from_args(app.args, environ={})
    assert settings.model_uri == "models:/flowtts@production"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {TTSModel.name, TTSIngress.name}
    model = deployments[TTSModel.name]
    batching = BatchingSettings.model_validate(model.user_config)
    assert model.max_ongoing_requests >= batching.max_batch_size
    assert model.max_queued_requests > 0 and model.backpressure_config.status_code == 429


def deployed_options(app, config=None) -> dict:
    """What Serve deploys for ``app``: each deployment's config and actor options as the controller receives them
    (through their protos), with a Serve config application's ``deployments:`` over them as ``serve deploy``
    applies them."""
    from ray.serve._private.application_state import override_deployment_info
    from ray.serve._private.build_app import build_app
    from ray.serve._private.deploy_utils import deploy_args_to_deployment_info

    built = build_app(app, name="flowtts")
    infos = {
        d.name: deploy_args_to_deployment_info(
            d.name, d._deployment_config.to_proto_bytes(), d._replica_config.to_proto_bytes(), "test", "flowtts"
        )
        for d in built.deployments
    }
    return {
        name: (
            info.deployment_config.model_dump(exclude={"user_configured_option_names"}),
            info.replica_config.ray_actor_options,
        )
        for name, info in override_deployment_info(infos, config).items()
    }


def test_a_python_built_app_deploys_what_config_yaml_deploys(monkeypatch):
    import yaml
    from ray._common.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_application
    from serve.ingress import TTSIngress
    from serve.model_deployment import TTSModel

    monkeypatch.setenv("FLOWTTS_MODEL_URI", "runs:/abc123/checkpoint")  # resolved without a registry
    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve" / "config.yaml").read_text()))
    (app,) = config.applications
    from_yaml = deployed_options(import_attr(app.import_path)(app.args), app)
    from_python = deployed_options(build_application(ServeSettings.from_args({})))
    assert from_python == from_yaml
    assert from_python["TTSModel"][0]["autoscaling_config"]["max_replicas"] > 1  # autoscaling without a config
    for deployment in (TTSModel, TTSIngress):  # the decorators set nothing
        assert not deployment._deployment_config.user_configured_option_names, deployment.name


# ---------------------------------------------------------------- streaming joins


@pytest.mark.parametrize("lengths", [[9000, 7000, 5000], [2000, 9000], [1000, 500, 8000, 300]])
def test_streamed_chunks_join_exactly_as_the_whole_utterance(lengths):
    from flowtts.synthesis import cross_fade
    from serve.streaming import CrossFadeJoiner

    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]
    joiner = CrossFadeJoiner(RATE)
    pieces = [joiner.push(wave) for wave in waves] + [joiner.finish()]
    assert len(pieces[0]) < len(waves[0])  # the fade tail is held back until the next chunk arrives
    np.testing.assert_allclose(np.concatenate(pieces), cross_fade(waves, RATE), atol=1e-7)


# ---------------------------------------------------------------- the HTTP layer


def test_bearer_check_needs_the_exact_header_only_when_a_key_is_set():
    from starlette.requests import Request

    from serve.http_access import check_bearer
    from serve.http_errors import ApiError

    def request(header: str | None) -> Request:
        headers = [] if header is None else [(b"authorization", header.encode())]
        return Request({"type": "http", "headers": headers})

    check_bearer(request("Bearer k"), "k")
    check_bearer(request(None), None)
    for wrong in (None, "Bearer x", "bearer k", "Bearer k "):
        with pytest.raises(ApiError) as refused:
            check_bearer(request(wrong), "k")
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        assert refused.value.headers == {"WWW-Authenticate": "Bearer"}


# ---------------------------------------------------------------- voice names at scale


def test_lookup_by_name_reads_the_name_index_not_the_whole_store(tmp_path):
    store = VoiceStore(str(tmp_path / "voices"))
    voice = store.create(tone(0.5), RATE, "xin chào", name="lan")
    broken = tmp_path / "voices" / ("voice_" + "e" * 24)  # an entry that fails anyone who lists the store
    broken.mkdir()
    (broken / "voice.json").write_text("{")
    with pytest.raises(ValueError):
        store.list()
    assert store.lookup("lan") == voice
    with pytest.raises(VoiceNotFoundError):
        store.lookup("mai")
    store.delete(voice.id)
    with pytest.raises(VoiceNotFoundError):
        store.lookup("lan")
    assert store.create(tone(0.5), RATE, "lại", name="lan").name == "lan"  # a deleted voice frees its name


def race_for_a_name(uri: str, racers: int = 8) -> tuple[list, VoiceStore]:
    """``racers`` stores (as on as many replicas) create a voice with the same name at once."""
    stores = [VoiceStore(uri) for _ in range(racers)]
    barrier = threading.Barrier(racers)

    def create(store: VoiceStore):
        barrier.wait()
        try:
            return store.create(tone(0.2), RATE, "một", name="same")
        except VoiceNameTakenError:
            return None

    with ThreadPoolExecutor(racers) as pool:
        winners = [v for v in pool.map(create, stores) if v is not None]
    return winners, stores[0]


def check_unique(winners: list, store: VoiceStore) -> None:
    named = [v for v in store.list() if v.name == "same"]
    assert len(winners) <= 1 and [v.id for v in named] == [v.id for v in winners]
    if winners:
        assert store.lookup("same") == winners[0]
    else:  # every racer saw another's claim: the name is still free
        assert store.create(tone(0.2), RATE, "một", name="same").name == "same"


def test_a_name_is_unique_across_racing_replicas(tmp_path):
    for round_ in range(3):
        check_unique(*race_for_a_name(str(tmp_path / f"voices-{round_}")))


def test_a_name_is_unique_across_racing_replicas_on_s3(s3_bucket):
    check_unique(*race_for_a_name(f"{s3_bucket}/voices"))


def test_openai_voice_listing_puts_mapped_names_first_and_drops_dangling_ones(tmp_path):
    store = VoiceStore(str(tmp_path / "voices"))
    lan = store.create(tone(0.3), RATE, "a", name="lan")
    unnamed = store.create(tone(0.3), RATE, "b")
    settings = OpenAISettings(voices={"alloy": "lan", "echo": unnamed.id, "nova": "deleted-voice"})
    listing = speech_voices(store.list(), settings)
    assert listing.aliases == {"alloy": "lan", "echo": unnamed.id}
    assert listing.voices == ["alloy", "echo", "lan", unnamed.id] and lan.name == "lan"


# ---------------------------------------------------------------- best of N: options and headers


def test_candidates_are_checked_against_the_limit_and_need_the_servers_judge():
    from serve.http_errors import ApiError
    from serve.job_options import synthesis_job
    from serve.messages import ReferenceSpec
    from serve.schemas import TTSRequest

    reference = ReferenceSpec(key="k", text="xin chào", voice_id="voice_x")
    plain = ServeSettings.from_args({}, environ={})
    judged = ServeSettings.from_args({"judges": {"asr_model": "/models/asr"}}, environ={})

    def job(settings, **fields):
        return synthesis_job(settings, TTSRequest(text="a", voice="v", **fields), "a", reference)

    assert job(plain).options.candidates == 1 and job(judged, candidates=8).options.candidates == 8
    for settings, candidates, code in (
        (judged, 9, "invalid_option"),
        (judged, 0, "invalid_option"),
        (plain, 2, "judge_required"),
    ):
        with pytest.raises(ApiError) as caught:
            job(settings, candidates=candidates)
        assert (caught.value.status, caught.value.code, caught.value.field) == (422, code, "candidates")
    assert "set judges.asr_model" in caught.value.message
    with pytest.raises(ValueError, match="set judges.asr_model too"):
        ServeSettings.from_args({"judges": {"speaker_model": "/models/wavlm"}}, environ={})


def test_candidate_headers_list_every_candidate_of_every_chunk_and_the_kept_seeds():
    import json

    from flowtts.evaluation.reranking import CandidateScore
    from flowtts.synthesis import ChunkChoice
    from serve.audio_responses import audio_headers
    from serve.messages import StreamStart, SynthesisReply

    choices = (
        ChunkChoice((CandidateScore(7, 0.5, 1.0, 0.25), CandidateScore(9, 0.123456, 0.5, 0.5)), chosen=1),
        ChunkChoice((CandidateScore(8, 0.0, 0.0, None), CandidateScore(10, 0.0, 0.0, None)), chosen=0),
    )
    reply = SynthesisReply(np.zeros(10, np.float32), 7, "byte_ratio", 2, RATE, "m/1", candidates=2, choices=choices)
    headers = audio_headers(reply)
    assert (headers["X-Candidates"], headers["X-Chosen-Seed"]) == ("2", "9,8")
    assert json.loads(headers["X-Candidate-Scores"]) == [
        {"chunk": 0, "seed": 7, "cer": 0.5, "similarity": 0.25},
        {"chunk": 0, "seed": 9, "cer": 0.1235, "similarity": 0.5},
        {"chunk": 1, "seed": 8, "cer": 0.0, "similarity": None},
        {"chunk": 1, "seed": 10, "cer": 0.0, "similarity": None},
    ]
    plain = audio_headers(SynthesisReply(np.zeros(10, np.float32), 7, "byte_ratio", 1, RATE, "m/1"))
    assert plain["X-Candidates"] == "1" and "X-Candidate-Scores" not in plain and "X-Chosen-Seed" not in plain
    streamed = audio_headers(StreamStart(7, "byte_ratio", 2, RATE, "m/1", candidates=3))
    assert streamed["X-Candidates"] == "3" and "X-Chosen-Seed" not in streamed


class FailingHandle:
    """What a DeploymentHandle gives the ingress when the call fails with ``error``."""

    def __init__(self, error: Exception):
        self.error = error

    def options(self, **_):
        return self

    def __getattr__(self, method: str):
        async def fail(*_):
            raise self.error

        return type(method, (), {"remote": staticmethod(fail)})


def test_a_lost_replica_or_a_reply_lost_with_its_node_is_a_503_with_retry_after_and_other_errors_pass():
    """A replica that died (or became unreachable), and a finished reply lost with the node whose object store
    held it (Ray raises ``ObjectReconstructionFailedError`` when that node dies before the ingress fetched
    it), are 503 ``model_unavailable`` with ``Retry-After``; any other error is not turned into a 503."""
    import asyncio

    from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectReconstructionFailedError
    from ray.serve.exceptions import BackPressureError

    from serve.http_errors import ApiError
    from serve.messages import SynthesisJob
    from serve.model_client import ModelClient

    job = SynthesisJob.__new__(SynthesisJob)  # never looked at: the call fails first
    lost = (
        ActorDiedError(),
        ActorUnavailableError("the actor is unavailable", b"\0" * 16),
        ObjectReconstructionFailedError("c2668a65bda616c1", call_site=""),
    )
    for error in lost:
        with pytest.raises(ApiError) as caught:
            asyncio.run(ModelClient(FailingHandle(error)).synthesize(job))
        assert (caught.value.status, caught.value.code) == (503, "model_unavailable"), error
        assert int(caught.value.headers["Retry-After"]) >= 1 and type(error).__name__ in caught.value.message
    full = BackPressureError(num_queued_requests=8, max_queued_requests=8)
    with pytest.raises(ApiError) as caught:
        asyncio.run(ModelClient(FailingHandle(full)).health())
    assert caught.value.code == "overloaded" and "Retry-After" in caught.value.headers
    with pytest.raises(ZeroDivisionError):
        asyncio.run(ModelClient(FailingHandle(ZeroDivisionError("a bug"))).describe())

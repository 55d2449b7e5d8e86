"""Request bodies -> jobs (``serve.job_options``), without Ray: every knob's range, the edit job, its headers."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf

from flowtts.synthesis import CROSS_FADE_S, TARGET_RMS, SamplingSettings
from serve.audio_responses import audio_headers
from serve.http_errors import ApiError
from serve.job_options import edit_job, synthesis_job
from serve.messages import ReferenceSpec, SynthesisReply
from serve.request_bodies import parse_model
from serve.schemas import EditRequest, SpeechRequest, TTSRequest
from serve.settings import ServeSettings

SETTINGS = ServeSettings.from_args(
    {"default_nfe": 8, "limits": {"nfe_range": [2, 16], "max_fix_duration_s": 30}}, environ={}
)
REFERENCE = ReferenceSpec(key="voice_x:abc", text="xin chào", voice_id="voice_x")


def wav_b64(seconds: float = 1.0) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, np.full(int(24000 * seconds), 0.1, dtype=np.float32), 24000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def tts_job(**fields):
    req = parse_model(TTSRequest, json.dumps({"text": "chào", "voice": "lan", **fields}).encode())
    return synthesis_job(SETTINGS, req, req.text, REFERENCE)


def test_the_knobs_reach_the_job():
    job = tts_job(
        ode_method="midpoint", fix_duration=4.5, remove_silence=True, cross_fade_duration=0.05, target_rms=0.2
    )
    assert job.options.sampling == SamplingSettings(nfe=8, ode_method="midpoint")
    assert (job.options.fix_duration, job.options.remove_silence, job.options.cross_fade_duration) == (4.5, True, 0.05)
    assert job.reference == ReferenceSpec(key="voice_x:abc", text="xin chào", voice_id="voice_x", target_rms=0.2)
    default = tts_job()
    assert default.options.sampling == SETTINGS.default_sampling and default.options.sampling.ode_method == "euler"
    assert (default.options.cross_fade_duration, default.reference.target_rms) == (CROSS_FADE_S, TARGET_RMS)
    speech = parse_model(
        SpeechRequest,
        json.dumps({"model": "m", "voice": "lan", "input": "chào", "ode_method": "midpoint", "unknown": 1}).encode(),
    )
    assert synthesis_job(SETTINGS, speech, speech.input, REFERENCE).options.sampling.ode_method == "midpoint"


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"ode_method": "rk4"}, "invalid_request", "ode_method"),
        ({"remove_silence": "sometimes"}, "invalid_request", "remove_silence"),
        ({"fix_duration": 31}, "invalid_option", "fix_duration=31"),
        ({"fix_duration": 0}, "invalid_option", "fix_duration=0"),
        ({"fix_duration": -2}, "invalid_option", "fix_duration=-2"),
        ({"cross_fade_duration": -0.1}, "invalid_option", "cross_fade_duration=-0.1"),
        ({"cross_fade_duration": 1.5}, "invalid_option", "cross_fade_duration=1.5"),
        ({"nfe": 32}, "invalid_option", "nfe=32"),
        ({"speed": 9}, "invalid_option", "speed=9"),
    ],
)
def test_each_knob_out_of_range_is_a_422_naming_it(fields, code, named):
    with pytest.raises(ApiError) as caught:
        tts_job(**fields)
    assert (caught.value.status, caught.value.code) == (422, code) and named in caught.value.message


def edit_request(**fields) -> EditRequest:
    body = {"audio": wav_b64(), "text": "xin chào", "new_text": "xin chào bạn", "spans": [[0.2, 0.5]], **fields}
    return parse_model(EditRequest, json.dumps(body).encode())


def test_edit_job_carries_the_request():
    job = edit_job(SETTINGS, edit_request(durations=[0.4], nfe=4, seed=9, ode_method="midpoint", target_rms=0.3))
    assert job.audio.shape == (24000,) and job.spans == ((0.2, 0.5),) and job.durations == (0.4,)
    assert job.sampling == SamplingSettings(nfe=4, ode_method="midpoint") and (job.seed, job.target_rms) == (9, 0.3)
    assert edit_job(SETTINGS, edit_request()).durations is None


@pytest.mark.parametrize(
    ("fields", "status", "code", "named"),
    [
        ({"spans": "0.2-0.5"}, 422, "invalid_request", "spans"),
        ({"spans": None}, 422, "invalid_request", "spans"),
        ({"durations": ["long"]}, 422, "invalid_request", "durations"),
        ({"new_text": ""}, 422, "invalid_request", "new_text"),
        ({"audio": "###"}, 400, "malformed_base64", "audio"),
        ({"nfe": 1}, 422, "invalid_option", "nfe=1"),
        ({"extra": 1}, 422, "invalid_request", "extra"),
    ],
)
def test_bad_edit_requests_name_the_field(fields, status, code, named):
    with pytest.raises(ApiError) as caught:
        edit_job(SETTINGS, edit_request(**fields))
    assert (caught.value.status, caught.value.code) == (status, code) and named in caught.value.message


def test_edit_replies_report_the_regenerated_spans():
    reply = SynthesisReply(
        audio=np.zeros(10, dtype=np.float32),
        seed=3,
        duration_rule="given",
        chunks=1,
        sample_rate=24000,
        model_version="m/1",
        edited_spans=((0.5, 1.2), (1.88, 2.1333)),
    )
    headers = audio_headers(reply)
    assert headers["X-Edited-Spans"] == "0.500-1.200,1.880-2.133" and headers["X-Duration-Rule"] == "given"
    assert "X-Edited-Spans" not in audio_headers(SynthesisReply(**{**reply.__dict__, "edited_spans": ()}))

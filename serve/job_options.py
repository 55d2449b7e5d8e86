"""Request bodies -> the jobs the model replica runs, within the deployment's limits.

Ranges the deployment sets (``nfe``, ``speed``, ``fix_duration``, ``candidates``) are checked here, and
``candidates`` > 1 needs the deployment's ASR judge (422 ``judge_required`` naming ``judges.asr_model``);
ranges the core library owns (``cross_fade_duration``, ``target_rms``, spans and durations) by the library,
its errors becoming the same 422 ``invalid_option`` / ``invalid_edit`` answers, each naming the field.
"""

from __future__ import annotations

from dataclasses import replace

from flowtts.synthesis import CROSS_FADE_S, TARGET_RMS, InvalidOptionsError, SamplingSettings, SynthesisOptions
from serve.http_errors import ApiError
from serve.messages import EditJob, ReferenceSpec, SynthesisJob
from serve.request_bodies import check_text_length, decode_base64, decode_reference_audio
from serve.schemas import EditRequest, SamplingFields, SpeechRequest, TTSRequest
from serve.settings import ServeSettings


def out_of_range(name: str, value: float, low: float, high: float) -> ApiError:
    return ApiError(422, "invalid_option", f"{name}={value} is outside the allowed range [{low}, {high}]", field=name)


def sampling_settings(settings: ServeSettings, req: SamplingFields) -> SamplingSettings:
    low, high = settings.limits.nfe_range
    if req.nfe is not None and not low <= req.nfe <= high:
        raise out_of_range("nfe", req.nfe, low, high)
    given = {
        "nfe": req.nfe,
        "cfg_strength": req.cfg_strength,
        "sway_sampling_coef": req.sway_sampling_coef,
        "ode_method": req.ode_method,
    }
    return replace(settings.default_sampling, **{k: v for k, v in given.items() if v is not None})


def synthesis_job(
    settings: ServeSettings, req: TTSRequest | SpeechRequest, text: str, reference: ReferenceSpec
) -> SynthesisJob:
    limits = settings.limits
    speed = 1.0 if req.speed is None else req.speed
    if not limits.speed_range[0] <= speed <= limits.speed_range[1]:
        raise out_of_range("speed", speed, *limits.speed_range)
    if req.fix_duration is not None and req.fix_duration > limits.max_fix_duration_s:
        raise out_of_range("fix_duration", req.fix_duration, 0, limits.max_fix_duration_s)
    candidates = 1 if req.candidates is None else req.candidates
    if not 1 <= candidates <= limits.max_candidates:
        raise out_of_range("candidates", candidates, 1, limits.max_candidates)
    if candidates > 1 and settings.judges.asr_model is None:
        raise ApiError(
            422,
            "judge_required",
            f"candidates={candidates} needs an ASR judge on the server to choose among them, and none is configured: "
            "set judges.asr_model (an ASR model folder or cached repo id) in the Serve config's args",
            field="candidates",
        )
    try:
        options = SynthesisOptions(
            sampling=sampling_settings(settings, req),
            speed=speed,
            seed=req.seed,
            fix_duration=req.fix_duration,
            remove_silence=req.remove_silence,
            cross_fade_duration=CROSS_FADE_S if req.cross_fade_duration is None else req.cross_fade_duration,
            candidates=candidates,
        )
    except InvalidOptionsError as exc:
        raise ApiError(422, "invalid_option", str(exc)) from exc
    reference = replace(reference, target_rms=TARGET_RMS if req.target_rms is None else req.target_rms)
    return SynthesisJob(text=text, reference=reference, options=options)


def edit_job(settings: ServeSettings, req: EditRequest) -> EditJob:
    for name in ("text", "new_text"):
        check_text_length(getattr(req, name), settings.limits.max_text_chars, name)
    audio = decode_reference_audio(decode_base64(req.audio, "audio"), settings.limits, "audio")
    return EditJob(
        audio=audio,
        text=req.text,
        new_text=req.new_text,
        spans=tuple(tuple(span) for span in req.spans),
        durations=None if req.durations is None else tuple(req.durations),
        sampling=sampling_settings(settings, req),
        seed=req.seed,
        target_rms=TARGET_RMS if req.target_rms is None else req.target_rms,
    )

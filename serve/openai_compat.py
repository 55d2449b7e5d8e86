"""The OpenAI drop-in's own rules: OpenAI voice names mapped to stored voices, the voices listing, and
what is accepted but not used (``instructions``: reported in ``X-Instructions-Ignored``), and the routes
that keep OpenAI's error shape."""

from __future__ import annotations

from flowtts.voices import Voice
from serve.schemas import SpeechRequest, SpeechVoices
from serve.settings import OpenAISettings

INSTRUCTIONS_HEADER = "X-Instructions-Ignored"
# Routes in OpenAI's shape: their errors stay {"error": {"code", "message"}}, without our "field".
OPENAI_ROUTES = ("/v1/audio/speech", "/v1/audio/voices", "/v1/models")


def stored_voice_key(req: SpeechRequest, settings: OpenAISettings) -> str:
    """The stored voice id or name a request's ``voice`` means (a configured OpenAI name maps to one)."""
    return settings.voices.get(req.voice_key, req.voice_key)


def ignored_headers(req: SpeechRequest) -> dict[str, str]:
    return {INSTRUCTIONS_HEADER: "true"} if req.instructions else {}


def speech_voices(stored: list[Voice], settings: OpenAISettings) -> SpeechVoices:
    """Every ``voice`` value that works: configured OpenAI names, then stored names (ids of unnamed ones)."""
    known = {v.id for v in stored} | {v.name for v in stored if v.name}
    aliases = {name: target for name, target in settings.voices.items() if target in known}
    names = [*aliases, *(v.name or v.id for v in stored if (v.name or v.id) not in aliases)]
    return SpeechVoices(voices=names, aliases=aliases)

"""Typed errors of the synthesis path; all are ValueErrors so callers can map them to client errors."""

from __future__ import annotations


class SynthesisError(ValueError):
    """A synthesis request cannot be served as given; the message names the bad value."""


class ReferenceAudioError(SynthesisError):
    """The reference audio is not audio, is too short after trimming, or is silent."""


class EmptyTextError(SynthesisError):
    """The text to speak, or the reference transcript, is empty."""


class UnspeakableTextError(SynthesisError):
    """After the text front end nothing speakable (no letter or digit) is left."""


class InvalidOptionsError(SynthesisError):
    """A sampling option is out of range (names the option and what is allowed)."""


class InvalidEditError(SynthesisError):
    """A speech edit's spans or durations do not fit the recording (names the span and the rule)."""


class JudgeRequiredError(SynthesisError):
    """Several candidates were asked for, and no ASR judge is loaded to choose among them."""

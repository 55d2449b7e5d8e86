"""Synthesis: reference voice + text in, natural 24 kHz speech out, as upstream F5-TTS inference does it."""

from flowtts.synthesis.candidates import CandidateJudges, ChunkChoice, VoicePrinter, candidate_items
from flowtts.synthesis.chunking import (
    CROSS_FADE_S,
    balanced_chunks,
    chunk_text,
    cross_fade,
    lead_chunks,
    max_chunk_bytes,
)
from flowtts.synthesis.duration_rules import byte_ratio_frames, fixed_frames
from flowtts.synthesis.editing import EDIT_FADE_S, EditPlan, EditResult, check_spans
from flowtts.synthesis.errors import (
    EmptyTextError,
    InvalidEditError,
    InvalidOptionsError,
    JudgeRequiredError,
    ReferenceAudioError,
    SynthesisError,
    UnspeakableTextError,
)
from flowtts.synthesis.multivoice import Segment, UnknownVoiceError, VoicedPlan, split_voice_tags, voice_names
from flowtts.synthesis.output import OUTPUT_FORMATS, encode_audio, output_format, write_output
from flowtts.synthesis.planning import SampleItem, SynthesisOptions, SynthesisPlan, plan_synthesis
from flowtts.synthesis.reference import TARGET_RMS, Reference, prepare_reference
from flowtts.synthesis.sampling import SamplingSettings
from flowtts.synthesis.synthesizer import SynthesisResult, Synthesizer
from flowtts.synthesis.transcription import Transcriber, TranscriptRequiredError
from flowtts.synthesis.vocoder import (
    DEFAULT_VOCOS_REPO,
    GriffinLimVocoder,
    Vocoder,
    VocoderError,
    VocosVocoder,
    init_vocos_folder,
    load_vocoder,
)

__all__ = [
    "CandidateJudges",
    "ChunkChoice",
    "JudgeRequiredError",
    "VoicePrinter",
    "candidate_items",
    "CROSS_FADE_S",
    "DEFAULT_VOCOS_REPO",
    "EDIT_FADE_S",
    "OUTPUT_FORMATS",
    "TARGET_RMS",
    "EditPlan",
    "EditResult",
    "EmptyTextError",
    "GriffinLimVocoder",
    "InvalidEditError",
    "InvalidOptionsError",
    "Reference",
    "ReferenceAudioError",
    "SampleItem",
    "Segment",
    "SamplingSettings",
    "SynthesisError",
    "SynthesisOptions",
    "SynthesisPlan",
    "SynthesisResult",
    "Synthesizer",
    "Transcriber",
    "TranscriptRequiredError",
    "UnknownVoiceError",
    "UnspeakableTextError",
    "Vocoder",
    "VocoderError",
    "VocosVocoder",
    "VoicedPlan",
    "balanced_chunks",
    "byte_ratio_frames",
    "check_spans",
    "chunk_text",
    "cross_fade",
    "encode_audio",
    "fixed_frames",
    "init_vocos_folder",
    "load_vocoder",
    "lead_chunks",
    "max_chunk_bytes",
    "output_format",
    "plan_synthesis",
    "prepare_reference",
    "split_voice_tags",
    "voice_names",
    "write_output",
]

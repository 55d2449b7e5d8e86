"""The MLflow pyfunc model that training registers: speech from text + a reference voice.

``import flowtts`` never imports this module: the pyfunc class needs ``mlflow.pyfunc`` at class
definition, so only registry code (training, the tests' registry helper) imports it. Fetching a
registered model's checkpoint is ``flowtts.model_source``'s job.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import mlflow.pyfunc
import pandas as pd

from flowtts.model_source import CHECKPOINT_ARTIFACT

OFFICIAL_ARTIFACT, VOCODER_ARTIFACT = "official", "vocoder"
PYFUNC_COLUMNS = ("text", "ref_audio", "ref_text")
PYFUNC_PARAMS = {"seed": 0, "nfe": 32, "cfg_strength": 2.0, "speed": 1.0}


class FlowTTSPyfunc(mlflow.pyfunc.PythonModel):
    """Speech from text + a reference voice. Input: a DataFrame with ``text``, ``ref_audio`` (base64 of
    an audio file, e.g. WAV) and ``ref_text``; output: one base64 WAV (24 kHz, 16-bit) per row.
    Params ``seed``, ``nfe``, ``cfg_strength`` and ``speed`` apply to every row of a call.

    Artifacts: ``checkpoint`` (a folder in our format), ``official`` (the EMA weights as an official
    ``.safetensors``) and optionally ``vocoder`` (a Vocos folder; without it Griffin-Lim is used).
    """

    def load_context(self, context) -> None:
        from flowtts.synthesis import Synthesizer

        self.synthesizer = Synthesizer.from_pretrained(
            context.artifacts[CHECKPOINT_ARTIFACT], vocoder=context.artifacts.get(VOCODER_ARTIFACT)
        )

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from flowtts.audio import write_audio
        from flowtts.synthesis import SamplingSettings, SynthesisOptions

        missing = [c for c in PYFUNC_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks columns {missing}; expected {list(PYFUNC_COLUMNS)}")
        settings = {**PYFUNC_PARAMS, **(params or {})}
        options = SynthesisOptions(
            sampling=SamplingSettings(nfe=int(settings["nfe"]), cfg_strength=float(settings["cfg_strength"])),
            seed=int(settings["seed"]),
            speed=float(settings["speed"]),
        )
        outputs = []
        for row in model_input.itertuples(index=False):
            reference = self.synthesizer.prepare_reference(base64.b64decode(row.ref_audio), row.ref_text)
            result = self.synthesizer.synthesize(row.text, reference, options)
            buffer = io.BytesIO()
            write_audio(buffer, result.audio, result.sample_rate, format="WAV")
            outputs.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return outputs


def pyfunc_signature():
    """String columns in, one base64 WAV string per row out, sampling params with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    params = [
        ParamSpec("seed", "long", 0),
        ParamSpec("nfe", "long", 32),
        ParamSpec("cfg_strength", "double", 2.0),
        ParamSpec("speed", "double", 1.0),
    ]
    return ModelSignature(
        inputs=Schema([ColSpec("string", name) for name in PYFUNC_COLUMNS]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(params),
    )

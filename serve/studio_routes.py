"""The routes the studio page adds to the ingress: the page itself (``/`` and ``/studio/<file>``, shipped in
``serve/studio/``), a stored voice's audio, the model registry's versions with their evaluation reports, and
the Train routes.

The routes are plain functions on a router that ``serve.ingress`` includes; they reach the serving
``TTSIngress`` replica through ``http_access.ingress_replica``. All but the page need the API key (a report's
files take the signed token of their link instead, see ``serve.registry_view``); the Train routes answer
404 ``training_disabled`` unless ``training.enabled`` is set in the serve config.

No ``from __future__ import annotations`` here: FastAPI reads the real annotations of the routes.
"""

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from flowtts.config import preset_names
from serve.http_access import AUTHORIZED, ingress_replica
from serve.http_errors import ApiError
from serve.registry_view import check_report_token, evaluation_file, registry_view
from serve.request_bodies import json_body, json_body_schema
from serve.schemas import RegistryView, TrainJobInfo, TrainJobList, TrainRequest
from serve.training_jobs import TrainingJobs

STUDIO_FOLDER = Path(__file__).resolve().parent / "studio"  # package data of serve
CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter()
REPLICA = Depends(ingress_replica)


def studio_file(name: str) -> Response:
    """A file of the page by its bare name; anything else (a path, an unknown file) is 404."""
    path = STUDIO_FOLDER / name
    if "/" in name or "\\" in name or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise ApiError(404, "not_found", f"the studio has no file {name!r}")
    return Response(path.read_bytes(), media_type=f"{CONTENT_TYPES[path.suffix]}; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/", include_in_schema=False)
async def studio_page() -> Response:
    return studio_file("index.html")


@router.get("/studio/{name}", include_in_schema=False)
async def studio_asset(name: str) -> Response:
    return studio_file(name)


@router.get("/v1/voices/{voice_id}/audio", dependencies=AUTHORIZED, response_class=Response)
async def voice_audio(voice_id: str, ingress: Any = REPLICA) -> Response:
    """The stored reference audio of a voice (24 kHz mono WAV)."""
    voice = await ingress._voice(voice_id)
    data = await asyncio.to_thread(ingress.voices.read_audio, voice)
    return Response(data, media_type="audio/wav")


async def served_registry_name(ingress: Any) -> str:
    info = await ingress.model.describe()
    if info.version is None:
        raise ApiError(404, "no_registry", f"the served model {info.uri!r} is not from a model registry")
    return info.name


@router.get("/v1/registry", dependencies=AUTHORIZED, response_model=RegistryView)
async def registry(ingress: Any = REPLICA) -> RegistryView:
    """The served registered model's versions (newest first) with aliases and held-out metrics."""
    name = await served_registry_name(ingress)
    return await asyncio.to_thread(registry_view, name, ingress.settings.tracking_uri, ingress.api_key)


@router.get("/v1/registry/{version}/evaluation/{token}/{filename}", include_in_schema=False)
async def evaluation_report_file(version: str, token: str, filename: str, ingress: Any = REPLICA) -> Response:
    """A file of a version's evaluation report (``report.html`` and the wavs and PNGs it shows), for a browser
    tab: the signed ``token`` of the registry view's link stands for the key. The report cannot run scripts."""
    check_report_token(ingress.api_key, version, token)
    name = await served_registry_name(ingress)
    data, kind = await asyncio.to_thread(evaluation_file, name, version, filename, ingress.settings.tracking_uri)
    return Response(data, media_type=kind, headers={**PAGE_HEADERS, "Content-Security-Policy": "sandbox"})


def training(ingress: Any = REPLICA) -> TrainingJobs:
    if ingress.training is None:
        raise ApiError(
            404, "training_disabled", "training is off on this server (training.enabled in the serve config)"
        )
    return ingress.training


TRAINING = Depends(training)  # before the body (TRAIN_BODY): 404 when training is off
TRAIN_BODY = json_body(TrainRequest, max_bytes=65536)


@router.get("/v1/train", dependencies=AUTHORIZED, response_model=TrainJobList)
async def list_training_jobs(ingress: Any = REPLICA) -> TrainJobList:
    jobs = await asyncio.to_thread(training(ingress).list)
    return TrainJobList(presets=preset_names(), jobs=jobs)


@router.post(
    "/v1/train",
    dependencies=AUTHORIZED,
    status_code=201,
    response_model=TrainJobInfo,
    openapi_extra=json_body_schema(TrainRequest),
)
async def submit_training_job(
    jobs: TrainingJobs = TRAINING, req: TrainRequest = TRAIN_BODY, ingress: Any = REPLICA
) -> TrainJobInfo:
    """Submit ``jobs/train.py`` as a Ray job; its version registers under the served model's name."""
    name = jobs.settings.registered_model or await served_registry_name(ingress)
    return await asyncio.to_thread(jobs.submit, req, name)


@router.get("/v1/train/{job_id}", dependencies=AUTHORIZED, response_model=TrainJobInfo)
async def training_job(job_id: str, ingress: Any = REPLICA) -> TrainJobInfo:
    """Status, log tail, loss curve (MLflow) and, once it succeeded, the version it registered."""
    return await asyncio.to_thread(training(ingress).get, job_id)


@router.post("/v1/train/{job_id}/stop", dependencies=AUTHORIZED, response_model=TrainJobInfo)
async def stop_training_job(job_id: str, ingress: Any = REPLICA) -> TrainJobInfo:
    return await asyncio.to_thread(training(ingress).stop, job_id)

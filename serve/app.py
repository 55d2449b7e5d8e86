"""The application builder: typed settings -> a Ray Serve application (ingress + batched model).

Used by ``serve run serve/config.yaml`` / ``serve deploy`` (``import_path: serve.app:build_app`` with
``args:`` = ``serve.settings.ServeSettings``) and by Python (``serve.run(build_application(settings))``).

A registry alias (``models:/flowtts@production``) is pinned to its version HERE, once, so every replica
of the deployment loads the same version even if the alias moves while replicas start. Re-deploying
after moving the alias therefore produces new deployment arguments and Serve replaces the replicas with
a rolling update (with ``serve deploy`` the config must change for that, e.g. ``args.revision``, because
Serve only rebuilds an application whose config changed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.serve import Application

from flowtts.model_source import resolve_model_source
from serve.ingress import TTSIngress
from serve.model_deployment import TTSModel
from serve.settings import ServeSettings


def build_application(
    settings: ServeSettings,
    *,
    loader: Callable | None = None,
    model_options: dict[str, Any] | None = None,
    ingress_options: dict[str, Any] | None = None,
) -> Application:
    """The bound application. ``loader(settings, source) -> Synthesizer`` replaces the default loader;
    ``*_options`` are ``Deployment.options(...)`` overrides (a Serve config's ``deployments:`` also are)."""
    source = resolve_model_source(settings.model_uri, settings.tracking_uri)
    model_options = {"user_config": settings.batching.model_dump(), **(model_options or {})}
    model = TTSModel.options(**model_options).bind(settings, source, loader)
    return TTSIngress.options(**(ingress_options or {})).bind(settings, model)


def build_app(args: dict[str, Any]) -> Application:
    """Entry point for Serve configs: ``import_path: serve.app:build_app`` with ``args:`` = ServeSettings."""
    return build_application(ServeSettings.from_args(args))

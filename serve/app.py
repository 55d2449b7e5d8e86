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
from ray.serve.schema import DeploymentSchema

from flowtts.model_source import resolve_model_source
from flowtts.usage_reporting import usage_reporting_off
from serve.ingress import TTSIngress
from serve.model_deployment import TTSModel
from serve.settings import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, ServeSettings


def build_application(
    settings: ServeSettings,
    *,
    loader: Callable | None = None,
    model_options: dict[str, Any] | None = None,
    ingress_options: dict[str, Any] | None = None,
) -> Application:
    """The bound application with each deployment's options from ``serve.settings`` (``MODEL_DEPLOYMENT``,
    ``INGRESS_DEPLOYMENT``; the model's ``user_config`` is ``settings.batching``). ``loader(settings, source) ->
    Synthesizer`` replaces the default loader; ``*_options`` are ``Deployment.options(...)`` overrides over them
    (a Serve config's ``deployments:`` also are); ``num_replicas`` there replaces the default autoscaling."""
    usage_reporting_off()  # before MLflow: flowtts.usage_reporting
    source = resolve_model_source(settings.model_uri, settings.tracking_uri)
    model_defaults = {**deployment_options(MODEL_DEPLOYMENT), "user_config": settings.batching.model_dump()}
    model = TTSModel.options(**with_overrides(model_defaults, model_options)).bind(settings, source, loader)
    ingress = with_overrides(deployment_options(INGRESS_DEPLOYMENT), ingress_options)
    return TTSIngress.options(**ingress).bind(settings, model)


def deployment_options(schema: DeploymentSchema) -> dict[str, Any]:
    """A Serve config's ``deployments:`` entry as ``Deployment.options(...)`` keywords."""
    return schema.model_dump(exclude_unset=True, exclude={"name"})


def with_overrides(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    overrides = overrides or {}
    if "num_replicas" in overrides:  # a fixed number of replicas: no autoscaling
        defaults = {key: value for key, value in defaults.items() if key != "autoscaling_config"}
    return {**defaults, **overrides}


def build_app(args: dict[str, Any]) -> Application:
    """Entry point for Serve configs: ``import_path: serve.app:build_app`` with ``args:`` = ServeSettings."""
    return build_application(ServeSettings.from_args(args))

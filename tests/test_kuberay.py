"""deploy/kuberay/ and the Dockerfile: valid for KubeRay's CRDs and wired to this project's jobs and Serve config.

Offline. The CRD schemas are the reference copies in ../shared/reference/kuberay/ (skipped without them). The
API server prunes (or, with strict field validation, rejects) fields a CRD does not declare, so the schemas are
made strict before validation: a misspelled field fails here instead of vanishing on `kubectl apply`.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import kuberay_manifests
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from data_pipelines import PreprocessConfig
from flowtts.options import model_from_args
from flowtts.usage_reporting import usage_reporting_off
from serve.settings import ServeSettings
from tests.helpers import REPO, SHARED, load_job, require

DEPLOY = REPO / "deploy" / "kuberay"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
CORE_KINDS = {"ConfigMap": "data", "Secret": "stringData"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z0-9]+$")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
SERVE_CONFIG = yaml.safe_load((REPO / "serve" / "config.yaml").read_text(encoding="utf-8"))


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


DOCS = _documents()
BY_NAME = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in DOCS}
RAY_DOCS = [(name, doc) for name, doc in DOCS if doc["kind"] in CRD_FILES]
RAYJOBS = {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == "RayJob"}
(SERVICE,) = [doc for _, doc in DOCS if doc["kind"] == "RayService"]
(CONFIG_MAP,) = [doc for _, doc in DOCS if doc["kind"] == "ConfigMap"]
(SECRET,) = [doc for _, doc in DOCS if doc["kind"] == "Secret"]


def _strict(schema):
    """Every object schema that lists its properties and says nothing about others allows no others."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


@functools.cache
def _validator(kind: str, version: str) -> jsonschema.Draft4Validator:
    crd_file = require(SHARED / "reference" / "kuberay" / CRD_FILES[kind])
    crd = yaml.load(crd_file.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    # OpenAPI v3.0 schemas are draft-4 style (boolean exclusiveMinimum); x-kubernetes-* keys are ignored
    return jsonschema.Draft4Validator(_strict(served["schema"]["openAPIV3Schema"]))


def _schema_errors(doc: dict) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    errors = _validator(doc["kind"], version).iter_errors(doc)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def _clusters(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def _groups(doc: dict) -> list[dict]:
    cluster = _clusters(doc)
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def _containers(doc: dict) -> list[dict]:
    return [c for group in _groups(doc) for c in group["template"]["spec"]["containers"]]


def _gpus(group: dict) -> int:
    (container,) = group["template"]["spec"]["containers"]
    return int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def _entrypoint(name: str) -> tuple[str, list[str]]:
    python, script, *args = shlex.split(RAYJOBS[name]["spec"]["entrypoint"])
    assert python == "python"
    return script, args


def _parsed(name: str):
    script, args = _entrypoint(name)
    return load_job(Path(script).stem).parse_args(args)


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text(encoding="utf-8")


def _arg_default(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", _dockerfile(), re.MULTILINE)[1]


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=[f"{n}:{d['kind']}" for n, d in RAY_DOCS])
def test_ray_manifests_match_kuberays_crd_schema(name: str, doc: dict) -> None:
    errors = _schema_errors(doc)
    assert not errors, f"{name} violates the {doc['kind']} CRD schema:\n" + "\n".join(errors)
    assert len(doc["metadata"]["name"]) <= 63, "KubeRay puts the name into labels (63 characters at most)"


def test_the_schema_check_catches_unknown_fields_and_wrong_types() -> None:
    job = copy.deepcopy(RAYJOBS["flowtts-train"])
    job["spec"]["entrypointt"] = "python jobs/train.py"  # a typo the API server would silently drop
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    errors = _schema_errors(job)
    assert any("entrypointt" in e for e in errors) and any("maxReplicas" in e for e in errors)


def test_every_manifest_is_a_known_kind_with_a_valid_name() -> None:
    assert {doc["kind"] for _, doc in DOCS} == {*CRD_FILES, *CORE_KINDS}
    assert len(BY_NAME) == len(DOCS), "two manifests of one kind share a name"
    for name, doc in DOCS:
        assert doc["apiVersion"] == ("v1" if doc["kind"] in CORE_KINDS else "ray.io/v1"), name
        assert DNS_1123.match(doc["metadata"]["name"]), name


@pytest.mark.parametrize("doc", [CONFIG_MAP, SECRET], ids=["ConfigMap", "Secret"])
def test_configmap_and_secret_are_string_maps(doc: dict) -> None:
    assert set(doc) <= {"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"}
    values = doc[CORE_KINDS[doc["kind"]]]
    # unquoted YAML (true, 0) would be a bool or an int, which the API server refuses in a string map
    assert values and all(ENV_NAME.match(k) and isinstance(v, str) for k, v in values.items()), values


def test_the_environment_comes_from_the_configmap_and_the_secret() -> None:
    env = CONFIG_MAP["data"]
    assert usage_reporting_off({}).items() <= env.items()  # nothing phones home, as in every flowtts process
    assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "FLOWTTS_MODEL_URI", "FLOWTTS_VOICES_URI"} <= set(env)
    assert not [k for k in env if re.search("SECRET|KEY_ID|TOKEN|PASSWORD", k)], "secrets belong in the Secret"
    credentials = SECRET["stringData"]
    assert set(credentials) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v.startswith("PLACEHOLDER") for v in credentials.values()), "the example Secret holds a real value"
    sources = [
        {"configMapRef": {"name": CONFIG_MAP["metadata"]["name"]}},
        {"secretRef": {"name": SECRET["metadata"]["name"]}},
    ]
    for name, doc in RAY_DOCS:
        for container in _containers(doc):
            assert container["envFrom"] == sources, (name, container["name"])
            assert "env" not in container, f"{name}: {container['name']} sets its environment inline"


def test_images_and_ray_version_follow_the_project() -> None:
    assert _arg_default("FLOWTTS_VERSION") == VERSION
    cluster_image = yaml.safe_load((REPO / "cluster.yaml").read_text(encoding="utf-8"))["docker"]["image"]
    assert _arg_default("BASE_IMAGE") == cluster_image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    for name, doc in RAY_DOCS:
        assert _clusters(doc)["rayVersion"] == ray.__version__, name
        assert {c["image"] for c in _containers(doc)} == {f"YOUR-REGISTRY/flowtts:{VERSION}"}, name


def test_the_dockerfile_installs_like_make_without_dev_extras() -> None:
    dockerfile = _dockerfile()
    pins = re.compile(r"-c requirements\.lock (torch==\S+ torchaudio==\S+)")
    assert pins.search(dockerfile)[1] == pins.search((REPO / "Makefile").read_text(encoding="utf-8"))[1]
    installs = re.findall(r"^RUN pip install .*$", dockerfile, re.MULTILINE)
    assert len(installs) == 2 and all("-c requirements.lock" in line for line in installs)
    assert "dev" not in installs[1] and "-e " not in installs[1]
    assert not re.search(r"^HEALTHCHECK", dockerfile, re.MULTILINE)
    assert re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)[-1].split(":")[0] not in {"root", "0"}
    # .dockerignore is an allowlist: everything COPY'd is let back in, tests and fixtures are not
    ignore = [line for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines() if line[:1] not in "#"]
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert ignore[0] == "*" and not any(a.startswith(("tests", "samples", ".venv")) for a in allowed)
    copied = {
        src.rstrip("/") for line in re.findall(r"^COPY \S+ (.+) \S+$", dockerfile, re.MULTILINE) for src in line.split()
    }
    assert copied and copied <= allowed, copied - allowed


@pytest.mark.parametrize("name", sorted(RAYJOBS))
def test_each_rayjob_entrypoint_parses_with_its_jobs_parser(name: str) -> None:
    script, _ = _entrypoint(name)
    workdir = re.search(r"^WORKDIR (\S+)$", _dockerfile(), re.MULTILINE)[1]
    assert Path(script).parent == Path(workdir) / "jobs" and (REPO / "jobs" / Path(script).name).is_file()
    parsed = _parsed(name)  # argparse exits (SystemExit) on an unknown or malformed option
    if Path(script).stem == "preprocess":
        model_from_args(PreprocessConfig, parsed)  # the job's own validation, before it starts Ray
    spec = RAYJOBS[name]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True, "a finished job must not leave its cluster running"


def test_the_rayjobs_form_one_pipeline() -> None:
    preprocess, train, evaluate = (_parsed(f"flowtts-{n}") for n in ("preprocess", "train", "evaluate"))
    assert preprocess.out.startswith("s3://") and train.data == evaluate.data == preprocess.out
    _, train_args = _entrypoint("flowtts-train")
    assert train_args[train_args.index("--storage") + 1].startswith("s3://"), "pods share no disk"
    assert evaluate.model == f"models:/{train.registered_model}@{train.alias}"  # the version training registered
    assert (
        evaluate.promote
        and CONFIG_MAP["data"]["FLOWTTS_MODEL_URI"] == f"models:/{train.registered_model}@{evaluate.promote}"
    )
    gpu_groups = [g for g in _groups(RAYJOBS["flowtts-train"]) if _gpus(g)]
    assert train.gpu and train.workers <= sum(g["maxReplicas"] * _gpus(g) for g in gpu_groups)


def test_serve_config_v2_is_generated_from_serve_config() -> None:
    text = (DEPLOY / "rayservice.yaml").read_text(encoding="utf-8")
    assert kuberay_manifests.render(text, SERVE_CONFIG) == text, "run python scripts/kuberay_manifests.py"
    served = yaml.safe_load(SERVICE["spec"]["serveConfigV2"])
    assert served["proxy_location"] == SERVE_CONFIG["proxy_location"]
    assert served["http_options"] == {**SERVE_CONFIG["http_options"], "host": "0.0.0.0"}
    # with the declared Kubernetes values put back, the applications are serve/config.yaml's
    restored = copy.deepcopy(served["applications"])
    originals = {app["name"]: app for app in SERVE_CONFIG["applications"]}
    for app in restored:
        original = originals[app["name"]]
        for key in kuberay_manifests.GPU_ARGS.get(app["name"], {}):
            app["args"].pop(key)
            if key in original.get("args", {}):
                app["args"][key] = original["args"][key]
        by_name = {d["name"]: d for d in original.get("deployments", [])}
        for deployment in app.get("deployments", []):
            if deployment["name"] in kuberay_manifests.GPU_ACTOR_OPTIONS.get(app["name"], {}):
                deployment["ray_actor_options"] = by_name[deployment["name"]]["ray_actor_options"]
    assert restored == SERVE_CONFIG["applications"]
    ServeDeploySchema.model_validate(served)  # Ray Serve's own schema of a config file
    for app in served["applications"]:
        assert ServeSettings.from_args(app["args"], environ={}).device == "cuda"


def test_the_service_probes_serve_on_the_gpu_workers() -> None:
    port = yaml.safe_load(SERVICE["spec"]["serveConfigV2"])["http_options"]["port"]
    head, *workers = _groups(SERVICE)
    # KubeRay submits serveConfigV2 only once the head pod is ready: /readyz there would never pass
    assert all("readinessProbe" not in c for c in head["template"]["spec"]["containers"])
    assert head["rayStartParams"]["num-cpus"] == "0" and SERVICE["spec"]["excludeHeadPodFromServeSvc"] is True
    for group in workers:
        (container,) = group["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["livenessProbe"]["httpGet"] == container["startupProbe"]["httpGet"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        # /readyz waits up to 5 s for a model replica: the probe must wait longer than that
        assert container["readinessProbe"]["timeoutSeconds"] > 5

    from serve.ingress import api  # the FastAPI app of the ingress deployment: the probed routes exist

    assert {"/healthz", "/readyz"} <= set(api.openapi()["paths"])


def test_the_service_autoscales_gpu_workers_for_the_model_replicas() -> None:
    cluster = SERVICE["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (app,) = yaml.safe_load(SERVICE["spec"]["serveConfigV2"])["applications"]
    (model,) = [d for d in app["deployments"] if d["name"] == "TTSModel"]
    per_replica = model["ray_actor_options"]["num_gpus"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"] if _gpus(g)]
    assert per_replica > 0 and gpu_groups
    scaling = model["autoscaling_config"]
    capacity = sum(g["maxReplicas"] * _gpus(g) for g in gpu_groups)
    assert capacity >= math.ceil(scaling["max_replicas"] * per_replica), "the last model replicas find no GPU"
    assert sum(g["minReplicas"] * _gpus(g) for g in gpu_groups) <= scaling["min_replicas"] * per_replica

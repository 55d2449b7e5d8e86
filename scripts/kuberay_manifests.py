"""Write the RayService's ``serveConfigV2`` from ``serve/config.yaml``: one source for the Serve config.

    python scripts/kuberay_manifests.py            # rewrite serveConfigV2 in deploy/kuberay/rayservice.yaml
    python scripts/kuberay_manifests.py --check    # exit 1 when the manifest has drifted from serve/config.yaml

``serveConfigV2`` is ``serve/config.yaml`` (proxy, HTTP options, applications) with the few values that
differ on Kubernetes, declared below and nowhere else: the proxy listens on every interface (pods take
traffic from a Service), and the model deployment runs on a GPU, as the GPU worker group offers.
Everything else of the manifest is written by hand; tests/test_kuberay.py fails when the two drift apart.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve" / "config.yaml"
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"

# What Kubernetes changes in serve/config.yaml, by application and deployment name.
HTTP_HOST = "0.0.0.0"  # 127.0.0.1 would refuse the Service's traffic and the kubelet's probes
GPU_ARGS = {"flowtts": {"device": "cuda"}}  # ServeSettings: the model runs on the replica's GPU
GPU_ACTOR_OPTIONS = {"flowtts": {"TTSModel": {"num_cpus": 1, "num_gpus": 1}}}  # one GPU per model replica

_BLOCK = re.compile(r"^(?P<indent> *)serveConfigV2: \|[-+]?\n(?:(?P=indent)  .*\n|[ \t]*\n)*", re.MULTILINE)


def serve_config_v2(serve_config: dict[str, Any]) -> dict[str, Any]:
    """The Serve config KubeRay deploys: ``serve/config.yaml`` with the declared Kubernetes values."""
    applications = copy.deepcopy(serve_config["applications"])
    for app in applications:
        app.setdefault("args", {}).update(GPU_ARGS.get(app["name"], {}))
        actor_options = GPU_ACTOR_OPTIONS.get(app["name"], {})
        for deployment in app.get("deployments", []):
            if deployment["name"] in actor_options:
                deployment["ray_actor_options"] = dict(actor_options[deployment["name"]])
    return {
        "proxy_location": serve_config["proxy_location"],
        "http_options": {**serve_config["http_options"], "host": HTTP_HOST},
        "applications": applications,
    }


def render(manifest: str, serve_config: dict[str, Any]) -> str:
    """``manifest`` (the RayService YAML text) with its ``serveConfigV2`` block written from ``serve_config``."""
    match = _BLOCK.search(manifest)
    if match is None:
        raise ValueError("the RayService manifest has no 'serveConfigV2: |' block to write")
    indent = match["indent"] + "  "
    text = yaml.safe_dump(serve_config_v2(serve_config), sort_keys=False, width=120, allow_unicode=True)
    block = f"{match['indent']}serveConfigV2: |\n" + "".join(f"{indent}{line}\n" for line in text.splitlines())
    return manifest[: match.start()] + block + manifest[match.end() :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1), write nothing")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text(encoding="utf-8")
    wanted = render(current, yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8")))
    if wanted == current:
        print(f"{RAYSERVICE.relative_to(REPO)}: serveConfigV2 matches {SERVE_CONFIG.relative_to(REPO)}")
        return 0
    if args.check:
        print(f"{RAYSERVICE.relative_to(REPO)}: serveConfigV2 drifted; run python scripts/kuberay_manifests.py")
        return 1
    RAYSERVICE.write_text(wanted, encoding="utf-8")
    print(f"{RAYSERVICE.relative_to(REPO)}: serveConfigV2 written from {SERVE_CONFIG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

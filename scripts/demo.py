"""`make demo`: the whole platform on one machine, the way a new user meets it.

Starts a private Ray head (non-default ports) and uses an embedded MLflow store (sqlite), preprocesses
the sample corpus shipped in `samples/vi-demo` and trains the `tiny` preset through `ray job submit`,
registers the model (alias `candidate`, then `production`), deploys it with `serve deploy`, sends a real
HTTP request, writes the spoken result to a wav file, prints where everything is, and stops only what it
started. Everything it writes lands in `demo_out/`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from local_ray import RAY, LocalRayHead

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "vi-demo"
SERVE = str(Path(sys.executable).parent / "serve")


def environment(out: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "FLOWTTS_STORAGE": str(out / "ray_train"),
        "FLOWTTS_MODEL_URI": "models:/flowtts@production",
        "FLOWTTS_VOICES_URI": str(out / "voices"),
    })
    return env


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def submit(address: str, env: dict[str, str], *args: str) -> None:
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", "python", *args]
    subprocess.run(command, env=env, cwd=REPO, check=True)


def promote(env: dict[str, str]) -> str:
    """Point `production` at the version training aliased `candidate` (jobs/evaluate.py is the gate)."""
    code = ("from mlflow import MlflowClient; c = MlflowClient(); "
            "v = c.get_model_version_by_alias('flowtts', 'candidate').version; "
            "c.set_registered_model_alias('flowtts', 'production', v); print(v)")
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def wait_healthy(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(3)
    raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout_s} s")


def speak(url: str, out: Path) -> Path:
    metadata = (CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines()
    ref_file, ref_text = metadata[1].split("|", 1)
    body = {"text": "Xin chào, đây là giọng nói do mô hình vừa được huấn luyện tạo ra.", "seed": 7,
            "ref_audio": base64.b64encode((CORPUS / ref_file).read_bytes()).decode(), "ref_text": ref_text,
            "nfe": 16, "response_format": "wav"}
    request = urllib.request.Request(f"{url}/v1/tts", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        wav = out / "demo.wav"
        wav.write_bytes(response.read())
        print(f"model version {response.headers.get('X-Model-Version')}, seed {response.headers.get('X-Seed')}, "
              f"duration rule {response.headers.get('X-Duration-Rule')}")
    return wav


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the tiny preset")
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = environment(out)
    head = LocalRayHead(env=env, log=out / "ray_head.log")
    url = "http://127.0.0.1:8000"
    try:
        step("starting a private Ray head")
        address = head.start()
        print(f"Ray jobs API: {address}")
        step("preprocessing the sample corpus (ray job submit)")
        submit(address, env, "jobs/preprocess.py", "--corpus", str(CORPUS), "--out", str(out / "data"),
               "--holdout-fraction", "0.1")
        step(f"training the tiny preset for {args.steps} steps (ray job submit)")
        submit(address, env, "jobs/train.py", "--config", "tiny", "--data", str(out / "data"), "--name", "demo",
               "--max-steps", str(args.steps), "--storage", str(out / "ray_train"), "--sample-steps", "8")
        version = promote(env)
        print(f"registered models:/flowtts/{version}; aliases candidate and production point at it")
        step("deploying with serve deploy")
        subprocess.run([SERVE, "deploy", str(REPO / "serve" / "config.yaml"), "--address", address],
                       env=env, cwd=REPO, check=True)
        wait_healthy(url)
        step("speaking")
        wav = speak(url, out)
        step("done")
        print(f"spoken result:  {wav}")
        print(f"endpoint:       {url}/v1/tts (stopped now; `serve run serve/config.yaml` serves it again)")
        print(f"MLflow UI:      mlflow ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")
        print(f"data, checkpoints and logs: {out}")
        return 0
    finally:
        step("shutting down what the demo started")
        head.stop()


if __name__ == "__main__":
    sys.exit(main())

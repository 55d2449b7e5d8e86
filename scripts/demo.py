"""`make demo`: the whole platform on one machine, the way a new user meets it.

Starts a private Ray head (non-default ports) and uses an embedded MLflow store (sqlite), preprocesses
the sample corpus shipped in `samples/vi-demo` and trains the `tiny` preset through `ray job submit`
(registered with alias `candidate`), evaluates it on the held-out clips and promotes it to `production`
through the gate of `jobs/evaluate.py`, deploys `production` with `serve deploy`, sends a real HTTP
request, writes the spoken result to a wav file, prints where everything is, and stops only what it
started. Everything it writes lands in `demo_out/`.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import urllib.request
from pathlib import Path

from local_services import LocalRayHead, service_env, wait_until_answers

from flowtts.usage_reporting import usage_reporting_off

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "vi-demo"


def environment(out: Path) -> dict[str, str]:
    return service_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{out / 'mlflow.db'}",
        FLOWTTS_STORAGE=str(out / "ray_train"),
        FLOWTTS_MODEL_URI="models:/flowtts@production",
        FLOWTTS_VOICES_URI=str(out / "voices"),
    )


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def speak(url: str, out: Path) -> Path:
    metadata = (CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines()
    ref_file, ref_text = metadata[1].split("|", 1)
    body = {
        "text": "Xin chào, đây là giọng nói do mô hình vừa được huấn luyện tạo ra.",
        "seed": 7,
        "ref_audio": base64.b64encode((CORPUS / ref_file).read_bytes()).decode(),
        "ref_text": ref_text,
        "nfe": 16,
        "response_format": "wav",
    }
    request = urllib.request.Request(
        f"{url}/v1/tts", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        wav = out / "demo.wav"
        wav.write_bytes(response.read())
        print(
            f"model version {response.headers.get('X-Model-Version')}, seed {response.headers.get('X-Seed')}, "
            f"duration rule {response.headers.get('X-Duration-Rule')}"
        )
    return wav


def main() -> int:
    usage_reporting_off()  # this process and (through service_env) the Ray head: flowtts.usage_reporting
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--steps", type=int, default=200, help="training steps of the tiny preset (default 200)")
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
        head.submit(
            "python",
            "jobs/preprocess.py",
            "--corpus",
            str(CORPUS),
            "--out",
            str(out / "data"),
            "--holdout-fraction",
            "0.1",
            cwd=REPO,
            echo=True,
        )
        step(f"training the tiny preset for {args.steps} steps (ray job submit)")
        head.submit(
            "python",
            "jobs/train.py",
            "--config",
            "tiny",
            "--data",
            str(out / "data"),
            "--name",
            "demo",
            "--max-steps",
            str(args.steps),
            "--storage",
            str(out / "ray_train"),
            "--sample-steps",
            "8",
            "--cpus-per-worker",
            str(head.num_cpus),
            "--duration-predictor",
            cwd=REPO,
            echo=True,
        )
        step("evaluating on held-out clips; the gate promotes the candidate to production (ray job submit)")
        head.submit(
            "python",
            "jobs/evaluate.py",
            "--model",
            "models:/flowtts@candidate",
            "--data",
            str(out / "data"),
            "--promote",
            "production",
            "--max-items",
            "4",
            "--nfe",
            "8",
            "--out",
            str(out / "evaluation"),
            cwd=REPO,
            echo=True,
        )
        step("deploying models:/flowtts@production with serve deploy")
        head.serve_deploy(REPO / "serve" / "config.yaml")
        wait_until_answers(f"{url}/readyz", timeout_s=600)
        step("speaking")
        wav = speak(url, out)
        step("done")
        print(f"spoken result:  {wav}")
        print(f"endpoint:       {url}/v1/tts (stopped now; `serve run serve/config.yaml` serves it again)")
        print(f"MLflow UI:      mlflow ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")
        print(f"evaluation:     {out / 'evaluation' / 'report.html'}")
        print(f"data, checkpoints and logs: {out}")
        return 0
    finally:
        step("shutting down what the demo started")
        head.stop()


if __name__ == "__main__":
    sys.exit(main())

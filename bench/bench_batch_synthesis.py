"""Batch synthesis throughput: the Ray Data job with 1 and N actors, and the same rows sent to ``/v1/tts``.

Starts a private local Ray on 127.0.0.1, writes ``--rows`` utterances of ~5 s (two sentences of the demo
corpus) in one stored voice, then in one run: ``synthesize_batch`` with 1 actor, with ``--actors``
actors (each ``--actor-cpus``), and a Serve application with as many model replicas (same CPUs) that
receives the same rows as ``/v1/tts`` requests from ``actors x rows-per-batch`` client threads (so its
batches can be as large as the job's). Prints audio seconds per wall second and rows per second. The
model is the ``tiny`` preset with random weights and the vocoder Vocos with random weights (the
compute is what matters), as in ``bench/bench_serve.py``.

    .venv/bin/python bench/bench_batch_synthesis.py                   # 32 rows, NFE 8, 1 and 2 actors
    .venv/bin/python bench/bench_batch_synthesis.py --rows 64 --nfe 16
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import tempfile
from pathlib import Path

import requests
import soundfile as sf
from bench_serve import bench_texts, build_assets, corpus_rows, free_port, run_level

from flowtts.usage_reporting import usage_reporting_off


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--nfe", type=int, default=8)
    parser.add_argument("--actors", type=int, default=2, help="actors (and Serve replicas) of the parallel run")
    parser.add_argument("--actor-cpus", type=float, default=1.0)
    parser.add_argument("--rows-per-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def write_input(root: Path, rows: int) -> Path:
    texts = bench_texts()
    with open(root / "lines.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "voice"])
        writer.writeheader()
        writer.writerows({"id": f"row-{i:05d}", "text": texts[i % len(texts)], "voice": "bench"} for i in range(rows))
    return root / "lines.csv"


def run_job(args, checkpoint: Path, vocoder: Path, lines: Path, voices: Path, out: Path, actors: int) -> dict:
    from data_pipelines import BatchRequest, synthesize_batch
    from flowtts.synthesis import SamplingSettings

    shutil.rmtree(out, ignore_errors=True)
    request = BatchRequest(
        model=str(checkpoint),
        input=str(lines),
        out=str(out),
        voices=str(voices),
        sampling=SamplingSettings(nfe=args.nfe),
        seed=args.seed,
        concurrency=actors,
        cpus_per_actor=args.actor_cpus,
        rows_per_batch=args.rows_per_batch,
        track=False,
        load_options={"vocoder": str(vocoder)},
    )
    result = synthesize_batch(request)
    assert result.written == args.rows, result.summary()
    return {"audio_s": result.audio_seconds, "wall_s": result.wall_seconds, "rows": result.written}


def run_serve(args, settings, lines: Path) -> dict:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from serve.app import build_application

    model_options = {
        "num_replicas": args.actors,
        "max_ongoing_requests": 64,
        "ray_actor_options": {"num_cpus": args.actor_cpus},
        "user_config": {"max_batch_size": args.rows_per_batch, "batch_wait_timeout_s": 0.1},
    }
    ingress = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    serve.run(build_application(settings, model_options=model_options, ingress_options=ingress), route_prefix="/bench")
    base = f"http://127.0.0.1:{port}/bench"
    with (lines.parent / "voice.wav").open("rb") as audio:
        voice = requests.post(
            f"{base}/v1/voices", files={"audio": audio}, data={"transcript": corpus_rows()[0][1]}, timeout=600
        ).json()["id"]
    with open(lines, encoding="utf-8") as f:
        bodies = [
            {"text": row["text"], "voice": voice, "seed": args.seed, "nfe": args.nfe, "response_format": "pcm"}
            for row in csv.DictReader(f)
        ]
    requests.post(f"{base}/v1/tts", json=bodies[0], timeout=3600).raise_for_status()  # warm-up
    level = run_level(base, bodies, args.actors * args.rows_per_batch)
    serve.shutdown()
    return {"audio_s": level["audio_s_per_s"] * level["wall_s"], "wall_s": level["wall_s"], "rows": level["requests"]}


def main() -> int:
    usage_reporting_off()
    args = parse_args()
    import ray

    from flowtts.voices import VoiceStore
    from serve.settings import ServeSettings

    root = Path(tempfile.mkdtemp(prefix="flowtts-bench-batch-"))
    checkpoint, vocoder = build_assets(root, args.preset, args.seed)
    voice_path, voice_text = corpus_rows()[0]
    shutil.copyfile(voice_path, root / "voice.wav")
    audio, rate = sf.read(voice_path, dtype="float32")
    VoiceStore(root / "voices").create(audio, rate, voice_text, name="bench")
    lines = write_input(root, args.rows)
    cpus = math.ceil(args.actors * args.actor_cpus + 1)  # the replicas and Serve's ingress and proxy fit
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(dir="/tmp"),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False

    results = {}
    for actors in sorted({1, args.actors}):
        results[f"batch job, {actors} actor(s)"] = run_job(
            args, checkpoint, vocoder, lines, root / "voices", root / "out", actors
        )
        print(results, flush=True)
    settings = ServeSettings.from_args(
        {"model_uri": str(checkpoint), "vocoder": str(vocoder), "voices_uri": str(root / "serve-voices"),
         "default_nfe": args.nfe, "limits": {"nfe_range": [1, 64]}},
        environ={},
    )  # fmt: skip
    results[f"/v1/tts, {args.actors} replica(s)"] = run_serve(args, settings, lines)
    ray.shutdown()

    print(
        f"\n{args.rows} rows of ~5 s, preset {args.preset} (random weights), NFE {args.nfe}, "
        f"{args.actor_cpus} CPU per actor/replica, {args.rows_per_batch} rows per batch, Ray CPUs {cpus}\n"
    )
    print("| run | rows | wall s | rows/s | audio s/s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rows']} | {r['wall_s']:.1f} | {r['rows'] / r['wall_s']:.2f} | "
              f"{r['audio_s'] / r['wall_s']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

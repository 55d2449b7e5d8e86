"""Serving throughput and latency: batching on vs ``max_batch_size=1``, same replicas, same run.

Starts a private local Ray + Serve on 127.0.0.1, deploys the same model twice (application ``batched``
and ``unbatched``, one model replica each, the same CPUs), uploads one voice, then for each
concurrency level sends requests for ~5 s utterances from that many client threads to one
application after the other and prints requests/s, p50/p95 latency and the batch sizes the server
recorded. The model is the ``tiny`` preset with random weights (compute is what matters here) and the
vocoder is Vocos with its published architecture and random weights.

    .venv/bin/python bench/bench_serve.py                      # NFE 8, concurrency 1, 4, 16
    .venv/bin/python bench/bench_serve.py --nfe 16 --rounds 2 --concurrency 1,16
    python bench/bench_serve.py --model-only --device cuda      # the batching bound of a device, no Ray
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import string
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch

from flowtts.usage_reporting import usage_reporting_off

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "vi-demo"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--nfe", type=int, default=8)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="requests per client at each level (at least 3 requests per level)",
    )
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.1, help="batch_wait_timeout_s of the batched app")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="num_cpus of each model replica")
    parser.add_argument("--ray-cpus", type=int, help="logical CPUs of the local Ray (default: enough for both apps)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="no Serve: time Synthesizer.generate in calls of 1, 4 and max-batch-size rows",
    )
    return parser.parse_args()


def corpus_rows() -> list[tuple[Path, str]]:
    lines = (CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [(CORPUS / path, text) for path, text in (line.split("|", 1) for line in lines)]


def random_model(preset: str, seed: int):
    """A random-weight model of ``preset`` with the demo corpus' vocab (compute is all that matters here)."""
    from flowtts.config import load_config
    from flowtts.model import build_model
    from flowtts.text import Vocab, normalize_vietnamese

    texts = [normalize_vietnamese(text) for _, text in corpus_rows()]
    vocab = Vocab.from_texts([*texts, string.ascii_letters + string.digits + ",.!?;:'-"])
    torch.manual_seed(seed)
    return build_model(load_config(preset).model.with_vocab_size(len(vocab))), vocab


def build_assets(root: Path, preset: str, seed: int) -> tuple[Path, Path]:
    """The model saved as a checkpoint folder, and a random-weight Vocos folder."""
    from flowtts.checkpoint import save_checkpoint
    from flowtts.synthesis import init_vocos_folder

    model, vocab = random_model(preset, seed)
    checkpoint = save_checkpoint(model, root / "checkpoint", vocab, info={"preset": preset, "weights": "random"})
    return checkpoint, init_vocos_folder(root / "vocos")


def bench_texts() -> list[str]:
    rows = corpus_rows()
    return [f"{rows[i][1]} {rows[i + 1][1]}" for i in range(2, 2 * 16 + 2, 2)]  # two sentences: ~5 s


def model_only(args: argparse.Namespace) -> int:
    """No Serve: ``Synthesizer.generate`` on the same 16 requests, in calls of 1, 4 and 16 rows. The
    ratio bounds what request batching can buy on this device (vocoding and HTTP excluded)."""
    from flowtts.synthesis import GriffinLimVocoder, SamplingSettings, SynthesisOptions, Synthesizer

    model, vocab = random_model(args.preset, args.seed)
    synth = Synthesizer(model.to(args.device), vocab, GriffinLimVocoder(device=args.device))
    voice_path, voice_text = corpus_rows()[0]
    reference = synth.prepare_reference(str(voice_path), voice_text)
    items = [
        item
        for i, text in enumerate(bench_texts())
        for item in synth.plan(text, reference, SynthesisOptions(sampling=SamplingSettings(nfe=args.nfe), seed=i)).items
    ]

    def run(batch: int) -> float:
        start = time.perf_counter()
        for first in range(0, len(items), batch):
            synth.generate(items[first : first + batch], SamplingSettings(nfe=args.nfe))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    print(
        f"\npreset {args.preset}, NFE {args.nfe}, device {args.device}, {len(items)} rows of "
        f"{np.mean([i.total_frames for i in items]):.0f} frames on average, torch threads {torch.get_num_threads()}\n"
    )
    print("| rows per generate call | seconds for all rows | rows/s | speed-up |")
    print("|---|---|---|---|")
    baseline = None
    for batch in sorted({1, 4, args.max_batch_size}):
        run(batch)  # warm-up (kernels, allocator)
        seconds = min(run(batch) for _ in range(args.rounds))
        baseline = baseline or seconds
        print(f"| {batch} | {seconds:.2f} | {len(items) / seconds:.2f} | {baseline / seconds:.2f}x |", flush=True)
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(serve, name: str, settings, max_batch_size: int, batch_wait: float, cpus: float) -> None:
    from serve.app import build_application

    model_options = {
        "num_replicas": 1,
        "max_ongoing_requests": 64,
        "ray_actor_options": {"num_cpus": cpus},
        "user_config": {
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": batch_wait,
            "max_batch_frames": 1 << 20,
        },
    }
    app = build_application(
        settings,
        model_options=model_options,
        ingress_options={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    )
    serve.run(app, name=name, route_prefix=f"/{name}")


def run_level(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send ``bodies`` from ``concurrency`` threads; requests/s, latency percentiles, audio seconds."""
    latencies, audio_s = [], []
    lock = threading.Lock()
    queue = iter(bodies)

    def client() -> None:
        while True:
            with lock:
                body = next(queue, None)
            if body is None:
                return
            start = time.perf_counter()
            response = requests.post(f"{url}/v1/tts", json=body, timeout=3600)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            with lock:
                latencies.append(elapsed)
                audio_s.append(len(response.content) / 2 / 24000)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "audio_s_per_s": sum(audio_s) / wall,
        "mean_audio_s": float(np.mean(audio_s)),
    }


def batch_summary(serve, name: str, since: int) -> tuple[float, int]:
    batches = serve.get_deployment_handle("TTSModel", name).get_stats.remote().result()["batches"][since:]
    sizes = [b["requests"] for b in batches]
    return (float(np.mean(sizes)) if sizes else 0.0), (max(sizes) if sizes else 0)


def batch_count(serve, name: str) -> int:
    return len(serve.get_deployment_handle("TTSModel", name).get_stats.remote().result()["batches"])


def main() -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args()
    if args.model_only:
        return model_only(args)
    import ray
    from ray import serve

    from serve.settings import ServeSettings

    levels = [int(c) for c in args.concurrency.split(",")]
    rows = corpus_rows()
    texts = bench_texts()
    root = Path(tempfile.mkdtemp(prefix="flowtts-bench-"))
    checkpoint, vocoder = build_assets(root, args.preset, args.seed)
    settings = ServeSettings.from_args(
        {
            "model_uri": str(checkpoint),
            "vocoder": str(vocoder),
            "voices_uri": str(root / "voices"),
            "device": args.device,
            "default_nfe": args.nfe,
            "limits": {"nfe_range": [1, 64]},
        },
        environ={},
    )

    args.ray_cpus = args.ray_cpus or math.ceil(2 * args.replica_cpus + 1)
    ray.init(
        address="local",
        num_cpus=args.ray_cpus,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    modes = {"unbatched": 1, "batched": args.max_batch_size}
    for name, size in modes.items():
        deploy(serve, name, settings, size, args.batch_wait if size > 1 else 0.0, args.replica_cpus)
    voice_path, voice_text = rows[0]
    with voice_path.open("rb") as audio:
        voice = requests.post(
            f"{base}/batched/v1/voices", files={"audio": audio}, data={"transcript": voice_text}, timeout=600
        ).json()["id"]
    for name in modes:  # warm-up: first request of each replica
        requests.post(
            f"{base}/{name}/v1/tts",
            json={"text": texts[0], "voice": voice, "response_format": "pcm"},
            timeout=3600,
        ).raise_for_status()

    results = []
    for concurrency in levels:
        count = max(3, concurrency * args.rounds)
        bodies = [
            {"text": texts[i % len(texts)], "voice": voice, "seed": i, "response_format": "pcm"} for i in range(count)
        ]
        for name in modes:
            since = batch_count(serve, name)
            level = run_level(f"{base}/{name}", bodies, concurrency)
            level["mean_batch"], level["max_batch"] = batch_summary(serve, name, since)
            results.append({"mode": name, "concurrency": concurrency, **level})
            print(
                f"{name:>9} c={concurrency:<3} {level['rps']:.3f} req/s  p50 {level['p50_s']:.2f} s  "
                f"p95 {level['p95_s']:.2f} s  mean batch {level['mean_batch']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    threads = serve.get_deployment_handle("TTSModel", "batched").describe.remote().result().config.torch_threads
    print_table(results, args, threads)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )
    serve.shutdown()
    ray.shutdown()
    return 0


def print_table(results: list[dict], args: argparse.Namespace, replica_threads: int) -> None:
    print(
        f"\npreset {args.preset}, NFE {args.nfe}, device {args.device}, 1 model replica x "
        f"{args.replica_cpus} CPU per mode, Ray CPUs {args.ray_cpus}, replica torch threads {replica_threads}, "
        "pcm responses\n"
    )
    print("| concurrency | mode | requests | req/s | p50 s | p95 s | audio s/s | mean batch | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    unbatched = {r["concurrency"]: r["rps"] for r in results if r["mode"] == "unbatched"}
    for r in results:
        gain = r["rps"] / unbatched[r["concurrency"]]
        print(
            f"| {r['concurrency']} | {r['mode']} | {r['requests']} | {r['rps']:.3f} | {r['p50_s']:.2f} | "
            f"{r['p95_s']:.2f} | {r['audio_s_per_s']:.2f} | {r['mean_batch']:.1f} | {gain:.2f}x |"
        )


if __name__ == "__main__":
    sys.exit(main())

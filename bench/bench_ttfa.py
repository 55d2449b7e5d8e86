"""Time to first audio (TTFA) and real-time factor of streamed speech: the short first chunk vs the old
even chunks, in the same run, one request at a time.

Starts a private local Ray + Serve on 127.0.0.1 and deploys the same model twice: ``lead`` (streamed
texts start with a short first chunk, ``streaming.first_chunk_bytes=48``, the default) and ``even``
(``first_chunk_bytes=0``: every chunk as long as the others, what streaming did before). For a
~6-sentence text it streams each format from each application and records the time from sending the
request to the first audio byte (for wav: the first byte after the 44-byte header), the whole stream's
time, and RTF = stream seconds / audio seconds. ``mp3 (whole)`` is ``stream=false``: what an mp3 client
got before mp3 streamed. Model: the ``tiny`` preset with random weights, random-weight Vocos (see
``bench_serve.py``).

    .venv/bin/python bench/bench_ttfa.py                   # NFE 16, 3 rounds, pcm, wav and mp3
    .venv/bin/python bench/bench_ttfa.py --nfe 32 --rounds 5 --formats pcm,mp3,opus,flac
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import soundfile as sf
from bench_serve import build_assets, corpus_rows, free_port

from flowtts.usage_reporting import usage_reporting_off


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--nfe", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="pcm,wav,mp3")
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--first-chunk-bytes", type=int, default=48)
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def stream_once(url: str, body: dict) -> tuple[float, float, bytes, str]:
    """(seconds to the first audio byte, seconds to the end, body, X-Chunks)."""
    skip = 44 if body["response_format"] == "wav" else 0
    start = time.perf_counter()
    first, data = None, b""
    with requests.post(url, json=body, stream=True, timeout=3600) as response:
        response.raise_for_status()
        for piece in response.iter_content(chunk_size=None):
            data += piece
            if first is None and len(data) > skip:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start, data, response.headers["X-Chunks"]


def audio_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    if fmt == "wav":
        return (len(data) - 44) / 2 / 24000
    info = sf.info(io.BytesIO(data))
    return info.frames / info.samplerate


def main() -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args()
    import ray
    from ray import serve

    from serve.app import build_application
    from serve.settings import ServeSettings

    rows = corpus_rows()
    text = " ".join(t for _, t in rows[2 : 2 + args.sentences])
    root = Path(tempfile.mkdtemp(prefix="flowtts-ttfa-"))
    checkpoint, vocoder = build_assets(root, args.preset, args.seed)
    ray.init(
        address="local",
        num_cpus=int(2 * args.replica_cpus + 1),
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-ttfa-", dir="/tmp"),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    apps = {"lead": args.first_chunk_bytes, "even": 0}
    for name, first_bytes in apps.items():
        settings = ServeSettings.from_args(
            {
                "model_uri": str(checkpoint),
                "vocoder": str(vocoder),
                "voices_uri": str(root / "voices"),
                "default_nfe": args.nfe,
                "streaming": {"first_chunk_bytes": first_bytes},
            },
            environ={},
        )
        model_options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": args.replica_cpus}}
        ingress_options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
        serve.run(
            build_application(settings, model_options=model_options, ingress_options=ingress_options),
            name=name,
            route_prefix=f"/{name}",
        )
    voice_path, voice_text = rows[0]
    with voice_path.open("rb") as audio:
        voice = requests.post(
            f"{base}/lead/v1/voices", files={"audio": audio}, data={"transcript": voice_text}, timeout=600
        ).json()["id"]
    cases = [(name, fmt, True) for fmt in args.formats.split(",") for name in apps]
    cases += [("even", "mp3", False)]
    results = []
    for name, fmt, stream in cases:
        body = {"text": text, "voice": voice, "seed": 1, "response_format": fmt, "stream": stream}
        url = f"{base}/{name}/v1/tts"
        stream_once(url, body)  # warm-up (and the reference into the cache)
        runs = [stream_once(url, body) for _ in range(args.rounds)]
        ttfa = float(np.median([r[0] for r in runs]))
        total = float(np.median([r[1] for r in runs]))
        seconds = audio_seconds(runs[-1][2], fmt)
        label = f"{fmt}" if stream else f"{fmt} (whole)"
        results.append((label, name, runs[-1][3], ttfa, total, seconds))
        print(f"{label:>12} {name:>5}: TTFA {ttfa:.2f} s of {total:.2f} s", file=sys.stderr, flush=True)
    print(
        f"\npreset {args.preset}, NFE {args.nfe}, {args.sentences} sentences ({len(text)} characters), "
        f"1 model replica x {args.replica_cpus} CPU, median of {args.rounds}\n"
    )
    print("| format | chunking | chunks | TTFA s | stream s | TTFA / stream | audio s | RTF |")
    print("|---|---|---|---|---|---|---|---|")
    for label, name, chunks, ttfa, total, seconds in results:
        chunking = f"first {args.first_chunk_bytes} B" if name == "lead" else "even"
        print(
            f"| {label} | {chunking} | {chunks} | {ttfa:.2f} | {total:.2f} | {100 * ttfa / total:.0f} % | "
            f"{seconds:.1f} | {total / seconds:.2f} |"
        )
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

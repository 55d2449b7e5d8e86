"""Soak: steady load on one application for a while, sampling the resident memory (RSS) of every process
of the private Ray it starts (GCS, raylet, Serve controller, proxy, ingress and model replicas, ...).

Client threads send a mix of native and OpenAI requests (whole and streamed, pcm/mp3/opus, with a few
malformed ones) at a fixed concurrency; every ``--sample-s`` seconds the RSS of every process below this
one is read from ``/proc``. The table gives each process's RSS after the warm-up, at a third, two
thirds and the end of the run, and the least-squares slope of each half (MB per 10 minutes: a leak keeps
its slope, a warm-up flattens); statuses are counted.

    .venv/bin/python bench/soak_serve.py --minutes 15            # what the README quotes
    .venv/bin/python bench/soak_serve.py --minutes 3 --concurrency 4
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import requests
from bench_serve import build_assets, corpus_rows, free_port

from flowtts.usage_reporting import usage_reporting_off

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="load before the baseline RSS sample")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--nfe", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def descendants(root: int) -> dict[int, str]:
    """pid -> short command name of every process below ``root`` (from /proc)."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        names[int(entry.name)] = process_name(stat, cmdline)
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = names[child]
                frontier.append(child)
    return found


def process_name(stat: str, cmdline: list[bytes]) -> str:
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    text = b" ".join(cmdline).decode(errors="replace")
    for marker in ("ServeReplica:", "ServeController", "ProxyActor", "dashboard", "gcs_server", "raylet"):
        if marker in text:  # Ray retitles a worker with the method it runs: keep the actor's name
            return text[text.index(marker) :].split()[0].split(".")[0]
        if marker in comm:
            return comm
    return comm


def rss_mb(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB / 1024
    except (OSError, IndexError):
        return None


def request_mix(base: str, voice: str, texts: list[str], rng: random.Random) -> tuple[str, dict]:
    text = rng.choice(texts)
    kind = rng.random()
    if kind < 0.35:
        return f"{base}/v1/tts", {"json": {"text": text, "voice": voice, "response_format": "pcm"}}
    if kind < 0.6:
        body = {"text": text, "voice": voice, "stream": True, "response_format": rng.choice(["pcm", "mp3", "opus"])}
        return f"{base}/v1/tts", {"json": body}
    if kind < 0.9:
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": rng.choice(["mp3", "wav"])}
        return f"{base}/v1/audio/speech", {"json": body}
    return f"{base}/v1/tts", {"data": b'{"text": ', "headers": {"Content-Type": "application/json"}}


def main() -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args()
    import ray
    from ray import serve

    from serve.app import build_application
    from serve.settings import ServeSettings

    rows = corpus_rows()
    texts = [t for _, t in rows[1:40]]
    root = Path(tempfile.mkdtemp(prefix="flowtts-soak-"))
    checkpoint, vocoder = build_assets(root, args.preset, args.seed)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-soak-", dir="/tmp"),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    settings = ServeSettings.from_args(
        {
            "model_uri": str(checkpoint),
            "vocoder": str(vocoder),
            "voices_uri": str(root / "voices"),
            "default_nfe": args.nfe,
            "openai": {"voices": {"alloy": "lan"}},
        },
        environ={},
    )
    model_options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}, "max_queued_requests": 64}
    app = build_application(settings, model_options=model_options, ingress_options={"num_replicas": 1})
    serve.run(app, name="soak", route_prefix="/")
    voice_path, voice_text = rows[0]
    with voice_path.open("rb") as audio:
        voice = requests.post(
            f"{base}/v1/voices", files={"audio": audio}, data={"transcript": voice_text, "name": "lan"}, timeout=600
        ).json()["id"]

    statuses: Counter = Counter()
    lock, stop = threading.Lock(), threading.Event()

    def client(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            url, kwargs = request_mix(base, voice, texts, rng)
            try:
                outcome = requests.post(url, timeout=600, **kwargs).status_code
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            with lock:
                statuses[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(args.warmup_s)
    samples: dict[int, list[tuple[float, float]]] = defaultdict(list)
    names: dict[int, str] = {}
    start = time.monotonic()
    end = start + args.minutes * 60
    while True:
        now = time.monotonic()
        for pid, name in descendants(os.getpid()).items():
            rss = rss_mb(pid)
            if rss is not None:
                samples[pid].append(((now - start) / 60, rss))
                names.setdefault(pid, name)
        total = sum(series[-1][1] for series in samples.values() if series[-1][0] == (now - start) / 60)
        print(
            f"{(now - start) / 60:5.1f} min  RSS total {total:7.0f} MB  {dict(statuses)}", file=sys.stderr, flush=True
        )
        if now >= end:
            break
        time.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
    stop.set()
    for thread in threads:
        thread.join(600)
    minutes = (time.monotonic() - start) / 60
    print(
        f"\n{minutes:.1f} min after {args.warmup_s:.0f} s of warm-up, concurrency {args.concurrency}, NFE "
        f"{args.nfe}, preset {args.preset}; statuses {dict(statuses)}\n"
    )
    print("| process | pid | RSS MB at start / 1/3 / 2/3 / end | max MB | slope MB / 10 min, 1st / 2nd half |")
    print("|---|---|---|---|---|")
    for pid, series in sorted(samples.items(), key=lambda item: -item[1][-1][1]):
        if len(series) < 4:
            continue  # short-lived helpers
        t, rss = np.array(series).T
        points = " / ".join(f"{rss[int(round(f * (len(rss) - 1)))]:.0f}" for f in (0, 1 / 3, 2 / 3, 1))
        half = len(t) // 2
        slopes = [np.polyfit(t[part], rss[part], 1)[0] * 10 for part in (slice(0, half + 1), slice(half, None))]
        print(f"| {names[pid]} | {pid} | {points} | {rss.max():.0f} | {slopes[0]:+.1f} / {slopes[1]:+.1f} |")
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

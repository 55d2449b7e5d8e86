"""Benchmark ``CFM.sample()`` on CPU and the DiT forward's FLOP utilisation against an fp32 matmul.

Work (as in ../shared/reference/performance.md): random weights, fp32, a 3 s prompt (282 frames) and 8 s in
total (750 frames), CFG 2 packed into one forward, sway -1, Euler, NFE 32 and 16, batch 1 and 4, presets
``tiny`` and ``F5TTS_v1_Base``, ``torch.set_num_threads(2)``. Each number is the median of ``--reps`` calls
after one warm-up call. The matmul peak (2048^3, fp32) is timed in the same run.

FLOP count (multiply-add = 2 FLOP), per packed CFG forward of ``B = 2 * batch`` sequences of ``n`` frames:
  per frame:  2 * [depth * (4 * dim * inner + 2 * ff_mult * dim^2)     q, k, v, out and the feed-forward
                   + (2 * mel + text_dim) * dim                          input projection
                   + 2 * 31 * dim^2 / 16                                 two grouped convs (k 31, 16 groups)
                   + dim * mel]                                          output projection
  attention:  depth * 4 * n^2 * inner per sequence                       QK^T and AV
  text:       2 * conv_layers * (4 * text_dim^2 + 7 * text_dim) per frame
where inner = heads * dim_head. adaLN, time embedding, norms and activations are left out (under 1 %).
GFLOP/NFE = one packed forward + the text term; MFU = GFLOP/NFE * NFE / seconds / matmul peak. This is
the reference's convention (tiny 17.9, Base 683 GFLOP/NFE); the text embedding really runs once per call
(cached, as upstream), so the work actually done is about 2 % lower than counted.

    .venv/bin/python bench/bench_sampling.py            # full run (F5TTS_v1_Base takes many minutes on CPU)
    .venv/bin/python bench/bench_sampling.py --quick    # tiny fully, Base only at batch 1, NFE 16, 2 reps
    .venv/bin/python bench/bench_sampling.py --official-python /tmp/f5venv/bin/python   # + official f5-tts
    .venv/bin/python bench/bench_sampling.py --profile  # where the time goes in tiny, batch 1, NFE 32
    .venv/bin/python bench/bench_sampling.py --only-tiny --batch 1 --nfe 32 --backend eager compiled onnxruntime \
        --official-python /tmp/f5venv/bin/python --json out.json   # every backend beside the official package
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flowtts.checkpoint import export_f5_checkpoint
from flowtts.config import ModelConfig, load_config
from flowtts.inference import BACKENDS, make_backend
from flowtts.model import CFM, build_model

PROMPT_FRAMES, TOTAL_FRAMES, TEXT_TOKENS = 282, 750, 128
HOP_SECONDS = 256 / 24000
GENERATED_SECONDS = (TOTAL_FRAMES - PROMPT_FRAMES) * HOP_SECONDS
OFFICIAL_SCRIPT = Path(__file__).with_name("official_sampling.py")
UPSTREAM_DIT_ARGS = (
    "dim",
    "depth",
    "heads",
    "dim_head",
    "dropout",
    "ff_mult",
    "mel_dim",
    "text_num_embeds",
    "text_dim",
    "text_mask_padding",
    "qk_norm",
    "conv_layers",
    "pe_attn_head",
    "attn_mask_enabled",
    "long_skip_connection",
    "checkpoint_activations",
)


@dataclass
class Case:
    preset: str
    batch: int
    steps: int
    reps: int


@dataclass
class Result:
    preset: str
    batch: int
    steps: int
    seconds: float  # median per call
    spread: float  # (max - min) / median over the repetitions
    rtf: float  # seconds per second of generated audio, summed over the batch
    cores: float  # CPU seconds / wall seconds of the timed calls: 2.0 = both threads ran all the time
    gflop_per_nfe: float  # batch-total, packed CFG, text embedding included (the reference's convention)
    mfu: float  # achieved FLOP/s over the fp32 matmul peak
    backend: str = "eager"
    setup_seconds: float = 0.0  # building and warming up the backend (compiling, exporting), once per model
    eager_max_diff: float | None = None  # max |mel - eager flowtts's mel|, same inputs and seed
    official_seconds: float | None = None
    official_cores: float | None = None
    official_max_diff: float | None = None


# ---------------------------------------------------------------- FLOPs and the matmul peak


def forward_flops(config: ModelConfig, frames: int, sequences: int) -> float:
    """One DiT forward over ``sequences`` sequences of ``frames`` frames (text embedding excluded)."""
    dim, inner = config.dim, config.heads * config.dim_head
    text_dim = config.text_dim or config.mel_dim
    per_frame = (
        config.depth * (4 * dim * inner + 2 * config.ff_mult * dim * dim)
        + (2 * config.mel_dim + text_dim) * dim
        + 2 * 31 * dim * dim / 16
        + dim * config.mel_dim
    )
    attention = config.depth * 4 * frames * frames * inner
    return sequences * (2 * per_frame * frames + attention)


def text_flops(config: ModelConfig, frames: int, sequences: int) -> float:
    text_dim = config.text_dim or config.mel_dim
    return sequences * frames * 2 * config.conv_layers * (4 * text_dim * text_dim + 7 * text_dim)


def flops_per_nfe(config: ModelConfig, batch: int) -> float:
    """One packed-CFG step plus the text embedding (the convention of ../shared/reference/performance.md)."""
    sequences = 2 * batch  # conditional and unconditional passes packed together
    return forward_flops(config, TOTAL_FRAMES, sequences) + text_flops(config, TOTAL_FRAMES, sequences)


def matmul_flops_per_second(size: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = timed(lambda: torch.mm(a, b), reps)
    return 2 * size**3 / statistics.median(seconds)


# ---------------------------------------------------------------- model and inputs


def random_model(preset: str, seed: int = 0) -> CFM:
    """The preset's architecture with seeded random weights, zero-initialised layers included."""
    torch.manual_seed(seed)
    model = build_model(load_config(preset).model)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0.0, 0.02)
    return model.eval()


def sampling_inputs(config: ModelConfig, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "cond": torch.randn(batch, PROMPT_FRAMES, config.mel_dim, generator=generator),
        "text": torch.randint(0, config.text_num_embeds, (batch, TEXT_TOKENS), generator=generator),
    }


def sample_call(model: CFM, inputs: dict[str, torch.Tensor], steps: int, backend=None) -> Callable[[], torch.Tensor]:
    batch = inputs["cond"].shape[0]

    def call() -> torch.Tensor:
        return model.sample(
            cond=inputs["cond"],
            text=inputs["text"],
            duration=TOTAL_FRAMES,
            lens=torch.full((batch,), PROMPT_FRAMES),
            steps=steps,
            cfg_strength=2.0,
            sway_sampling_coef=-1.0,
            seed=0,
            backend=backend,
        ).mel  # one int seed, as the official API takes

    return call


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    return timed_with_cpu(fn, reps, warmup)[0]


def timed_with_cpu(fn: Callable[[], object], reps: int, warmup: int = 1) -> tuple[list[float], float]:
    """Wall seconds per call, and the CPU seconds this process used per wall second over the calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    cpu_start = time.process_time()
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds, (time.process_time() - cpu_start) / sum(seconds)


# ---------------------------------------------------------------- the official package (separate venv)


def run_official(
    python: str, model: CFM, inputs: dict[str, torch.Tensor], case: Case, threads: int
) -> tuple[dict, torch.Tensor]:
    """Time the same call in the official f5-tts (its own interpreter); returns its report and its mel."""
    config = model.config
    arch = {name: getattr(config, name) for name in UPSTREAM_DIT_ARGS}
    with tempfile.TemporaryDirectory(prefix="f5-bench-") as folder:
        work = Path(folder)
        export_f5_checkpoint(model, work / "model.safetensors")
        save_file(inputs, str(work / "inputs.safetensors"))
        (work / "arch.json").write_text(json.dumps(arch))
        command = [
            python,
            str(OFFICIAL_SCRIPT),
            "--work",
            str(work),
            "--steps",
            str(case.steps),
            "--reps",
            str(case.reps),
            "--threads",
            str(threads),
            "--prompt-frames",
            str(PROMPT_FRAMES),
            "--total-frames",
            str(TOTAL_FRAMES),
        ]
        subprocess.run(command, check=True)
        report = json.loads((work / "times.json").read_text())
        return report, load_file(str(work / "mel.safetensors"))["mel"]


# ---------------------------------------------------------------- runs


def run_case(
    case: Case, peak: float, threads: int, official_python: str | None, backends: list[str], rounds: int
) -> list[Result]:
    """One result per backend, all on the same weights, inputs and seed, beside the official package.

    Timings are interleaved over ``rounds``: each round runs the official package (its own process, ``case.reps``
    calls after a warm-up) and then every backend ``case.reps`` times, so a drifting machine (other jobs, clock
    changes) weighs on all of them alike."""
    model = random_model(case.preset)
    inputs = sampling_inputs(model.config, case.batch)
    per_nfe = flops_per_nfe(model.config, case.batch)
    official_seconds, official_cpu, official_mel = [], 0.0, None
    eager_mel = sample_call(model, inputs, case.steps)()
    calls, setup = {}, {}
    for name in backends:
        start = time.perf_counter()
        backend = make_backend(name, model)
        if backend is not None:
            backend.warm_up()
        calls[name] = sample_call(model, inputs, case.steps, backend)
        calls[name]()  # the first call at this shape, outside the timings
        setup[name] = time.perf_counter() - start
    seconds = {name: [] for name in backends}
    cpu = dict.fromkeys(backends, 0.0)
    for _ in range(rounds):
        if official_python:
            report, official_mel = run_official(official_python, model, inputs, case, threads)
            official_seconds += report["seconds"]
            official_cpu += report["cores"] * sum(report["seconds"])
        for name in backends:
            times, cores = timed_with_cpu(calls[name], case.reps, warmup=0)
            seconds[name] += times
            cpu[name] += cores * sum(times)
    results = []
    for name in backends:
        median = statistics.median(seconds[name])
        result = Result(
            case.preset,
            case.batch,
            case.steps,
            median,
            (max(seconds[name]) - min(seconds[name])) / median,
            median / (case.batch * GENERATED_SECONDS),
            cpu[name] / sum(seconds[name]),
            per_nfe / 1e9,
            per_nfe * case.steps / median / peak,
            backend=name,
            setup_seconds=setup[name],
        )
        mel = calls[name]()
        result.eager_max_diff = float((mel - eager_mel).abs().max())
        if official_mel is not None:
            result.official_seconds = statistics.median(official_seconds)
            result.official_cores = official_cpu / sum(official_seconds)
            result.official_max_diff = float((mel - official_mel).abs().max())
        results.append(result)
        print(f"done: {result}", file=sys.stderr, flush=True)
    return results


def forward_utilisation(preset: str, batch: int, reps: int, peak: float) -> tuple[float, float]:
    """Median seconds and MFU of one packed-CFG backbone forward (2 * batch sequences of 750 frames)."""
    model = random_model(preset)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, TOTAL_FRAMES, model.config.mel_dim, generator=generator)
    text = torch.randint(0, model.config.text_num_embeds, (batch, TEXT_TOKENS), generator=generator)
    time_step = torch.full((batch,), 0.5)

    def call() -> torch.Tensor:
        with torch.no_grad():
            return model.transformer(x=x, cond=x, text=text, time=time_step, cfg_infer=True)

    median = statistics.median(timed(call, reps))
    return median, flops_per_nfe(model.config, batch) / median / peak


def profile_tiny(steps: int = 32, rows: int = 15) -> None:
    """Operator table for tiny, batch 1, and the share of wall time the operators account for."""
    model = random_model("tiny")
    call = sample_call(model, sampling_inputs(model.config, 1), steps)
    call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        call()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    top_level = sum(e.self_cpu_time_total for e in events) / 1e6
    print(
        f"profiled wall {wall:.2f} s; operator self time {top_level:.2f} s; ops called "
        f"{sum(e.count for e in events)} times ({sum(e.count for e in events) / steps:.0f} per NFE)"
    )


def cases(quick: bool, reps: int, batches: list[int], nfes: list[int]) -> list[Case]:
    tiny = [Case("tiny", batch, steps, reps) for batch in batches for steps in nfes]
    if quick:
        return [*tiny, Case("F5TTS_v1_Base", 1, 16, 2)]
    base = [Case("F5TTS_v1_Base", batch, steps, max(2, reps // 2)) for batch in batches for steps in nfes]
    return [*tiny, *base]


def markdown(results: list[Result], peak: float, forward: dict[str, tuple[float, float]], threads: int) -> str:
    lines = [
        f"torch {torch.__version__}, {threads} threads, fp32 matmul 2048^3: {peak / 1e9:.0f} GFLOP/s",
        "",
        "| work | backend | s/call (median) | spread | cores used | RTF | GFLOP/NFE | MFU | official s/call "
        "(cores used) | speed-up | max diff vs official | max diff vs eager | setup s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        official = "-" if r.official_seconds is None else f"{r.official_seconds:.2f} ({r.official_cores:.2f})"
        speedup = "-" if r.official_seconds is None else f"{r.official_seconds / r.seconds:.2f}x"
        diff = "-" if r.official_max_diff is None else f"{r.official_max_diff:.1e}"
        eager = "-" if r.eager_max_diff is None else f"{r.eager_max_diff:.1e}"
        lines.append(
            f"| {r.preset}, batch {r.batch}, NFE {r.steps} | {r.backend} | {r.seconds:.2f} | {r.spread:.0%} | "
            f"{r.cores:.2f} | {r.rtf:.2f} | {r.gflop_per_nfe:.1f} | {r.mfu:.0%} | {official} | "
            f"{speedup} | {diff} | {eager} | {r.setup_seconds:.0f} |"
        )
    lines += ["", "| DiT forward (packed CFG, batch 1, 750 frames) | s | MFU |", "|---|---|---|"]
    lines += [f"| {preset} | {seconds:.3f} | {mfu:.0%} |" for preset, (seconds, mfu) in forward.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="F5TTS_v1_Base only at batch 1, NFE 16, 2 reps")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per case after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-python", help="interpreter of a venv with f5-tts installed, to compare")
    parser.add_argument("--only-tiny", action="store_true", help="skip F5TTS_v1_Base entirely")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[32, 16], help="step counts (default 32 16)")
    parser.add_argument("--profile", action="store_true", help="print where the time goes in tiny and exit")
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        default=["eager"],
        help="sampling backends to time, each on the same weights and inputs (default eager)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds of --reps calls per backend (default 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.profile:
        profile_tiny()
        return
    peak = matmul_flops_per_second()
    selected = [
        c for c in cases(args.quick, args.reps, args.batch, args.nfe) if not (args.only_tiny and c.preset != "tiny")
    ]
    results = []
    for case in selected:
        results += run_case(case, peak, args.threads, args.official_python, args.backend, args.rounds)
    presets = dict.fromkeys(c.preset for c in selected)
    forward = {p: forward_utilisation(p, 1, 5 if p == "tiny" else 2, peak) for p in presets}
    peak_after = matmul_flops_per_second()
    print(markdown(results, peak, forward, args.threads))
    print(f"\nmatmul peak re-measured at the end: {peak_after / 1e9:.0f} GFLOP/s (noise check)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "peak_flops": peak,
                    "peak_flops_after": peak_after,
                    "results": [asdict(r) for r in results],
                    "forward": forward,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

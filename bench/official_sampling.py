"""The official f5-tts side of bench_sampling.py: run with the interpreter of a SEPARATE venv holding f5-tts.

Never imports flowtts (that venv does not have it) and is never imported by flowtts. bench_sampling.py
writes ``arch.json`` (upstream DiT arguments), ``model.safetensors`` (official release format) and
``inputs.safetensors`` (``cond`` [b, prompt, 100], ``text`` [b, nt]) into ``--work``; this script loads the
model with the official loader, times ``CFM.sample`` with the same settings and writes ``times.json`` and
``mel.safetensors`` (the output of the last call) back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from f5_tts.infer.utils_infer import load_checkpoint
from f5_tts.model import CFM, DiT
from safetensors.torch import load_file, save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-frames", type=int, required=True)
    parser.add_argument("--total-frames", type=int, required=True)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    arch = json.loads((args.work / "arch.json").read_text())
    model = CFM(
        transformer=DiT(**arch),
        mel_spec_kwargs=dict(
            n_fft=1024,
            hop_length=256,
            win_length=1024,
            n_mel_channels=100,
            target_sample_rate=24000,
            mel_spec_type="vocos",
        ),
    )
    model = load_checkpoint(model, str(args.work / "model.safetensors"), "cpu", dtype=torch.float32).eval()
    inputs = load_file(str(args.work / "inputs.safetensors"))
    batch = inputs["cond"].shape[0]

    def call() -> torch.Tensor:
        mel, _ = model.sample(
            cond=inputs["cond"],
            text=inputs["text"],
            duration=args.total_frames,
            lens=torch.full((batch,), args.prompt_frames),
            steps=args.steps,
            cfg_strength=2.0,
            sway_sampling_coef=-1.0,
            seed=0,
        )
        return mel

    call()  # warm-up
    seconds = []
    cpu_start = time.process_time()
    for _ in range(args.reps):
        start = time.perf_counter()
        mel = call()
        seconds.append(time.perf_counter() - start)
    save_file({"mel": mel.contiguous()}, str(args.work / "mel.safetensors"))
    cores = (time.process_time() - cpu_start) / sum(seconds)  # CPU seconds per wall second
    report = {"seconds": seconds, "median": statistics.median(seconds), "cores": cores}
    (args.work / "times.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()

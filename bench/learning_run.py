"""The learning demonstration: train a preset on a mel-shard dataset for a time budget, on one device.

    python bench/learning_run.py --data DATASET --out DIR [--config tiny] [--minutes 5] [--lr 5e-4]
        [--init-from CHECKPOINT] [--eval-every N]

It runs the same training step as ``jobs/train.py`` (``flowtts.training``: frame-budget batches, AdamW
with warmup and decay, gradient clipping, EMA, bf16 autocast on CUDA) in a single process without Ray,
so it also runs on a bare GPU machine. It writes the EMA weights in our checkpoint format (``--half``
stores them as float16), ``loss.csv`` (step, seconds, loss, lr, frames/s), ``loss_curve.png`` and
``summary.json``. With ``--eval-every N`` it also measures, every N updates, the EMA model's MCD-DTW on
the first ``--eval-items`` held-out clips (ground-truth durations, as ``jobs/evaluate.py`` does) and
writes ``heldout.csv``, drawn under the loss with the other-sentence baseline: the curve shows when the
model starts to say the held-out sentences, which the loss alone does not.
Evaluate the result with ``jobs/evaluate.py --model DIR/checkpoint --data DATASET``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from plot_loss import plot_loss_curve

from flowtts.checkpoint import save_checkpoint
from flowtts.config import load_config
from flowtts.evaluation.heldout import EvalItem, build_eval_items, score_other_sentence, synthesise_mels
from flowtts.evaluation.metrics import mcd_dtw
from flowtts.model import build_model
from flowtts.training.batching import BatchPosition, EpochPlan
from flowtts.training.data import TrainingData, dataset_texts, dataset_vocab
from flowtts.training.recipe import build_recipe
from flowtts.training.step import train_step
from flowtts.training.warmstart import prepare_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--frames", type=int, default=38400, help="frame budget per batch")
    parser.add_argument("--max-updates", type=int, default=6000, help="schedule length (decay end)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", type=Path, help="start from this checkpoint folder (e.g. an earlier run's)")
    parser.add_argument("--half", action="store_true", help="store the EMA weights as float16")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out MCD-DTW every N updates (0: never)")
    parser.add_argument("--eval-items", type=int, default=8, help="held-out clips in that measurement")
    parser.add_argument("--eval-nfe", type=int, default=16, help="ODE steps per clip in that measurement")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    config = load_config(args.config).with_overrides(
        {
            "train.learning_rate": args.lr,
            "train.batch_size_per_gpu": args.frames,
            "train.max_updates": args.max_updates,
            "train.num_warmup_updates": args.warmup,
        }
    )
    start = prepare_start(config, dataset_texts(args.data), dataset_vocab(args.data), init_from=args.init_from)
    config, vocab = start.config, start.vocab
    data = TrainingData.from_folder(args.data, vocab)
    plan = EpochPlan(data.lengths, args.frames, config.train.max_samples, seed=args.seed)
    model = (start.model or build_model(config.model)).to(device)
    recipe = build_recipe(model, config.train)
    args.out.mkdir(parents=True, exist_ok=True)
    items = build_eval_items(args.data, max_items=args.eval_items) if args.eval_every else []
    if items:
        baseline = float(np.mean([score.mcd_dtw for score in score_other_sentence(items)]))
        print(f"held-out probe: {len(items)} clips, other-sentence baseline MCD-DTW {baseline:.2f} dB", flush=True)
    position, step, started = BatchPosition(), 0, time.perf_counter()
    rows, probes = [], []
    while time.perf_counter() - started < args.minutes * 60 and step < args.max_updates:
        batch = data.batch(plan.batch_at(position))
        position = plan.advance(position)
        tick = time.perf_counter()
        result = train_step(model, recipe, [batch], max_grad_norm=config.train.max_grad_norm, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step += 1
        rows.append(
            {
                "step": step,
                "seconds": round(time.perf_counter() - started, 2),
                "loss": result.loss,
                "lr": result.lr,
                "frames_per_s": result.frames / (time.perf_counter() - tick),
            }
        )
        if step % 100 == 0:
            print(
                f"step {step} epoch {position.epoch} loss {result.loss:.4f} {rows[-1]['frames_per_s']:.0f} frames/s",
                flush=True,
            )
        if items and step % args.eval_every == 0:
            probes.append(
                {
                    "step": step,
                    "seconds": rows[-1]["seconds"],
                    "baseline_mcd_dtw": baseline,
                    "mcd_dtw": heldout_mcd(recipe.ema.ema_model, vocab, items, args.eval_nfe),
                }
            )
            print(f"step {step} held-out MCD-DTW {probes[-1]['mcd_dtw']:.2f} dB", flush=True)
    write_csv(args.out / "loss.csv", rows)
    if probes:
        write_csv(args.out / "heldout.csv", probes)
    plot_loss_curve(args.out / "loss.csv", args.out / "loss_curve.png", heldout_csv=args.out / "heldout.csv")
    ema = recipe.ema.ema_model.eval()
    if args.half:
        ema = ema.half()
    save_checkpoint(
        ema,
        args.out / "checkpoint",
        vocab,
        mel=config.mel,
        info={"steps": step, "epochs": position.epoch, "config": config.name, "init_from": str(args.init_from)},
    )
    tail = rows[-50:]
    summary = {
        "steps": step,
        "epochs": position.epoch,
        "seconds": rows[-1]["seconds"],
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "first_loss": sum(r["loss"] for r in rows[:50]) / len(rows[:50]),
        "last_loss": sum(r["loss"] for r in tail) / len(tail),
        "median_frames_per_s": sorted(r["frames_per_s"] for r in rows)[len(rows) // 2],
    }
    if probes:
        summary |= {"heldout_mcd_dtw": probes[-1]["mcd_dtw"], "baseline_mcd_dtw": baseline}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


@torch.no_grad()
def heldout_mcd(model: torch.nn.Module, vocab, items: list[EvalItem], nfe: int) -> float:
    """Mean MCD-DTW (dB) of the model's renditions of the items at their recorded durations."""
    was_training = model.training
    mels = synthesise_mels(model.eval(), vocab, items, [item.mel.shape[0] for item in items], nfe=nfe, seed=0)
    model.train(was_training)
    return float(np.mean([mcd_dtw(item.mel, mel) for item, mel in zip(items, mels, strict=True)]))


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()

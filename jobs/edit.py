"""Edit a recording: regenerate a few words so it says a new text; everything else stays as recorded.

    python jobs/edit.py --model CHECKPOINT_DIR --audio take.wav \\
        --text "Some call me nature, others call me mother nature." \\
        --new-text "Some call me optimist, others call me realist." \\
        --span 1.42 2.44 --span 4.04 4.9 --duration 1.2 --duration 1.0 --out edited.wav

Each --span START END (seconds, sorted, not overlapping) is regenerated; --duration (one per span) sets
its new length, else the span's length is adjusted to keep the recording's speaking rate. Outside the
spans the output is the input recording (at 24 kHz) sample for sample, joined with 20 ms cross-fades.
--model takes the same sources as jobs/synthesize.py. Ends with one summary line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from flowtts.storage import local_path
from flowtts.synthesis import SynthesisError, output_format, write_output
from flowtts.synthesis.cli import add_model_options, add_sampling_options, load_synthesizer, sampling_settings
from flowtts.usage_reporting import usage_reporting_off
from trainer.job_exit import exit_on_project_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--audio", type=local_path, required=True, help="the recording to edit (any soundfile format)")
    parser.add_argument("--text", required=True, help="what the recording says")
    parser.add_argument("--new-text", required=True, help="what it should say: the whole new transcript")
    parser.add_argument(
        "--span",
        nargs=2,
        type=float,
        action="append",
        required=True,
        metavar=("START", "END"),
        help="seconds to regenerate (repeat for several spans)",
    )
    parser.add_argument(
        "--duration", type=float, action="append", help="new length of each span in seconds (one per --span)"
    )
    parser.add_argument("--out", type=local_path, required=True, help="output file; the extension picks the format")
    add_sampling_options(parser)
    return parser.parse_args(argv)


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        output_format(args.out)
        sampling = sampling_settings(args)
        synthesizer = load_synthesizer(args)
        started = time.perf_counter()
        plan = synthesizer.plan_edit(
            args.audio,
            args.text,
            args.new_text,
            args.span,
            durations=args.duration,
            seed=args.seed,
            target_rms=args.target_rms,
        )
    except (SynthesisError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (mel,) = synthesizer.generate([plan.item], sampling)
    result = synthesizer.render_edit(plan, mel)
    elapsed = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_output(args.out, result.audio, result.sample_rate)
    spans = ", ".join(f"{start:.2f}-{end:.2f} s" for start, end in result.spans)
    print(
        f"wrote {args.out}: {result.duration_s:.2f} s of audio in {elapsed:.2f} s, regenerated {spans}, "
        f"seed {result.seed}, duration rule {result.duration_rule}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Project a published-size model on a GPU profile: paravideo's best plans against a sequence-parallel baseline.

`python -m paravideo.costmodel.projection --model wan2.1-14b --frames 1025 --gpus 8 --profile rtx4090-pcie`
prints the markdown tables of docs/cost_model.md. Everything printed is modelled, nothing measured.
"""

from __future__ import annotations

import argparse

from paravideo.costmodel.baseline import sequence_parallel
from paravideo.costmodel.memory import GIB
from paravideo.costmodel.planner import candidates
from paravideo.costmodel.profiles import load_profile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.costmodel.shapes import PRESETS
from paravideo.models.factors import latent_frames


def project(args: argparse.Namespace) -> str:
    """The markdown for one projection."""
    profile = load_profile(args.profile)
    shape = PRESETS[args.model]
    latent = latent_frames(args.frames, shape.time_stride)
    base = Scenario(shape=shape, latent_frames=latent, latent_height=args.height // shape.spatial_stride,
                    latent_width=args.width // shape.spatial_stride, steps=args.steps, block_frames=args.block_frames,
                    context_frames=args.context_frames, pipeline=args.gpus, dtype_bytes=2)
    decode = DecodeShape.of(base)
    ranked = [c for c in candidates(base, args.gpus, profile) if c.scenario.pipeline in (1, args.gpus)]
    lines = [f"{args.model}, {args.frames} frames ({latent} latent) at {args.width}x{args.height}, {args.steps} steps, "
             f"CFG, bf16, profile `{profile.name}` ({profile.memory_gib:.0f} GiB per GPU)", "",
             "| plan | GPUs | block | blocks | wall s | first frame s | peak GiB/GPU (max) | fits | bubble | "
             "GiB sent |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in ranked[:args.top]:
        r = c.row()
        lines.append(f"| paravideo pipeline {r['pipeline']} | {r['gpus_used']} | {r['block_frames']} | {r['blocks']} | "
                     f"{r['wall_s']:.0f} | {r['time_to_first_frame_s']:.0f} | {r['max_memory_gib']:.1f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['bubble']:.2f} | {r['sent_gib']:.1f} |")
    rows = {}
    for gpus in sorted({1, args.gpus}):
        b = sequence_parallel(base, gpus, profile, decode)
        rows[gpus] = b
        lines.append(f"| sequence parallel (Ulysses) | {gpus} | whole video | 1 | {b.wall_s:.0f} | {b.wall_s:.0f} | "
                     f"{b.peak_memory_bytes / GIB:.1f} | {'yes' if b.peak_memory_bytes <= profile.memory_gib * GIB else 'no'}"
                     f" | – | {b.sent_bytes_per_gpu * gpus / GIB:.1f} |")
    best = next((c for c in ranked if c.scenario.pipeline == args.gpus), None)
    if best is not None:
        b = rows[args.gpus]
        lines += ["", f"Best {args.gpus}-GPU paravideo plan against the {args.gpus}-GPU baseline: "
                  f"{b.wall_s / best.prediction.wall_s:.2f}x lower latency, "
                  f"{b.peak_memory_bytes / best.prediction.max_peak_memory:.2f}x lower peak memory per GPU "
                  f"(first frame {b.wall_s / best.prediction.first_frame_s:.1f}x sooner)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(prog="python -m paravideo.costmodel.projection", description=__doc__)
    parser.add_argument("--model", default="wan2.1-14b", choices=sorted(PRESETS))
    parser.add_argument("--frames", type=int, default=1025)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--block-frames", type=int, default=8, help="block size of the base plan (others are tried)")
    parser.add_argument("--context-frames", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--profile", default="rtx4090-pcie")
    parser.add_argument("--top", type=int, default=6)
    print(project(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

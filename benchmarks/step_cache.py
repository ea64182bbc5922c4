"""Step caching: uncached against cached at 20 and 50 steps, 1 and 2 pipeline ranks, builtin:small.

Usage: python benchmarks/step_cache.py [--repeats 2] [--steps 20 50] [--ranks 1 2] [--policy teacache]
       [--threshold 0.1] [--frames 65] [--size 64]

Each (steps, ranks) pair runs uncached and cached alternately (the order flips every repeat), each
run a fresh `paravideo generate` process, so both sides see the same machine load. Printed: the
wall-time ratio (median uncached / median cached), forwards reused and layer-forwards saved, PSNR
and max error of the cached frames (lossless PNGs) and latents against the uncached ones, and the
indicator's trajectory (relative L1 change per step against the step's budget) for one block.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from _runs import psnr, read_frames, run_generate, table


def _config(args, steps: int, ranks: int, cached: bool) -> dict:
    cache = {"policy": args.policy, "threshold": args.threshold} if cached else {"policy": "off"}
    return {"model": {"path": "builtin:small"},
            "video": {"prompt": "a hummingbird at a red flower, morning dew", "num_frames": args.frames,
                      "height": args.size, "width": args.size},
            "sampling": {"steps": steps, "scheduler": "unipc", "seed": 3},
            "blocks": {"block_frames": 4, "context_frames": 1},
            "parallel": {"pipeline": ranks}, "cache": {"step": cache},
            "launch": {"launcher": "local" if ranks > 1 else "inline", "nproc": ranks, "threads_per_rank": 1},
            "output": {"frames_png": True, "save_latents": True}}


def _trajectory(run: dict, block: int) -> list[list]:
    section = run["step_cache"]
    entry = section["blocks"][block]
    reused = set(entry["reused"])
    return [[step, f"{section['budget_by_step'][step]:.3f}", "-" if change is None else f"{change:.4f}",
             "reuse" if step in reused else "compute"] for step, change in enumerate(entry["change"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--policy", default="teacache", choices=["teacache", "first_block"])
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--frames", type=int, default=65)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="paravideo-step-cache-"))
    walls: dict[tuple, list[float]] = {}
    runs: dict[tuple, dict] = {}
    for rep in range(args.repeats):
        for steps in args.steps:
            for ranks in args.ranks:
                for cached in ((False, True) if rep % 2 == 0 else (True, False)):
                    label = f"s{steps}-r{ranks}-{'cached' if cached else 'uncached'}-{rep}"
                    run = run_generate(_config(args, steps, ranks, cached), label=label, workdir=work)
                    walls.setdefault((steps, ranks, cached), []).append(run["wall_s"])
                    runs[(steps, ranks, cached)] = run | {"dir": work / label}
                    print(f"{label}: {run['wall_s']:.1f} s", flush=True)
    rows, trajectories = [], {}
    for steps in args.steps:
        for ranks in args.ranks:
            ref, ours = runs[(steps, ranks, False)], runs[(steps, ranks, True)]
            base, fast = statistics.median(walls[(steps, ranks, False)]), statistics.median(walls[(steps, ranks, True)])
            section = ours["step_cache"]
            frames, ref_frames = read_frames(ours["dir"]), read_frames(ref["dir"])
            latents = torch.load(ours["dir"] / "latents.pt", weights_only=True)
            ref_latents = torch.load(ref["dir"] / "latents.pt", weights_only=True)
            rows.append([steps, ranks, " / ".join(f"{w:.1f}" for w in walls[(steps, ranks, False)]),
                         " / ".join(f"{w:.1f}" for w in walls[(steps, ranks, True)]), f"{base / fast:.2f}",
                         f"{section['forwards_reused']} / {section['forwards']}",
                         f"{section['saved_fraction']:.0%}", psnr(frames, ref_frames),
                         f"{np.abs(frames - ref_frames).max():.0f}",
                         f"{(latents - ref_latents).abs().max().item():.3g}"])
            if ranks == args.ranks[0]:
                trajectories[steps] = _trajectory(ours, block=len(section["blocks"]) // 2)
    print(f"\nbuiltin:small (random weights), {args.size}x{args.size}, {args.frames} frames, blocks of 4 latent "
          f"frames + 1 context, UniPC, cache.step.policy={args.policy}, threshold={args.threshold} (bell schedule, "
          f"warm-up 2, cool-down 1, at most 3 reuses in a row), {args.repeats} alternating repeats\n")
    print(table(["steps", "ranks", "uncached wall s", "cached wall s", "wall ratio (median)", "forwards reused",
                 "layer-forwards saved", "PSNR vs uncached (dB)", "max abs frame error (0-255)",
                 "max abs latent error"], rows))
    for steps, traj in trajectories.items():
        print(f"\nIndicator of the middle block at {steps} steps ({args.ranks[0]} rank(s)): relative L1 change of "
              "the first layer's modulated input against the step's budget\n")
        print(table(["step", "budget", "change", "decision"], traj))


if __name__ == "__main__":
    main()

"""Time linear and memory flat in video length: builtin:small at 65, 257 and 1,025 frames, block-wise.

Usage: python benchmarks/length_scaling.py [--frames 65 257 1025] [--steps 4] [--size 64]
Prints wall time, denoise-loop time, time to first frame and peak RSS per length, then the two
target ratios: time(1025)/time(257) <= 4.2 and peak(1025) <= 1.1 x peak(257).
"""

from __future__ import annotations

import argparse

from _runs import run_generate, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[65, 257, 1025])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="height = width in pixels")
    parser.add_argument("--block-frames", type=int, default=4)
    args = parser.parse_args()
    rows, results = [], {}
    for frames in args.frames:
        config = {"model": {"path": "builtin:small"},
                  "video": {"prompt": "a long drive along the coast", "num_frames": frames,
                            "height": args.size, "width": args.size},
                  "sampling": {"steps": args.steps, "scheduler": "unipc", "seed": 1},
                  "blocks": {"block_frames": args.block_frames, "context_frames": 1},
                  "launch": {"launcher": "inline", "threads_per_rank": 1}}
        run = run_generate(config, label=f"len{frames}")
        peak = run["ranks"][0]["peak_memory_bytes"]
        results[frames] = (run["wall_s"], peak)
        rows.append([frames, run["blocks"], f"{run['wall_s']:.2f}", f"{run.get('denoise_s', float('nan')):.2f}",
                     f"{run['time_to_first_frame_s']:.2f}", f"{peak / 2**20:.0f}"])
        print(f"{frames} frames: {run['wall_s']:.2f} s, peak RSS {peak / 2**20:.0f} MiB", flush=True)
    print()
    print(table(["frames", "blocks", "wall s", "denoise s", "first frame s", "peak RSS MiB"], rows))
    if 257 in results and 1025 in results:
        t_ratio = results[1025][0] / results[257][0]
        m_ratio = results[1025][1] / results[257][1]
        print(f"\ntime(1025)/time(257) = {t_ratio:.2f} (target <= 4.2); "
              f"peak(1025)/peak(257) = {m_ratio:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()

"""Layer-pipeline speed-up: 2 ranks x 1 thread against 1 rank x 1 thread, measured in one run.

Usage: python benchmarks/pipeline_scaling.py [--repeats 2] [--frames 129] [--size 128] [--steps 4]
builtin:small with enough blocks to keep the pipeline full; prints each repeat's times, the
speed-up ratio (target >= 1.8, limit 2.0), each rank's idle fraction and bytes sent.
"""

from __future__ import annotations

import argparse

from _runs import run_generate, table


def _config(ranks: int, args) -> dict:
    return {"model": {"path": "builtin:small"},
            "video": {"prompt": "a train crossing a long bridge", "num_frames": args.frames,
                      "height": args.size, "width": args.size},
            "sampling": {"steps": args.steps, "scheduler": "unipc", "seed": 1},
            "blocks": {"block_frames": args.block_frames, "context_frames": 1},
            "parallel": {"pipeline": ranks, "stage_layers": args.stage_layers if ranks == 2 else None},
            "launch": {"launcher": "local", "nproc": ranks, "threads_per_rank": 1}}


def _loop_s(run: dict) -> float:
    return run.get("denoise_s") or run["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames", type=int, default=129)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--block-frames", type=int, default=4)
    parser.add_argument("--stage-layers", type=int, nargs=2, default=None,
                        help="layers of the 2 stages (default: the engine's balanced split)")
    args = parser.parse_args()
    rows, ratios = [], []
    for rep in range(args.repeats):
        one = run_generate(_config(1, args), label=f"r{rep}-1rank")
        two = run_generate(_config(2, args), label=f"r{rep}-2rank")
        ratio = _loop_s(one) / _loop_s(two)
        ratios.append(ratio)
        same = one["block_digests"] == two["block_digests"]
        for name, run in (("1 rank", one), ("2 ranks", two)):
            for r in run["ranks"]:
                total = r["busy_s"] + r["idle_s"] + r["io_s"]
                rows.append([rep, name, r["rank"], f"{r['layers'][0]}-{r['layers'][1]}", f"{_loop_s(run):.2f}",
                             f"{run['wall_s']:.2f}", f"{r['idle_s'] / total if total else 0:.1%}",
                             f"{r['bytes_sent'] / 2**20:.1f}"])
        print(f"repeat {rep}: 1 rank {_loop_s(one):.2f} s, 2 ranks {_loop_s(two):.2f} s, speed-up {ratio:.2f}x, "
              f"same video: {same}", flush=True)
    print()
    print(table(["repeat", "plan", "rank", "layers", "denoise s", "wall s", "idle", "MiB sent"], rows))
    print("\nspeed-up 2 ranks vs 1 rank: " + ", ".join(f"{r:.2f}x" for r in ratios)
          + f" (best {max(ratios):.2f}x; target >= 1.8x, limit 2.0x)")


if __name__ == "__main__":
    main()

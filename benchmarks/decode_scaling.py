"""Decode placement: 2 (and 4) ranks against 1 rank at several step counts, decode on rank 0 vs spread.

Usage: python benchmarks/decode_scaling.py [--repeats 2] [--frames 65] [--size 128] [--steps 4 8 16 50]
         [--four] [--decode-only-frames 9]
builtin:small, 1 thread per rank, blocks of 4 + 1 context. For each step count and repeat it runs
1 rank, 2 ranks with parallel.decode: rank0 (before) and 2 ranks with parallel.decode: pipeline
(after), and with --four 4 ranks (pipeline decode, time-shared on this machine's cores), alternating
the order between repeats; ratios are measured within one repeat. Then the decode alone: seconds per
latent frame of each placement's ranks, measured piece by piece on one thread, against the cost
model's prediction on the cpu-local profile, and the whole decode at --check-sizes (~1 minute).
"""

from __future__ import annotations

import argparse

from _runs import run_generate, table


def _config(ranks: int, decode: str, steps: int, args) -> dict:
    return {"model": {"path": "builtin:small"},
            "video": {"prompt": "a train crossing a long bridge", "num_frames": args.frames,
                      "height": args.size, "width": args.size},
            "sampling": {"steps": steps, "scheduler": "unipc", "seed": 1},
            "blocks": {"block_frames": 4, "context_frames": 1},
            "parallel": {"pipeline": ranks, "decode": decode},
            "launch": {"launcher": "local" if ranks > 1 else "inline", "nproc": ranks, "threads_per_rank": 1}}


def _loop_s(run: dict) -> float:
    return run.get("denoise_s") or run["wall_s"]


def end_to_end(args) -> None:
    plans = [("1 rank", 1, "rank0"), ("2 ranks, decode rank0", 2, "rank0"), ("2 ranks, decode pipeline", 2, "pipeline")]
    if args.four:
        plans.append(("4 ranks, decode pipeline", 4, "pipeline"))
    rows, summary = [], []
    for steps in args.steps:
        ratios: dict[str, list[float]] = {name: [] for name, _, _ in plans[1:]}
        for rep in range(args.repeats):
            order = plans if rep % 2 == 0 else plans[::-1]
            runs = {name: run_generate(_config(ranks, decode, steps, args), label=f"s{steps}-r{rep}-{ranks}-{decode}")
                    for name, ranks, decode in order}
            digests = {tuple(r["block_digests"]) for r in runs.values()}
            base = _loop_s(runs["1 rank"])
            for name, run in runs.items():
                if name != "1 rank":
                    ratios[name].append(base / _loop_s(run))
                for r in run["ranks"]:
                    rows.append([steps, rep, name, r["rank"], f"{_loop_s(run):.2f}", f"{r['busy_s']:.2f}",
                                 f"{r['io_s']:.2f}", f"{r['idle_s']:.2f}"])
            print(f"steps {steps} repeat {rep}: " + ", ".join(f"{n} {_loop_s(r):.2f} s" for n, r in runs.items())
                  + f"; same latents in every plan: {len(digests) == 1}", flush=True)
        summary.append([steps] + [" / ".join(f"{x:.2f}x" for x in ratios[name]) for name, _, _ in plans[1:]])
    print()
    print(table(["steps", "repeat", "plan", "rank", "denoise s", "busy s", "decode+write s (io)", "idle s"], rows))
    print()
    print("speed-up against 1 rank (each repeat):")
    print(table(["steps"] + [name for name, _, _ in plans[1:]], summary))


def decode_only(args) -> None:
    import torch

    from paravideo.costmodel.calibrate_parts import decode_piece_times
    from paravideo.costmodel.costs import decode_frame_seconds
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import DecodeShape, Scenario
    from paravideo.costmodel.shapes import shape_for_model_path
    from paravideo.io.decoder_pieces import decoder_pieces
    from paravideo.models.builtin import ensure_builtin
    from paravideo.models.wan.loading import load_vae

    torch.set_num_threads(1)
    vae = load_vae(ensure_builtin("small"), device=torch.device("cpu"))
    pieces = decoder_pieces(vae.decoder)
    shape = shape_for_model_path("builtin:small")
    profile = load_profile(args.profile)
    frames = args.decode_only_frames - 2
    rows, whole_rows = [], []
    for size in [args.size] + [x for x in args.check_sizes if x != args.size]:
        side = size // shape.spatial_stride
        # the smaller of two passes: a pass stretched by another process's burst says little about the code
        per_frame = [min(t) for t in zip(*(decode_piece_times(vae, size, size, frames) for _ in range(2)))]
        base = Scenario(shape=shape, latent_frames=17, latent_height=side, latent_width=side, steps=4,
                        block_frames=4, context_frames=1)
        d = DecodeShape.of(base)
        for ranks in ((1, 2, 3, 4) if size == args.size else (1,)):
            s = base.but(pipeline=ranks, decode="pipeline" if ranks > 1 else "rank0")
            placement = d.placement(s)
            predicted = decode_frame_seconds(s, profile, d)
            for r, pred in predicted.items():
                lo, hi = placement.range_of(r) if placement else (0, len(pieces))
                measured = sum(per_frame[lo:hi])
                row = [f"{size}x{size}", f"{ranks} rank(s)", r, f"{pieces[lo].name} .. {pieces[hi - 1].name}",
                       f"{measured * 1000:.1f}", f"{pred * 1000:.1f}", f"{pred / measured - 1:+.0%}"]
                (rows if size == args.size else whole_rows).append(row)
        if size == args.size:
            piece_rows = [[p.name, f"{t * 1000:.1f}"] for p, t in zip(pieces, per_frame)]
    print()
    print(f"decode only, CPU ms per later latent frame (4 output frames), 1 thread (thread CPU time, so other "
          f"load on the machine inflates it less than wall time), predicted on {profile.name}:")
    head = ["size", "placement", "rank", "pieces", "measured ms", "predicted ms", "error"]
    print(table(head, rows + whole_rows))
    print(table(["piece", f"ms at {args.size}x{args.size}"], piece_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames", type=int, default=65)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 50])
    parser.add_argument("--four", action="store_true", help="also 4 ranks (time-shared on a 2-core machine)")
    parser.add_argument("--decode-only-frames", type=int, default=9)
    parser.add_argument("--skip-runs", action="store_true", help="only the decode-only measurement")
    parser.add_argument("--check-sizes", type=int, nargs="*", default=[64, 96, 192],
                        help="other square sizes at which the whole decode is compared with the model")
    parser.add_argument("--profile", default="cpu-local", help="hardware profile for the predictions")
    args = parser.parse_args()
    decode_only(args)
    if not args.skip_runs:
        end_to_end(args)


if __name__ == "__main__":
    main()

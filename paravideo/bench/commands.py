"""The `bench` subcommand (registered by paravideo/cli.py)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    """Add `bench` to the CLI's subparsers."""
    bench = sub.add_parser("bench", help="run a scaling sweep and write a latency/memory report")
    bench.add_argument("-c", "--config", required=True, help="sweep YAML (a base config + axes)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field of the base run config for every point (repeatable)")
    bench.add_argument("--out", default=None, help="report folder (default: the sweep's output_dir)")
    bench.add_argument("--calibrate", action="store_true",
                       help="re-measure the cpu-local profile first and predict with it")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the sweep; print where the report is and how close the model came."""
    from paravideo.bench.run import run_bench

    result = run_bench(args.config, overrides=args.overrides, out_dir=args.out, calibrate=args.calibrate)
    s = result.summary
    mean = s["wall_abs_error_mean"]
    print(f"bench: {s['measured']} of {s['points']} points ran; report: {result.out_dir}/report.md"
          + (f"; predicted wall time off by {mean * 100:.0f}% on average (max {s['wall_abs_error_max'] * 100:.0f}%)"
             if mean is not None else ""))
    return 0 if not s["failed"] else 1


"""The `bench` and `plan` subcommands (registered by paravideo/cli.py)."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub) -> None:
    """Add `bench` and `plan` to the CLI's subparsers."""
    bench = sub.add_parser("bench", help="run a scaling sweep and write a latency/memory report")
    bench.add_argument("-c", "--config", required=True, help="sweep YAML (a base config + axes)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field of the base run config for every point (repeatable)")
    bench.add_argument("--out", default=None, help="report folder (default: the sweep's output_dir)")
    bench.add_argument("--calibrate", action="store_true",
                       help="re-measure the cpu-local profile first and predict with it")
    plan = sub.add_parser("plan", help="predict and rank plans for a GPU count with the cost model")
    plan.add_argument("-c", "--config", required=True, help="run config YAML")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field (repeatable)")
    plan.add_argument("--gpus", type=int, required=True, help="GPUs available")
    plan.add_argument("--profile", default="h100-nvlink", help="hardware profile name or YAML file")
    plan.add_argument("--model", default=None,
                      help="model shape instead of the config's model.path: a preset (wan2.1-1.3b, wan2.1-14b) "
                           "or a diffusers folder")
    plan.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                      help="compute dtype (default: the config's model.dtype)")
    plan.add_argument("--top", type=int, default=10, help="candidates to list")
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the sweep; print where the report is and how close the model came."""
    from paravideo.report.bench import run_bench

    result = run_bench(args.config, overrides=args.overrides, out_dir=args.out, calibrate=args.calibrate)
    s = result.summary
    mean = s["wall_abs_error_mean"]
    print(f"bench: {s['measured']} of {s['points']} points ran; report: {result.out_dir}/report.md"
          + (f"; predicted wall time off by {mean * 100:.0f}% on average (max {s['wall_abs_error_max'] * 100:.0f}%)"
             if mean is not None else ""))
    return 0 if not s["failed"] else 1


def cmd_plan(args: argparse.Namespace) -> int:
    """Rank candidate plans for `--gpus` GPUs on `--profile`."""
    from paravideo.config import load_config
    from paravideo.errors import ConfigError
    from paravideo.report.planner import candidates, render
    from paravideo.report.profiles import load_profile
    from paravideo.report.scenario import DTYPE_BYTES, Scenario
    from paravideo.report.shapes import shape_for_model_path

    if args.gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
    config = load_config(args.config, args.overrides)
    profile = load_profile(args.profile)
    shape = shape_for_model_path(args.model or config.model.path)
    base = Scenario.from_config(config, shape)
    if args.dtype:
        base = base.but(dtype_bytes=DTYPE_BYTES[args.dtype])
    ranked = candidates(base, args.gpus, profile)
    if args.json:
        print(json.dumps([c.row() for c in ranked[:args.top]], indent=2))
    else:
        print(render(ranked, top=args.top, profile=profile, gpus=args.gpus))
    return 0

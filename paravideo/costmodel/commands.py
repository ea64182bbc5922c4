"""The `plan` subcommand (registered by paravideo/cli.py): rank plans for a GPU count with the cost model."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    """Add `plan` to the CLI's subparsers."""
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


def cmd_plan(args: argparse.Namespace) -> int:
    """Rank candidate plans for `--gpus` GPUs on `--profile`."""
    from paravideo.config import load_config
    from paravideo.errors import ConfigError
    from paravideo.costmodel.planner import candidates, render
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import DTYPE_BYTES, Scenario
    from paravideo.costmodel.shapes import shape_for_model_path

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

"""Command line: `paravideo generate | validate | plan ...`."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext

from paravideo.errors import ConfigError, ParavideoError
from paravideo.launch.stop import Interrupted, raise_on_stop_signals
from paravideo.bench import commands as bench_commands
from paravideo.costmodel import commands as plan_commands


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paravideo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a video from a YAML config")
    val = sub.add_parser("validate", help="check a config and print the resolved config and plan")
    for p in (gen, val):
        p.add_argument("-c", "--config", required=p is val, help="YAML config file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set sampling.steps=10 (repeatable)")
    gen.add_argument("--resume", metavar="OUT_DIR", default=None,
                     help="continue the stopped run in OUT_DIR from its checkpoint (needs no -c)")
    val.add_argument("--world-size", type=int, default=None, help="check the degrees against this many ranks")
    bench_commands.add_parser(sub)
    plan_commands.add_parser(sub)
    return parser


def _resume_config(args):
    from paravideo.config import apply_overrides, parse_config
    from paravideo.io.checkpoint import checkpoint_config

    try:
        data = checkpoint_config(args.resume)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--resume {args.resume}: {err}") from None
    data["output"].update(dir=str(args.resume), resume=True, overwrite=False)
    return parse_config(apply_overrides(data, args.overrides), source=f"checkpoint in {args.resume}")


def _cmd_generate(args) -> int:
    from paravideo.config import load_config
    from paravideo.generate import generate

    if args.resume is None and args.config is None:
        raise ConfigError("generate needs -c CONFIG (or --resume OUT_DIR)")
    if args.resume is not None and args.config is not None:
        raise ConfigError("--resume reuses the checkpoint's config; drop -c (use --set for run-time fields)")

    config = _resume_config(args) if args.resume else load_config(args.config, args.overrides)
    report = generate(config)
    if report is not None:
        print(f"wrote {report.frames} frames ({report.blocks} block(s), {report.latent_frames} latent frames) "
              f"to {report.video} in {report.wall_s:.1f} s; report: {config.output.dir}/run.json")
    return 0


def _cmd_validate(args) -> int:
    """Print the resolved config and the plan (ranks, stages, blocks, weight bytes); start no worker."""
    from paravideo.config import load_config
    from paravideo.generate import preflight
    from paravideo.costmodel.run_plan import describe_run

    config = load_config(args.config, args.overrides)
    factors = preflight(config, world_size=args.world_size)
    print(json.dumps({"config": config.resolved(), "plan": describe_run(config, factors)}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `paravideo` console script."""
    args = _parser().parse_args(argv)
    handlers = {"generate": _cmd_generate, "validate": _cmd_validate, "bench": bench_commands.cmd_bench,
                "plan": plan_commands.cmd_plan}
    # SIGTERM and SIGHUP (schedulers, a closed terminal) stop a job the way Ctrl-C does.
    stops = raise_on_stop_signals() if args.command == "generate" else nullcontext()
    try:
        with stops:
            return handlers[args.command](args)
    except ParavideoError as err:
        print(f"paravideo: error: {err}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as err:
        cause = str(err) if isinstance(err, Interrupted) else "interrupted"
        print(f"paravideo: {cause}; the frames written so far, if any, are finalised as video.incomplete.mp4 "
              "and run.json says complete: false", file=sys.stderr)
        return err.exit_code if isinstance(err, Interrupted) else 130


if __name__ == "__main__":
    raise SystemExit(main())

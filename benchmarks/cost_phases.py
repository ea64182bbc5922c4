"""Cost model against a one-rank run, phase by phase, in thread CPU time (a shared machine's load inflates it
far less than wall time).

Usage: python benchmarks/cost_phases.py [--frames 33 65 129] [--size 128] [--steps 8] [--block-frames 0]
         [--context 0] [--model builtin:small] [--profile cpu-local] [--parallel pipeline=2 ...]
Each run is `paravideo generate` in a fresh process (inline launcher, 1 thread) with the recorder's spans
timed in thread CPU seconds as well; --block-frames 0 is the whole video as one block (the vs_peers
setting), 4 with --context 1 the block-wise setting of decode_scaling.py. Phases: start-up (from the
call to the first forward: imports done before, so model load, prompt encoding, set-up), of which the
text encoder; the DiT forwards (embed + conditioning + layers + head), of which attention (timed with
its own spans); scheduler steps; decode; mp4 writes; the rest. Predicted: the cost model's terms for the
same config (costs.py). With --parallel (e.g. `pipeline=2`, `cfg=2 ulysses=2`) it runs the local
launcher instead and prints each rank's busy / decode+write (io) / idle seconds from run.json (wall
clock: read them on a quiet machine) against the prediction's. Each run is a fresh interpreter; the defaults take about 1.5 minutes of CPU
(33: 10 s, 65: 20 s, 129: 45 s, plus start-up and the model's VAE count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

from _runs import table


def _timed_run(config_dict: dict) -> dict[str, float]:
    """Run one generation in this process; thread CPU seconds per phase."""
    import torch.nn.functional as F

    from paravideo.config import parse_config
    from paravideo.generate import generate
    from paravideo.runtime import rank_model
    from paravideo.telemetry import recorder

    cpu: dict[str, float] = defaultdict(float)
    first_span: list[float] = []
    span, encode, sdpa = recorder.Recorder.span, rank_model.encode_texts, F.scaled_dot_product_attention

    @contextmanager
    def timed_span(self, name, kind=recorder.BUSY, **args):
        start = time.thread_time()
        if not first_span:
            first_span.append(start)
        with span(self, name, kind, **args):
            yield
        phase = "forward" if name.startswith(("block ", "embed", "head")) else name.split(" ")[0]
        cpu[phase] += time.thread_time() - start

    def timed_encode(*args, **kwargs):
        start = time.thread_time()
        out = encode(*args, **kwargs)
        cpu["text encode"] += time.thread_time() - start
        return out

    def timed_sdpa(*args, **kwargs):
        start = time.thread_time()
        out = sdpa(*args, **kwargs)
        cpu["attention (in forward)"] += time.thread_time() - start
        return out

    recorder.Recorder.span, rank_model.encode_texts, F.scaled_dot_product_attention = \
        timed_span, timed_encode, timed_sdpa
    try:
        start, process = time.thread_time(), time.process_time()
        generate(parse_config(config_dict))
        end, process_end = time.thread_time(), time.process_time()
    finally:
        recorder.Recorder.span, rank_model.encode_texts, F.scaled_dot_product_attention = span, encode, sdpa
    cpu["start-up"] = first_span[0] - start
    cpu["total (all threads)"] = process_end - process
    cpu["main thread"] = end - start
    return dict(cpu)


def _predicted(config_dict: dict, profile_name: str) -> dict[str, float]:
    """The cost model's seconds per phase for the same config (one rank)."""
    from paravideo.config import parse_config
    from paravideo.costmodel.cost_model import predict
    from paravideo.costmodel.costs import attention_seconds, schedule_costs, startup_seconds, text_encoder_seconds
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import DecodeShape, Scenario

    s = Scenario.from_config(parse_config(config_dict))
    profile = load_profile(profile_name)
    decode = DecodeShape.of(s)
    costs = schedule_costs(s, profile, decode)
    forwards = sum(costs.embed_s) + sum(costs.layers_s[0]) + sum(costs.head_s)
    writes = sum(s.block_output_frames(b.index) for b in s.plan.blocks)
    pixels = s.latent_height * s.latent_width * 64 / 1e6
    write = profile.video_open_s + writes * (profile.write_frame_s + pixels * profile.write_s_per_mpixel)
    pred = predict(s, profile, decode)
    return {"start-up": startup_seconds(s, profile, decode), "text encode": text_encoder_seconds(s, profile),
            "forward": forwards, "attention (in forward)": attention_seconds(s, profile),
            "scheduler": costs.scheduler_step_s * len(s.plan.forwards),
            "decode": sum(costs.block_out_s) - write, "write": write, "wall": pred.wall_s}


def per_rank(config: dict, profile_name: str, frames: int) -> list[list]:
    """A multi-rank run (local launcher, fresh processes): run.json's per-rank busy / decode+write / idle
    seconds against the prediction's. Wall-clock spans, so read them on a quiet machine."""
    from _runs import run_generate

    from paravideo.config import parse_config
    from paravideo.costmodel.cost_model import predict
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import Scenario

    load = os.getloadavg()[0]
    run = run_generate(config, label=f"ranks-{frames}")
    pred = predict(Scenario.from_config(parse_config(config)), load_profile(profile_name))
    rows = []
    for measured, predicted in zip(run["ranks"], pred.ranks):
        for kind in ("busy", "io", "idle"):
            m, p = measured[f"{kind}_s"], getattr(predicted, f"{kind}_s")
            rows.append([frames, measured["rank"], kind, f"{m:.2f}", f"{p:.2f}",
                         f"{p / m - 1:+.0%}" if m > 0.01 else "-", f"{load:.1f}"])
    rows.append([frames, "all", "wall", f"{run['wall_s']:.2f}", f"{pred.wall_s:.2f}",
                 f"{pred.wall_s / run['wall_s'] - 1:+.0%}", f"{load:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[33, 65, 129])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--block-frames", type=int, default=0, help="0: the whole video as one block")
    parser.add_argument("--context", type=int, default=0)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--profile", default="cpu-local")
    parser.add_argument("--parallel", nargs="*", default=[], metavar="AXIS=N",
                        help="e.g. pipeline=2 or cfg=2 ulysses=2: per-rank wall-clock busy/io/idle against the "
                             "model instead of the one-rank phases")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one run's config (JSON): measure, print JSON
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(_timed_run(json.loads(args.child))))
        return
    parallel = {k: int(v) for k, v in (item.split("=") for item in args.parallel)}
    world = 1
    for degree in parallel.values():
        world *= degree
    rows = []
    for frames in args.frames:
        with tempfile.TemporaryDirectory() as tmp:
            config = {"model": {"path": args.model},
                      "video": {"prompt": "a lighthouse on a cliff at dusk, waves below", "num_frames": frames,
                                "height": args.size, "width": args.size},
                      "sampling": {"steps": args.steps, "seed": 1},
                      "blocks": {"block_frames": args.block_frames, "context_frames": args.context},
                      "launch": {"launcher": "inline", "nproc": 1, "threads_per_rank": 1},
                      "output": {"dir": tmp, "overwrite": True, "progress": False}}
            if parallel:
                config.update(parallel=parallel, launch={"launcher": "local", "nproc": world, "threads_per_rank": 1})
                del config["output"]
                rows += per_rank(config, args.profile, frames)
                print(f"{frames} frames done", flush=True)
                continue
            load = os.getloadavg()[0]
            # A fresh interpreter per run, as `paravideo generate` would be (lazy imports count in start-up).
            child = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], capture_output=True,
                                   text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if child.returncode != 0:
                raise RuntimeError(f"{frames} frames failed:\n{child.stderr[-2000:]}")
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            predicted = _predicted(config, args.profile)
        measured["wall"] = measured["total (all threads)"]
        for phase in ("start-up", "text encode", "forward", "attention (in forward)", "scheduler", "decode",
                      "write", "wall"):
            m, p = measured.get(phase, 0.0), predicted[phase]
            rows.append([frames, phase, f"{m:.2f}", f"{p:.2f}", f"{p / m - 1:+.0%}" if m else "-", f"{load:.1f}"])
        print(f"{frames} frames done (load {load:.1f})", flush=True)
    print()
    if parallel:
        print(f"{args.model}, {args.size}x{args.size}, {args.steps} steps, block_frames {args.block_frames}, "
              f"parallel {parallel}; measured = run.json per-rank wall-clock seconds, predicted on {args.profile}:")
        print(table(["frames", "rank", "time", "measured s", "predicted s", "error", "load"], rows))
        return
    print(f"{args.model}, {args.size}x{args.size}, {args.steps} steps, block_frames {args.block_frames}, 1 rank, "
          f"1 thread; measured = thread CPU s (wall row: CPU s of all threads), predicted on {args.profile}:")
    print(table(["frames", "phase", "measured s", "predicted s", "error", "load"], rows))


if __name__ == "__main__":
    main()

"""Calibrate the `cpu-local` profile on this machine: `python -m paravideo.costmodel.calibrate [--out FILE]`.

Measures what the cost model needs from the built-in tiny and small DiTs (achieved FLOP/s and
fixed cost per layer call), the embed/conditioning/head calls, a scheduler step, the VAE decode
and mp4 writes, gloo point-to-point messages between two processes, and a real 1-rank run's
start-up, finish and baseline memory. Timings on a shared machine are noisy: every figure is a
mean of repeats (pauses caused by other processes count, as they do in a run), and the command
can be re-run whenever the load changes; `paravideo bench --calibrate` runs it right before a sweep.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from paravideo.costmodel.calibrate_parts import (measure_decode, measure_dit, measure_p2p, measure_scheduler,
                                              measure_write)
from paravideo.costmodel.profiles import PROFILE_DIR, HardwareProfile, save_profile


def measure_run(threads: int) -> dict:
    """Start-up, finish and baseline memory of a real 1-rank tiny run under the local launcher."""
    import json

    from paravideo.config import parse_config
    from paravideo.generate import generate
    from paravideo.costmodel.cost_model import predict
    from paravideo.costmodel.scenario import Scenario

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "model": {"path": "builtin:tiny"}, "video": {"prompt": "calibration", "num_frames": 17,
                                                         "height": 32, "width": 48},
            "sampling": {"steps": 2, "scheduler": "unipc"}, "blocks": {"block_frames": 2, "context_frames": 1},
            "launch": {"launcher": "local", "nproc": 1, "threads_per_rank": threads},
            "output": {"dir": tmp, "progress": False, "trace": True}})
        generate(config)
        run = json.loads((Path(tmp) / "run.json").read_text())
        spans = [e for e in json.loads((Path(tmp) / "trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    first = min(e["ts"] for e in spans) / 1e6
    last = max(e["ts"] + e["dur"] for e in spans) / 1e6
    scenario = Scenario.from_config(config)
    probe = HardwareProfile(**{**PLACEHOLDER, "runtime_base_gib": 0.0})
    non_base = predict(scenario, probe).ranks[0].memory.peak
    return {"startup_s": first, "finish_s": run["wall_s"] - last,
            "base_gib": (run["ranks"][0]["peak_memory_bytes"] - non_base) / 1024 ** 3}


# Neutral values for the fields being measured (replaced before anything is written).
PLACEHOLDER = dict(name="cpu-local", device="cpu", description="", source="", dit_peak_tflops=0.01, dit_efficiency=1.0,
                   vae_peak_tflops=0.01, vae_efficiency=1.0, layer_overhead_s=0.0, call_overhead_s=0.0,
                   scheduler_step_s=0.0, decode_frame_overhead_s=0.0, video_open_s=0.0, write_frame_s=0.0,
                   write_s_per_mpixel=0.0, link_gbps=1.0, link_latency_s=0.0, memory_gib=1.0, runtime_base_gib=0.0,
                   startup_s=0.0, load_gbps=1.0, finish_s=0.0, attention_scores_in_memory=True,
                   compute_slots=os.cpu_count() or 1)


def calibrate(*, threads: int = 1, repeats: int = 5, log=print) -> HardwareProfile:
    """Measure every field of the cpu-local profile; `log` gets one line per measurement."""
    torch.set_num_threads(threads)
    dit = measure_dit(repeats)
    log(f"DiT layers: {dit['flops_per_s'] / 1e9:.2f} GFLOP/s achieved (attention products "
        f"{dit['attention_flops_per_s'] / 1e9:.2f}), {dit['layer_overhead_s'] * 1e3:.3f} ms "
        f"fixed per layer call, {dit['call_overhead_s'] * 1e3:.3f} ms per embed/condition/head call "
        f"({dit['points']} sizes, tiny + small)")
    sched = measure_scheduler(repeats)
    log(f"scheduler step: {sched * 1e3:.3f} ms")
    decode = measure_decode(repeats)
    log(f"VAE decode: {decode['op_overhead_s'] * 1e6:.1f} us per op, {decode['flops_per_s'] / 1e9:.2f} GFLOP/s, "
        f"{decode['cache_gbps']:.2f} GB/s while an op fits the {decode['llc_bytes'] / 2 ** 20:.0f} MiB cache, "
        f"{decode['dram_gbps']:.2f} GB/s beyond ({decode['points']} pieces)")
    write = measure_write(repeats)
    log(f"mp4 write: open {write['open_s'] * 1e3:.1f} ms, {write['frame_s'] * 1e3:.3f} ms per frame + "
        f"{write['mpixel_s'] * 1e3:.2f} ms per megapixel")
    p2p = measure_p2p(repeats)
    log(f"gloo p2p: {p2p['gbps']:.2f} GB/s, {p2p['latency_s'] * 1e6:.0f} us per message on the wire, "
        f"{p2p['wait_s'] * 1e6:.0f} us per wait call")
    run = measure_run(threads)
    log(f"1-rank tiny run: start-up {run['startup_s']:.2f} s, finish {run['finish_s']:.2f} s, "
        f"baseline memory {run['base_gib']:.2f} GiB")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return HardwareProfile(**{**PLACEHOLDER,
        "description": f"this machine's CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
                       f"{threads} torch thread(s) per rank, float32, gloo over loopback",
        "source": f"calibrated by `python -m paravideo.costmodel.calibrate --threads {threads}` on "
                  f"{time.strftime('%Y-%m-%d %H:%M')} (torch {torch.__version__}, load average "
                  f"{os.getloadavg()[0]:.1f}); means of {repeats} repeats; compute terms (DiT, scheduler, VAE) in thread CPU "
                  "time (what the code costs on a free core), links, writes and start-up in wall time",
        "dit_peak_tflops": dit["flops_per_s"] / 1e12, "attention_tflops": dit["attention_flops_per_s"] / 1e12, "layer_overhead_s": dit["layer_overhead_s"],
        "call_overhead_s": dit["call_overhead_s"], "scheduler_step_s": sched,
        "vae_peak_tflops": decode["flops_per_s"] / 1e12, "decode_frame_overhead_s": 0.0,
        "vae_op_overhead_s": decode["op_overhead_s"], "vae_cache_gbps": decode["cache_gbps"],
        "vae_dram_gbps": decode["dram_gbps"], "llc_bytes": decode["llc_bytes"],
        "video_open_s": write["open_s"], "write_frame_s": write["frame_s"], "write_s_per_mpixel": write["mpixel_s"],
        "link_gbps": p2p["gbps"], "link_latency_s": p2p["latency_s"], "wait_overhead_s": p2p["wait_s"],
        "memory_gib": memory,
        "runtime_base_gib": max(0.0, run["base_gib"]), "startup_s": run["startup_s"], "load_gbps": 1.0,
        "finish_s": max(0.0, run["finish_s"])})


def main(argv: list[str] | None = None) -> int:
    """Command line entry: measure, print, write the profile YAML."""
    parser = argparse.ArgumentParser(prog="python -m paravideo.costmodel.calibrate", description=__doc__)
    parser.add_argument("--out", default=str(PROFILE_DIR / "cpu-local.yaml"), help="profile YAML to write")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (launch.threads_per_rank)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (means)")
    args = parser.parse_args(argv)
    profile = calibrate(threads=args.threads, repeats=args.repeats)
    save_profile(profile, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

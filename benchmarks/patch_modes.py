"""Patch modes on 4 ranks (4 bands): wall time, K/V bytes exchanged, and how far the frames move from exact.

Usage: python benchmarks/patch_modes.py [--height 480] [--width 832] [--frames 5] [--steps 6] [--warmup 2]
builtin:small, one process per band (local launcher, gloo on CPU). Frames are compared as lossless PNGs
against patch_mode exact (itself equal to one process), latents as saved floats.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from _runs import psnr, read_frames, run_generate, table

BANDS = 4
MODES = [("exact", {}), ("distrifusion", {}), ("pcpp", {"pcpp_fraction": 0.1}), ("pcpp", {"pcpp_fraction": 0.3}),
         ("pcpp", {"pcpp_fraction": 0.5})]
KV_KINDS = ("patch_kv_exact", "patch_kv_stale", "patch_kv_halo")


def _config(mode: str, extra: dict, args) -> dict:
    return {"model": {"path": "builtin:small"},
            "video": {"prompt": "a hummingbird at a red flower, morning dew", "num_frames": args.frames,
                      "height": args.height, "width": args.width},
            "sampling": {"steps": args.steps, "scheduler": "unipc", "seed": 3},
            "parallel": {"patch": BANDS, "patch_mode": mode, "warmup_steps": args.warmup, **extra},
            "launch": {"launcher": "local", "nproc": BANDS, "threads_per_rank": 1},
            "output": {"frames_png": True, "save_latents": True}}


def _kv_mib(run: dict) -> dict[str, float]:
    return {kind: sum(r["bytes_by_kind"].get(kind, 0) for r in run["ranks"]) / 2 ** 20 for kind in KV_KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="paravideo-patch-modes-"))
    rows, ref, stale_ref = [], None, None
    for mode, extra in MODES:
        label = mode + "".join(f"-p{v}" for v in extra.values())
        run = run_generate(_config(mode, extra, args), label=label, workdir=workdir)
        out = workdir / label
        frames, latents = read_frames(out), torch.load(out / "latents.pt", weights_only=True)
        if ref is None:
            ref = (frames, latents)
        kv = _kv_mib(run)
        stale = kv["patch_kv_stale"] + kv["patch_kv_halo"]
        if mode == "distrifusion":  # listed before the pcpp runs: their stale traffic is compared to it
            stale_ref = stale
        name = mode + (f" p={extra['pcpp_fraction']}" if extra else "")
        rows.append([name, f"{run['wall_s']:.1f}",
                     f"{sum(kv.values()):.1f}", f"{stale:.1f}",
                     f"{stale / stale_ref:.0%}" if stale and stale_ref else "-",
                     psnr(frames, ref[0]), f"{np.abs(frames - ref[0]).max():.0f}",
                     f"{(latents - ref[1]).abs().max().item():.3g}"])
        print(f"{name}: done ({run['wall_s']:.1f} s)", flush=True)
    print(f"\n{args.height // 16} token rows in {BANDS} bands, {args.width}x{args.height} px, {args.frames} frames, "
          f"{args.steps} steps ({args.warmup} synchronous warm-up), builtin:small, {BANDS} CPU processes (gloo)\n")
    print(table(["mode", "wall s", "K/V MiB (all ranks)", "stale K/V MiB", "stale vs distrifusion",
                 "PSNR vs exact (dB)", "max abs frame error (0-255)", "max abs latent error"], rows))


if __name__ == "__main__":
    main()

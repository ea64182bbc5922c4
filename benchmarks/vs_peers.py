"""paravideo's parallel axes against diffusers' own context parallelism, on the same model, prompt and sizes.

Usage: python benchmarks/vs_peers.py [--repeats 2] [--frames 17 33 65] [--size 64] [--steps 4]
       [--model builtin:small]

Sides, alternated within each repeat (the order reversed on odd repeats), each in a fresh process:
  diffusers 1 proc   WanPipeline, one process, whole video
  diffusers CP u2    transformer.enable_parallelism(ContextParallelConfig(ulysses_degree=2)), 2 gloo processes
  diffusers CP r2    the same with ring_degree=2
  paravideo 1 rank, ulysses 2, pipeline 2, cfg 2, and the hybrid cfg 2 x ulysses 2 on 4 ranks
paravideo runs the whole video as one block (the same attention work as diffusers). Same folder, prompt,
negative prompt, steps, scheduler (the folder's), guidance, seed and size; the initial noise differs
(diffusers draws it from a torch generator, paravideo from its coordinated noise pool), the work does not.

diffusers 0.42's enable_parallelism computes `rank % torch.accelerator.device_count()`, which is a
division by zero on a machine without an accelerator: the diffusers CP worker processes (and only
they) replace torch.accelerator.device_count with one that returns 1 before calling it. Its ring also
needs each chunk's log-sum-exp, which diffusers' native attention does not return (its native-flash
backend is CUDA-only): the ring worker gives the native op one from torch's CPU flash kernel
(`aten._scaled_dot_product_flash_attention_for_cpu`, the kernel SDPA itself runs on CPU).

Prints per run: wall s (from process-group start to the finished video), time to first frame, the
largest per-rank RSS high-water mark, MiB sent by all ranks, and each side's wall ratio against
diffusers' one process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _runs import run_generate, table

PROMPT = "a lighthouse on a cliff at dusk, waves below"
PARAVIDEO_SIDES = {"paravideo 1 rank": {}, "paravideo ulysses 2": {"ulysses": 2}, "paravideo ring 2": {"ring": 2},
                   "paravideo pipeline 2": {"pipeline": 2}, "paravideo cfg 2": {"cfg": 2},
                   "paravideo cfg 2 x ulysses 2": {"cfg": 2, "ulysses": 2}}
DIFFUSERS_SIDES = {"diffusers 1 proc": "none", "diffusers CP u2": "ulysses", "diffusers CP r2": "ring"}


# ---- diffusers side (runs in its own interpreter: `--diffusers-worker`) ----

def _vm_hwm() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def _count_collective_bytes(counter: list[int], world: int) -> None:
    """Count what diffusers' context-parallel attention sends (it calls torch's functional collectives)."""
    import torch.distributed._functional_collectives as funcol

    a2a, gather = funcol.all_to_all_single, funcol.all_gather_tensor

    def all_to_all_single(tensor, *args, **kwargs):
        counter[0] += tensor.numel() * tensor.element_size() * (world - 1) // world
        return a2a(tensor, *args, **kwargs)

    def all_gather_tensor(tensor, *args, **kwargs):
        counter[0] += tensor.numel() * tensor.element_size() * (world - 1)
        return gather(tensor, *args, **kwargs)

    funcol.all_to_all_single, funcol.all_gather_tensor = all_to_all_single, all_gather_tensor


def _ring_lse_on_cpu() -> None:
    """diffusers 0.42's ring merges per-chunk results through their log-sum-exp, which its native attention does
    not return, and its native-flash attention is CUDA-only: give the native op one from torch's CPU flash kernel."""
    import diffusers.models.attention_dispatch as dispatch
    import torch

    native = dispatch._native_attention_forward_op

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        if not return_lse:
            return native(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, False,
                          _save_ctx=_save_ctx, _parallel_config=_parallel_config)
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal,
                                                                              scale=scale)
        return out.transpose(1, 2), lse.transpose(1, 2)

    dispatch._native_attention_forward_op = forward_op


def _diffusers_rank(rank: int, world: int, cp: str, args, port: int, result_path: str) -> None:
    import torch
    import torch.distributed as dist
    from diffusers import WanPipeline

    torch.set_num_threads(1)
    sent = [0]
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.accelerator.device_count = lambda: 1  # see the module docstring: this process only
        if cp == "ring":
            _ring_lse_on_cpu()
        _count_collective_bytes(sent, world)
    start = time.perf_counter()
    pipe = WanPipeline.from_pretrained(args.root, torch_dtype=torch.float32)
    if world > 1:
        from diffusers import ContextParallelConfig

        degree = {"ulysses_degree": world} if cp == "ulysses" else {"ring_degree": world}
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(**degree))
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt=PROMPT, negative_prompt="", height=args.size, width=args.size, num_frames=args.frames[0],
         num_inference_steps=args.steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(1),
         output_type="np")
    wall = time.perf_counter() - start
    row = {"wall_s": wall, "first_frame_s": wall, "peak": _vm_hwm(), "sent": sent[0]}
    if world > 1:
        rows = [None] * world
        dist.all_gather_object(rows, row)
        dist.destroy_process_group()
    else:
        rows = [row]
    if rank == 0:
        Path(result_path).write_text(json.dumps(rows))


def diffusers_worker(args) -> None:
    """One diffusers run (1 process, or 2 gloo processes with context parallelism); writes --result."""
    world = 1 if args.cp == "none" else 2
    if world == 1:
        _diffusers_rank(0, 1, "none", args, 0, args.result)
        return
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_diffusers_rank, args=(world, args.cp, args, port, args.result), nprocs=world, join=True)


def run_diffusers(cp: str, frames: int, args, root: Path) -> dict:
    result = Path(tempfile.mkdtemp(prefix="vs-peers-")) / "result.json"
    cmd = [sys.executable, __file__, "--diffusers-worker", "--cp", cp, "--root", str(root), "--frames", str(frames),
           "--size", str(args.size), "--steps", str(args.steps), "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"diffusers {cp} failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(result.read_text())
    return {"wall_s": rows[0]["wall_s"], "first_frame_s": rows[0]["first_frame_s"],
            "peak": max(r["peak"] for r in rows), "sent": sum(r["sent"] for r in rows), "ranks": len(rows)}


# ---- paravideo side ----

def run_paravideo(parallel: dict, frames: int, args, label: str) -> dict:
    ranks = 1
    for degree in parallel.values():
        ranks *= degree
    config = {"model": {"path": args.model},
              "video": {"prompt": PROMPT, "negative_prompt": "", "num_frames": frames, "height": args.size,
                        "width": args.size},
              "sampling": {"steps": args.steps, "guidance_scale": 5.0, "seed": 1},
              "blocks": {"block_frames": 0}, "parallel": parallel,
              "launch": {"launcher": "local" if ranks > 1 else "inline", "nproc": ranks, "threads_per_rank": 1}}
    run = run_generate(config, label=label)
    return {"wall_s": run["wall_s"], "first_frame_s": run["time_to_first_frame_s"],
            "peak": max(r["peak_memory_bytes"] for r in run["ranks"]),
            "sent": sum(r["bytes_sent"] for r in run["ranks"]), "ranks": len(run["ranks"]),
            "predicted_s": _predicted_wall(config)}


def _predicted_wall(config: dict) -> float:
    """The cost model's wall time for this config on the cpu-local profile."""
    from paravideo.config import parse_config
    from paravideo.costmodel.cost_model import predict
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import Scenario

    return predict(Scenario.from_config(parse_config(config)), load_profile("cpu-local")).wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 33, 65])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--sides", nargs="+", default=None, help="a subset of the side names")
    parser.add_argument("--diffusers-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cp", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.diffusers_worker:
        diffusers_worker(args)
        return
    from paravideo.models.builtin import resolve_model_path

    root = resolve_model_path(args.model)
    sides = list(DIFFUSERS_SIDES) + list(PARAVIDEO_SIDES)
    sides = [s for s in sides if args.sides is None or s in args.sides]
    results: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):
        for frames in args.frames:
            for side in (sides if rep % 2 == 0 else sides[::-1]):
                label = f"r{rep}-{frames}f-{side.replace(' ', '_')}"
                res = (run_diffusers(DIFFUSERS_SIDES[side], frames, args, root) if side in DIFFUSERS_SIDES
                       else run_paravideo(PARAVIDEO_SIDES[side], frames, args, label))
                results.setdefault((side, frames), []).append(res)
                print(f"repeat {rep} {frames} frames {side}: wall {res['wall_s']:.2f} s, first frame "
                      f"{res['first_frame_s']:.2f} s, peak {res['peak'] / 2**20:.0f} MiB, "
                      f"sent {res['sent'] / 2**20:.2f} MiB", flush=True)
    rows = []
    for frames in args.frames:
        base = min(r["wall_s"] for r in results.get(("diffusers 1 proc", frames), [{"wall_s": float("nan")}]))
        for side in sides:
            runs = results[(side, frames)]
            best = min(runs, key=lambda r: r["wall_s"])
            rows.append([frames, side, best["ranks"], " / ".join(f"{r['wall_s']:.2f}" for r in runs),
                         f"{best['first_frame_s']:.2f}", f"{best['peak'] / 2**20:.0f}",
                         f"{best['sent'] / 2**20:.2f}", f"{base / best['wall_s']:.2f}x",
                         f"{best['predicted_s']:.2f}" if "predicted_s" in best else "-"])
    print()
    print(table(["frames", "side", "ranks", "wall s (each repeat)", "first frame s (best)", "peak RSS MiB/rank",
                 "MiB sent", "speed-up vs diffusers 1 proc (best)", "cost model s (cpu-local)"], rows))


if __name__ == "__main__":
    main()

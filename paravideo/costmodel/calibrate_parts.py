"""The single measurements behind `paravideo.costmodel.calibrate` (each a mean of timed repeats)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

SIZES = ((32, 48), (64, 64), (96, 96))  # pixels (mp4 writes)
DIT_SIZES = ((32, 48), (64, 64), (128, 128))  # pixels
DIT_FRAMES = (2, 8, 17)  # latent frames per window


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
          ) -> float:
    """Mean seconds of `fn()` on `clock`: wall time where pauses are part of the work (messages, the ffmpeg
    pipe); thread CPU time for compute, which on a shared machine is what the code costs on a free core."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.fmean(times)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(a, b) of y = a + b x minimising the relative error (small and large points count alike); a >= 0."""
    w = [1.0 / (y * y) for y in ys]
    sw, sx, sy = sum(w), sum(wi * x for wi, x in zip(w, xs)), sum(wi * y for wi, y in zip(w, ys))
    sxx, sxy = sum(wi * x * x for wi, x in zip(w, xs)), sum(wi * x * y for wi, x, y in zip(w, xs, ys))
    det = sw * sxx - sx * sx
    a, b = (sy * sxx - sx * sxy) / det, (sw * sxy - sx * sy) / det
    if a < 0 or b <= 0:
        a, b = 0.0, sxy / sxx
    return a, b


def _stage(name: str):
    from paravideo.models.builtin import ensure_builtin
    from paravideo.models.family import inspect_model

    root = ensure_builtin(name)
    family, factors = inspect_model(root)
    stages = family.load_stages(root, factors, 0, factors.num_layers, dtype=torch.float32, device=torch.device("cpu"))
    return root, stages[0]


ATTENTION_TOKENS = (128, 512, 1088, 2112)  # query = key tokens: a block window up to a whole 129-frame video


@torch.no_grad()
def measure_attention(repeats: int, *, heads: int = 4, head_dim: int = 64, text_tokens: int = 512) -> dict:
    """The attention kernel alone (torch's scaled_dot_product_attention, flash on CPU) at the small DiT's
    head size: self-attention over `ATTENTION_TOKENS` and cross-attention to the text, seconds = fixed per
    call + FLOPs / rate. Fitted on the kernel, not on whole layers: the tiny DiT's 16-wide heads run it at
    half the rate and would pull a whole-layer fit far from what real (64-128 wide) heads get."""
    import torch.nn.functional as F

    from paravideo.costmodel.decode_cost import fit_nonnegative

    rows, ys = [], []
    for tokens in ATTENTION_TOKENS:
        for keys in (tokens, text_tokens):
            q = torch.randn(2, heads, tokens, head_dim)
            kv = torch.randn(2, heads, keys, head_dim)
            ys.append(timed(lambda: F.scaled_dot_product_attention(q, kv, kv), repeats, clock=time.thread_time))
            rows.append((1.0, 2.0 * 2 * 2 * tokens * keys * heads * head_dim))  # QK^T and AV
    call, per_flop = fit_nonnegative(rows, ys)
    return {"flops_per_s": 1.0 / per_flop, "call_s": call}


@torch.no_grad()
def measure_dit(repeats: int) -> dict:
    """Per-layer time = fixed + projection/FFN FLOPs / rate + attention FLOPs / the kernel's rate
    (`measure_attention`), the first two fitted over windows of the tiny and small DiTs from a short block
    (2 latent frames at 32x48) to a whole 65-frame video at 128x128 (17 latent frames, 1,088 tokens)."""
    from paravideo.costmodel.costs import ATTENTION_TERMS
    from paravideo.costmodel.flops import Window, condition_flops, embed_flops, head_flops, layer_flops
    from paravideo.costmodel.shapes import DiTShape

    attention = measure_attention(repeats)
    xs, ys, calls = [], [], []
    for name in ("tiny", "small"):
        root, stage = _stage(name)
        shape = DiTShape.from_folder(root)
        text = stage.project_text(torch.randn(2, 512, shape.text_dim))
        for height, width in DIT_SIZES:
            for frames in DIT_FRAMES:
                latents = torch.randn(1, shape.in_channels, frames, height // shape.spatial_stride,
                                      width // shape.spatial_stride)
                grid = stage.grid(latents.shape)
                tokens = grid[0] * grid[1] * grid[2]
                cond = stage.condition(torch.tensor([500.0, 500.0]), text, grid)
                hidden = stage.embed(latents).expand(2, -1, -1).contiguous()
                seconds = timed(lambda: stage.run_layers(hidden, cond), repeats, clock=time.thread_time)
                terms = layer_flops(shape, Window(2, tokens, tokens, 512))
                attention_flops = sum(terms[k] for k in ATTENTION_TERMS)
                xs.append(sum(terms.values()) - attention_flops)
                ys.append(max(1e-6, seconds / stage.num_layers - attention_flops / attention["flops_per_s"]))
                if frames == DIT_FRAMES[0]:
                    out = stage.run_layers(hidden, cond)
                    calls.append((timed(lambda: stage.condition(torch.tensor([500.0, 500.0]), text, grid), repeats,
                                        clock=time.thread_time)
                                  + timed(lambda: stage.embed(latents), repeats, clock=time.thread_time)
                                  + timed(lambda: stage.head(out, cond), repeats, clock=time.thread_time),
                                  condition_flops(shape, 2) + embed_flops(shape, tokens) + head_flops(shape, 2, tokens)))
    overhead, per_flop = fit_line(xs, ys)
    call = statistics.median(max(0.0, t - f * per_flop) / 3 for t, f in calls)
    return {"flops_per_s": 1.0 / per_flop, "attention_flops_per_s": attention["flops_per_s"],
            "layer_overhead_s": overhead, "call_overhead_s": call, "points": len(ys)}


def measure_scheduler(repeats: int, steps: int = 8) -> float:
    """Seconds per scheduler step of a block, over a block's whole step sequence."""
    from paravideo.models.builtin import ensure_builtin
    from paravideo.models.family import inspect_model
    from paravideo.models.wan.loading import read_scheduler_config
    from paravideo.schedule.sampler import SchedulerBank, make_scheduler

    root = ensure_builtin("tiny")
    bank = SchedulerBank(make_scheduler("unipc", read_scheduler_config(root)), steps)
    latents = torch.randn(1, inspect_model(root)[1].latent_channels, 3, 4, 6)

    def one_block() -> None:
        sched, x = bank.new_block_scheduler(), latents
        for t in bank.timesteps:
            x = sched.step(torch.randn_like(x), t, x, return_dict=False)[0]

    return timed(one_block, repeats, clock=time.thread_time) / steps


DECODE_SIZES = ((32, 48), (64, 64), (160, 160))  # pixels: the last one's conv unfolds outgrow a 32 MiB cache


def last_level_cache_bytes() -> int:
    """Size of this CPU's largest cache (sysfs), or 32 MiB when the kernel does not say."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        text = (entry / "size").read_text().strip() if (entry / "size").is_file() else ""
        if text[:-1].isdigit():
            sizes.append(int(text[:-1]) * {"K": 1024, "M": 1024 ** 2}.get(text[-1], 1))
    return max(sizes, default=32 * 1024 ** 2)


@torch.no_grad()
def decode_piece_times(vae, height: int, width: int, frames: int = 4) -> list[float]:
    """Thread CPU seconds per later latent frame of each decoder piece at `height` x `width` pixels (thread
    time, so other processes on a shared machine inflate it less than wall time)."""
    from paravideo.io.decoder_pieces import decoder_pieces

    spatial = vae.config.scale_factor_spatial
    pieces = decoder_pieces(vae.decoder)
    caches = [[None] * p.slots for p in pieces]
    z = vae.post_quant_conv(torch.randn(1, vae.config.z_dim, frames + 2, height // spatial, width // spatial))
    seconds = [0.0] * len(pieces)
    for f in range(z.shape[2]):
        x = z[:, :, f:f + 1]
        for i, (piece, cache) in enumerate(zip(pieces, caches)):
            start = time.thread_time()
            x = piece.run(x, cache, f == 0)
            if f >= 2:  # the first frame differs and the second warms the allocator: time the steady ones
                seconds[i] += time.thread_time() - start
    return [s / frames for s in seconds]


def measure_decode(repeats: int, sizes=DECODE_SIZES) -> dict:
    """Per-piece decode time = ops x fixed + FLOPs / rate + bytes / bandwidth (cached or DRAM by each op's
    working set), fitted over the pieces of the tiny VAE at a few resolutions (decode_cost.py)."""
    from paravideo.costmodel.decode_cost import fit_nonnegative, piece_terms
    from paravideo.costmodel.flops import decoder_piece_traffic
    from paravideo.models.builtin import ensure_builtin
    from paravideo.models.family import inspect_model

    root = ensure_builtin("tiny")
    family, _ = inspect_model(root)
    vae = family.load_vae(root, device=torch.device("cpu"))
    llc = last_level_cache_bytes()
    rows, ys, scales = [], [], []
    for height, width in sizes:
        traffic = decoder_piece_traffic(dict(vae.config), height // 8, width // 8)
        times = [min(t) for t in zip(*(decode_piece_times(vae, height, width) for _ in range(max(1, repeats // 2))))]
        rows += [piece_terms(p, llc) for p in traffic]
        ys += times
        # Errors relative to the piece plus an average piece of that decode: a rank's share is a sum of
        # pieces, so the many sub-millisecond pieces (op overhead, noisy) must not outweigh the big ones.
        scales += [t + sum(times) / len(times) for t in times]
    op_s, per_flop, per_cached, per_dram = fit_nonnegative(rows, ys, scales)
    return {"op_overhead_s": op_s, "flops_per_s": 1.0 / per_flop if per_flop else 1e15,
            "cache_gbps": 1e-9 / per_cached if per_cached else 1e6, "dram_gbps": 1e-9 / per_dram if per_dram else 1e6,
            "llc_bytes": llc, "points": len(ys)}


def measure_write(repeats: int, frames: int = 16) -> dict:
    """mp4 writes: encoder start, then per frame = fixed + megapixels x rate."""
    from paravideo.io.sink import VideoSink

    xs, ys, opens = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (height, width) in enumerate(SIZES):
            sink = VideoSink(Path(tmp) / str(i), width=width, height=height, fps=16)
            one = torch.randint(0, 255, (1, height, width, 3), dtype=torch.uint8)
            start = time.perf_counter()
            sink.write(one)
            opens.append(time.perf_counter() - start)
            batch = one.expand(frames, -1, -1, -1).contiguous()
            ys.append(timed(lambda: sink.write(batch), repeats, warmup=0) / frames)
            xs.append(height * width / 1e6)
            sink.close(complete=True)
    frame_s, mpixel_s = fit_line(xs, ys)
    return {"open_s": statistics.median(o - y for o, y in zip(opens, ys)), "frame_s": frame_s,
            "mpixel_s": mpixel_s}


def _p2p_rank(rank: int, port: int, sizes: list[int], repeats: int, queue) -> None:
    import os

    import torch.distributed as dist

    from paravideo.parallel.comm import P2P
    from paravideo.telemetry.recorder import Recorder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    p2p = P2P(rank, device=torch.device("cpu"), recorder=Recorder(rank), timeout_s=60)
    peer, out = 1 - rank, {}
    for n in sizes:
        x = torch.zeros(n // 4)

        def ping_pong() -> None:
            if rank == 0:
                p2p.send(x, peer, kind="probe")
                p2p.flush()
                p2p.recv(x.shape, x.dtype, peer, what="probe")
            else:
                p2p.recv(x.shape, x.dtype, peer, what="probe")
                p2p.send(x, peer, kind="probe")
                p2p.flush()

        out[n] = timed(ping_pong, repeats, warmup=2) / 2
    waits = []
    for _ in range(repeats):  # the cost of a wait call alone: the message is already there
        x = torch.zeros(256)
        if rank == 0:
            pending = p2p.post_recv(x.shape, x.dtype, peer, what="probe")
            time.sleep(0.02)
            start = time.perf_counter()
            p2p.wait(pending)
            waits.append(time.perf_counter() - start)
        else:
            p2p.send(x, peer, kind="probe")
            p2p.flush()
    if rank == 0:
        queue.put((out, statistics.fmean(waits)))
    dist.barrier()
    dist.destroy_process_group()


def measure_p2p(repeats: int) -> dict:
    """One-way message time = latency + bytes / bandwidth, from ping-pongs between two gloo processes."""
    import multiprocessing as mp

    from paravideo.launch.local import free_port

    sizes = [1 << 10, 1 << 14, 1 << 18, 1 << 21, 1 << 23]
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_p2p_rank, args=(r, port, sizes, repeats * 4, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    times, wait = queue.get(timeout=300)
    for proc in procs:
        proc.join()
    latency, per_byte = fit_line([float(n) for n in sizes], [times[n] for n in sizes])
    # A one-way ping-pong message includes the sender's and the receiver's wait calls.
    return {"latency_s": max(0.0, latency - 2 * wait), "wait_s": wait, "gbps": 1.0 / per_byte / 1e9}

"""One GPU: paravideo against diffusers' WanPipeline on a Wan2.1-1.3B-shaped model with random weights.

Usage: python benchmarks/gpu_single.py [--frames 81 321] [--steps 10] [--out benchmarks/results/gpu_single.md]
       python benchmarks/gpu_single.py --smoke      # tiny shapes on CPU: proves the script runs end to end
       python benchmarks/gpu_single.py --model-dir /models/Wan2.1-T2V-1.3B-Diffusers --steps 50 \
           --step-cache teacache:0.1                # a real checkpoint, with the step-cached variant

The model is built here from diffusers classes (30 layers, hidden 1536, 12 heads, FFN 8960, text_dim
4096; the real Wan VAE's shapes; a one-layer text encoder, since only the DiT is measured), saved
once, and run in bf16 at 480x832 by (a) WanPipeline, (b) paravideo with the whole video as one
block (the same work), (c) paravideo block-wise, (d) with --step-cache, (c) with step caching, its
frames compared with (c)'s (PSNR, max error, forwards reused). A diffusers-format checkpoint in
--model-dir (model_index.json present) is used as it is; only then do (d)'s quality figures mean
anything, since random weights change differently between steps than trained ones. DiT time is
measured around every DiT call with the device synchronised; DiT FLOPs come from paravideo.costmodel.flops
(matmuls and attention).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _runs import table

from paravideo.costmodel.cost_model import forward_dit_flops
from paravideo.costmodel.flops import text_projection_flops
from paravideo.costmodel.scenario import Scenario
from paravideo.costmodel.shapes import DiTShape

FULL = {"dit": dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, text_dim=4096,
                    freq_dim=256), "text": dict(d_model=4096, d_kv=64, num_heads=4, d_ff=256, num_layers=1),
        "vae": {}, "height": 480, "width": 832, "dtype": "bfloat16", "device": "cuda"}
SMOKE = {"dit": dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=32, freq_dim=32),
         "text": dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1),
         "vae": dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1), "height": 32, "width": 48,
         "dtype": "float32", "device": "cpu"}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
PROMPT, NEGATIVE = "a red fox running through fresh snow at dawn", "blurry, low quality"


def build_model(sizes: dict, folder: Path) -> Path:
    """Random-weight WanPipeline of these sizes, saved in diffusers format (built once per folder)."""
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    dit = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, cross_attn_norm=True,
                                qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, **sizes["dit"])
    text = UMT5EncoderModel(UMT5Config(vocab_size=384, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                       dropout_rate=0.0, **sizes["text"]))
    pipe = WanPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text, vae=AutoencoderKLWan(**sizes["vae"]),
                       transformer=dit.to(DTYPES[sizes["dtype"]]),
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                         num_train_timesteps=1000, flow_shift=3.0))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


class DiTClock:
    """Adds up synchronised seconds spent inside wrapped DiT calls."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.seconds += time.perf_counter() - start
            return out
        return timed


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_diffusers(root: Path, sizes: dict, frames: int, steps: int, device: torch.device) -> dict:
    """WanPipeline end to end (its own whole-video decode included)."""
    from diffusers import AutoencoderKLWan, WanPipeline

    # The VAE in float32 as paravideo runs it; the DiT's fp32 modules stay fp32 when loaded with torch_dtype.
    vae = AutoencoderKLWan.from_pretrained(root / "vae", torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(root, vae=vae, torch_dtype=DTYPES[sizes["dtype"]]).to(device)
    pipe.set_progress_bar_config(disable=True)
    clock = DiTClock(device)
    pipe.transformer.forward = clock.wrap(pipe.transformer.forward)
    _reset_peak(device)
    start = time.perf_counter()
    pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=sizes["height"], width=sizes["width"], num_frames=frames,
         num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="np")
    wall = time.perf_counter() - start
    peak = _peak(device)
    del pipe
    return {"wall_s": wall, "run_wall_s": wall, "dit_s": clock.seconds, "peak_gib": peak}


def run_paravideo(root: Path, sizes: dict, frames: int, steps: int, device: torch.device, block: int,
                  context: int, out: Path, step_cache: dict | None = None, pngs: bool = False) -> tuple[dict, object]:
    """paravideo generate in this process (inline launcher), streaming decode included."""
    from paravideo.config import parse_config
    from paravideo.generate import generate
    from paravideo.models.wan.adapter import WanStage

    config = parse_config({
        "model": {"path": str(root), "dtype": sizes["dtype"], "device": device.type},
        "video": {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_frames": frames, "height": sizes["height"],
                  "width": sizes["width"]},
        "sampling": {"steps": steps, "guidance_scale": 5.0, "scheduler": "unipc", "seed": 0},
        "blocks": {"block_frames": block, "context_frames": context},
        "cache": {"step": step_cache or {"policy": "off"}},
        "launch": {"launcher": "inline"},
        "output": {"dir": str(out), "overwrite": True, "progress": False, "trace": True,
                   "frames_png": pngs}})
    clock = DiTClock(device)
    originals = {name: getattr(WanStage, name) for name in ("embed", "run_layers", "head")}
    for name, fn in originals.items():
        setattr(WanStage, name, clock.wrap(fn))
    _reset_peak(device)
    try:
        report = generate(config)
    finally:
        for name, fn in originals.items():
            setattr(WanStage, name, fn)
    # Loading weights and encoding the prompt come before the first span; WanPipeline's call has them outside.
    spans = [e for e in json.loads((out / "trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    generate_s = report.wall_s - min(e["ts"] for e in spans) / 1e6
    return {"wall_s": generate_s, "run_wall_s": report.wall_s, "dit_s": clock.seconds, "peak_gib": _peak(device),
            "step_cache": report.step_cache}, config


def _versus(ours: Path, ref: Path) -> str:
    """PSNR and max error of a run's PNG frames against another's."""
    from paravideo.bench.versus import _frames, frame_error

    err = frame_error(_frames(str(ours)), _frames(str(ref)))
    return "equal" if err["equal"] else f"PSNR {err['psnr_db']:.1f} dB, max error {err['max_abs_error']:.0f}/255"


def _step_cache_arg(text: str | None) -> dict | None:
    if not text:
        return None
    policy, _, threshold = text.partition(":")
    return {"policy": policy, "threshold": float(threshold or 0.1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script, not speed)")
    parser.add_argument("--frames", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--block-frames", type=int, default=7, help="latent frames per block (block-wise run)")
    parser.add_argument("--context-frames", type=int, default=2)
    parser.add_argument("--model-dir", default=None, help="where the random-weight model is saved (reused)")
    parser.add_argument("--out", default="benchmarks/results/gpu_single.md")
    parser.add_argument("--step-cache", default=None, metavar="POLICY:THRESHOLD",
                        help="also run block-wise with cache.step (e.g. teacache:0.1 or first_block:0.1)")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    frames_list = args.frames or ([9, 17] if args.smoke else [81, 321])
    steps = args.steps or (2 if args.smoke else 10)
    device = torch.device(sizes["device"])
    work = Path(tempfile.mkdtemp(prefix="gpu-single-"))
    root = build_model(sizes, Path(args.model_dir or work / "model"))
    shape = DiTShape.from_folder(root)
    rows, results, notes = [], [], []
    # Warm-up (kernel selection, allocator, lazy imports), not timed.
    run_diffusers(root, sizes, frames_list[0], 1, device)
    run_paravideo(root, sizes, frames_list[0], 1, device, 0, 0, work / "warm")
    for frames in frames_list:
        block = min(args.block_frames, (frames - 1) // 4 + 1)
        runs = {"diffusers WanPipeline": (run_diffusers(root, sizes, frames, steps, device), None, 0)}
        runs["paravideo, one block"] = (*run_paravideo(root, sizes, frames, steps, device, 0, 0, work / "one"), 0)
        runs[f"paravideo, blocks of {block}"] = (*run_paravideo(root, sizes, frames, steps, device, block,
                                                                min(args.context_frames, block), work / "blk-uncached",
                                                                pngs=args.step_cache is not None),
                                                  block)
        cache = _step_cache_arg(args.step_cache)
        if cache is not None:
            name = f"paravideo, blocks of {block}, step cache {cache['policy']} {cache['threshold']}"
            runs[name] = (*run_paravideo(root, sizes, frames, steps, device, block, min(args.context_frames, block),
                                         work / "blk-cached", step_cache=cache, pngs=True), block)
            section = runs[name][0]["step_cache"]
            uncached_dit_s = runs[f"paravideo, blocks of {block}"][0]["dit_s"]
            notes.append(f"{frames} frames, {name}: {section['forwards_reused']} of {section['forwards']} forwards "
                         f"reused ({section['saved_fraction']:.0%} of layer-forwards), "
                         f"{_versus(work / 'blk-cached', work / 'blk-uncached')} against the uncached block-wise run; "
                         f"DiT time {runs[name][0]['dit_s'] / max(uncached_dit_s, 1e-9):.2f}x "
                         "of the uncached run (its TFLOP column counts the uncached work, so it overstates the rate)")
        for name, (res, config, blk) in runs.items():
            if config is None:  # WanPipeline: two batch-1 forwards per step, text projected every time
                one = Scenario(shape=shape, latent_frames=(frames - 1) // 4 + 1, latent_height=sizes["height"] // 8,
                               latent_width=sizes["width"] // 8, steps=steps)
                flops = sum(forward_dit_flops(one)) + 2 * steps * text_projection_flops(shape, 1, 512)
            else:
                flops = sum(forward_dit_flops(Scenario.from_config(config, shape)))
            tflops = flops / res["dit_s"] / 1e12 if res["dit_s"] else float("nan")
            peak = "n/a (CPU)" if res["peak_gib"] is None else f"{res['peak_gib']:.2f}"
            rows.append([name, frames, steps, f"{res['wall_s']:.2f}", f"{res['run_wall_s']:.2f}", f"{res['dit_s']:.2f}", f"{flops / 1e12:.4g}",
                         f"{tflops:.3f}", peak])
            results.append({"system": name, "frames": frames, "steps": steps, "block_frames": blk, **res,
                            "dit_tflop": flops / 1e12, "dit_tflops_per_s": tflops})
            print(f"{name}, {frames} frames: wall {res['wall_s']:.2f} s, DiT {res['dit_s']:.2f} s, "
                  f"{tflops:.3f} TFLOP/s", flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    text = (f"# Single-device benchmark ({device_name})\n\n{'smoke sizes' if args.smoke else 'Wan2.1-1.3B shapes'}, "
            f"{sizes['dtype']}, {sizes['width']}x{sizes['height']}, {steps} steps, CFG 5.0, random weights.\n\n"
            + table(["system", "frames", "steps", "generate s", "wall s", "DiT s", "DiT TFLOP", "DiT TFLOP/s", "peak GiB"], rows)
            + "\n\ngenerate s: the pipeline call for WanPipeline; for paravideo its run.json wall time less loading "
              "weights and encoding the prompt (wall s: the whole run.json wall time, loading included)."
            + "".join(f"\n\n{note}" for note in notes))
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

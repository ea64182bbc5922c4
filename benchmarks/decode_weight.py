"""The decode weight of the joint balance: CPU seconds per VAE-decode FLOP over seconds per DiT-layer FLOP.

Usage: python benchmarks/decode_weight.py [--size 128] [--frames 9] [--repeats 3]
builtin:small, 1 thread, thread CPU time (other load on the machine inflates it less than wall time).
Decode: every decoder piece of each later latent frame (FLOPs: `decoder_piece_costs`). DiT: the
transformer layers of a forward over a window of 5 latent frames (a block of 4 + 1 context frame), with
CFG (batch 2) and 512 text tokens (FLOPs: `ModelFactors.layer_flops`). The ratio is
paravideo/parallel/balance.py's DECODE_FLOP_WEIGHT.
"""

from __future__ import annotations

import argparse
import time


def decode_s_per_flop(vae, factors, side: int, frames: int) -> tuple[float, int]:
    import torch

    from paravideo.io.decoder_pieces import decoder_piece_costs, decoder_pieces

    pieces = decoder_pieces(vae.decoder)
    caches = [[None] * p.slots for p in pieces]
    z = vae.post_quant_conv(torch.randn(1, vae.config.z_dim, frames, side, side))
    seconds = 0.0
    with torch.no_grad():
        for f in range(frames):
            x = z[:, :, f:f + 1]
            start = time.thread_time()
            for piece, cache in zip(pieces, caches):
                x = piece.run(x, cache, f == 0)
            if f > 0:
                seconds += time.thread_time() - start
    flops = sum(c.flops for c in decoder_piece_costs(factors.vae_config, side, side))
    return seconds / (frames - 1) / flops, flops


def dit_s_per_flop(root, factors, side: int, repeats: int) -> tuple[float, int]:
    import torch
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(root / "transformer").eval()
    window, batch, text = 5, 2, 512
    latents = torch.randn(batch, factors.latent_channels, window, side, side)
    texts = torch.randn(batch, text, factors.text_dim)
    marks: list[float] = []
    model.blocks[0].register_forward_pre_hook(lambda *a: marks.append(time.thread_time()))
    model.blocks[-1].register_forward_hook(lambda *a: marks.append(time.thread_time()))
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first forward warms up
            model(hidden_states=latents, timestep=torch.tensor([500.0] * batch), encoder_hidden_states=texts)
    seconds = sum(b - a for a, b in zip(marks[2::2], marks[3::2])) / repeats
    tokens = window * (side // factors.patch_size[1]) * (side // factors.patch_size[2])
    flops = factors.num_layers * factors.layer_flops(batch=batch, query_tokens=tokens, key_tokens=tokens,
                                                     text_tokens=text)
    return seconds / flops, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from paravideo.models.builtin import ensure_builtin
    from paravideo.models.family import inspect_model
    from paravideo.models.wan.loading import load_vae

    torch.set_num_threads(1)
    root = ensure_builtin("small")
    _, factors = inspect_model(root)
    side = args.size // factors.spatial_stride
    vae = load_vae(root, device=torch.device("cpu"))
    decode, decode_flops = decode_s_per_flop(vae, factors, side, args.frames)
    dit, dit_flops = dit_s_per_flop(root, factors, side, args.repeats)
    print(f"decode: {decode * decode_flops * 1000:.1f} ms per later latent frame, {decode_flops / 1e9:.3f} GFLOP, "
          f"{1 / decode / 1e9:.2f} GFLOP/s")
    print(f"DiT layers: {dit * dit_flops * 1000:.1f} ms per forward of 5 latent frames, {dit_flops / 1e9:.3f} GFLOP, "
          f"{1 / dit / 1e9:.2f} GFLOP/s")
    print(f"decode weight (s per decode FLOP / s per DiT FLOP): {decode / dit:.2f}")


if __name__ == "__main__":
    main()

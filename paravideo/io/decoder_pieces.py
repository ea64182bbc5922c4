"""The Wan VAE decoder cut into pieces that run one after another, each with its own causal cache.

`WanDecoder3d.forward` walks conv_in, mid_block, the up-blocks and the output head, handing one
list of per-conv caches down the chain. Here the same modules run in the same order with the same
ops, but every piece owns the cache slots of its own convs, so consecutive pieces may live on
different ranks (decode_pipeline.py) and the frames stay bit-identical to one `vae.decode`.
Cuts sit between pieces, where the activations are one latent frame's worth of features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

CACHE_T = 2  # the decoder's causal convs keep their last 2 input frames (diffusers' CACHE_T)


def _cached_conv(conv, x: torch.Tensor, cache: list, idx: int) -> torch.Tensor:
    """One causal conv with diffusers' cache update (the decoder's conv_in / conv_out code, op for op)."""
    cache_x = x[:, :, -CACHE_T:, :, :].clone()
    if cache_x.shape[2] < 2 and cache[idx] is not None:
        cache_x = torch.cat([cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
    out = conv(x, cache[idx])
    cache[idx] = cache_x
    return out


@dataclass(frozen=True)
class Piece:
    """A contiguous part of the decoder: its `name`, the cache slots it owns and how it runs one frame."""

    name: str
    slots: int
    run: Callable[[torch.Tensor, list, bool], torch.Tensor] = field(repr=False)  # (x, its cache, first_chunk)


def _count_causal(module) -> int:
    """Cache slots a module uses: its causal convs, except resnet shortcuts (called without a cache)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) and not name.endswith("conv_shortcut")
               for name, m in module.named_modules())


def _module_piece(name: str, module, *, chunk_arg: bool = False) -> Piece:
    if chunk_arg:
        return Piece(name, _count_causal(module), lambda x, c, first: module(x, feat_cache=c, feat_idx=[0],
                                                                             first_chunk=first))
    return Piece(name, _count_causal(module), lambda x, c, first: module(x, feat_cache=c, feat_idx=[0]))


def _up_pieces(i: int, block) -> list[Piece]:
    """A Wan2.1 up-block's resnets and upsampler one by one (their sizes differ a lot); a residual
    (Wan2.2) up-block whole, since its shortcut spans the block."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpBlock

    if not isinstance(block, WanUpBlock):
        return [_module_piece(f"up{i}", block, chunk_arg=True)]
    pieces = [_module_piece(f"up{i}.res{j}", r) for j, r in enumerate(block.resnets)]
    if block.upsamplers is not None:
        pieces.append(_module_piece(f"up{i}.upsample", block.upsamplers[0]))
    return pieces


def decoder_pieces(decoder) -> list[Piece]:
    """The pieces of a WanDecoder3d in forward order: conv_in + mid_block, the up-blocks' parts, the head."""
    def first(x, cache, first_chunk):
        return decoder.mid_block(_cached_conv(decoder.conv_in, x, cache, 0), feat_cache=cache, feat_idx=[1])

    def head(x, cache, first_chunk):
        return _cached_conv(decoder.conv_out, decoder.nonlinearity(decoder.norm_out(x)), cache, 0)

    ups = [p for i, block in enumerate(decoder.up_blocks) for p in _up_pieces(i, block)]
    return [Piece("in+mid", 1 + _count_causal(decoder.mid_block), first), *ups, Piece("out", 1, head)]


def split_feat_map(pieces: list[Piece], feat_map: list) -> list[list]:
    """A whole-decoder cache (StreamingDecoder's flat list, slots in forward order) cut into per-piece caches."""
    out, at = [], 0
    for piece in pieces:
        out.append(list(feat_map[at:at + piece.slots]))
        at += piece.slots
    assert all(c is None for c in feat_map[at:]), "cache slots beyond the pieces' own"
    return out


def join_feat_map(caches: list[list], length: int) -> list:
    """Per-piece caches back into the flat list of `length` slots (the inverse of `split_feat_map`)."""
    flat = [c for cache in caches for c in cache]
    return flat + [None] * (length - len(flat))


class DecoderRange:
    """Pieces [lo, hi) of a VAE decoder with their causal caches; the first range also de-normalises
    and applies post_quant_conv, the last one unpatchifies and clamps (as `StreamingDecoder` does)."""

    def __init__(self, vae, lo: int, hi: int):
        self.vae, self.lo, self.hi = vae, lo, hi
        self.pieces = decoder_pieces(vae.decoder)
        assert 0 <= lo < hi <= len(self.pieces), f"pieces [{lo}, {hi}) of {len(self.pieces)}"
        self.caches: list[list] = [[None] * p.slots for p in self.pieces[lo:hi]]
        self.frames_in = 0
        cfg = vae.config
        self._mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)

    @property
    def is_first(self) -> bool:
        return self.lo == 0

    @property
    def is_last(self) -> bool:
        return self.hi == len(self.pieces)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def prepare(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        """First range only: a block's clean latents to the decoder's input (the pipeline's de-normalisation)."""
        z = latents_bcthw.to(self.device, torch.float32)
        z = z / self._inv_std.to(z) + self._mean.to(z)
        return self.vae.post_quant_conv(z)

    @torch.no_grad()
    def frame(self, x: torch.Tensor) -> torch.Tensor:
        """Run this range's pieces on one latent frame's activations (frames come in video order)."""
        first_chunk = self.frames_in == 0
        for piece, cache in zip(self.pieces[self.lo:self.hi], self.caches):
            x = piece.run(x, cache, first_chunk)
        self.frames_in += 1
        if self.is_last:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            if self.vae.config.patch_size is not None:
                x = unpatchify(x, patch_size=self.vae.config.patch_size)
            x = x.clamp(-1.0, 1.0)
        return x

    def state(self) -> dict:
        """The causal caches of this range and its position (for resume checkpoints)."""
        return {"lo": self.lo, "hi": self.hi, "frames_in": self.frames_in, "caches": [list(c) for c in self.caches]}

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned (the same cut; the driver cuts a checkpoint's whole cache to fit)."""
        assert (state["lo"], state["hi"]) == (self.lo, self.hi), (state["lo"], state["hi"], self.lo, self.hi)
        self.frames_in = int(state["frames_in"])
        self.caches = [list(c) for c in state["caches"]]


@dataclass(frozen=True)
class PieceCost:
    """One decoder piece for a later latent frame: FLOPs, bytes of its causal caches, bytes of its output."""

    flops: int
    cache_bytes: int
    out_bytes: int


def steady_state_pieces(vae_config: dict, latent_height: int, latent_width: int, watch: Callable[[], object]
                        ) -> list[tuple[object, list, torch.Tensor]]:
    """Run the decoder's pieces on meta tensors (no weights, no compute) for two latent frames; for the
    second (the steady state: the first fills the caches) give each piece's `watch()` context manager,
    as it stood after the piece ran inside it, with the piece's cache and output."""
    from diffusers import AutoencoderKLWan

    kwargs = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLWan(**kwargs)
        z = torch.zeros(1, vae.config.z_dim, 2, latent_height, latent_width)
    rng = DecoderRange(vae, 0, 1)
    caches = [[None] * p.slots for p in rng.pieces]
    x0 = rng.prepare(z)
    out = []
    with torch.no_grad():
        for frame in range(2):
            x = x0[:, :, frame:frame + 1]
            for piece, cache in zip(rng.pieces, caches):
                watcher = watch()
                with watcher:
                    x = piece.run(x, cache, frame == 0)
                if frame == 1:
                    out.append((watcher, cache, x))
    return out


def decoder_piece_costs(vae_config: dict, latent_height: int, latent_width: int) -> list[PieceCost]:
    """Each decoder piece's cost (io/decoder_pieces.py), counted on meta tensors (no weights, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    return [PieceCost(int(counter.get_total_flops()),
                      sum(c.numel() * c.element_size() for c in cache if isinstance(c, torch.Tensor)),
                      x.numel() * x.element_size())
            for counter, cache, x in steady_state_pieces(vae_config, latent_height, latent_width,
                                                         lambda: FlopCounterMode(display=False))]

"""Streaming Wan VAE decode: finished latent blocks in, pixel frames out, causal cache carried over."""

from __future__ import annotations

import torch


class StreamingDecoder:
    """Decodes consecutive latent blocks exactly as one `vae.decode` of the whole latent would.

    Wan's decoder walks latent frames one at a time and keeps a per-conv cache of the previous
    frames; keeping that cache between calls makes block-wise decoding equal to a one-shot decode,
    while memory stays that of a single frame.
    """

    def __init__(self, vae):
        self.vae = vae
        self.frames_in = 0
        self._feat_map: list = [None] * vae._cached_conv_counts["decoder"]
        cfg = vae.config
        self._mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def decode(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames to pixels `(b, 3, frames, H, W)` in [-1, 1]."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        z = latents_bcthw.to(self.device, torch.float32)
        # The pipeline's own de-normalisation, op for op, so that frames match it exactly.
        z = z / self._inv_std.to(z) + self._mean.to(z)
        x = vae.post_quant_conv(z)
        outs = []
        for i in range(x.shape[2]):
            conv_idx = [0]
            outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self._feat_map, feat_idx=conv_idx,
                                    first_chunk=self.frames_in == 0))
            self.frames_in += 1
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.clamp(-1.0, 1.0)

    def state(self) -> dict:
        """The causal cache and position (for resume checkpoints)."""
        return {"frames_in": self.frames_in, "feat_map": list(self._feat_map)}

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned."""
        self.frames_in = state["frames_in"]
        self._feat_map = list(state["feat_map"])


def to_uint8_frames(pixels_bcthw: torch.Tensor) -> torch.Tensor:
    """`(1, 3, t, H, W)` in [-1, 1] to `(t, H, W, 3)` uint8 (rounded)."""
    frames = (pixels_bcthw[0].float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().cpu()

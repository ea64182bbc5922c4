"""The Wan family (Wan2.1 and Wan2.2 text-to-video in diffusers format): factors, stage loads, VAE, text."""

from __future__ import annotations

from pathlib import Path

import torch

from paravideo.models.factors import ModelFactors
from paravideo.models.hooks import HookRegistry


class WanFamily:
    """Reads Wan folders and loads a rank's share of them (see `paravideo.models.family.ModelFamily`)."""

    def inspect(self, root: Path) -> ModelFactors:
        """The folder's factors; anything paravideo would not run exactly is refused."""
        from paravideo.models.wan.folder import inspect_wan_folder

        return inspect_wan_folder(root)

    def load_stages(self, root: Path, factors: ModelFactors, lo: int, hi: int, *, dtype: torch.dtype,
                    device: torch.device) -> list:
        """Layers [lo, hi) of every expert, one WanStage each, sharing one hook registry."""
        from paravideo.models.wan.adapter import WanStage
        from paravideo.models.wan.loading import load_transformer_stage

        hooks = HookRegistry()
        return [WanStage(load_transformer_stage(root, lo, hi, dtype=dtype, device=device, component=part),
                         lo=lo, hi=hi, num_layers=factors.num_layers, hooks=hooks,
                         per_token_timesteps=factors.timestep_form == "per_token")
                for part in factors.experts]

    def load_text_encoder(self, root: Path, *, dtype: torch.dtype, device: torch.device):
        """Tokenizer and UMT5 encoder."""
        from paravideo.models.wan.loading import load_text_encoder

        return load_text_encoder(root, dtype=dtype, device=device)

    def load_vae(self, root: Path, *, device: torch.device):
        """The Wan VAE (Wan2.1's 16-channel one or Wan2.2's 48-channel residual one) in float32."""
        from paravideo.models.wan.loading import load_vae

        return load_vae(root, device=device)

    def streaming_decoder(self, vae):
        """A decoder of consecutive latent blocks that equals one whole-video decode."""
        from paravideo.io.vae_stream import StreamingDecoder

        return StreamingDecoder(vae)


WAN = WanFamily()

"""Wan DiT split into pre (embed + conditioning), layers [lo, hi) and post (norm, projection, unpatchify)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from paravideo.models.hooks import HookRegistry
from paravideo.models.wan.attention import HookedSelfAttnProcessor


@dataclass
class Conditioning:
    """Per-forward inputs every stage derives itself: time modulation, projected text, RoPE."""

    temb: torch.Tensor  # (batch, dim)
    timestep_proj: torch.Tensor  # (batch, 6, dim), or (batch, 1, 6, dim) for per-token timesteps
    text: torch.Tensor  # (batch, text_tokens, dim)
    rotary: tuple[torch.Tensor, torch.Tensor]  # cos, sin: (1, tokens, 1, head_dim)
    grid: tuple[int, int, int]  # post-patch (frames, rows, cols) of the window


class WanStage:
    """A Wan transformer holding layers [lo, hi) of `num_layers`, plus the small shared modules.

    With per-token timesteps (Wan2.2-TI2V's `expand_timesteps`) the layers take their modulation in
    the per-token layout. In text-to-video every token of a window has the window's timestep, so the
    token axis has length 1 and broadcasts: the same values diffusers computes token by token.
    """

    def __init__(self, transformer, *, lo: int, hi: int, num_layers: int, hooks: HookRegistry | None = None,
                 per_token_timesteps: bool = False):
        assert len(transformer.blocks) == hi - lo, "the transformer must hold exactly layers [lo, hi)"
        self.model = transformer
        self.lo, self.hi, self.num_layers = lo, hi, num_layers
        self.per_token_timesteps = per_token_timesteps
        self.hooks = hooks if hooks is not None else HookRegistry()
        for index, block in enumerate(transformer.blocks):
            block.attn1.set_processor(HookedSelfAttnProcessor(lo + index, self.hooks))
        cfg = transformer.config
        self.patch_size: tuple[int, int, int] = tuple(cfg.patch_size)
        self.dim = cfg.num_attention_heads * cfg.attention_head_dim
        self._rope = transformer.rope

    @property
    def device(self) -> torch.device:
        return self.model.proj_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.proj_out.weight.dtype

    def param_bytes(self) -> int:
        """Bytes of parameters this stage holds."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Post-patch token grid (frames, rows, cols) of a latent `(b, c, t, h, w)`."""
        p_t, p_h, p_w = self.patch_size
        return latent_shape[2] // p_t, latent_shape[3] // p_h, latent_shape[4] // p_w

    def project_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Project encoder states `(b, L, text_dim)` to the DiT width (once per prompt, then reused)."""
        embedder = self.model.condition_embedder.text_embedder
        return embedder(text_embeds.to(self.device, self.dtype))

    def rotary(self, grid: tuple[int, int, int], frame_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE for a window whose first latent frame sits at global frame `frame_offset`."""
        frames, rows, cols = grid
        if frame_offset + frames > self._rope.max_seq_len or max(rows, cols) > self._rope.max_seq_len:
            need = max(frame_offset + frames, rows, cols)
            self._rope = WanRotaryPosEmbed(self._rope.attention_head_dim, self.patch_size, 2 ** math.ceil(
                math.log2(need))).to(self._rope.freqs_cos.device)
        rope = self._rope
        split = [rope.t_dim, rope.h_dim, rope.w_dim]
        tables = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            t_part, h_part, w_part = table.split(split, dim=1)
            parts = (t_part[frame_offset:frame_offset + frames].view(frames, 1, 1, -1),
                     h_part[:rows].view(1, rows, 1, -1), w_part[:cols].view(1, 1, cols, -1))
            full = [p.expand(frames, rows, cols, -1) for p in parts]
            tables.append(torch.cat(full, dim=-1).reshape(1, frames * rows * cols, 1, -1).to(self.device))
        return tables[0], tables[1]

    def condition(self, timestep: torch.Tensor, text: torch.Tensor, grid: tuple[int, int, int],
                  frame_offset: int = 0) -> Conditioning:
        """Time modulation for `timestep (batch,)`, projected `text`, and RoPE for the window."""
        embedder = self.model.condition_embedder
        t = embedder.timesteps_proj(timestep.to(self.device))
        time_dtype = next(embedder.time_embedder.parameters()).dtype
        temb = embedder.time_embedder(t.to(time_dtype)).type_as(text)
        timestep_proj = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))
        if self.per_token_timesteps:
            timestep_proj = timestep_proj.unsqueeze(1)
        return Conditioning(temb=temb, timestep_proj=timestep_proj, text=text,
                            rotary=self.rotary(grid, frame_offset), grid=grid)

    def embed(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        """Patch-embed latents into tokens `(b, tokens, dim)`."""
        hidden = self.model.patch_embedding(latents_bcthw.to(self.device, self.dtype))
        return hidden.flatten(2).transpose(1, 2).contiguous()

    def run_layers(self, hidden: torch.Tensor, cond: Conditioning, *, layers: slice = slice(None)) -> torch.Tensor:
        """Apply this stage's layers (a slice of them, counted from `lo`, when given)."""
        for block in self.model.blocks[layers]:
            hidden = block(hidden, cond.text, cond.timestep_proj, cond.rotary)
        return hidden

    def modulated_input(self, hidden: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The first layer's modulated self-attention input, in float32 (the TeaCache indicator; needs lo == 0)."""
        assert self.lo == 0, "only the stage holding layer 0 has its modulation"
        block = self.model.blocks[0]
        temb = cond.timestep_proj.float()
        if temb.ndim == 4:  # per-token timesteps: (batch, tokens, 6, dim), as diffusers' block reads them
            shift, scale = (block.scale_shift_table.unsqueeze(0) + temb).chunk(6, dim=2)[:2]
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (block.scale_shift_table + temb).chunk(6, dim=1)[:2]
        return block.norm1(hidden.float()) * (1 + scale) + shift

    def head(self, hidden: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Output norm, modulation, projection and unpatchify to `(b, c, t, h, w)`."""
        m = self.model
        shift, scale = (m.scale_shift_table + cond.temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (m.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = m.proj_out(hidden)
        frames, rows, cols = cond.grid
        p_t, p_h, p_w = self.patch_size
        hidden = hidden.reshape(hidden.shape[0], frames, rows, cols, p_t, p_h, p_w, -1)
        return hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(self, latents_bcthw: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
                frame_offset: int = 0) -> torch.Tensor:
        """pre -> layers -> post in one call (needs lo == 0 and hi == num_layers)."""
        assert self.lo == 0 and self.hi == self.num_layers, "a full forward needs every layer"
        cond = self.condition(timestep, self.project_text(text_embeds), self.grid(latents_bcthw.shape),
                              frame_offset)
        return self.head(self.run_layers(self.embed(latents_bcthw), cond), cond)

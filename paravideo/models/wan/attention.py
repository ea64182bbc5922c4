"""Wan self-attention processor with the K/V hook point (diffusers' projections, norms and kernels)."""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from paravideo.models.hooks import HookRegistry


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of `x (batch, tokens, heads, head_dim)` as Wan does."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)


class HookedSelfAttnProcessor:
    """Replaces WanAttnProcessor on `attn1` only; attends through the registry (its K/V hooks, its wrapper)."""

    def __init__(self, layer: int, hooks: HookRegistry):
        self.layer = layer
        self.hooks = hooks

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        assert encoder_hidden_states is None and attention_mask is None, "self-attention only"
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary(query, *rotary_emb)
            key = apply_rotary(key, *rotary_emb)
        # K is hooked after its norm and rotation (global positions): cached or exchanged K needs no re-rotation.
        # A sequence-parallel wrapper (if any) exchanges tokens or K/V around the kernel.
        out = self.hooks.attend(self.layer, query, key, value, _kernel)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

"""Prompt encoding with the checkpoint's UMT5 encoder, trimmed and zero-padded as WanPipeline does."""

from __future__ import annotations

import torch


class TextEncoder:
    """Encodes prompts to `(n, max_length, text_dim)`; runs once per distinct prompt, on one rank."""

    def __init__(self, tokenizer, encoder, *, max_length: int):
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder, max_length

    @property
    def text_dim(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings of `prompts`, padding positions zeroed (float32, CPU)."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = self.tokenizer([prompt_clean(p) for p in prompts], padding="max_length",
                                max_length=self.max_length, truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        device = next(self.encoder.parameters()).device
        states = self.encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        lengths = tokens.attention_mask.gt(0).sum(dim=1)
        out = torch.zeros(len(prompts), self.max_length, states.shape[-1], dtype=torch.float32)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = states[i, :n].float().cpu()
        return out

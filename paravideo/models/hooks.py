"""The one hook point in self-attention: named, removable K/V hooks shared by every model adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class ForwardInfo:
    """What the runtime tells the hooks about the block-forward in flight (set before each forward)."""

    block: int = 0
    step: int = 0
    # Latent frames of the query window, and how many leading ones are context from the older block.
    window_frames: int = 0
    context_frames: int = 0
    tokens_per_frame: int = 0
    # Feature cache: keep K/V of this many leading frames of the block itself (after its context) ...
    keep_head_frames: int = 0
    # ... and attend to the cached head K/V of this (newer) block, if any.
    future_block: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class AttentionCall:
    """One self-attention call: which layer (global index) and the forward it belongs to."""

    layer: int
    info: ForwardInfo
    # Window tokens [lo, hi) of the K/V the hooks get, when a wrapper hands the window over in pieces (ring
    # attention: one chunk at a time, each token once); None: the whole window at once.
    tokens: tuple[int, int] | None = None


class KVHook(Protocol):
    """Sees rotated keys and values `(batch, tokens, heads, head_dim)`; returns the ones to attend to.

    A hook that reads window positions honours `call.tokens` (the K/V may be one piece of the window)."""

    def __call__(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


class AttentionWrapper(Protocol):
    """Runs around the attention kernel (sequence parallelism): gets this rank's q/k/v `(b, tokens, heads, d)`,
    must call `kv_hooks` on the K/V it attends to (whole, or piece by piece with `tokens=(lo, hi)`, each window
    token once) and `kernel` (or an equivalent) for the attention."""

    name: str

    def __call__(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                 kv_hooks, kernel) -> torch.Tensor: ...


class HookRegistry:
    """Ordered, named K/V hooks, and at most one attention wrapper; the adapter's attention processors run them."""

    def __init__(self) -> None:
        self._hooks: dict[str, KVHook] = {}
        self.info = ForwardInfo()
        self.wrapper: AttentionWrapper | None = None

    def wrap_attention(self, wrapper: AttentionWrapper | None) -> None:
        """Set (or with None, remove) the wrapper every self-attention call goes through."""
        if wrapper is not None and self.wrapper is not None:
            raise ValueError(f"attention is already wrapped by {self.wrapper.name!r}")
        self.wrapper = wrapper

    def add(self, name: str, hook: KVHook) -> None:
        """Register `hook` under `name` (a name may be used once)."""
        if name in self._hooks:
            raise ValueError(f"a K/V hook named {name!r} is already registered")
        self._hooks[name] = hook

    def remove(self, name: str) -> KVHook:
        """Unregister and return the hook called `name`."""
        return self._hooks.pop(name)

    def get(self, name: str) -> KVHook | None:
        """The hook called `name`, if registered."""
        return self._hooks.get(name)

    def run(self, layer: int, key: torch.Tensor, value: torch.Tensor, tokens: tuple[int, int] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply every hook in registration order (to window tokens `tokens`, or the whole window)."""
        call = AttentionCall(layer=layer, info=self.info, tokens=tokens)
        for hook in self._hooks.values():
            key, value = hook(call, key, value)
        return key, value

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel
               ) -> torch.Tensor:
        """Self-attention through the wrapper if any, the K/V hooks applied to the K/V attended to."""
        if self.wrapper is None:
            key, value = self.run(layer, key, value)
            return kernel(query, key, value)
        return self.wrapper(AttentionCall(layer=layer, info=self.info), query, key, value,
                            kv_hooks=lambda k, v, tokens=None: self.run(layer, k, v, tokens), kernel=kernel)

"""The per-GPU feature cache: K/V of a newer block's head frames, kept from its own forward."""

from __future__ import annotations

import torch

from paravideo.models.hooks import AttentionCall


class FeatureCache:
    """A K/V hook: stores the head K/V a forward is told to keep, appends the future block's K/V.

    Block k+1 runs before block k in an iteration on the same stage, so its head K/V (taken after
    norm and RoPE at global positions) are ready for block k at every layer with no recomputation
    and no communication. An entry is dropped once read or once its block moves on.

    With a step cache (`retain=True`) a reused forward skips its layers and keeps nothing, so an
    entry stays after it is read: the older neighbour then attends to the K/V its newer neighbour
    last computed. The step cache calls `forget` when the reader leaves the queue.
    """

    name = "feature_cache"

    def __init__(self, *, retain: bool = False) -> None:
        self._store: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # Head K/V still being assembled from ring chunks: (first window token, key, value) per piece.
        self._pieces: dict[tuple[int, int], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        self.retain = retain
        self.reads = 0

    def __call__(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        info = call.info
        start, end = call.tokens if call.tokens is not None else (0, None)
        if info.keep_head_frames:
            lo = info.context_frames * info.tokens_per_frame
            hi = lo + info.keep_head_frames * info.tokens_per_frame
            self._keep((info.block, call.layer), key, value, start, lo, hi)
        # Ring attention hands the window over chunk by chunk: the cached K/V join the chunk that ends the
        # window, so each rank attends to them once per forward (one rank: the whole window ends it).
        if info.future_block is not None and end in (None, info.window_frames * info.tokens_per_frame):
            key_of = (info.future_block, call.layer)
            entry = self._store.get(key_of) if self.retain else self._store.pop(key_of, None)
            assert entry is not None, (f"feature cache has no K/V of block {info.future_block} at layer "
                                       f"{call.layer}: the plan order was not followed")
            self.reads += 1
            key = torch.cat([key, entry[0]], dim=1)
            value = torch.cat([value, entry[1]], dim=1)
        return key, value

    def _keep(self, entry: tuple[int, int], key: torch.Tensor, value: torch.Tensor, start: int, lo: int,
              hi: int) -> None:
        """Store window tokens [lo, hi) of K/V that hold tokens from `start` on; pieces are assembled as they pass."""
        a, b = max(lo, start), min(hi, start + key.shape[1])
        if a >= b:
            return
        # Cloned: a piece must not keep the ring's whole chunk buffer alive.
        pieces = self._pieces.setdefault(entry, [])
        pieces.append((a, key[:, a - start:b - start].clone(), value[:, a - start:b - start].clone()))
        if sum(k.shape[1] for _, k, _ in pieces) < hi - lo:
            return
        keys, values = zip(*[(k, v) for _, k, v in sorted(self._pieces.pop(entry), key=lambda piece: piece[0])])
        self._store[entry] = (keys[0], values[0]) if len(keys) == 1 else (torch.cat(keys, 1), torch.cat(values, 1))

    def peek(self, block: int, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored head K/V of `block` at `layer`, if any (for tests and inspection)."""
        return self._store.get((block, layer))

    def forget(self, block: int) -> None:
        """Drop every layer's entry of `block` (retain mode: its reader left the queue)."""
        for key in [key for key in self._store if key[0] == block]:
            del self._store[key]
        for key in [key for key in self._pieces if key[0] == block]:
            del self._pieces[key]

    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(k.numel() * k.element_size() * 2 for k, _ in self._store.values())

    def clear(self) -> None:
        """Drop every entry."""
        self._store.clear()
        self._pieces.clear()

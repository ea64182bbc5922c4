"""The block queue in checkpoints: one whole-frame format, however the first stage's ranks hold it.

With patch bands each first-stage band owns its latent rows of every block in the queue (latents,
scheduler history, context tails): a checkpoint joins them along the row dim into the queue one rank
would hold, and a resume cuts it into the bands' rows again. Every scheduler op is elementwise, so the
rows are independent and both directions are exact. CFG groups and sequence chunks keep whole-frame
replicas of the queue and get a copy. The queue travels as `torch.save` bytes (read back with
`weights_only=True`) on the LATENTS tag: a decode rank's thread takes DECODE_STATE messages meanwhile.
"""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.io.decode_pipeline import recv_saved_bytes, send_saved, state_from_bytes
from paravideo.parallel.comm import P2P, Tag

ROW_DIM = 3  # latents are (batch, channels, frames, rows, cols)
KIND = "queue_state"  # run.json bytes: band rows at checkpoints, a resume handing out the queue


def send_queue(p2p: P2P, state: dict, dst: int) -> None:
    """Send a queue state (tensors and plain data) to `dst`."""
    send_saved(p2p, state, dst, tag=Tag.LATENTS, kind=KIND)


def receive_queue(p2p: P2P, src: int, *, what: str) -> dict:
    """The queue state `send_queue` sent from `src`."""
    return state_from_bytes(recv_saved_bytes(p2p, src, tag=Tag.LATENTS, what=what))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _join(values: list, shapes: list[torch.Size]):
    """One scheduler field of every band: rows joined where it has the block's latent shape, else shared."""
    first = values[0]
    if isinstance(first, torch.Tensor) and all(v.shape == s for v, s in zip(values, shapes)):
        return torch.cat(values, dim=ROW_DIM)
    if isinstance(first, list):
        return [_join(list(parts), shapes) for parts in zip(*values)]
    assert all(_same(v, first) for v in values[1:]), "band scheduler states differ outside their latent rows"
    return first


def join_rows(states: list[dict]) -> dict:
    """The bands' queue states (top band first) as the whole-frame queue one rank would hold."""
    first = states[0]
    assert all(s["applied"] == first["applied"] and s["latents"].keys() == first["latents"].keys() for s in states)
    schedulers = {}
    for k in first["schedulers"]:
        shapes = [s["latents"][k].shape for s in states]
        schedulers[k] = {field: _join([s["schedulers"][k][field] for s in states], shapes)
                         for field in first["schedulers"][k]}
    return {"applied": first["applied"], "schedulers": schedulers,
            "latents": {k: torch.cat([s["latents"][k] for s in states], dim=ROW_DIM) for k in first["latents"]},
            "tails": {k: torch.cat([s["tails"][k] for s in states], dim=ROW_DIM) for k in first["tails"]}}


def cut_rows(state: dict, rows: tuple[int, int]) -> dict:
    """The latent rows [lo, hi) of a whole-frame queue state (what one band holds)."""
    lo, hi = rows

    def cut(value, shape: torch.Size):
        if isinstance(value, torch.Tensor) and value.shape == shape:
            return value[:, :, :, lo:hi].clone()
        return [cut(v, shape) for v in value] if isinstance(value, list) else value

    latents = state["latents"]
    return {"applied": state["applied"],
            "latents": {k: cut(v, v.shape) for k, v in latents.items()},
            "tails": {k: cut(v, v.shape) for k, v in state["tails"].items()},
            "schedulers": {k: {field: cut(value, latents[k].shape) for field, value in sched.items()}
                           for k, sched in state["schedulers"].items()}}


class BandQueues:
    """The driver with patch bands: every band's rows joined at a checkpoint, each band's cut on resume."""

    def __init__(self, p2p: P2P, ranks: list[int], rows: list[tuple[int, int]]):
        self.p2p, self.ranks, self.rows = p2p, ranks, rows  # stage-0 band ranks and latent rows, top band first

    def join(self, own: dict) -> dict:
        """The whole queue: the driver's rows (band 0) and those each other band sent at this checkpoint."""
        others = [receive_queue(self.p2p, rank, what=f"queue rows of band {band} for a checkpoint")
                  for band, rank in enumerate(self.ranks) if band]
        return join_rows([own] + others)


class SendBandQueue:
    """A first-stage band other than the driver's: its queue rows to the driver at every checkpoint."""

    def __init__(self, p2p: P2P, dst: int, due: Callable[[object], int | None], state: Callable[[int], dict]):
        self.p2p, self.dst, self.due, self.state = p2p, dst, due, state

    def __call__(self, fwd) -> None:
        iteration = self.due(fwd)
        if iteration is not None:
            send_queue(self.p2p, self.state(iteration), self.dst)

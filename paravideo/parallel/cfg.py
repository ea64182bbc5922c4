"""CFG parallelism: the conditional and unconditional branches on two rank groups, combined once per forward.

Group 0 (conditional, with the driver) and group 1 (unconditional) run the same layers on one row of
the guidance batch each. The unconditional last stage sends its prediction to its conditional peer,
which combines `uncond + g * (cond - uncond)` exactly as one rank does with a batch of two, and
delivers the guided prediction to both groups' first stages (each keeps a replica of the block queue).

Bit-identical to one rank on CPU: the time embedding is computed for the whole batch of two and then
cut (its linear layers round differently for one row than for two); every later op is row-wise.
"""

from __future__ import annotations

import dataclasses

import torch

from paravideo.parallel.comm import P2P
from paravideo.schedule.plan import Forward

COND, UNCOND = 0, 1
KIND = "cfg_uncond"


def guided(cond_pred: torch.Tensor, uncond_pred: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance's combine (the one formula every path uses)."""
    return uncond_pred + scale * (cond_pred - uncond_pred)


def cfg_conditioning(cond, index: int):
    """The conditioning of guidance batch row `index` (0 = conditional, 1 = unconditional)."""
    rows = slice(index, index + 1)
    return dataclasses.replace(cond, temb=cond.temb[rows], timestep_proj=cond.timestep_proj[rows],
                               text=cond.text[rows])


class CombineWithPeer:
    """Conditional last stage: waits for the unconditional peer's prediction, returns the guided one."""

    def __init__(self, p2p: P2P, peer: int, guidance):
        self.p2p, self.peer, self.guidance = p2p, peer, guidance

    def __call__(self, fwd: Forward, cond_pred: torch.Tensor) -> torch.Tensor:
        uncond = self.p2p.recv(tuple(cond_pred.shape), cond_pred.dtype, self.peer,
                               what=f"unconditional prediction of forward {fwd.seq}")
        out = guided(cond_pred, uncond, self.guidance(fwd.step))
        self.p2p.pool.give(uncond)
        return out

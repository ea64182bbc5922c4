"""The driver rank's block queue: latents and scheduler state per block, context windows, output."""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.telemetry.recorder import BUSY, Recorder
from paravideo.schedule.noise import NoiseSource
from paravideo.schedule.plan import BlockPlan, Forward
from paravideo.schedule.sampler import SchedulerBank

# Called with (block index, clean latents) when a block leaves the queue.
BlockDone = Callable[[int, torch.Tensor], None]


class BlockDriver:
    """Holds only the blocks in the queue (plus one context tail), so memory is flat in video length.

    Every input is defined by the plan: block k's window uses block k-1 as it stood after all of
    its updates from earlier iterations, whichever rank computed them and whenever they arrived.
    """

    def __init__(self, plan: BlockPlan, *, noise: NoiseSource, bank: SchedulerBank, on_block_done: BlockDone,
                 on_apply: Callable[[Forward], None] = lambda fwd: None, recorder: Recorder | None = None):
        self.plan, self.noise, self.bank = plan, noise, bank
        self.recorder = recorder or Recorder()  # a private one when nobody reads the spans
        self.on_block_done, self.on_apply = on_block_done, on_apply
        self.latents: dict[int, torch.Tensor] = {}
        self.schedulers: dict[int, object] = {}
        self.tails: dict[int, torch.Tensor] = {}  # context tails of blocks that already left
        self.applied = -1  # seq of the last forward whose prediction was applied

    def window(self, fwd: Forward) -> torch.Tensor:
        """Latents `(1, c, context + frames, h, w)` that forward `fwd` denoises."""
        if fwd.step == 0:
            assert fwd.block not in self.latents, f"block {fwd.block} entered twice"
            self.latents[fwd.block] = self.noise.block_noise(fwd.block)
            self.schedulers[fwd.block] = self.bank.new_block_scheduler()
        current = self.latents[fwd.block]
        if not fwd.context_frames:
            return current
        prev = fwd.block - 1
        source = self.latents.get(prev, self.tails.get(prev))
        assert source is not None, f"context of block {prev} is gone before block {fwd.block} needed it"
        return torch.cat([source[:, :, source.shape[2] - fwd.context_frames:], current], dim=2)

    def apply(self, fwd: Forward, noise_pred: torch.Tensor) -> None:
        """Take forward `fwd`'s scheduler step; hand the block on when it leaves the queue."""
        assert fwd.seq == self.applied + 1, f"prediction {fwd.seq} applied out of order (after {self.applied})"
        k = fwd.block
        latents = self.latents[k]
        with self.recorder.span("scheduler step", BUSY, block=k, step=fwd.step):
            step = self.schedulers[k].step(noise_pred.to(latents), self.bank.timesteps[fwd.step], latents,
                                           return_dict=False)[0]
        self.latents[k] = step
        self.applied = fwd.seq
        if fwd.is_last_step:
            self._finish(k)
        self.on_apply(fwd)

    def _finish(self, k: int) -> None:
        clean = self.latents.pop(k)
        del self.schedulers[k]
        self.tails.pop(k - 1, None)  # block k was the last reader of block k-1's tail
        if self.plan.context_frames and k + 1 < len(self.plan.blocks):
            self.tails[k] = clean[:, :, clean.shape[2] - min(self.plan.context_frames, clean.shape[2]):].clone()
        self.on_block_done(k, clean)

    def state(self, iteration: int) -> dict:
        """The queue once iteration `iteration` is fully applied, for a resume checkpoint.

        A block that entered early (its step-0 forward launched ahead, nothing applied yet) is left
        out: a resumed run recreates its noise from the seed.
        """
        from paravideo.io.checkpoint import scheduler_state

        keep = sorted(k for k in self.latents if k <= iteration)
        return {"applied": self.applied, "latents": {k: self.latents[k] for k in keep},
                "schedulers": {k: scheduler_state(self.schedulers[k]) for k in keep}, "tails": dict(self.tails)}

    def load_state(self, state: dict) -> None:
        """Continue from what `state` returned."""
        from paravideo.io.checkpoint import load_scheduler_state

        self.applied = int(state["applied"])
        self.latents = {int(k): v for k, v in state["latents"].items()}
        self.tails = {int(k): v for k, v in state["tails"].items()}
        self.schedulers = {}
        for k, sched_state in state["schedulers"].items():
            sched = self.bank.new_block_scheduler()
            load_scheduler_state(sched, sched_state)
            self.schedulers[int(k)] = sched

    @property
    def done(self) -> bool:
        return self.applied == len(self.plan.forwards) - 1

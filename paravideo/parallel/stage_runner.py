"""The stage runner: one loop over the plan per rank; a stage's role is its source and its sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from paravideo.driver import BlockDriver
from paravideo.models.wan.adapter import Conditioning, WanStage
from paravideo.parallel.comm import P2P, PendingRecv
from paravideo.report.recorder import BUSY, Recorder
from paravideo.schedule.plan import BlockPlan, Forward

DRIVER_RANK = 0


@dataclass(frozen=True)
class Geometry:
    """Sizes every rank derives from the config: latent rows/cols, batch (2 with CFG), width."""

    channels: int
    height: int  # latent
    width: int  # latent
    batch: int
    dim: int
    tokens_per_frame: int

    def hidden_shape(self, frames: int) -> tuple[int, int, int]:
        return (self.batch, frames * self.tokens_per_frame, self.dim)

    def latent_shape(self, frames: int) -> tuple[int, int, int, int, int]:
        return (1, self.channels, frames, self.height, self.width)


class Source(Protocol):
    def hidden(self, fwd: Forward, frames: int) -> torch.Tensor: ...
    def release(self, hidden: torch.Tensor) -> None: ...
    def finish(self) -> None: ...


class Sink(Protocol):
    def put(self, fwd: Forward, hidden: torch.Tensor, cond: Conditioning) -> None: ...
    def finish(self) -> None: ...


class LatentSource:
    """First stage: waits for the predictions the window depends on, then patch-embeds it."""

    def __init__(self, stage: WanStage, driver: BlockDriver, geometry: Geometry, recorder: Recorder,
                 inbox: PredictionInbox | None):
        self.stage, self.driver, self.geo, self.recorder, self.inbox = stage, driver, geometry, recorder, inbox

    def hidden(self, fwd: Forward, frames: int) -> torch.Tensor:
        if self.inbox is not None:
            if fwd.depends_on:
                self.inbox.drain_until(fwd.depends_on[-1])
            self.inbox.expect(fwd)
        with self.recorder.span("embed", BUSY, block=fwd.block, step=fwd.step):
            tokens = self.stage.embed(self.driver.window(fwd))
            return tokens.expand(self.geo.batch, -1, -1).contiguous()

    def release(self, hidden: torch.Tensor) -> None:
        pass

    def finish(self) -> None:
        if self.inbox is not None:
            self.inbox.drain_until(self.driver.plan.forwards[-1].seq)


class RecvSource:
    """Later stages: hidden states from the previous stage, the next receive posted ahead."""

    def __init__(self, p2p: P2P, src: int, plan: BlockPlan, geometry: Geometry, dtype: torch.dtype):
        self.p2p, self.src, self.plan, self.geo, self.dtype = p2p, src, plan, geometry, dtype
        self._pending: PendingRecv | None = None
        self._next = 0

    def _post(self, seq: int) -> None:
        if seq < len(self.plan.forwards):
            fwd = self.plan.forwards[seq]
            lo, hi = self.plan.window(fwd)
            self._pending = self.p2p.post_recv(self.geo.hidden_shape(hi - lo), self.dtype, self.src,
                                               what=f"hidden states of forward {seq}")

    def hidden(self, fwd: Forward, frames: int) -> torch.Tensor:
        if self._pending is None:
            self._post(fwd.seq)
        assert self._next == fwd.seq
        buf = self.p2p.wait(self._pending)
        self._next += 1
        self._post(self._next)  # overlap the next transfer with this forward's compute
        return buf

    def release(self, hidden: torch.Tensor) -> None:
        self.p2p.pool.give(hidden)

    def finish(self) -> None:
        pass


class SendHiddenSink:
    """Not the last stage: hidden states go on to the next stage."""

    def __init__(self, p2p: P2P, dst: int):
        self.p2p, self.dst = p2p, dst

    def put(self, fwd: Forward, hidden: torch.Tensor, cond: Conditioning) -> None:
        self.p2p.send(hidden, self.dst, kind="hidden")

    def finish(self) -> None:
        self.p2p.flush()


class HeadSink:
    """Last stage: output head, context frames dropped, CFG combine, then `deliver` the prediction."""

    def __init__(self, stage: WanStage, guidance_scale: float, recorder: Recorder,
                 deliver: Callable[[Forward, torch.Tensor], None], finish: Callable[[], None] = lambda: None):
        self.stage, self.guidance_scale, self.recorder = stage, guidance_scale, recorder
        self.deliver, self._finish = deliver, finish

    def put(self, fwd: Forward, hidden: torch.Tensor, cond: Conditioning) -> None:
        with self.recorder.span("head", BUSY, block=fwd.block, step=fwd.step):
            pred = self.stage.head(hidden, cond)[:, :, fwd.context_frames:].float()
            if pred.shape[0] == 2:
                cond_pred, uncond_pred = pred[:1], pred[1:]
                pred = uncond_pred + self.guidance_scale * (cond_pred - uncond_pred)
        self.deliver(fwd, pred)

    def finish(self) -> None:
        self._finish()


class PredictionInbox:
    """On the driver rank: guided predictions from the last stage, applied in plan order.

    gloo sends complete only once the receiver has posted its receive, so the driver posts the
    receive of a forward's prediction as soon as it launches that forward: the last stage can
    then always deliver, and no chain of blocked sends can close into a cycle. At most a queue's
    worth of forwards is in flight, which bounds the buffers.
    """

    def __init__(self, p2p: P2P, src: int, driver: BlockDriver, geometry: Geometry):
        self.p2p, self.src, self.driver, self.geo = p2p, src, driver, geometry
        self._pending: dict[int, PendingRecv] = {}

    def expect(self, fwd: Forward) -> None:
        """Post the receive for `fwd`'s prediction."""
        frames = self.driver.plan.blocks[fwd.block].frames
        self._pending[fwd.seq] = self.p2p.post_recv(self.geo.latent_shape(frames), torch.float32, self.src,
                                                    what=f"prediction of forward {fwd.seq}")

    def drain_until(self, seq: int) -> None:
        """Apply every prediction up to and including forward `seq`."""
        while self.driver.applied < seq:
            nxt = self.driver.applied + 1
            pred = self.p2p.wait(self._pending.pop(nxt))
            self.driver.apply(self.driver.plan.forwards[nxt], pred)
            self.p2p.pool.give(pred)


class StageRunner:
    """Runs this rank's layers for every forward of the plan, in plan order."""

    def __init__(self, stage: WanStage, plan: BlockPlan, *, texts: dict[int, torch.Tensor],
                 block_prompt: list[int], timesteps: torch.Tensor, geometry: Geometry, recorder: Recorder,
                 source: Source, sink: Sink, before_forward: Callable[[Forward], None] = lambda f: None,
                 after_forward: Callable[[Forward], None] = lambda f: None):
        self.stage, self.plan, self.texts, self.block_prompt = stage, plan, texts, block_prompt
        self.timesteps, self.geo, self.recorder = timesteps, geometry, recorder
        self.source, self.sink = source, sink
        self.before_forward, self.after_forward = before_forward, after_forward

    def condition(self, fwd: Forward) -> Conditioning:
        lo, hi = self.plan.window(fwd)
        timestep = self.timesteps[fwd.step].expand(self.geo.batch)
        grid = (hi - lo, self.geo.height // self.stage.patch_size[1], self.geo.width // self.stage.patch_size[2])
        return self.stage.condition(timestep, self.texts[self.block_prompt[fwd.block]], grid, frame_offset=lo)

    def _set_hook_info(self, fwd: Forward, frames: int) -> None:
        info = self.stage.hooks.info
        info.block, info.step = fwd.block, fwd.step
        info.window_frames, info.context_frames = frames, fwd.context_frames
        info.tokens_per_frame = self.geo.tokens_per_frame
        info.keep_head_frames, info.future_block = fwd.keep_head_frames, fwd.future_block

    @torch.no_grad()
    def run(self, start_seq: int = 0) -> None:
        """Every forward of the plan from `start_seq` on (a resumed run skips those done) through this stage."""
        for fwd in self.plan.forwards[start_seq:]:
            self.before_forward(fwd)
            lo, hi = self.plan.window(fwd)
            hidden_in = self.source.hidden(fwd, hi - lo)
            with self.recorder.span(f"block {fwd.block} step {fwd.step}", BUSY, block=fwd.block, step=fwd.step,
                                    iteration=fwd.iteration, layers=f"{self.stage.lo}-{self.stage.hi}"):
                cond = self.condition(fwd)
                self._set_hook_info(fwd, hi - lo)
                hidden = self.stage.run_layers(hidden_in, cond)
            self.source.release(hidden_in)
            self.sink.put(fwd, hidden, cond)
            self.after_forward(fwd)
        self.source.finish()
        self.sink.finish()

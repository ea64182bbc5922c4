"""The stage runner: one loop over the plan per rank; a stage's role is its source and its sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from paravideo.runtime.driver import BlockDriver
from paravideo.models.experts import ExpertStages
from paravideo.models.wan.adapter import Conditioning
from paravideo.parallel.comm import P2P, PendingRecv
from paravideo.parallel.cfg import cfg_conditioning, guided
from paravideo.parallel.patch.bands import Band, band_conditioning
from paravideo.parallel.seq.split import SeqShare, seq_conditioning
from paravideo.telemetry.recorder import BUSY, Recorder
from paravideo.schedule.plan import BlockPlan, Forward

DRIVER_RANK = 0


@dataclass(frozen=True)
class Geometry:
    """Sizes every rank derives from the config: latent frame size, batch (2 with CFG), width, its band.

    A rank computes one band of token rows (all of them without patch parallelism): its hidden
    states, latents and predictions cover only that band.
    """

    channels: int
    height: int  # latent, the whole frame
    width: int  # latent
    batch: int  # the guidance batch: 2 with CFG ([cond, uncond]), else 1
    dim: int
    patch_hw: tuple[int, int]  # latent pixels per token (rows, cols): the model's DiT patch
    band: Band | None = None  # this rank's token rows; None = the whole frame
    cfg_index: int | None = None  # CFG parallelism: the one batch row this rank computes
    seq: SeqShare | None = None  # sequence parallelism: this rank's chunk of every window's tokens

    @property
    def local_batch(self) -> int:
        """Rows of the guidance batch this rank computes."""
        return self.batch if self.cfg_index is None else 1

    def seq_tokens(self, frames: int) -> tuple[int, int]:
        """This rank's tokens [lo, hi) of a window of `frames` (all of its band's without sequence parallelism)."""
        tokens = frames * self.rows.rows * self.token_cols
        return self.seq.tokens(tokens) if self.seq is not None else (0, tokens)

    @property
    def token_rows(self) -> int:
        return self.height // self.patch_hw[0]

    @property
    def token_cols(self) -> int:
        return self.width // self.patch_hw[1]

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of a whole frame."""
        return self.token_rows * self.token_cols

    @property
    def rows(self) -> Band:
        """This rank's token rows."""
        return self.band or Band(0, 0, self.token_rows)

    @property
    def latent_rows(self) -> tuple[int, int]:
        """This rank's latent rows [lo, hi)."""
        return self.rows.lo * self.patch_hw[0], self.rows.hi * self.patch_hw[0]

    def hidden_shape(self, frames: int) -> tuple[int, int, int]:
        lo, hi = self.seq_tokens(frames)
        return (self.local_batch, hi - lo, self.dim)

    def latent_shape(self, frames: int) -> tuple[int, int, int, int, int]:
        lo, hi = self.latent_rows
        return (1, self.channels, frames, hi - lo, self.width)


class Source(Protocol):
    def hidden(self, fwd: Forward, frames: int) -> torch.Tensor: ...
    def release(self, hidden: torch.Tensor) -> None: ...
    def finish(self) -> None: ...


class Sink(Protocol):
    def put(self, fwd: Forward, hidden: torch.Tensor, cond: Conditioning) -> None: ...
    def finish(self) -> None: ...


class LatentSource:
    """First stage: waits for the predictions the window depends on, then patch-embeds it."""

    def __init__(self, experts: ExpertStages, driver: BlockDriver, geometry: Geometry, recorder: Recorder,
                 inbox: PredictionInbox | None):
        self.experts, self.driver, self.geo, self.recorder, self.inbox = experts, driver, geometry, recorder, inbox

    def hidden(self, fwd: Forward, frames: int) -> torch.Tensor:
        if self.inbox is not None:
            if fwd.depends_on:
                self.inbox.drain_until(fwd.depends_on[-1])
            self.inbox.expect(fwd)
        with self.recorder.span("embed", BUSY, block=fwd.block, step=fwd.step):
            tokens = self.experts.at(fwd.step).embed(self.driver.window(fwd))
            lo, hi = self.geo.seq_tokens(frames)
            return tokens[:, lo:hi].expand(self.geo.local_batch, -1, -1).contiguous()

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
        if self._pending is None:  # the first forward (0, or where a resumed run starts)
            self._next = fwd.seq
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
    """Last stage: the step's expert's output head, context frames dropped, CFG combine with that expert's
    guidance scale, then `deliver` the prediction.

    `gather` first joins a sequence group's token chunks; `guide` replaces the batch-of-two combine
    (CFG parallelism: combine with the peer's prediction, or pass the unconditional one on as it is).
    """

    def __init__(self, experts: ExpertStages, recorder: Recorder, deliver: Callable[[Forward, torch.Tensor], None],
                 finish: Callable[[], None] = lambda: None, *,
                 gather: Callable[[Forward, torch.Tensor], torch.Tensor] | None = None,
                 guide: Callable[[Forward, torch.Tensor], torch.Tensor] | None = None):
        self.experts, self.recorder = experts, recorder
        self.deliver, self._finish = deliver, finish
        self.gather, self.guide = gather, guide

    def put(self, fwd: Forward, hidden: torch.Tensor, cond: Conditioning) -> None:
        if self.gather is not None:
            hidden = self.gather(fwd, hidden)
        with self.recorder.span("head", BUSY, block=fwd.block, step=fwd.step):
            pred = self.experts.at(fwd.step).head(hidden, cond)[:, :, fwd.context_frames:].float()
            if self.guide is None and pred.shape[0] == 2:
                pred = guided(pred[:1], pred[1:], self.experts.choice.guidance(fwd.step))
        if self.guide is not None:
            pred = self.guide(fwd, pred)
        self.deliver(fwd, pred)

    def finish(self) -> None:
        self._finish()


class PredictionInbox:
    """On the driver rank: guided predictions from the last stage, applied in plan order.

    gloo sends complete only once the receiver has posted its receive, so the driver posts the
    receive of a forward's prediction as soon as it launches that forward: the last stage can
    then always deliver, and no chain of blocked sends can close into a cycle. At most a queue's
    worth of forwards is in flight, which bounds the buffers.

    With patch parallelism each first-stage band has its own inbox fed by the same band of the
    last stage, so the argument holds band by band. The bands of a stage meet only in K/V and
    latent exchanges, which every band posts at the same point of the plan (receives before
    sends), and a band waits there only for messages its peers posted at an earlier or the same
    point: the band furthest behind can always go on.
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

    def __init__(self, experts: ExpertStages, plan: BlockPlan, *, texts: list[dict[int, torch.Tensor]],
                 block_prompt: list[int], timesteps: torch.Tensor, geometry: Geometry, recorder: Recorder,
                 source: Source, sink: Sink, before_forward: Callable[[Forward], None] = lambda f: None,
                 after_forward: Callable[[Forward], None] = lambda f: None,
                 kv_tokens_per_frame: Callable[[int], int] | None = None,
                 layers: Callable[[Forward, torch.Tensor, Conditioning], torch.Tensor] | None = None):
        # texts[expert][prompt]: each expert projects the prompts with its own text embedder.
        self.experts, self.plan, self.texts, self.block_prompt = experts, plan, texts, block_prompt
        self.timesteps, self.geo, self.recorder = timesteps, geometry, recorder
        self.source, self.sink = source, sink
        self.before_forward, self.after_forward = before_forward, after_forward
        # Tokens per frame of the K/V that hooks after a layout-changing hook (the patch exchange) see.
        self.kv_tokens_per_frame = kv_tokens_per_frame or (lambda step: geometry.tokens_per_frame)
        # This stage's layers for a forward; a step cache may skip them (paravideo/cache/step_cache.py).
        self.layers = layers or (lambda fwd, hidden, cond: self.experts.at(fwd.step).run_layers(hidden, cond))

    def condition(self, fwd: Forward) -> Conditioning:
        """Time, text and RoPE of the window, cut to this rank's band (RoPE keeps global positions)."""
        lo, hi = self.plan.window(fwd)
        # The whole guidance batch even under CFG parallelism: its time embedding rounds differently per row count.
        timestep = self.timesteps[fwd.step].expand(self.geo.batch)
        grid = (hi - lo, self.geo.token_rows, self.geo.token_cols)
        expert = self.experts.index(fwd.step)
        cond = self.experts.stages[expert].condition(timestep, self.texts[expert][self.block_prompt[fwd.block]], grid,
                                                     frame_offset=lo)
        cond = band_conditioning(cond, self.geo.rows)
        if self.geo.cfg_index is not None:
            cond = cfg_conditioning(cond, self.geo.cfg_index)
        return seq_conditioning(cond, *self.geo.seq_tokens(hi - lo)) if self.geo.seq is not None else cond

    def _set_hook_info(self, fwd: Forward, frames: int) -> None:
        info = self.experts.hooks.info
        info.block, info.step = fwd.block, fwd.step
        info.window_frames, info.context_frames = frames, fwd.context_frames
        info.tokens_per_frame = self.kv_tokens_per_frame(fwd.step)
        info.keep_head_frames, info.future_block = fwd.keep_head_frames, fwd.future_block

    @torch.no_grad()
    def run(self, start_seq: int = 0) -> None:
        """Every forward of the plan from `start_seq` on (a resumed run skips those done) through this stage."""
        for fwd in self.plan.forwards[start_seq:]:
            self.before_forward(fwd)
            lo, hi = self.plan.window(fwd)
            hidden_in = self.source.hidden(fwd, hi - lo)
            with self.recorder.span(f"block {fwd.block} step {fwd.step}", BUSY, block=fwd.block, step=fwd.step,
                                    iteration=fwd.iteration, layers=f"{self.experts.lo}-{self.experts.hi}",
                                    expert=self.experts.index(fwd.step)):
                cond = self.condition(fwd)
                self._set_hook_info(fwd, hi - lo)
                hidden = self.layers(fwd, hidden_in, cond)
            self.source.release(hidden_in)
            self.sink.put(fwd, hidden, cond)
            self.after_forward(fwd)
        self.source.finish()
        self.sink.finish()

"""Finished latent blocks to frames on disk: streaming decode then the video sink."""

from __future__ import annotations

import hashlib

import torch

from paravideo.io.sink import VideoSink
from paravideo.io.vae_stream import StreamingDecoder, to_uint8_frames
from paravideo.report.recorder import IO, Recorder


class FrameStream:
    """Decodes each finished block (causal cache carried) and appends its frames to the sink."""

    def __init__(self, decoder: StreamingDecoder, sink: VideoSink, recorder: Recorder, *, keep_latents: bool = False):
        self.decoder, self.sink, self.recorder = decoder, sink, recorder
        self.blocks_written = 0
        # A bitwise fingerprint of every block's clean latents: equal digests mean equal videos.
        self.digests: list[str] = []
        self.kept: list[torch.Tensor] | None = [] if keep_latents else None

    def emit(self, block: int, latents_bcthw: torch.Tensor) -> None:
        """Decode and write the clean latents of `block` (blocks arrive in order)."""
        assert block == self.blocks_written, f"block {block} finished out of order"
        clean = latents_bcthw.detach().float().cpu().contiguous()
        self.digests.append(hashlib.sha256(clean.numpy().tobytes()).hexdigest()[:16])
        if self.kept is not None:
            self.kept.append(clean)
        with self.recorder.span(f"decode block {block}", IO, block=block):
            frames = to_uint8_frames(self.decoder.decode(latents_bcthw))
        with self.recorder.span(f"write block {block}", IO, block=block, frames=int(frames.shape[0])):
            self.sink.write(frames)
        self.recorder.mark("first_frame")
        self.blocks_written += 1

    def state(self) -> dict:
        """Decode cache, block count, digests and the sink's position (after `sink.cut()`)."""
        return {"blocks_written": self.blocks_written, "digests": list(self.digests),
                "decoder": self.decoder.state(), "sink": self.sink.state()}

    def load_state(self, state: dict) -> None:
        """Continue from what `state` returned."""
        self.blocks_written = int(state["blocks_written"])
        self.digests = list(state["digests"])
        self.decoder.load_state(state["decoder"])
        self.sink.load_state(state["sink"])

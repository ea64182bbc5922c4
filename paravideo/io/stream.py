"""Finished latent blocks to frames on disk: streaming decode then the video sink."""

from __future__ import annotations

import hashlib
import queue
import threading

import torch

from paravideo.errors import ParavideoError, describe_error
from paravideo.io.sink import VideoSink
from paravideo.io.vae_stream import StreamingDecoder, to_uint8_frames
from paravideo.telemetry.recorder import IO, Recorder

# Finished blocks waiting for the decode thread; bounded so memory stays flat in video length.
MAX_PENDING_BLOCKS = 2


class FrameStream:
    """Decodes each finished block (causal cache carried) and appends its frames to the sink.

    With `background=True` decode and write run on one helper thread, in block order, so the
    driver rank goes on feeding the pipeline instead of stalling the other stages for the length of
    a decode; `flush()` waits for it (checkpoints and the end of a run do).
    """

    def __init__(self, decoder: StreamingDecoder, sink: VideoSink, recorder: Recorder, *, keep_latents: bool = False,
                 background: bool = False):
        self.decoder, self.sink, self.recorder = decoder, sink, recorder
        self.blocks_emitted = 0
        self.blocks_written = 0
        # A bitwise fingerprint of every block's clean latents: equal digests mean equal videos.
        self.digests: list[str] = []
        self.kept: list[torch.Tensor] | None = [] if keep_latents else None
        self._queue: queue.Queue | None = None
        self._error: BaseException | None = None
        if background:
            self._queue = queue.Queue(maxsize=MAX_PENDING_BLOCKS)
            self._thread = threading.Thread(target=self._drain, name="paravideo-decode", daemon=True)
            self._thread.start()

    def emit(self, block: int, latents_bcthw: torch.Tensor) -> None:
        """Decode and write the clean latents of `block` (blocks arrive in order)."""
        assert block == self.blocks_emitted, f"block {block} finished out of order"
        self._raise_pending()
        clean = latents_bcthw.detach().float().cpu().contiguous()
        self.digests.append(hashlib.sha256(clean.numpy().tobytes()).hexdigest()[:16])
        if self.kept is not None:
            self.kept.append(clean)
        self.blocks_emitted += 1
        if self._queue is None:
            self._write(block, latents_bcthw)
        else:
            self._queue.put((block, latents_bcthw.detach().clone()))

    def _write(self, block: int, latents_bcthw: torch.Tensor) -> None:
        with self.recorder.span(f"decode block {block}", IO, block=block):
            frames = to_uint8_frames(self.decoder.decode(latents_bcthw))
        with self.recorder.span(f"write block {block}", IO, block=block, frames=int(frames.shape[0])):
            self.sink.write(frames)
        self.recorder.mark("first_frame")
        self.blocks_written += 1

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is not None and self._error is None:
                    self._write(*item)
            except BaseException as err:  # noqa: BLE001 - handed to the driver thread
                self._error = err
            finally:
                self._queue.task_done()
            if item is None:
                return

    def _raise_pending(self) -> None:
        if isinstance(self._error, ParavideoError):
            raise self._error  # already one clear message (a full disk, say)
        if self._error is not None:
            raise RuntimeError(f"decoding or writing the video failed: {describe_error(self._error)}") from self._error

    def flush(self) -> None:
        """Wait until every emitted block is decoded and written (raises what the decode thread hit)."""
        if self._queue is not None:
            self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Stop the decode thread after it has written what it holds (safe to call on failure paths)."""
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def state(self) -> dict:
        """Decode cache, block count, digests and the sink's position (after `flush()` and `sink.cut()`)."""
        assert self.blocks_written == self.blocks_emitted, "flush() before taking the state"
        return {"blocks_written": self.blocks_written, "digests": list(self.digests),
                "decoder": self.decoder.state(), "sink": self.sink.state()}

    def load_state(self, state: dict) -> None:
        """Continue from what `state` returned."""
        self.blocks_written = self.blocks_emitted = int(state["blocks_written"])
        self.digests = list(state["digests"])
        self.decoder.load_state(state["decoder"])
        self.sink.load_state(state["sink"])

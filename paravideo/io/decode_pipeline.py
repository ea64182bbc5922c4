"""The streaming decode spread over ranks (parallel.decode: pipeline): decoder pieces flow rank to rank.

The driver runs the first pieces on its decode thread and sends each latent frame's activations
on; every other decode rank runs its pieces on a helper thread beside its DiT stage and sends on;
the last one sends uint8 frames back to a writer thread on the driver, which owns the mp4. Each
rank keeps the causal caches of its own pieces, frames go through in video order, so the video is
bit-identical to a one-rank decode. Messages only flow forward along the chain (activations, then
frames to the writer), so no wait can close a cycle with the DiT pipeline's traffic.
"""

from __future__ import annotations

import io
import os
import signal
import threading
from dataclasses import dataclass

import torch

from paravideo.errors import ParavideoError, describe_error
from paravideo.io.checkpoint_times import CheckpointTimes
from paravideo.io.decode_placement import WRITER_RANK, DecodePlacement, finished_frames_by_iteration
from paravideo.io.decoder_pieces import DecoderRange, join_feat_map, split_feat_map
from paravideo.io.stream import FrameStream
from paravideo.io.vae_stream import to_uint8_frames
from paravideo.parallel.comm import P2P, Tag
from paravideo.telemetry.recorder import IO, Recorder

FAULT_ENV = "PARAVIDEO_FAULT"  # "RANK:decode:FRAME": that rank raises before decoding latent frame FRAME
_HEADER = 6  # ndim then up to 5 dims


class DecodeStageFailure(ParavideoError):
    """This rank's decode thread failed (raised in the rank's main thread, so the job ends naming it)."""


@dataclass(frozen=True)
class DecodeFault:
    """An injected decode failure for tests: `rank` raises before decoding latent frame `frame`."""

    rank: int
    frame: int

    @classmethod
    def from_env(cls) -> DecodeFault | None:
        parts = os.environ.get(FAULT_ENV, "").split(":")
        return cls(int(parts[0]), int(parts[2])) if len(parts) == 3 and parts[1] == "decode" else None

    def check(self, rank: int, frame: int) -> None:
        if (self.rank, self.frame) == (rank, frame):
            raise RuntimeError(f"injected failure before decoding latent frame {frame} ({FAULT_ENV})")


def decode_timeout_s(timeout_s: float, steps: int) -> float:
    """A decode rank waits for a block as long as the DiT takes to finish one: the first after `steps`
    iterations, each bounded by the pipeline's own timeout."""
    return timeout_s * (steps + 2)


def send_framed(p2p: P2P, tensor: torch.Tensor, dst: int, *, tag: Tag, kind: str) -> None:
    """Send a shape header then the tensor (shapes differ between the first latent frame and later ones)."""
    header = torch.zeros(_HEADER, dtype=torch.int64)
    header[0] = tensor.dim()
    header[1:1 + tensor.dim()] = torch.tensor(tensor.shape)
    p2p.send(header, dst, kind=kind, tag=tag)
    p2p.send(tensor, dst, kind=kind, tag=tag)


def recv_framed(p2p: P2P, src: int, *, tag: Tag, dtype: torch.dtype, what: str) -> torch.Tensor:
    """Receive what `send_framed` sent (into a pooled buffer: give it back when done)."""
    header = p2p.wait(p2p.post_recv((_HEADER,), torch.int64, src, what=f"{what} (shape)", tag=tag))
    shape = tuple(int(v) for v in header[1:1 + int(header[0])])
    p2p.pool.give(header)
    return p2p.wait(p2p.post_recv(shape, dtype, src, what=what, tag=tag))


def send_saved(p2p: P2P, state: dict, dst: int, *, tag: Tag, kind: str) -> None:
    """Send tensors and plain data as `torch.save` bytes (read back with `weights_only=True`)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    send_framed(p2p, torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), dst, tag=tag, kind=kind)


def recv_saved_bytes(p2p: P2P, src: int, *, tag: Tag, what: str) -> torch.Tensor:
    """The bytes `send_saved` sent from `src`, as a CPU tensor (the pooled receive buffer is given back)."""
    data = recv_framed(p2p, src, tag=tag, dtype=torch.uint8, what=what)
    out = data.cpu().clone()
    p2p.pool.give(data)
    return out


def send_state(p2p: P2P, state: dict, dst: int) -> None:
    """Send a decode state (tensors and plain data) as bytes."""
    send_saved(p2p, state, dst, tag=Tag.DECODE_STATE, kind="decode_state")


def recv_state_bytes(p2p: P2P, src: int) -> torch.Tensor:
    """The bytes of a decode state from `src` (kept as a tensor: checkpoints load with weights_only)."""
    return recv_saved_bytes(p2p, src, tag=Tag.DECODE_STATE, what=f"decode state of rank {src}")


def state_from_bytes(data: torch.Tensor) -> dict:
    """What `send_saved` sent, from its bytes (tensors and plain data only)."""
    return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)


class PipelinedFrameStream(FrameStream):
    """The driver's side: the first decoder pieces on the decode thread, the mp4 writer on another."""

    def __init__(self, head: DecoderRange, sink, recorder: Recorder, *, placement: DecodePlacement, plan,
                 main_p2p: P2P, make_p2p, keep_latents: bool = False, background: bool = True):
        super().__init__(head, sink, recorder, keep_latents=keep_latents, background=background)
        self.placement, self.plan, self._main_p2p = placement, plan, main_p2p
        # One P2P per thread: a P2P's send queue is not shared between threads.
        self._send_p2p, self._recv_p2p = make_p2p(), make_p2p()
        self._next = placement.next_of(WRITER_RANK)
        self._last = placement.ranks[-1]
        self._frames_written = 0  # latent frames whose pixels are in the sink
        self._cond = threading.Condition()
        self._sink_lock = threading.Lock()
        self._stopped = False
        self._writer: threading.Thread | None = None
        self._resume_states: dict[int, torch.Tensor] = {}
        self._feat_slots = head.vae._cached_conv_counts["decoder"]
        self.fault = DecodeFault.from_env()

    def _write(self, block: int, latents_bcthw: torch.Tensor) -> None:
        if self._stopped:
            return
        self._start_writer()
        head = self.decoder
        with self.recorder.span(f"decode block {block}", IO, block=block, pieces=f"{head.lo}-{head.hi}"):
            x = head.prepare(latents_bcthw)
            for i in range(x.shape[2]):
                if self.fault is not None:
                    self.fault.check(WRITER_RANK, head.frames_in)
                send_framed(self._send_p2p, head.frame(x[:, :, i:i + 1]), self._next, tag=Tag.DECODE, kind="decode")

    def _start_writer(self) -> None:
        if self._writer is None:
            for rank, data in self._resume_states.items():
                send_framed(self._send_p2p, data, rank, tag=Tag.DECODE_STATE, kind="decode_state")
            self._frames_written = self.decoder.frames_in  # 0, or where a resumed run continues
            self._writer = threading.Thread(target=self._write_loop, name="paravideo-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        ends = {}  # latent frame count at which each block is complete
        total = 0
        for b in self.plan.blocks:
            total += b.frames
            ends[total] = b.index
        try:
            while self._frames_written < total:
                f = self._frames_written
                frames = recv_framed(self._recv_p2p, self._last, tag=Tag.DECODE_FRAMES, dtype=torch.uint8,
                                     what=f"frames of latent frame {f}")
                with self._sink_lock:
                    if self._stopped:
                        return
                    with self.recorder.span(f"write latent frame {f}", IO, frames=int(frames.shape[0])):
                        self.sink.write(frames)
                self._recv_p2p.pool.give(frames)
                self.recorder.mark("first_frame")
                with self._cond:
                    self._frames_written += 1
                    if self._frames_written in ends:
                        self.blocks_written = ends[self._frames_written] + 1
                    self._cond.notify_all()
        except BaseException as err:  # noqa: BLE001 - handed to the driver thread
            with self._cond:
                self._error = err
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every emitted block's frames are back and written."""
        super().flush()
        with self._cond:
            while self._frames_written < self.decoder.frames_in and self._error is None:
                self._cond.wait(timeout=1.0)
        self._raise_pending()
        self._send_p2p.flush()

    def close(self) -> None:
        """On success everything is written already; on failure stop both threads without waiting on peers."""
        with self._sink_lock:
            self._stopped = True  # the writer never touches the sink after this
        if self._queue is not None:
            try:
                self._queue.put_nowait(None)
            except Exception:  # noqa: BLE001 - a full queue on a failure path: the daemon thread is abandoned
                pass
            self._thread.join(timeout=5.0)
            self._queue = None

    def state(self) -> dict:
        """The whole decoder's cache, gathered from every decode rank (each sends its pieces' caches when it
        reaches this point), in StreamingDecoder's format: a checkpoint resumes under any decode placement."""
        out = super().state()
        parts = [self.decoder.state()] + [state_from_bytes(recv_state_bytes(self._main_p2p, r))
                                          for r in self.placement.ranks[1:]]
        assert len({p["frames_in"] for p in parts}) == 1, [p["frames_in"] for p in parts]
        out["decoder"] = {"frames_in": parts[0]["frames_in"],
                          "feat_map": join_feat_map([c for p in parts for c in p["caches"]], self._feat_slots)}
        return out

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint (written under any decode placement); hand each decode rank its caches."""
        whole = state["decoder"]
        caches = split_feat_map(self.decoder.pieces, whole["feat_map"])

        def part(lo: int, hi: int) -> dict:
            return {"lo": lo, "hi": hi, "frames_in": whole["frames_in"], "caches": caches[lo:hi]}

        super().load_state({**state, "decoder": part(self.decoder.lo, self.decoder.hi)})
        self._frames_written = self.decoder.frames_in  # a checkpoint before the next block must not wait
        # Sent by the decode thread before its first frame: the other ranks post their receives only once
        # every rank has learnt where the run starts (a send now would wait on that broadcast).
        for rank in self.placement.ranks[1:]:
            buf = io.BytesIO()
            torch.save(part(*self.placement.range_of(rank)), buf)
            self._resume_states[rank] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


class RemoteDecodeStage:
    """A decode rank other than the driver: receive, run its pieces, send on, on a helper thread.

    If the thread fails, SIGUSR1 raises the failure in the rank's main thread (wherever it waits),
    so the job ends promptly naming this rank.
    """

    def __init__(self, rng: DecoderRange, *, rank: int, placement: DecodePlacement, p2p: P2P, recorder: Recorder,
                 plan, checkpoint_every: int, start_seq: int):
        self.rng, self.rank, self.placement, self.p2p, self.recorder = rng, rank, placement, p2p, recorder
        self.plan, self.resuming = plan, start_seq > 0
        after = plan.forwards[start_seq - 1].iteration if start_seq > 0 else -1
        finished = finished_frames_by_iteration(plan)
        self._due = [finished[it] for it in CheckpointTimes(plan, checkpoint_every).iterations(after=after)]
        self.fault = DecodeFault.from_env()
        self.error: BaseException | None = None
        self._previous_handler = None
        self._thread = threading.Thread(target=self._run, name="paravideo-decode-stage", daemon=True)

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR1, self._raise_in_main)
        self._thread.start()

    def _raise_in_main(self, signum, frame):
        self.check()

    def check(self) -> None:
        """Raise the decode thread's failure, if any (the main thread calls this)."""
        if self.error is not None:
            # The type stays in the text: a CommTimeout here is a consequence of another rank's loss.
            cause = describe_error(self.error)
            if isinstance(self.error, ParavideoError):
                cause = f"{type(self.error).__name__}: {cause}"
            raise DecodeStageFailure(f"decoding on rank {self.rank} failed: {cause}") from self.error

    def _run(self) -> None:
        rng, prev, nxt = self.rng, self.placement.prev_of(self.rank), self.placement.next_of(self.rank)
        last = nxt == WRITER_RANK
        try:
            if self.resuming:
                rng.load_state(state_from_bytes(recv_state_bytes(self.p2p, WRITER_RANK)))
            while rng.frames_in < self.plan.latent_frames:
                self._send_due_states()
                f = rng.frames_in
                x = recv_framed(self.p2p, prev, tag=Tag.DECODE, dtype=torch.float32, what=f"decoder input of "
                                f"latent frame {f}")
                if self.fault is not None:
                    self.fault.check(self.rank, f)
                with self.recorder.span(f"decode latent frame {f}", IO, pieces=f"{rng.lo}-{rng.hi}"):
                    y = rng.frame(x)
                    if last:
                        y = to_uint8_frames(y)
                self.p2p.pool.give(x)
                send_framed(self.p2p, y, nxt, tag=Tag.DECODE_FRAMES if last else Tag.DECODE,
                            kind="frames" if last else "decode")
            self._send_due_states()
            self.p2p.flush()
        except BaseException as err:  # noqa: BLE001 - raised in the main thread via SIGUSR1
            self.error = err
            if self._previous_handler is not None:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def _send_due_states(self) -> None:
        while self._due and self._due[0] == self.rng.frames_in:
            self._due.pop(0)
            send_state(self.p2p, self.rng.state(), WRITER_RANK)

    def finish(self) -> None:
        """Wait until every frame has gone through this rank; raise what the thread hit."""
        while self._thread.is_alive():
            self._thread.join(timeout=1.0)
        self.check()
        self.close()

    def close(self) -> None:
        """Put the signal handler back (safe on failure paths)."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None

"""The p2p engine: async isend/irecv into reused buffers, bounded waits, byte accounting."""

from __future__ import annotations

import datetime
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.distributed as dist

from paravideo.errors import ParavideoError
from paravideo.telemetry.recorder import IDLE, Recorder

# Sends kept in flight before the oldest is waited on: enough to overlap, bounded in memory.
MAX_SENDS_IN_FLIGHT = 4
# How gloo words a wait that failed because the peer's connection went away.
CLOSED_MARKS = ("Connection closed", "Connection reset", "pair closure", "Broken pipe")


class Tag(IntEnum):
    """Message tags: gloo matches a receive to a send by (peer, tag), so each traffic kind that can
    share a pair of ranks gets its own stream (stage-0 bands carry both K/V and finished latents)."""

    PIPELINE = 0  # hidden states and predictions (their pairs carry nothing else)
    PATCH_KV = 1
    LATENTS = 2
    STEP_CACHE = 3  # step-cache decision headers (along the pipeline) and statistics (between bands)
    STEP_CACHE_START = 4  # step cache: a computed forward's starting hidden states, first stage to last
    DECODE = 5  # decoder activations between decode ranks (io/decode_pipeline.py)
    DECODE_FRAMES = 6  # decoded uint8 frames to the writer
    DECODE_STATE = 7  # decode caches for resume checkpoints


class CommTimeout(ParavideoError):
    """A rank waited longer than launch.timeout_s for a peer."""


class PeerLost(ParavideoError):
    """A peer's connection closed while this rank waited on it (that rank ended or failed)."""


def wait_failure(err: RuntimeError, *, rank: int, waited_s: float, timeout_s: float, what: str,
                 peers: str) -> ParavideoError:
    """The error for a failed wait: a timeout only when the bound was reached, else a lost peer.

    A gloo wait also fails at once when the peer's connection closes; calling that a timeout would
    send the user looking for a hang that never happened.
    """
    detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    closed = any(mark in detail for mark in CLOSED_MARKS)
    if waited_s >= 0.9 * timeout_s and not closed:
        return CommTimeout(f"rank {rank} waited over {timeout_s:.0f} s (launch.timeout_s) for {what} with "
                           f"{peers} (one failed or hangs): {detail}")
    return PeerLost(f"rank {rank} lost the connection to {peers} after waiting {waited_s:.1f} s for {what} "
                    f"(that rank ended or failed): {detail}")


def wait_work(work, timeout: datetime.timedelta, device: torch.device) -> None:
    """`work.wait(timeout)` that leaves the main thread able to take signals (SIGTERM, Ctrl-C)."""
    wait_works([work], timeout, device)


def wait_works(works: list, timeout: datetime.timedelta, device: torch.device) -> None:
    """Wait for every work in turn, each bounded by `timeout`, interruptibly.

    A gloo wait blocks inside C++ where Python signal handlers cannot run, and a timed-out gloo
    wait closes the connection, so it cannot be cut into short waits either: the wait runs in a
    helper thread while the main thread sleeps on an Event, which signals do interrupt.
    An NCCL wait only orders streams and returns at once, so it runs inline.
    """
    if device.type == "cuda":
        for work in works:
            work.wait(timeout=timeout)
        return
    done, errors = threading.Event(), []

    def target() -> None:
        try:
            for work in works:
                work.wait(timeout=timeout)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)
        finally:
            done.set()

    threading.Thread(target=target, daemon=True, name="p2p-wait").start()
    done.wait()
    if errors:
        raise errors[0]


@dataclass
class PendingRecv:
    """A posted receive; `P2P.wait` returns its buffer once filled."""

    work: object
    buffer: torch.Tensor
    src: int
    what: str


@dataclass
class Exchange:
    """Receives and sends posted together (one K/V exchange); `P2P.complete` waits for all of them."""

    recvs: list[PendingRecv]
    sends: list[tuple[object, torch.Tensor, int]] = field(default_factory=list)
    what: str = ""


class BufferPool:
    """Receive buffers keyed by shape and dtype, handed out and returned (no per-message allocation)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self.allocated_bytes = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A buffer of that shape (reused when one was given back)."""
        free = self._free.get((tuple(shape), dtype))
        if free:
            return free.pop()
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        self.allocated_bytes += buf.numel() * buf.element_size()
        return buf

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer for reuse."""
        self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)


class P2P:
    """Point-to-point messages between ranks of one job; every wait is bounded by `timeout_s`."""

    def __init__(self, rank: int, *, device: torch.device, recorder: Recorder, timeout_s: float):
        self.rank = rank
        self.recorder = recorder
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.device = device
        self.pool = BufferPool(device)
        self._sends: deque = deque()

    def _isend(self, tensor: torch.Tensor, dst: int, kind: str, tag: Tag) -> tuple[object, torch.Tensor]:
        # Headers and state bytes are built on the CPU; NCCL sends only tensors on the rank's device.
        tensor = tensor.to(self.device).contiguous()
        self.recorder.add_bytes(kind, tensor.numel() * tensor.element_size())
        return dist.isend(tensor, dst, tag=int(tag)), tensor

    def send(self, tensor: torch.Tensor, dst: int, *, kind: str, tag: Tag = Tag.PIPELINE) -> None:
        """Start sending `tensor` to `dst`; the tensor must not be modified until flushed."""
        work, tensor = self._isend(tensor, dst, kind, tag)
        self._sends.append((work, tensor, dst, kind))
        while len(self._sends) > MAX_SENDS_IN_FLIGHT:
            self._wait_send(self._sends.popleft())

    def post_recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, *, what: str,
                  tag: Tag = Tag.PIPELINE) -> PendingRecv:
        """Post a receive from `src` into a pooled buffer."""
        return self.post_recv_into(self.pool.take(shape, dtype), src, what=what, tag=tag)

    def post_recv_into(self, buffer: torch.Tensor, src: int, *, what: str, tag: Tag = Tag.PIPELINE) -> PendingRecv:
        """Post a receive from `src` into a buffer the caller owns (a persistent one)."""
        return PendingRecv(work=dist.irecv(buffer, src, tag=int(tag)), buffer=buffer, src=src, what=what)

    def exchange(self, sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]], *,
                 kind: str, tag: Tag, what: str) -> Exchange:
        """Post receives into `recvs` (buffer, src), then start `sends` (tensor, dst); complete() waits.

        Each rank of an exchange posts its receives before its sends, so under gloo (where a send
        completes only once its receive is posted) the sends of a symmetric exchange cannot block.
        """
        posted = [self.post_recv_into(buf, src, what=f"{what} from rank {src}", tag=tag) for buf, src in recvs]
        started = [(*self._isend(tensor, dst, kind, tag), dst) for tensor, dst in sends]
        return Exchange(recvs=posted, sends=started, what=what)

    def complete(self, exchange: Exchange) -> list[torch.Tensor]:
        """Wait (as idle time) for every receive and send of `exchange`; returns the receive buffers."""
        works = [r.work for r in exchange.recvs] + [s[0] for s in exchange.sends]
        peers = sorted({r.src for r in exchange.recvs} | {s[2] for s in exchange.sends})
        with self.recorder.span(f"wait {exchange.what}", IDLE, peers=peers):
            start = time.monotonic()
            try:
                wait_works(works, self.timeout, self.device)
            except RuntimeError as err:
                raise wait_failure(err, rank=self.rank, waited_s=time.monotonic() - start,
                                   timeout_s=self.timeout.total_seconds(), what=exchange.what,
                                   peers=f"rank {peers[0]}" if len(peers) == 1 else f"ranks {peers}") from None
        exchange.sends.clear()  # the sent tensors may be reused now
        return [r.buffer for r in exchange.recvs]

    def wait(self, pending: PendingRecv) -> torch.Tensor:
        """Block (as idle time) until the receive completes; raise CommTimeout past the bound."""
        with self.recorder.span(f"wait {pending.what}", IDLE, src=pending.src):
            start = time.monotonic()
            try:
                wait_work(pending.work, self.timeout, self.device)
            except RuntimeError as err:
                raise wait_failure(err, rank=self.rank, waited_s=time.monotonic() - start,
                                   timeout_s=self.timeout.total_seconds(), what=pending.what,
                                   peers=f"rank {pending.src}") from None
        return pending.buffer

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, *, what: str) -> torch.Tensor:
        """Post and wait in one call."""
        return self.wait(self.post_recv(shape, dtype, src, what=what))

    def _wait_send(self, entry) -> None:
        work, _tensor, dst, kind = entry
        with self.recorder.span(f"send {kind}", IDLE, dst=dst):
            start = time.monotonic()
            try:
                wait_work(work, self.timeout, self.device)
            except RuntimeError as err:
                raise wait_failure(err, rank=self.rank, waited_s=time.monotonic() - start,
                                   timeout_s=self.timeout.total_seconds(), what=f"delivering {kind}",
                                   peers=f"rank {dst}") from None

    def flush(self) -> None:
        """Wait for every send in flight."""
        while self._sends:
            self._wait_send(self._sends.popleft())

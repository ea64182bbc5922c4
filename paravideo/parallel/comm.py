"""The p2p engine: async isend/irecv into reused buffers, bounded waits, byte accounting."""

from __future__ import annotations

import datetime
import threading
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from paravideo.errors import ParavideoError
from paravideo.report.recorder import IDLE, Recorder

# Sends kept in flight before the oldest is waited on: enough to overlap, bounded in memory.
MAX_SENDS_IN_FLIGHT = 4


class CommTimeout(ParavideoError):
    """A rank waited longer than launch.timeout_s for a peer."""


def wait_work(work, timeout: datetime.timedelta, device: torch.device) -> None:
    """`work.wait(timeout)` that leaves the main thread able to take signals (SIGTERM, Ctrl-C).

    A gloo wait blocks inside C++ where Python signal handlers cannot run, and a timed-out gloo
    wait closes the connection, so it cannot be cut into short waits either: the wait runs in a
    helper thread while the main thread sleeps on an Event, which signals do interrupt.
    An NCCL wait only orders streams and returns at once, so it runs inline.
    """
    if device.type == "cuda":
        work.wait(timeout=timeout)
        return
    done, errors = threading.Event(), []

    def target() -> None:
        try:
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

    def send(self, tensor: torch.Tensor, dst: int, *, kind: str) -> None:
        """Start sending `tensor` to `dst`; the tensor must not be modified until flushed."""
        tensor = tensor.contiguous()
        self._sends.append((dist.isend(tensor, dst), tensor, dst, kind))
        self.recorder.add_bytes(kind, tensor.numel() * tensor.element_size())
        while len(self._sends) > MAX_SENDS_IN_FLIGHT:
            self._wait_send(self._sends.popleft())

    def post_recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, *, what: str) -> PendingRecv:
        """Post a receive from `src` into a pooled buffer."""
        buf = self.pool.take(shape, dtype)
        return PendingRecv(work=dist.irecv(buf, src), buffer=buf, src=src, what=what)

    def wait(self, pending: PendingRecv) -> torch.Tensor:
        """Block (as idle time) until the receive completes; raise CommTimeout past the bound."""
        with self.recorder.span(f"wait {pending.what}", IDLE, src=pending.src):
            try:
                wait_work(pending.work, self.timeout, self.device)
            except RuntimeError as err:
                raise CommTimeout(f"rank {self.rank} waited over {self.timeout.total_seconds():.0f} s for "
                                  f"{pending.what} from rank {pending.src} (that rank failed or hangs): "
                                  f"{str(err).splitlines()[0][:200]}") from None
        return pending.buffer

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, *, what: str) -> torch.Tensor:
        """Post and wait in one call."""
        return self.wait(self.post_recv(shape, dtype, src, what=what))

    def _wait_send(self, entry) -> None:
        work, _tensor, dst, kind = entry
        with self.recorder.span(f"send {kind}", IDLE, dst=dst):
            try:
                wait_work(work, self.timeout, self.device)
            except RuntimeError as err:
                raise CommTimeout(f"rank {self.rank} could not deliver {kind} to rank {dst} within "
                                  f"{self.timeout.total_seconds():.0f} s: {str(err).splitlines()[0][:200]}") from None

    def flush(self) -> None:
        """Wait for every send in flight."""
        while self._sends:
            self._wait_send(self._sends.popleft())

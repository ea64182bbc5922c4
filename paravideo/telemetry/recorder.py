"""The one recorder: per-rank busy/idle time, bytes sent by kind, peak memory, and trace spans."""

from __future__ import annotations

import resource
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

BUSY, IDLE, IO = "busy", "idle", "io"


@dataclass
class Span:
    """A timed interval on one rank (seconds since the recorder's start)."""

    name: str
    kind: str
    start_s: float
    end_s: float
    args: dict = field(default_factory=dict)
    helper: bool = False  # recorded on a helper thread (decode, write): its own lane in the trace


@dataclass
class RankStats:
    """What one rank reports at the end of a run (a row of run.json's `ranks`)."""

    rank: int
    layers: list[int]
    param_bytes: int
    busy_s: float
    idle_s: float
    io_s: float  # decode_s + write_s (+ any other output work)
    decode_s: float  # VAE decode spans (this rank's decoder pieces)
    write_s: float  # frames handed to the sink (the mp4 writer rank)
    bytes_sent: int
    bytes_by_kind: dict[str, int]
    peak_memory_bytes: int
    memory_kind: str

    def to_json(self) -> dict:
        return asdict(self)


def _vm_hwm() -> int | None:
    """This address space's RSS high-water mark (Linux), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory(device: torch.device) -> tuple[int, str]:
    """CUDA max allocated on GPU; the process's RSS high-water mark on CPU.

    ru_maxrss survives exec on Linux, so a spawned rank would report its launcher's peak when that
    was larger; VmHWM belongs to the rank's own address space.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm, "rss_high_water"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "rss_high_water"


class Recorder:
    """Collects spans and counters for one rank; `stats()` summarises them."""

    def __init__(self, rank: int = 0, *, keep_spans: bool = False):
        self.rank = rank
        self.keep_spans = keep_spans
        self.t0 = time.perf_counter()
        self.totals: dict[str, float] = defaultdict(float)
        self.bytes_by_kind: dict[str, int] = defaultdict(int)
        self.spans: list[Span] = []
        self.marks: dict[str, float] = {}
        # The decode and writer threads record beside the main thread; `+=` on a dict is not atomic.
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the recorder started."""
        return time.perf_counter() - self.t0

    @contextmanager
    def span(self, name: str, kind: str = BUSY, **args):
        """Time the body as `kind` (busy, idle or io) and keep it for the trace if asked."""
        start = self.now()
        try:
            yield
        finally:
            end = self.now()
            helper = threading.current_thread() is not threading.main_thread()
            with self._lock:
                # A helper thread's waits (a decode rank waiting for the next block) overlap the rank's own
                # work; they are kept apart so `idle_s` stays the main thread's idle time.
                self.totals[f"{IDLE}:helper" if helper and kind == IDLE else kind] += end - start
                if kind == IO:
                    self.totals[f"{IO}:{name.split(' ', 1)[0]}"] += end - start
                if self.keep_spans:
                    self.spans.append(Span(name, kind, start, end, args, helper))

    def add_bytes(self, kind: str, nbytes: int) -> None:
        """Count bytes sent by this rank, by kind (hidden, prediction, text, ...)."""
        with self._lock:
            self.bytes_by_kind[kind] += int(nbytes)

    def mark(self, name: str) -> None:
        """Remember the first time an event happened (e.g. first_frame)."""
        self.marks.setdefault(name, self.now())

    def stats(self, *, layers: list[int], param_bytes: int, device: torch.device) -> RankStats:
        """The rank's summary row."""
        peak, kind = peak_memory(device)
        return RankStats(rank=self.rank, layers=layers, param_bytes=param_bytes, busy_s=self.totals[BUSY],
                         idle_s=self.totals[IDLE], io_s=self.totals[IO], decode_s=self.totals[f"{IO}:decode"],
                         write_s=self.totals[f"{IO}:write"], bytes_sent=sum(self.bytes_by_kind.values()),
                         bytes_by_kind=dict(self.bytes_by_kind), peak_memory_bytes=peak, memory_kind=kind)

"""What runs on the Ray nodes: one actor per rank, and small helpers pinned to a rank's node."""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from paravideo.config import RunConfig
from paravideo.launch.supervise import free_port, run_rank_message

# Environment variables of the driver that the ranks need too (model cache, test hooks); Ray starts
# actors from the raylet's environment, not the driver's.
FORWARDED_ENV_PREFIX = "PARAVIDEO_"


@dataclass(frozen=True)
class Placement:
    """Where a rank's actor runs."""

    node_id: str
    ip: str
    host: str
    pid: int

    @property
    def machine(self) -> tuple[str, str]:
        """Identity of the machine (two Ray nodes may share one)."""
        return self.host, self.ip


def here() -> Placement:
    """The placement of the calling process (an actor, a task or the driver)."""
    import ray

    return Placement(node_id=ray.get_runtime_context().get_node_id(), ip=ray.util.get_node_ip_address(),
                     host=socket.gethostname(), pid=os.getpid())


class RankActor:
    """Hosts one rank; `run` executes on the actor's main thread, where the worker's signal handler works."""

    def __init__(self, env: dict[str, str]):
        os.environ.update(env)
        self._failure: BaseException | None = None

    def where(self) -> Placement:
        """This actor's node, address and process id."""
        return here()

    def rendezvous_port(self, host: str) -> int:
        """A port free on `host` here, for the process group's store (asked of rank 0 only)."""
        return free_port(host)

    def prepare_output(self, out_dir: str, overwrite: bool) -> None:
        """Rank 0 on a machine other than the driver's: apply the output folder rules there too."""
        from paravideo.io.output_dir import prepare_output_dir

        prepare_output_dir(out_dir, overwrite=overwrite)

    def run(self, config: RunConfig, *, rank: int, world: int, local_rank: int, addr: str, port: int) -> tuple:
        """Run the rank through the torchrun path; returns the supervisor message (never raises)."""
        message, failure = run_rank_message(config, rank=rank, world=world, local_rank=local_rank, addr=addr,
                                            port=port)
        # A failed run's objects stay referenced (freeing them can block); the launcher kills this actor.
        self._failure = failure
        return message

    def read_outputs(self, out_dir: str, names: list[str]) -> dict[str, bytes]:
        """Bytes of the named files in `out_dir` that exist (fetching results to the driver)."""
        folder = Path(out_dir)
        return {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}


def forwarded_env() -> dict[str, str]:
    """The driver's PARAVIDEO_* variables."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}


def signal_process(pid: int, signum: int = signal.SIGTERM) -> None:
    """Send `signum` to `pid` if it still runs (asks a rank to stop; its handler finalises its output)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

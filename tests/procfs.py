"""Helpers for tests that run `paravideo generate` as a real process and inspect it through /proc:
its descendant processes (the ranks), whether they still run, and the TCP sockets they listen on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BASE_CONFIG, deep_update

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(not (PROC / "self" / "net" / "tcp").exists(), reason="needs Linux /proc")
REPO = Path(__file__).resolve().parents[1]

# A run that would go on for many seconds after its first frame (many short blocks), so it is still
# running when a test stops it; stopped runs end early, so the length costs nothing when the fix works.
LONG_RUN = {"video": {"num_frames": 2001}, "blocks": {"block_frames": 4},
            "output": {"progress": False, "save_latents": False}}
TWO_RANKS = {"parallel": {"pipeline": 2}, "launch": {"launcher": "local", "nproc": 2}}


@dataclass(frozen=True)
class Proc:
    """A process identified by pid and start time (a pid can be reused)."""

    pid: int
    start: int
    cmdline: str


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of `pid`, None if gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> list[Proc]:
    """Every process below `root` right now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            children.setdefault(info[0], []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        info = _stat(pid)
        if info is None:
            continue
        try:
            cmd = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = ""
        found.append(Proc(pid, info[2], cmd))
        todo.extend(children.get(pid, []))
    return found


def running(proc: Proc) -> bool:
    """The process still exists and is not a zombie."""
    info = _stat(proc.pid)
    return info is not None and info[2] == proc.start and info[1] not in ("Z", "X")


def kill_leftovers(procs: list[Proc]) -> None:
    """Test hygiene when a test fails: end the processes it started, by pid."""
    for proc in procs:
        if running(proc):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def ranks_of(root: int) -> list[Proc]:
    """The rank processes the local launcher in `root` spawned."""
    return [p for p in descendants(root) if "spawn_main" in p.cmdline]


def wait_until(predicate, timeout_s: float, what: str, step_s: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on (its fds joined with its netns's tables)."""
    inodes = set()
    for fd in (PROC / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = PROC / str(pid) / "net" / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback."""
    return address.startswith("127.") or address in ("::1",) or address.startswith("::ffff:127.")


def write_config(tmp_path: Path, *sections: dict) -> tuple[Path, Path]:
    """A config file from BASE_CONFIG plus `sections`; returns (config path, output folder)."""
    data = BASE_CONFIG
    for section in sections:
        data = deep_update(data, section)
    out = tmp_path / "out"
    data = deep_update(data, {"output": {"dir": str(out)}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, out


def start_generate(config: Path, tmp_path: Path, **env) -> subprocess.Popen:
    """`python -m paravideo generate -c config` in its own process, output to files under tmp_path."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    return subprocess.Popen([sys.executable, "-m", "paravideo", "generate", "-c", str(config)], cwd=tmp_path,
                            env=full_env, stdout=open(tmp_path / "stdout.txt", "w"),
                            stderr=open(tmp_path / "stderr.txt", "w"), start_new_session=True)


def stderr_of(tmp_path: Path) -> str:
    """What the process from start_generate wrote to stderr."""
    return (tmp_path / "stderr.txt").read_text(errors="replace")


def run_json(out: Path) -> dict:
    """The run's run.json."""
    return json.loads((out / "run.json").read_text())


def wait_for_frames(out: Path, timeout_s: float = 180) -> None:
    """Until the run has written its first frames (the partial mp4 exists)."""
    wait_until(lambda: (out / "video.partial.mp4").exists(), timeout_s, "the run's first frames")

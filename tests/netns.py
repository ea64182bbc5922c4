"""Several "machines" on one host for multi-node tests: each node is a set of private namespaces
(network, PID, mount, host name) with its own address from 192.0.2.0/24 (TEST-NET-1, never routed).

    hub namespace (made here):  bridge pvbr ── veth ──▶ node n1: eth0 192.0.2.1/24, host name pv-n1
                                            └─ veth ──▶ node n2: eth0 192.0.2.2/24, host name pv-n2

The hub is a network namespace of its own, so neither the bridge nor the veth pairs ever touch the
host's interfaces; `ip netns` is not used (it writes under the host's /run/netns). Every node's PID
namespace has a small reaping init as PID 1: SIGKILL to it ends every process of that node at once
(a machine lost), and teardown does the same. A node can have private folders (a tmpfs mounted in
its mount namespace only), so files a node writes there are invisible to the others, like a local
disk; the test reads them through `/proc/PID/root`. Each node sees an /etc/hosts naming every node
(bind-mounted in its mount namespace), as cluster machines resolve each other's names.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "192.0.2"  # TEST-NET-1 (RFC 5737): documentation only, nothing outside uses it
BRIDGE = "pvbr"
TOOLS = ("unshare", "nsenter", "ip", "mount")
# PID 1 of a node: reaps orphans (Ray daemonises its processes) and otherwise sleeps.
INIT = ("import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.wait()\n"
        "    except ChildProcessError:\n"
        "        time.sleep(0.5)\n")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _ns_id(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process ends, however it ends (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _start_holder(args: list[str]) -> tuple[subprocess.Popen, int]:
    """`unshare ARGS --fork INIT`; returns the unshare process and the host PID of the namespaces' init.

    unshare dies with the test process and takes the init with it (--kill-child), and with the init
    every process of the namespace: a killed test run leaves no node behind.
    """
    holder = subprocess.Popen(["unshare", *args, "--fork", "--kill-child", sys.executable, "-c", INIT],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = _children(holder.pid)
        if kids and _ns_id(kids[0], "net") != _ns_id(os.getpid(), "net"):
            return holder, kids[0]
        if holder.poll() is not None:
            raise NamespaceRefused(f"unshare {' '.join(args)} failed: {holder.stderr.read().decode().strip()}")
        time.sleep(0.01)
    holder.kill()
    raise NamespaceRefused("unshare did not start its namespace init within 10 s")


class NamespaceRefused(RuntimeError):
    """This machine does not let the test make namespaces, a bridge or veth pairs."""


@dataclass
class Node:
    """One simulated machine: `name`, its address `ip`, and the host PID of its init."""

    name: str
    ip: str
    holder: subprocess.Popen
    pid: int
    private_dirs: list[Path] = field(default_factory=list)

    @property
    def host(self) -> str:
        """Its host name (a UTS namespace of its own)."""
        return f"pv-{self.name}"

    def argv(self, argv: list[str], *, cwd: str | Path | None = None) -> list[str]:
        """`argv` run inside this node's namespaces (the command's PID namespace is the node's)."""
        return ["nsenter", "-t", str(self.pid), "--net", "--pid", "--mount", "--uts",
                f"--wd={cwd or os.getcwd()}", "--", *argv]

    def popen(self, argv: list[str], *, cwd: str | Path | None = None, **kwargs) -> subprocess.Popen:
        """Start `argv` on this node."""
        return subprocess.Popen(self.argv(argv, cwd=cwd), **kwargs)

    def run(self, argv: list[str], *, cwd: str | Path | None = None, check: bool = True,
            **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` on this node to completion (output captured as text unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        done = subprocess.run(self.argv(argv, cwd=cwd), **kwargs)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} on {self.name} failed ({done.returncode}): "
                               f"{(done.stdout or '')[-2000:]}{(done.stderr or '')[-2000:]}")
        return done

    def path(self, path: str | Path) -> Path:
        """`path` as this node sees it (its private folders included), read from the host."""
        return Path(f"/proc/{self.pid}/root") / Path(path).resolve().relative_to("/")

    def make_private(self, folder: Path) -> None:
        """Give this node its own empty `folder` (a tmpfs only its mount namespace sees)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.run(["mount", "-t", "tmpfs", "-o", "size=256m", f"pv-{self.name}", str(folder)])
        self.private_dirs.append(folder)

    def processes(self) -> list[int]:
        """Host PIDs of every live process of this node except its init."""
        mine = _ns_id(self.pid, "pid")
        if mine is None:  # init gone: the kernel has killed every process of the namespace
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.pid and _ns_id(int(entry.name), "pid") == mine:
                try:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        return found

    def commands(self) -> dict[int, str]:
        """Host PID -> command line of this node's live processes."""
        found = {}
        for pid in self.processes():
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
        return found

    def lose(self) -> None:
        """The machine is gone: every process of the node is killed at once (its network goes with it)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.holder.kill()

    @property
    def alive(self) -> bool:
        """Whether the node's init still runs."""
        return self.holder.poll() is None


def refused_reason() -> str | None:
    """Why this machine cannot run the namespace tests, or None when it can (probed by making one)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    try:
        with Cluster(1):
            return None
    except NamespaceRefused as err:
        return f"namespaces are not permitted here: {err}"


class Cluster:
    """`count` nodes on one bridge; use as a context manager (everything is torn down on exit)."""

    def __init__(self, count: int):
        self.count = count
        self.nodes: list[Node] = []
        self._hub: tuple[subprocess.Popen, int] | None = None
        self._hosts: Path | None = None

    def __enter__(self) -> Cluster:
        try:
            self._hosts = self._hosts_file()
            self._hub = _start_holder(["--net"])
            hub = self._hub[1]
            self._hub_ip(hub, ["link", "add", BRIDGE, "type", "bridge"])
            self._hub_ip(hub, ["link", "set", BRIDGE, "up"])
            for index in range(1, self.count + 1):
                self.nodes.append(self._add_node(hub, index))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _hosts_file(self) -> Path:
        fd, name = tempfile.mkstemp(prefix="pv-hosts-")
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{SUBNET}.{i} pv-n{i}" for i in range(1, self.count + 1)]
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.close(fd)
        os.chmod(name, 0o644)
        return Path(name)

    def _hub_ip(self, hub: int, args: list[str]) -> None:
        done = subprocess.run(["nsenter", "-t", str(hub), "--net", "--", "ip", *args], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise NamespaceRefused(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def _add_node(self, hub: int, index: int) -> Node:
        name = f"n{index}"
        holder, pid = _start_holder(["--net", "--pid", "--mount", "--uts", "--mount-proc"])
        node = Node(name, f"{SUBNET}.{index}", holder, pid)
        self.nodes.append(node)  # torn down with the others if the wiring fails
        # The veth pair is made in the hub and its far end moved straight into the node.
        self._hub_ip(hub, ["link", "add", f"pv{name}", "type", "veth", "peer", "name", "eth0", "netns", str(pid)])
        self._hub_ip(hub, ["link", "set", f"pv{name}", "master", BRIDGE, "up"])
        for args in (["hostname", node.host], ["mount", "--bind", str(self._hosts), "/etc/hosts"],
                     ["ip", "link", "set", "lo", "up"],
                     ["ip", "addr", "add", f"{node.ip}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
            done = subprocess.run(node.argv(args, cwd="/"), capture_output=True, text=True)
            if done.returncode != 0:
                raise NamespaceRefused(f"{' '.join(args)} in node {name}: {done.stderr.strip()}")
        self.nodes.pop()
        return node

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            node.lose()
        if self._hub is not None:
            holder, pid = self._hub
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            holder.wait(timeout=10)
        if self._hosts is not None:
            self._hosts.unlink(missing_ok=True)

"""Runs across two machines, simulated on this one: every node is a set of private namespaces with its
own address on 192.0.2.0/24 and its own local disk (tests/netns.py).

Ray: a head that runs no ranks (n1, where `ray job submit` runs the driver) and two worker nodes (n2,
n3), token authentication on, the ranks spread over the workers; the frames equal the local
launcher's, run.json names each rank's node, the video and report are fetched to the head, and every
socket a rank opens is bound to the cluster's interface. Losing a worker node mid-run ends the job with
the rank and node named and a playable partial video on rank 0's node. torchrun: one agent per node,
c10d rendezvous at n1, the same frames.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from netns import Cluster, Node, refused_reason
from procfs import listening, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Ray's own worker sockets (each actor's gRPC server, on every interface) use these ports; anything
# else a rank listens on is paravideo's (the rendezvous store and gloo, on kernel-chosen ports above).
RAY_WORKER_PORTS = (20000, 20999)
RAY_GCS_PORT, DASHBOARD = 6379, "http://127.0.0.1:8265"
TORCHRUN_PORT = 29400
# The job both launchers run, as the README shows it: a 2-stage pipeline, one stage per node.
CONFIG = "configs/two_nodes.yaml"
# Long enough to still run when the test takes a node away (a lost node ends it early).
LONG = ["video.num_frames=2001", "blocks.block_frames=4", "output.fetch_to_driver=false"]
PLACED = re.compile(r"paravideo: rank (\d+) \(local \d+\) on (\S+) (\S+) pid (\d+); rendezvous (\S+):(\d+)")


@pytest.fixture(scope="module")
def netns_ok():
    reason = refused_reason()
    if reason:
        pytest.skip(reason)


def _sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, _model_cache):
    """The same job under the local launcher on this machine: (block digests, frames)."""
    from paravideo.config import load_config
    from paravideo.generate import generate
    from paravideo.io.sink import read_video

    out = tmp_path_factory.mktemp("reference")
    config = load_config(REPO / CONFIG, ["launch.launcher=local", f"output.dir={out}"])
    report = generate(config)
    return report.block_digests, read_video(Path(report.video))


class SocketWatch:
    """Every TCP listener of the paravideo processes (drivers, agents, ranks) on `nodes`, while it runs."""

    MARKS = ("paravideo", "RankActor")

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.seen: dict[tuple[str, int], tuple[str, set]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for node in self.nodes:
                for pid, cmd in node.commands().items():
                    if any(mark in cmd for mark in self.MARKS):
                        try:
                            found = listening(pid)
                        except OSError:
                            continue
                        self.seen.setdefault((node.name, pid), (cmd, set()))[1].update(found)
            self._stop.wait(0.2)

    def listeners(self, mark: str) -> dict[tuple[str, int], set]:
        """(node, pid) -> listeners of the watched processes whose command line holds `mark`."""
        return {key: found for key, (cmd, found) in self.seen.items() if mark in cmd}


def _assert_bound_to_cluster(listeners: dict[tuple[str, int], set], nodes: dict[str, Node], *,
                             ray_ports: tuple[int, int] | None) -> None:
    """Each listener outside Ray's own port range is on its node's cluster address, none on all interfaces."""
    for (name, pid), found in listeners.items():
        ours = {(a, p) for a, p in found if ray_ports is None or not ray_ports[0] <= p <= ray_ports[1]}
        wrong = {(a, p) for a, p in ours if a.removeprefix("::ffff:") != nodes[name].ip}
        assert not wrong, f"pid {pid} on {name} listens beyond {nodes[name].ip}: {sorted(wrong)}"


# --- Ray ------------------------------------------------------------------------------------------


@dataclass
class RayCluster:
    """A Ray cluster over three namespace nodes: the head n1 (no CPUs: it runs drivers only), workers n2, n3."""

    nodes: list[Node]
    env: dict[str, str]
    disk: Path  # a private folder on every node (its local disk)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def by_name(self) -> dict[str, Node]:
        return {node.host: node for node in self.nodes} | {node.name: node for node in self.nodes}

    def submit(self, log: Path, *overrides: str) -> subprocess.Popen:
        """`ray job submit --working-dir . -- paravideo generate -c CONFIG --set ...` on the head, from the repo."""
        argv = ["ray", "job", "submit", "--address", DASHBOARD, "--working-dir", ".", "--",
                "paravideo", "generate", "-c", CONFIG, *_sets(*overrides)]
        return self.head.popen(argv, cwd=REPO, env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _ray_start(node: Node, env: dict, temp_dir: str, *args: str) -> subprocess.Popen:
    return node.popen(["ray", "start", "--node-ip-address", node.ip, "--temp-dir", temp_dir, "--disable-usage-stats",
                       "--min-worker-port", str(RAY_WORKER_PORTS[0]), "--max-worker-port", str(RAY_WORKER_PORTS[1]),
                       *args], cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _started(proc: subprocess.Popen, node: Node) -> None:
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"ray start on {node.name} failed:\n{out[-3000:]}"


@pytest.fixture(scope="module")
def ray_cluster(netns_ok, tmp_path_factory, _model_cache, reference):
    pytest.importorskip("ray")
    pytest.importorskip("ray.dashboard.modules.job")  # ray[default]: `ray job submit`
    disk = tmp_path_factory.mktemp("disk")
    # Token authentication, as any cluster reachable beyond loopback should run; every node and the
    # submitting CLI share the token.
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", PARAVIDEO_CACHE=str(_model_cache),
               OMP_NUM_THREADS="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    for name in ("RAY_ADDRESS", "PYTHONPATH"):
        env.pop(name, None)
    temp_dirs = [tempfile.mkdtemp(prefix="pv-") for _ in range(3)]  # short: unix socket paths are limited
    try:
        with Cluster(3) as cluster:
            for node in cluster.nodes:
                node.make_private(disk)
            head, *workers = cluster.nodes
            _started(_ray_start(head, env, temp_dirs[0], "--head", "--port", str(RAY_GCS_PORT), "--num-cpus", "0",
                                "--dashboard-host", "127.0.0.1"), head)
            starts = [_ray_start(w, env, t, "--address", f"{head.ip}:{RAY_GCS_PORT}", "--num-cpus", "1")
                      for w, t in zip(workers, temp_dirs[1:])]
            for proc, worker in zip(starts, workers):
                _started(proc, worker)
            yield RayCluster(cluster.nodes, env, disk)
    finally:
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _placements(log: Path) -> dict[int, tuple[str, str, str, int]]:
    """rank -> (host, ip, rendezvous address, rendezvous port), from the driver's placement lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {int(m[1]): (m[2], m[3], m[5], int(m[6])) for m in PLACED.finditer(text)}


def test_ray_two_nodes_match_local_and_fetch_home(ray_cluster, reference, tmp_path):
    from paravideo.io.sink import read_video

    out = ray_cluster.disk / "ray"
    log = tmp_path / "submit.log"
    with SocketWatch(ray_cluster.nodes) as watch:
        job = ray_cluster.submit(log, f"output.dir={out}")
        job.wait(timeout=240)
    text = log.read_text(errors="replace")
    assert job.returncode == 0, text[-4000:]

    # The ranks ran on the two worker nodes, rank 0 first, and met at rank 0's address.
    placed = _placements(log)
    nodes = ray_cluster.by_name()
    assert sorted(placed) == [0, 1] and {placed[0][0], placed[1][0]} == {"pv-n2", "pv-n3"}, text[-3000:]
    rank0 = nodes[placed[0][0]]
    assert placed[0][2] == rank0.ip and placed[1][2] == rank0.ip

    # Rank 0's node wrote the video; the driver's node (the head) got a copy; the other has nothing.
    head_out = ray_cluster.head.path(out)
    run = json.loads((head_out / "run.json").read_text())
    assert run["complete"] is True and run["video_node"] == rank0.host
    assert [(r["rank"], r["node"], r["node_ip"]) for r in run["ranks"]] == [
        (rank, host, ip) for rank, (host, ip, _, _) in sorted(placed.items())]
    assert run["block_digests"] == reference[0]
    np.testing.assert_array_equal(read_video(head_out / "video.mp4"), reference[1])
    assert (rank0.path(out) / "video.mp4").read_bytes() == (head_out / "video.mp4").read_bytes()
    other = nodes[placed[1][0]]
    assert not other.path(out).exists() or not any(other.path(out).iterdir())

    # Every socket paravideo opened listens on its node's cluster address, never on all interfaces.
    ranks = watch.listeners("RankActor")
    assert {name for name, _ in ranks} == {"n2", "n3"}, watch.seen
    _assert_bound_to_cluster(ranks, nodes, ray_ports=RAY_WORKER_PORTS)
    rendezvous = (rank0.ip, placed[0][3])
    assert any(rendezvous in found for (name, _), found in ranks.items() if name == rank0.name), ranks
    drivers = watch.listeners("paravideo generate")
    assert drivers, watch.seen
    _assert_bound_to_cluster(drivers, nodes, ray_ports=RAY_WORKER_PORTS)


def test_ray_node_lost_mid_run(ray_cluster, tmp_path):
    from paravideo.io.sink import INCOMPLETE_NAME, PARTIAL_NAME, read_video

    out = ray_cluster.disk / "lost"
    log = tmp_path / "submit.log"
    job = ray_cluster.submit(log, f"output.dir={out}", *LONG)
    try:
        placed = wait_until(lambda: len(_placements(log)) == 2 and _placements(log), 180, "the ranks' placement")
        nodes = ray_cluster.by_name()
        rank0, rank1 = nodes[placed[0][0]], nodes[placed[1][0]]
        wait_until(lambda: (rank0.path(out) / PARTIAL_NAME).exists(), 180, "the first frames")
        lost_at = time.monotonic()
        rank1.lose()
        job.wait(timeout=90)
        ended_s = time.monotonic() - lost_at
        print(f"the job ended {ended_s:.1f} s after the node was lost")
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text(errors="replace")
    assert job.returncode != 0
    # Ray notices the node is gone and the driver names the rank and its node.
    assert ended_s < 60, f"the job took {ended_s:.0f} s to end after the node was lost"
    error = re.search(r"rank 1 failed: .*", text)
    assert error and rank1.host in error[0] and rank1.ip in error[0], text[-4000:]

    # Rank 0's node finalised the partial video and recorded the cause.
    video = rank0.path(out) / INCOMPLETE_NAME
    assert read_video(video).shape[0] > 0
    run = json.loads((rank0.path(out) / "run.json").read_text())
    assert run["complete"] is False and run["error"].startswith("rank 1:") and rank1.host in run["error"]

    # Nothing of the job is left: the lost node is empty, and no rank or driver runs on the others.
    assert not rank1.alive and not rank1.processes()
    survivors = [ray_cluster.head, rank0]
    wait_until(lambda: not any(mark in cmd for n in survivors for cmd in n.commands().values()
                               for mark in SocketWatch.MARKS), 30, "the ranks and the driver to exit")


# --- torchrun -------------------------------------------------------------------------------------


def test_torchrun_two_nodes_match_local(netns_ok, reference, tmp_path, _model_cache):
    from paravideo.io.sink import read_video

    disk = tmp_path / "disk"
    out = disk / "torchrun"
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               PARAVIDEO_CACHE=str(_model_cache))
    with Cluster(2) as cluster:
        for node in cluster.nodes:
            node.make_private(disk)
        head = cluster.nodes[0]
        with SocketWatch(cluster.nodes) as watch:
            agents = [node.popen(["torchrun", "--nnodes", "2", "--node-rank", str(i), "--nproc-per-node", "1",
                                  "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{head.ip}:{TORCHRUN_PORT}",
                                  "-m", "paravideo", "generate", "-c", CONFIG, *_sets(f"output.dir={out}")],
                                 cwd=REPO, env=env, stdout=open(tmp_path / f"{node.name}.log", "w"),
                                 stderr=subprocess.STDOUT)
                      for i, node in enumerate(cluster.nodes)]
            for agent in agents:
                agent.wait(timeout=240)
        logs = {n.name: (tmp_path / f"{n.name}.log").read_text(errors="replace")[-3000:] for n in cluster.nodes}
        assert [a.returncode for a in agents] == [0, 0], logs
        # c10d assigns ranks in arrival order: rank 0 (the video) is on whichever node came first.
        writers = [n for n in cluster.nodes if (n.path(out) / "video.mp4").exists()]
        assert len(writers) == 1, logs
        run = json.loads((writers[0].path(out) / "run.json").read_text())
        assert run["complete"] is True and run["block_digests"] == reference[0]
        assert {r["node"] for r in run["ranks"]} == {"pv-n1", "pv-n2"}
        np.testing.assert_array_equal(read_video(writers[0].path(out) / "video.mp4"), reference[1])
        # The ranks' own sockets (gloo) are bound to the node's address; torchrun's agent store is torch's.
        nodes = {n.name: n for n in cluster.nodes}
        ranks = {key: found for key, found in watch.listeners("-m paravideo generate").items()
                 if "bin/torchrun" not in watch.seen[key][0]}
        assert {name for (name, _), found in ranks.items() if found} == {"n1", "n2"}, watch.seen
        _assert_bound_to_cluster(ranks, nodes, ray_ports=None)

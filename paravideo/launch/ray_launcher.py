"""The Ray launcher: one actor per rank inside a placement group, supervised fail-fast from the driver."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from paravideo.config import RunConfig
from paravideo.errors import ConfigError, RankFailure
from paravideo.io.sink import FINAL_NAME
from paravideo.launch.ray_actor import Placement, RankActor, forwarded_env, here, signal_process
from paravideo.launch.ray_session import ray_session
from paravideo.launch.stop import Interrupted, deferred_stop_signals, raise_held
from paravideo.launch.supervise import (REPORT_GRACE_S, TEARDOWN_GRACE_S, is_secondary, record_failure,
                                        record_interrupt, root_cause)
from paravideo.telemetry.run_report import RUN_JSON, RunReport

# Ray rejects bundles that ask for nothing; a rank that needs no CPU (tests) still reserves this much.
MIN_BUNDLE_CPU = 0.01
LOOPBACK = "127.0.0.1"
POLL_S = 1.0  # the driver wakes this often while ranks run, so Ctrl-C is noticed
# Called once every rank is placed, with (rank, placement) in rank order (progress displays, tests).
OnPlaced = Callable[[list[tuple[int, Placement]]], None]


def launch_ray(config: RunConfig, *, on_placed: OnPlaced | None = None) -> RunReport:
    """Run the job on Ray; if any rank fails or dies, stop the rest and raise RankFailure naming it."""
    # Ranks may start in another folder (job working dir, another node): give them absolute paths.
    config = config.model_copy(update={"output": config.output.model_copy(
        update={"dir": str(Path(config.output.dir).expanduser().resolve())})})
    try:
        with ray_session(config.launch):
            return _run(config, on_placed)
    except SystemError as err:
        # A stop signal while Ray's native code ran (placing, starting the ranks): Ray wraps the
        # handler's exception; the actors are gone by now (_run kills them on every path).
        if isinstance(err.__cause__, Interrupted):
            raise err.__cause__ from None
        raise


def _run(config: RunConfig, on_placed: OnPlaced | None) -> RunReport:
    import ray
    from ray.util.placement_group import remove_placement_group

    world = config.launch.nproc
    actor_options, bundle = _rank_resources(config)
    group = _placement_group(config, bundle)
    actors = []
    try:
        actor_class = ray.remote(RankActor)
        actors = [_actor(actor_class, group, i, actor_options) for i in range(world)]
        placements = ray.get([a.where.remote() for a in actors], timeout=config.launch.timeout_s)
        ranked = _rank_order(placements)
        by_rank = {rank: (actors[i], placements[i], local) for rank, (i, local) in enumerate(ranked)}
        driver = _driver_placement()
        return _run_ranks(config, by_rank, driver, on_placed)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(group)


def _run_ranks(config: RunConfig, by_rank: dict, driver: Placement | None, on_placed: OnPlaced | None) -> RunReport:
    import ray

    world = len(by_rank)
    actor0, where0, _ = by_rank[0]
    # The process group's store listens on rank 0's node, on the address every rank dials: loopback
    # when all ranks share rank 0's machine, else that node's address (never every interface).
    one_machine = all(where.machine == where0.machine for _, where, _ in by_rank.values())
    addr = LOOPBACK if one_machine else where0.ip
    port = ray.get(actor0.rendezvous_port.remote(addr))
    for rank, (_, where, local) in by_rank.items():
        print(f"paravideo: rank {rank} (local {local}) on {where.host} {where.ip} pid {where.pid}; "
              f"rendezvous {addr}:{port}", file=sys.stderr, flush=True)
    if on_placed is not None:
        on_placed([(rank, where) for rank, (_, where, _) in by_rank.items()])
    remote_writer = not _same_machine(where0, driver)
    if remote_writer:
        ray.get(actor0.prepare_output.remote(config.output.dir, config.output.overwrite))
    runs = {actor.run.remote(config, rank=rank, world=world, local_rank=local, addr=addr, port=port): rank
            for rank, (actor, _, local) in by_rank.items()}
    try:
        messages, silent = _supervise(runs, {r: w for r, (_, w, _) in by_rank.items()}, driver)
    except Interrupted as err:
        with deferred_stop_signals():  # _supervise asked every rank to stop and gave them the grace
            for actor, _, _ in by_rank.values():
                ray.kill(actor, no_restart=True)
            _on_machine(where0, driver, record_interrupt, config.output.dir, str(err))
        raise
    errors = [(m[1], m[2], m[3]) for m in messages if m[0] == "error"]
    if errors or silent:
        rank, cause = root_cause(errors, silent)
        # Ranks still running after the grace are ended first, so rank 0's ffmpeg finalises the mp4.
        for actor, _, _ in by_rank.values():
            ray.kill(actor, no_restart=True)
        _on_machine(where0, driver, record_failure, config.output.dir, rank, cause)
        raise RankFailure(rank, cause)
    report = RunReport(**next(m[2] for m in messages if m[1] == 0))
    if remote_writer and config.output.fetch_to_driver:
        _fetch(actor0, config.output.dir)
    return report


def _rank_resources(config: RunConfig) -> tuple[dict, dict]:
    """Actor options and the placement bundle of one rank."""
    import ray

    launch = config.launch
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    device = config.model.device
    gpus = 1 if device == "cuda" or (device == "auto" and cluster_gpus > 0) else 0
    if gpus and cluster_gpus < launch.nproc:
        raise ConfigError(f"model.device is {device!r}: each of the launch.nproc = {launch.nproc} ranks needs a "
                          f"GPU, but the Ray cluster has {cluster_gpus:g}; add GPU nodes, lower the degrees, "
                          "or set model.device: cpu")
    bundle = {k: v for k, v in {"CPU": launch.ray_cpus_per_rank, "GPU": gpus, **launch.resources}.items() if v}
    options = {"num_cpus": launch.ray_cpus_per_rank, "num_gpus": gpus, "resources": dict(launch.resources)}
    return options, bundle or {"CPU": MIN_BUNDLE_CPU}


def _placement_group(config: RunConfig, bundle: dict):
    """Reserve one bundle per rank, or raise ConfigError when the cluster cannot hold them in time."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group, remove_placement_group

    launch = config.launch
    group = placement_group([dict(bundle) for _ in range(launch.nproc)], strategy=launch.placement_strategy)
    try:
        ray.get(group.ready(), timeout=launch.timeout_s)
    except GetTimeoutError:
        remove_placement_group(group)
        raise ConfigError(
            f"the Ray cluster could not place launch.nproc = {launch.nproc} ranks of {bundle} each "
            f"({launch.placement_strategy}) within launch.timeout_s = {launch.timeout_s:g} s; it has "
            f"{ray.available_resources()} free. Lower launch.ray_cpus_per_rank / launch.resources, "
            "choose another launch.placement_strategy, or add nodes") from None
    return group


def _actor(actor_class, group, index: int, options: dict):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
    return actor_class.options(scheduling_strategy=strategy, **options).remote(forwarded_env())


def _rank_order(placements: list[Placement]) -> list[tuple[int, int]]:
    """(actor index, local rank) per rank: ranks of one node are consecutive, so pipeline neighbours
    mostly talk inside a machine; nodes come in the order of their first bundle."""
    first: dict[str, int] = {}
    for i, where in enumerate(placements):
        first.setdefault(where.node_id, i)
    order = sorted(range(len(placements)), key=lambda i: (first[placements[i].node_id], i))
    seen: dict[str, int] = {}
    ranked = []
    for i in order:
        node = placements[i].node_id
        ranked.append((i, seen.get(node, 0)))
        seen[node] = seen.get(node, 0) + 1
    return ranked


def _driver_placement() -> Placement | None:
    """Where this driver runs; None when it is not on a cluster node (Ray client)."""
    try:
        return here()
    except Exception:  # noqa: BLE001 - a client driver has no node of its own
        return None


def _same_machine(where: Placement, driver: Placement | None) -> bool:
    return driver is not None and where.machine == driver.machine


def _on_machine(where: Placement, driver: Placement | None, fn, *args, wait: bool = True) -> None:
    """Call `fn(*args)` on the machine of `where`: here when that is the driver's, else as a pinned task."""
    if _same_machine(where, driver):
        fn(*args)
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(fn).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        where.node_id, soft=False)).remote(*args)
    if wait:
        try:
            ray.get(task, timeout=TEARDOWN_GRACE_S)
        except Exception as err:  # noqa: BLE001 - the node may be gone with the rank
            print(f"paravideo: could not reach {where.host} to record the failure there: {err}",
                  file=sys.stderr, flush=True)


def _supervise(runs: dict, placements: dict[int, Placement], driver: Placement | None) -> tuple[list, dict]:
    """Wait for every rank; at the first failure ask the others to stop, and give up on them after a grace.

    When the first error is only a consequence of another rank's loss, the others get REPORT_GRACE_S
    to report the cause first. Returns the ranks' messages and, per rank that died without one, how
    it died (ranks that died before being asked to stop come first: they are the likelier cause).
    """
    import ray

    messages: list[tuple] = []
    deaths: dict[int, str] = {}
    pending = list(runs)
    failed_at = None
    try:
        # A handler raising inside Ray's native wait surfaces as a SystemError: stops are polled instead.
        with deferred_stop_signals() as stops:
            while pending and not deaths:
                raise_held(stops)
                errors = [m for m in messages if m[0] == "error"]
                if errors and failed_at is None:
                    failed_at = time.monotonic()
                if failed_at is not None and (any(not is_secondary(m[2]) for m in errors)
                                              or time.monotonic() - failed_at > REPORT_GRACE_S):
                    break
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                for ref in ready:
                    _collect(ref, runs[ref], placements[runs[ref]], messages, deaths)
    finally:
        if pending:
            with deferred_stop_signals():  # a second stop signal must not cut the teardown short
                _stop_ranks(pending, runs, placements, driver, messages, deaths)
    return messages, deaths


def _stop_ranks(pending: list, runs: dict, placements: dict[int, Placement], driver: Placement | None,
                messages: list, deaths: dict) -> None:
    """Ask the ranks still running to stop (SIGTERM: they finalise their output), collect what they say."""
    import ray

    late: dict[int, str] = {}
    for ref in pending:
        _on_machine(placements[runs[ref]], driver, signal_process, placements[runs[ref]].pid, wait=False)
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=TEARDOWN_GRACE_S)
    for ref in ready:
        _collect(ref, runs[ref], placements[runs[ref]], messages, late)
    deaths.update((r, d) for r, d in late.items() if r not in deaths)


def _collect(ref, rank: int, where: Placement, messages: list, deaths: dict) -> None:
    import ray
    from ray.exceptions import RayActorError

    try:
        messages.append(ray.get(ref))
    except RayActorError as err:
        deaths[rank] = f"the actor process (pid {where.pid} on {where.host} {where.ip}) died: {_death_detail(err)}"


def _death_detail(err: Exception) -> str:
    """Ray's one-line reason for a dead actor."""
    text = str(err)
    marker = "Worker exit detail:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Some common causes", 1)[0]
    else:
        text = text.splitlines()[-1] if text else type(err).__name__
    text = text.strip().rstrip(".") or type(err).__name__
    if "exits with a connection error" in text:  # the raylet lost the process without an exit status
        text += " (the process was killed, e.g. by SIGKILL or the OOM killer, or it crashed)"
    return text


def _fetch(actor0, out_dir: str) -> None:
    """Copy the video and run.json from rank 0's machine into the same folder on this one."""
    import ray

    files = ray.get(actor0.read_outputs.remote(out_dir, [FINAL_NAME, RUN_JSON]))
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    print(f"paravideo: fetched {', '.join(files)} from rank 0's machine into {folder}", file=sys.stderr,
          flush=True)

"""Ring attention in transport: K/V chunks travel step by step between real gloo processes.

One spawn of 3 processes serves every check: a ring of 3 over all of them and a ring of 2 over ranks
0-1 (uneven chunks both), each against plain softmax attention, with the feature cache keeping head K/V
that straddle two chunks and appending them to a later forward; what each rank attends to at once; the
bytes recorded against the cost model's count; and a wait bounded by the timeout when a peer never sends.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch

# Spawned ranks import this module: keep its imports light (no launcher, no model code).
pytestmark = pytest.mark.slow

BATCH, HEADS, DIM = 2, 2, 8
# (ring ranks, window frames, tokens per frame): 9 tokens over 2 = 5 + 4, 10 tokens over 3 = 4 + 3 + 3.
# One context frame, one kept head frame: the kept tokens [3, 6) and [5, 10) each straddle two chunks.
CASES = {"ring2": ([0, 1], 3, 3), "ring3": ([0, 1, 2], 2, 5)}
TIMEOUT_S = 1.0


def _qkv(seed: int, tokens: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, tokens, HEADS, DIM, generator=gen) for _ in range(3)]


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = torch.nn.functional.scaled_dot_product_attention(*(x.double().transpose(1, 2) for x in (q, k, v)))
    return out.transpose(1, 2)


def _case(name: str, rank: int, handle, recorder) -> dict:
    """Two forwards through the registry: block 1 keeps its head K/V, block 0 attends to them too."""
    from paravideo.cache.feature_cache import FeatureCache
    from paravideo.models.hooks import HookRegistry
    from paravideo.parallel.seq import ring
    from paravideo.parallel.seq.attention import SeqAttention
    from paravideo.parallel.seq.groups import Collectives, Group, SeqGroups
    from paravideo.parallel.seq.split import chunk_range, chunk_sizes

    ranks, frames, per_frame = CASES[name]
    tokens = frames * per_frame
    group = Group(handle, ranks, ranks.index(rank))
    comm = Collectives(rank, device=torch.device("cpu"), recorder=recorder, timeout_s=60)
    incoming: list[int] = []
    shift = comm.shift
    comm.shift = lambda tensor, out, *a, **kw: incoming.append(out.shape[2]) or shift(tensor, out, *a, **kw)
    hooks = HookRegistry()
    hooks.wrap_attention(SeqAttention(SeqGroups(seq=group, ulysses=Group(None, [rank], 0), ring=group), comm))
    hooks.add(FeatureCache.name, FeatureCache())
    seen: list[tuple] = []
    hooks.add("probe", lambda call, k, v: seen.append((call.info.block, call.tokens, k.shape[1])) or (k, v))
    lo, hi = chunk_range(tokens, len(ranks), group.index)
    errors = []
    kept = None
    for block, future in ((1, None), (0, 1)):
        q, k, v = _qkv(seed=block, tokens=tokens)
        hooks.info.block, hooks.info.window_frames, hooks.info.tokens_per_frame = block, frames, per_frame
        hooks.info.context_frames, hooks.info.future_block = 1, future
        hooks.info.keep_head_frames = 1 if future is None else 0
        out = hooks.attend(0, q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], kernel=None)
        if future is not None:
            k, v = torch.cat([k, kept[0]], 1), torch.cat([v, kept[1]], 1)
        else:
            kept = k[:, per_frame:2 * per_frame], v[:, per_frame:2 * per_frame]
        errors.append((out.double() - _reference(q, k, v)[:, lo:hi]).abs().max().item())
    # The ring step function alone, with no hooks: each chunk once, plain softmax attention.
    q, k, v = _qkv(seed=7, tokens=tokens)
    alone = ring.ring_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], chunk_sizes(tokens, len(ranks)), comm, group,
                                kv_hooks=lambda k, v, tokens=None: (k, v))
    errors.append((alone.double() - _reference(q, k, v)[:, lo:hi]).abs().max().item())
    return {"errors": errors, "seen": seen, "incoming": incoming, "bytes": recorder.bytes_by_kind[ring.KIND]}


def _rank(rank: int, port: int, queue, timed_out) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from paravideo.parallel.layout import init_distributed
    from paravideo.parallel.seq import ring
    from paravideo.parallel.seq.groups import Collectives, Group
    from paravideo.telemetry.recorder import Recorder

    init_distributed("cpu", timeout_s=60)
    handles = {name: dist.new_group(ranks) for name, (ranks, _, _) in CASES.items()}
    lone = dist.new_group([1, 2])
    out: dict = {"rank": rank}
    try:
        for name, (ranks, _, _) in CASES.items():
            if rank in ranks:
                out[name] = _case(name, rank, handles[name], Recorder(rank))
        dist.barrier()
        # Rank 2 never joins the ring of [1, 2]: rank 1's wait must end at the timeout, naming what it waited for.
        if rank == 1:
            comm = Collectives(rank, device=torch.device("cpu"), recorder=Recorder(rank), timeout_s=TIMEOUT_S)
            x = torch.zeros(BATCH, 3, HEADS, DIM)
            start = time.monotonic()
            try:
                ring.ring_attention(x, x, x, [3, 3], comm, Group(lone, [1, 2], 0),
                                    kv_hooks=lambda k, v, tokens=None: (k, v))
                out["timeout"] = ("no error", "", 0.0)
            except Exception as err:  # noqa: BLE001 - the test reads it
                out["timeout"] = (type(err).__name__, str(err), time.monotonic() - start)
            timed_out.set()
        elif rank == 2:
            timed_out.wait(30)  # alive, so rank 1 sees a silent peer rather than a closed connection
    except Exception as err:  # noqa: BLE001 - the test reads it
        out["failure"] = f"{type(err).__name__}: {err}"
    queue.put(out)
    queue.close()
    queue.join_thread()  # os._exit would drop a message the feeder thread has not written yet
    os._exit(0)  # the timed-out group cannot be torn down cleanly


@pytest.fixture(scope="module")
def ranks() -> dict[int, dict]:
    from paravideo.launch.supervise import free_port

    ctx = mp.get_context("spawn")
    queue, timed_out, port = ctx.Queue(), ctx.Event(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue, timed_out)) for r in range(3)]
    for proc in procs:
        proc.start()
    try:
        results = [queue.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    by_rank = {r["rank"]: r for r in results}
    assert not [r["failure"] for r in results if "failure" in r], by_rank
    return by_rank


@pytest.mark.parametrize("name", sorted(CASES))
def test_ring_steps_equal_softmax_attention_with_the_feature_cache(ranks, name):
    for rank in CASES[name][0]:
        errors = ranks[rank][name]["errors"]
        assert max(errors) < 1e-5, f"{name} rank {rank}: max abs error per forward {errors}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_ring_rank_never_holds_the_whole_window(ranks, name):
    members, frames, per_frame = CASES[name]
    from paravideo.parallel.seq.split import chunk_sizes

    sizes = chunk_sizes(frames * per_frame, len(members))
    for rank in members:
        result = ranks[rank][name]
        for block in (1, 0):
            seen = [(tokens, n) for b, tokens, n in result["seen"] if b == block]
            # Every window token reached the hooks once, a chunk at a time ...
            assert sorted(tokens for tokens, _ in seen) == [(sum(sizes[:j]), sum(sizes[:j + 1]))
                                                           for j in range(len(sizes))]
            # ... and the largest K/V attended at once is one chunk (plus the cached frame on the last).
            cached = per_frame if block == 0 else 0
            assert max(n for _, n in seen) <= max(sizes) + cached < frames * per_frame + cached
        # What arrives per step is one chunk at its own size (no padding): with the one being sent, two at most.
        assert max(result["incoming"]) <= max(sizes) and len(result["incoming"]) == 3 * (len(members) - 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ring_bytes_match_the_cost_models_count(ranks, name):
    members, frames, per_frame = CASES[name]
    from paravideo.parallel.seq.split import chunk_sizes

    sizes = chunk_sizes(frames * per_frame, len(members))
    for index, rank in enumerate(members):
        # The traffic model's ring term: every chunk but the next member's, K and V, three forwards.
        passed = sum(sizes) - sizes[(index + 1) % len(sizes)]
        assert ranks[rank][name]["bytes"] == 3 * 2 * BATCH * passed * HEADS * DIM * 4


def test_a_silent_ring_peer_ends_the_wait_at_the_timeout(ranks):
    kind, message, waited = ranks[1]["timeout"]
    assert kind == "CommTimeout", message
    assert "launch.timeout_s" in message and "ring K/V step 1 of 1" in message and "[1, 2]" in message, message
    assert waited < TIMEOUT_S + 5

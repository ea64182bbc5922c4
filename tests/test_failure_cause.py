"""The first failure's own message reaches the user and run.json, and a rank that lost its peer says so
(rather than claiming a timeout that never happened)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import pytest

from paravideo.errors import RankFailure
from paravideo.generate import generate
from paravideo.launch.supervise import free_port

pytestmark = pytest.mark.slow


def test_rank0_load_error_reaches_the_user_and_run_json(make_config, tiny_root, tmp_path):
    model = tmp_path / "tiny"
    shutil.copytree(tiny_root, model)
    vae = model / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:1000])  # truncated: the header claims more than is there
    config = make_config(model={"path": str(model)}, parallel={"pipeline": 2},
                         launch={"launcher": "local", "nproc": 2, "timeout_s": 60})
    with pytest.raises(RankFailure) as info:
        generate(config)
    # The loader's own words, down to what is wrong with the file, not a rank killed by the teardown.
    assert info.value.rank == 0
    assert "Unable to load weights" in str(info.value) and "header" in str(info.value), str(info.value)
    assert "killed by signal" not in str(info.value)
    error = json.loads((Path(config.output.dir) / "run.json").read_text())["error"]
    assert error.startswith("rank 0:") and "Unable to load weights" in error and "header" in error, error


def _peer(rank: int, port: int, conn) -> None:
    """Rank 1 joins, then dies without a word; rank 0 waits for a tensor from it and reports how that ended."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    from paravideo.parallel.comm import P2P
    from paravideo.parallel.layout import init_distributed
    from paravideo.telemetry.recorder import Recorder

    ctx = init_distributed("cpu", timeout_s=300)
    dist.barrier()
    if rank == 1:
        os._exit(0)  # like a SIGKILL: no goodbye on the connection
    p2p = P2P(0, device=torch.device("cpu"), recorder=Recorder(0, keep_spans=False), timeout_s=300)
    try:
        p2p.recv((4,), torch.float32, 1, what="hidden states")
        conn.send(("no error", ""))
    except Exception as err:  # noqa: BLE001 - the test reads it
        conn.send((type(err).__name__, str(err)))
    conn.close()
    os._exit(0)  # leave the broken group without a teardown
    del ctx


def test_lost_peer_is_not_reported_as_a_timeout():
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    port = free_port()
    procs = [ctx.Process(target=_peer, args=(rank, port, writer)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    writer.close()
    try:
        assert reader.poll(120), "rank 0 never reported"
        kind, message = reader.recv()
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert kind == "PeerLost", message
    assert "lost the connection to rank 1" in message and "waited over" not in message, message

"""CFG and sequence parallelism composed with resume checkpoints and the decode pipeline: the one-rank frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import BASE_CONFIG, deep_update
from paravideo.cli import main
from paravideo.config import parse_config
from paravideo.errors import RankFailure
from paravideo.generate import generate
from paravideo.io.checkpoint import load_checkpoint
from test_resume import RUN, _check_equal

# 5 blocks x 3 steps, checkpoints after iterations 1 and 3 (forwards 2 and 8). The driver fails before forward
# 12, so the checkpoint after forward 8 is always written first (a fault on another rank would race with it).
FAULT = "0:12"
# Each resumed run starts the first-stage replicas (the unconditional group, the second token chunk) from
# rank 0's checkpoint, under another split than the one that wrote it.
STOPPED = {
    "ulysses2_decode": {"ulysses": 2, "decode": "pipeline"},
    "one": {},
}


def _config(out: Path, parallel: dict):
    nproc = 1
    for key in ("cfg", "ulysses", "ring", "pipeline"):
        nproc *= parallel.get(key, 1)
    launch = {"launcher": "local", "nproc": nproc, "timeout_s": 60} if nproc > 1 else {"launcher": "inline"}
    return parse_config(deep_update(BASE_CONFIG, {**RUN, "parallel": parallel, "launch": launch,
                                                  "output": {**RUN["output"], "dir": str(out)}}))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted one-rank run every resumed run must equal."""
    config = _config(tmp_path_factory.mktemp("one") / "run", {})
    return config, generate(config)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """Runs each named layout until the driver fails (once per module); returns its output folder."""
    done: dict[str, Path] = {}

    def go(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name) / "run"
            config = _config(out, STOPPED[name])
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("PARAVIDEO_FAULT", FAULT)
                with pytest.raises((RankFailure, RuntimeError), match="injected failure"):
                    generate(config)
            state = load_checkpoint(out)
            assert state["iteration"] == 3 and state["driver"]["applied"] == 8
            done[name] = out
        return done[name]

    return go


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _resume(out: Path, **parallel) -> int:
    """`paravideo generate --resume OUT` with the parallel degrees (and a launch to match) set anew."""
    nproc = 1
    for value in parallel.values():
        nproc *= value if isinstance(value, int) else 1
    sets = [f"parallel.{key}={value}" for key, value in parallel.items()]
    sets += ["launch.launcher=local" if nproc > 1 else "launch.launcher=inline", f"launch.nproc={nproc}"]
    return main(["generate", "--resume", str(out)] + [arg for s in sets for arg in ("--set", s)])


@pytest.mark.slow
def test_a_ulysses2_run_resumes_as_cfg2_with_the_decode_pipeline(stopped, reference, tmp_path):
    # The checkpoint holds rank 1's decoder caches (decode pipeline under Ulysses) and one queue; the resumed
    # run gives the unconditional group its replica and rank 1 its decoder caches back.
    out = _copy(stopped("ulysses2_decode"), tmp_path / "run")
    assert _resume(out, ulysses=1, cfg=2) == 0
    _check_equal(out, reference)  # every frame: 13 decoded under Ulysses 2, the rest under CFG 2, both on 2 ranks
    data = json.loads((out / "run.json").read_text())
    assert data["parallel"]["decode"]["ranks"] == [0, 1] and data["world_size"] == 2


@pytest.mark.slow
def test_a_one_rank_checkpoint_resumes_as_ulysses2(stopped, reference, tmp_path):
    out = _copy(stopped("one"), tmp_path / "run")
    assert _resume(out, ulysses=2) == 0
    _check_equal(out, reference)


def test_resume_refuses_another_ring_split(stopped, tmp_path, capsys):
    out = _copy(stopped("one"), tmp_path / "run")
    before = sorted(p.name for p in out.iterdir())
    assert _resume(out, ring=2) == 2
    err = capsys.readouterr().err
    assert "parallel.ring x parallel.ulysses: 1 x 1 in the checkpoint, 2 x 1 now" in err
    assert "resume with parallel.ring: 1 and parallel.ulysses: 1" in err
    assert sorted(p.name for p in out.iterdir()) == before  # refused before loading; nothing deleted

"""Layer pipeline over CPU processes (gloo): the same video for any rank count, weights 1/N, fail-fast."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from paravideo.errors import RankFailure
from paravideo.generate import generate
from paravideo.io.sink import read_video

pytestmark = pytest.mark.slow

BLOCK_RUN = {"video": {"num_frames": 25}, "blocks": {"block_frames": 2, "context_frames": 1, "feature_cache": True},
             "sampling": {"steps": 3}, "output": {"save_latents": True, "frames_png": True}}


def _ranked(make_config, ranks, **extra):
    launch = {"launcher": "local", "nproc": ranks} if ranks > 1 else {"launcher": "inline"}
    sections = {**BLOCK_RUN, "parallel": {"pipeline": ranks}, "launch": launch}
    sections.update(extra)
    return make_config(**sections)


def _pngs(out_dir):
    import imageio.v3 as iio

    return np.stack([iio.imread(p) for p in sorted(Path(out_dir, "frames").glob("*.png"))])


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    from paravideo.config import parse_config
    from conftest import BASE_CONFIG, deep_update

    data = deep_update(BASE_CONFIG, {**BLOCK_RUN, "output": {**BLOCK_RUN["output"],
                                                             "dir": str(tmp_path_factory.mktemp("one") / "run")}})
    config = parse_config(data)
    return config, generate(config)


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_bit_identical_latents_and_frames(make_config, one_rank, ranks):
    ref_config, ref = one_rank
    config = _ranked(make_config, ranks)
    report = generate(config)
    assert report.complete and report.world_size == ranks
    assert report.block_digests == ref.block_digests
    ours = torch.load(Path(config.output.dir) / "latents.pt", weights_only=True)
    theirs = torch.load(Path(ref_config.output.dir) / "latents.pt", weights_only=True)
    assert torch.equal(ours, theirs)
    assert np.array_equal(_pngs(config.output.dir), _pngs(ref_config.output.dir))
    # Every rank did its share: stages cover the layers, traffic went both ways.
    assert [r["layers"] for r in report.ranks] == report.parallel["stage_layers"]
    assert report.ranks[0]["bytes_by_kind"]["hidden"] > 0
    assert report.ranks[-1]["bytes_by_kind"]["prediction"] > 0


def test_each_rank_holds_its_layers_share(make_config, tiny_root):
    from diffusers import WanTransformer3DModel

    report = generate(_ranked(make_config, 2, output={"save_latents": False}))
    full = WanTransformer3DModel.from_pretrained(tiny_root / "transformer")
    sizes = {n: p.numel() * p.element_size() for n, p in full.named_parameters()}
    shared = sum(b for n, b in sizes.items() if not n.startswith("blocks."))
    for row in report.ranks:
        lo, hi = row["layers"]
        layers = sum(b for n, b in sizes.items() if n.startswith("blocks.") and lo <= int(n.split(".")[1]) < hi)
        assert row["param_bytes"] == layers + shared
    total_layers = sum(b for n, b in sizes.items() if n.startswith("blocks."))
    assert sum(r["param_bytes"] for r in report.ranks) == total_layers + 2 * shared


def test_failure_in_rank_1_ends_every_rank_and_names_it(make_config, monkeypatch):
    monkeypatch.setenv("PARAVIDEO_FAULT", "1:7")
    config = _ranked(make_config, 3, launch={"launcher": "local", "nproc": 3, "timeout_s": 30})
    with pytest.raises(RankFailure) as info:
        generate(config)
    # Bounded: the other ranks were stopped within the launcher's grace period, not left to time out.
    assert info.value.teardown_s is not None and info.value.teardown_s < 15
    assert info.value.rank == 1 and "injected failure" in str(info.value)
    out = Path(config.output.dir)
    data = json.loads((out / "run.json").read_text())
    assert data["complete"] is False and data["error"].startswith("rank 1:")
    assert not (out / "video.mp4").exists()
    if (out / "video.incomplete.mp4").exists():
        read_video(out / "video.incomplete.mp4")  # finalised: decodes


def test_torchrun_gives_the_same_video_as_the_local_launcher(make_config, tmp_path, one_rank):
    _, ref = one_rank
    config = _ranked(make_config, 2)
    data = config.resolved()
    data["launch"]["launcher"] = "torchrun"
    path = tmp_path / "torchrun.yaml"
    path.write_text(yaml.safe_dump(data))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "-m", "paravideo", "generate", "-c", str(path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((Path(config.output.dir) / "run.json").read_text())
    assert report["complete"] and report["world_size"] == 2
    assert report["block_digests"] == ref.block_digests

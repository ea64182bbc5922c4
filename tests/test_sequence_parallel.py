"""Sequence parallelism (Ulysses, ring) and CFG parallelism as mesh axes: each equals one rank (gloo, CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import BASE_CONFIG, deep_update
from paravideo.config import parse_config
from paravideo.errors import ConfigError
from paravideo.parallel.layout import ParallelLayout

# 48 x 48 px: 3 x 3 tokens per frame, so windows of 3 latent frames (27 tokens) split unevenly (14 + 13);
# blocks of 2 latent frames with 1 context frame and the feature cache: future K/V are appended too.
RUN = {"video": {"num_frames": 17, "height": 48, "width": 48},
       "blocks": {"block_frames": 2, "context_frames": 1, "feature_cache": True},
       "sampling": {"steps": 2}, "output": {"save_latents": True}}
# Two experts: the high-noise one takes step 0, the low-noise one (with its own guidance scale) step 1.
A14B = {**RUN, "model": {"path": "builtin:tiny-a14b"}, "sampling": {"steps": 2, "guidance_scale_2": 2.5}}
RUNS = {
    "one": (RUN, {}),
    "ulysses2": (RUN, {"ulysses": 2}),
    "ring2": (RUN, {"ring": 2}),
    "cfg2": (RUN, {"cfg": 2}),
    "pipe2_ulysses2": (RUN, {"pipeline": 2, "ulysses": 2}),
    "a14b_one": (A14B, {}),
    "a14b_pipe2_cfg2": (A14B, {"pipeline": 2, "cfg": 2}),
}
# Ring attention merges per-chunk softmax sums through their log-sum-exp: float32 rounding, not bit-exact.
RING_TOLERANCE = 1e-5


# ---- layout and token chunks (pure) ----

def test_layout_numbers_ranks_cfg_pipeline_then_sequence():
    layout = ParallelLayout(pipeline=2, cfg=2, ulysses=2, ring=2)
    assert layout.world_size == 16 and layout.seq == 4
    rank = layout.rank_of(1, cfg=1, seq=3)
    assert rank == 15 and (layout.cfg_of(rank), layout.stage_of(rank), layout.seq_of(rank)) == (1, 1, 3)
    assert layout.seq_ranks(5) == [4, 5, 6, 7]
    assert layout.ulysses_ranks(6) == [6, 7] and layout.ring_ranks(6) == [4, 6]
    # Without the new axes the numbering is the old stage x patch one.
    assert ParallelLayout(pipeline=2, patch=3).rank_of(1, 2) == 5
    with pytest.raises(ConfigError, match=r"parallel.cfg x parallel.pipeline x parallel.ulysses = 2 x 2 x 2 = 8"):
        ParallelLayout(pipeline=2, cfg=2, ulysses=2).check_world(4)


def test_uneven_chunks_and_online_softmax_merge():
    from paravideo.parallel.seq.ring import OnlineSoftmax
    from paravideo.parallel.seq.split import chunk_range, chunk_sizes

    assert chunk_sizes(27, 2) == [14, 13] and chunk_sizes(12, 4) == [3, 3, 3, 3]
    assert chunk_range(27, 4, 3) == (21, 27)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 2, 16, generator=gen) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                           v.transpose(1, 2)).transpose(1, 2)
    acc = OnlineSoftmax(q)
    for lo, hi in [(5, 9), (0, 5), (9, 9)]:  # ring order, an empty piece too
        acc.add(k[:, lo:hi], v[:, lo:hi])
    assert (acc.result() - ref).abs().max() < 1e-6


# ---- validation (before any worker starts) ----

def _preflight(**sections):
    from paravideo.generate import preflight

    data = deep_update(BASE_CONFIG, sections)
    return preflight(parse_config(data))


@pytest.mark.parametrize("sections, field, hint", [
    ({"parallel": {"ulysses": 4}}, "parallel.ulysses", "divide the model's 2 attention heads"),
    ({"parallel": {"cfg": 2}, "sampling": {"guidance_scale": 1.0}}, "parallel.cfg", "guidance_scale > 1"),
    ({"parallel": {"cfg": 3}}, "parallel.cfg", "less than or equal to 2"),
    ({"parallel": {"ring": 0}}, "parallel.ring", "greater than or equal to 1"),
    ({"parallel": {"ring": 64}, "video": {"num_frames": 1}}, "parallel.ulysses x parallel.ring", "holds 6 tokens"),
    ({"parallel": {"ulysses": 2, "patch": 2}}, "parallel.patch", "cannot be combined"),
])
def test_bad_degrees_name_the_field(sections, field, hint):
    nproc = 1
    for value in sections["parallel"].values():
        nproc *= max(value, 1)
    with pytest.raises(ConfigError) as info:
        _preflight(**sections, launch={"launcher": "local", "nproc": max(nproc, 1)})
    assert field in str(info.value) and hint in str(info.value)


def test_xfuser_on_cpu_is_refused_without_importing_it(monkeypatch):
    class NoXfuser:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("xfuser", "yunchang"):
                raise AssertionError(f"{name} was imported")
            return None

    monkeypatch.setattr(sys, "meta_path", [NoXfuser()] + sys.meta_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"parallel.sp_backend 'xfuser' needs a CUDA device.*torch or auto"):
        _preflight(parallel={"ulysses": 2, "sp_backend": "xfuser"}, launch={"launcher": "local", "nproc": 2})
    with pytest.raises(ConfigError, match=r"parallel.sp_backend 'xfuser' needs CUDA.*model.device is 'cpu'"):
        parse_config(deep_update(BASE_CONFIG, {"parallel": {"ring": 2, "sp_backend": "xfuser"},
                                               "model": {"device": "cpu"}}))
    from paravideo.parallel.seq.backend import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert not any(name.split(".")[0] in ("xfuser", "yunchang") for name in sys.modules)


# ---- multi-process runs ----

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs each named config once per module; returns (report, clean latents)."""
    from paravideo.generate import generate

    done: dict[str, tuple] = {}

    def go(name: str):
        if name not in done:
            sections, parallel = RUNS[name]
            nproc = 1
            for value in parallel.values():
                nproc *= value
            launch = {"launcher": "local", "nproc": nproc} if nproc > 1 else {"launcher": "inline"}
            out = tmp_path_factory.mktemp(name) / "run"
            data = deep_update(BASE_CONFIG, {**sections, "parallel": parallel, "launch": launch})
            config = parse_config(deep_update(data, {"output": {"dir": str(out)}}))
            report = generate(config)
            assert report.complete and report.world_size == nproc
            done[name] = report, torch.load(Path(out) / "latents.pt", weights_only=True), config
        return done[name]

    return go


def _bytes(report, kind: str) -> list[int]:
    return [r["bytes_by_kind"].get(kind, 0) for r in report.ranks]


@pytest.mark.slow
@pytest.mark.parametrize("name, ref", [("ulysses2", "one"), ("cfg2", "one"), ("pipe2_ulysses2", "one"),
                                       ("a14b_pipe2_cfg2", "a14b_one")])
def test_exact_axes_are_bit_identical_to_one_rank(run, name, ref):
    (report, latents, _), (ref_report, ref_latents, _) = run(name), run(ref)
    assert torch.equal(latents, ref_latents) and report.block_digests == ref_report.block_digests
    parallel = RUNS[name][1]
    if "ulysses" in parallel:
        assert all(b > 0 for b in _bytes(report, "ulysses_a2a"))
    if "cfg" in parallel:  # each unconditional last stage sent its predictions to its conditional peer
        sent = _bytes(report, "cfg_uncond")
        assert sum(b > 0 for b in sent) == report.world_size // (2 * parallel.get("pipeline", 1))


@pytest.mark.slow
def test_ring_is_within_its_stated_tolerance(run):
    (report, latents, _), (_, ref_latents, _) = run("ring2"), run("one")
    err = (latents - ref_latents).abs().max().item()
    assert err <= RING_TOLERANCE, f"ring 2: max abs latent error {err:.3g} against one rank"
    assert all(b > 0 for b in _bytes(report, "ring_kv"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ulysses2", "ring2", "cfg2", "pipe2_ulysses2", "a14b_pipe2_cfg2"])
def test_cost_model_traffic_equals_the_recorders_bytes(run, name):
    from paravideo.costmodel.scenario import Scenario
    from paravideo.costmodel.traffic import traffic_by_rank

    report, _, config = run(name)
    measured = {r["rank"]: {k: v for k, v in r["bytes_by_kind"].items() if v} for r in report.ranks}
    assert traffic_by_rank(Scenario.from_config(config).traffic) == measured

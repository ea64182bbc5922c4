"""paravideo bench: a sweep of real runs becomes report.md, report.json and PNG plots."""

from __future__ import annotations

import json

import pytest
import yaml

from paravideo.errors import ConfigError

BASE = {"model": {"path": "builtin:tiny"},
        "video": {"prompt": "a red fox", "negative_prompt": "blurry", "num_frames": 17, "height": 32, "width": 48},
        "sampling": {"steps": 2, "guidance_scale": 4.0, "scheduler": "unipc"},
        "blocks": {"block_frames": 2, "context_frames": 1}}
MEASURED_FIELDS = {"wall_s", "time_to_first_frame_s", "fps", "speedup", "bytes_sent", "ranks"}
RANK_FIELDS = {"peak_memory_bytes", "param_bytes", "idle_fraction", "bytes_sent", "bytes_by_kind"}
PREDICTED_FIELDS = MEASURED_FIELDS | {"bubble", "startup_s", "loop_s", "dit_flops", "max_peak_memory_bytes"}


def _sweep(tmp_path, **changes) -> str:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep = {"name": "test sweep", "base": "base.yaml", "axes": {"ranks": [1, 2], "frames": [17],
                                                                 "plans": [{"name": "b2c1"}]},
             "profile": "cpu-local", "output_dir": str(tmp_path / "report"), **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_two_point_sweep_writes_every_report_file(tmp_path, tiny_root):
    from matplotlib.image import imread

    from paravideo.cli import main

    assert main(["bench", "-c", _sweep(tmp_path)]) == 0
    out = tmp_path / "report"
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["points"]] == ["b2c1-f17-r1", "b2c1-f17-r2"]
    for point in report["points"]:
        assert point["error"] is None
        assert MEASURED_FIELDS <= set(point["measured"]) and PREDICTED_FIELDS <= set(point["predicted"])
        for side in ("measured", "predicted"):
            assert len(point[side]["ranks"]) == point["ranks"]
            for rank in point[side]["ranks"]:
                assert RANK_FIELDS <= set(rank)
        errors = point["error_vs_measured"]
        assert errors["traffic_exact"] and errors["weights_exact"]
        assert isinstance(errors["wall_s"], float) and isinstance(errors["time_to_first_frame_s"], float)
    assert report["points"][0]["measured"]["speedup"] == 1.0
    assert report["points"][1]["measured"]["bytes_sent"] > 0
    assert {"points", "wall_abs_error_mean", "traffic_exact_all"} <= set(report["summary"])
    assert report["profile"]["name"] == "cpu-local" and report["sweep"]["axes"]["ranks"] == [1, 2]
    pngs = ["latency_vs_frames.png", "memory_vs_frames.png", "speedup_vs_ranks.png", "timeline.png"]
    assert sorted(report["plots"].values()) == sorted(pngs)
    for name in pngs:
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    text = (out / "report.md").read_text()
    for heading in ("## Measured", "## Memory per rank", "## Predicted against measured"):
        assert heading in text
    for name in pngs:
        assert f"]({name})" in text
    for point in report["points"]:
        assert (tmp_path / "report" / "runs" / point["name"] / "trace.json").exists()


def test_sweep_file_is_strict(tmp_path):
    from paravideo.bench.sweep import load_sweep

    with pytest.raises(ConfigError, match="axes.framez"):
        load_sweep(_sweep(tmp_path, axes={"ranks": [1], "frames": [17], "framez": [1]}))
    with pytest.raises(ConfigError, match="plan names"):
        load_sweep(_sweep(tmp_path, axes={"frames": [17], "plans": [{"name": "a b"}]}))
    with pytest.raises(ConfigError, match="distinct positive"):
        load_sweep(_sweep(tmp_path, axes={"ranks": [0, 1], "frames": [17]}))


def test_every_point_is_validated_before_anything_runs(tmp_path):
    from paravideo.bench.sweep import load_sweep, sweep_points

    sweep, base = load_sweep(_sweep(tmp_path, axes={"ranks": [1, 2], "frames": [17, 18]}))
    with pytest.raises(ConfigError, match="(?s)sweep point base-f18-r1.*4k\\+1"):
        sweep_points(sweep, base, tmp_path / "out")
    sweep, base = load_sweep(_sweep(tmp_path, axes={"ranks": [2], "frames": [33], "plans": [
        {"name": "big", "set": {"blocks.block_frames": 4, "sampling.steps": 3}}]}))
    (point,) = sweep_points(sweep, base, tmp_path / "out")
    cfg = point.config
    assert (cfg.blocks.block_frames, cfg.sampling.steps, cfg.parallel.pipeline, cfg.launch.nproc) == (4, 3, 2, 2)
    assert cfg.launch.launcher == "local" and cfg.output.trace and cfg.video.num_frames == 33


def _report_peak(queue) -> None:
    import torch

    from paravideo.telemetry.recorder import peak_memory

    queue.put(peak_memory(torch.device("cpu"))[0])


def test_a_spawned_rank_reports_its_own_peak_memory():
    import multiprocessing as mp

    import torch

    # ru_maxrss survives exec on Linux: a rank spawned by a big parent would report the parent's peak.
    ballast = torch.ones(200_000_000)  # 800 MB touched in this process
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_report_peak, args=(queue,))
    proc.start()
    child_peak = queue.get(timeout=120)
    proc.join()
    assert child_peak < ballast.numel() * ballast.element_size()

"""Streaming output: block-wise decode equals one-shot decode; the mp4 is written as blocks finish."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from paravideo.errors import ConfigError
from paravideo.generate import generate
from paravideo.io.sink import read_video
from paravideo.io.vae_stream import StreamingDecoder, to_uint8_frames
from paravideo.models.wan.loading import load_vae

BLOCKS = {"block_frames": 2, "context_frames": 1}


def _one_shot_frames(vae, latents):
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
    with torch.no_grad():
        return to_uint8_frames(vae.decode(latents / inv_std + mean, return_dict=False)[0])


def test_streaming_decoder_equals_one_shot(tiny_root):
    vae = load_vae(tiny_root, device=torch.device("cpu"))
    latents = torch.randn(1, 16, 7, 4, 6, generator=torch.Generator().manual_seed(0))
    decoder = StreamingDecoder(vae)
    streamed = torch.cat([to_uint8_frames(decoder.decode(latents[:, :, a:b])) for a, b in [(0, 1), (1, 4), (4, 7)]])
    assert torch.equal(streamed, _one_shot_frames(vae, latents))


@pytest.mark.parametrize("background", [True, False])
def test_streamed_frames_equal_one_shot_decode_of_the_run(make_config, tiny_root, background):
    config = make_config(video={"num_frames": 29}, blocks=BLOCKS,
                         output={"save_latents": True, "frames_png": True, "background_decode": background})
    report = generate(config)
    latents = torch.load(f"{config.output.dir}/latents.pt", weights_only=True)
    expected = _one_shot_frames(load_vae(tiny_root, device=torch.device("cpu")), latents).numpy()
    pngs = sorted((Path(config.output.dir) / "frames").glob("*.png"))
    written = np.stack([iio.imread(p) for p in pngs])
    assert written.shape == expected.shape == (29, config.video.height, config.video.width, 3)
    assert np.array_equal(written, expected)
    # The mp4 is lossy (x264) but holds every frame and stays close to the lossless frames.
    video = read_video(report.video)
    assert video.shape == expected.shape
    assert np.abs(video.astype(int) - expected.astype(int)).mean() < 8


def test_odd_length_and_report_fields(make_config):
    config = make_config(video={"num_frames": 29}, blocks={"block_frames": 3, "context_frames": 1})
    report = generate(config)
    data = json.loads((Path(config.output.dir) / "run.json").read_text())
    assert data["complete"] is True and data["frames"] == 29 and data["latent_frames"] == 8
    assert data["blocks"] == 3 and data["plan"]["block_frames"] == [3, 3, 2]
    for key in ("steps", "wall_s", "world_size", "config", "time_to_first_frame_s", "ranks", "block_digests"):
        assert key in data, key
    assert 0 < data["time_to_first_frame_s"] <= data["wall_s"]
    assert data["config"]["video"]["num_frames"] == 29
    assert read_video(report.video).shape[0] == 29


def test_prompt_schedule_encodes_each_prompt_once(make_config, monkeypatch):
    from paravideo.models.text import TextEncoder
    from paravideo.runtime.prompts import block_prompts
    from paravideo.generate import preflight
    from paravideo.runtime.rank_model import build_plan

    calls = []
    real = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, prompts: calls.append(list(prompts)) or real(self, prompts))
    prompts = [{"from_frame": 0, "text": "a calm lake"}, {"from_frame": 12, "text": "a storm over the lake"}]
    config = make_config(video={"prompt": None, "prompts": prompts, "num_frames": 29}, blocks=BLOCKS)
    texts, per_block = block_prompts(config, build_plan(config, preflight(config)), 4)
    # Blocks start at latent frames 0,2,4,6 -> output frames 0,5,13,21.
    assert texts == ["a calm lake", "a storm over the lake"] and per_block == [0, 0, 1, 1]
    report = generate(config)
    assert report.complete
    assert calls == [["a calm lake", "a storm over the lake", "blurry"]]


def test_existing_run_is_not_overwritten(make_config):
    config = make_config()
    generate(config)
    with pytest.raises(ConfigError, match="already holds a run"):
        generate(config)


def test_failed_run_leaves_a_playable_incomplete_video(make_config, monkeypatch):
    config = make_config(video={"num_frames": 29}, blocks=BLOCKS, sampling={"steps": 3})
    # Blocks finish at forwards 5, 8, 11: fail after two blocks were written.
    monkeypatch.setenv("PARAVIDEO_FAULT", "0:10")
    with pytest.raises(RuntimeError, match="injected failure"):
        generate(config)
    out = Path(config.output.dir)
    assert not (out / "video.mp4").exists() and not (out / "video.partial.mp4").exists()
    frames = read_video(out / "video.incomplete.mp4")
    assert frames.shape[0] == 1 + 4 * 3  # blocks 0 and 1: latent frames 0..3
    data = json.loads((out / "run.json").read_text())
    assert data["complete"] is False and "injected failure" in data["error"] and data["frames"] == 13

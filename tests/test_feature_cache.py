"""Feature cache: the K/V block k reads equal a recomputation of block k+1's head at that point."""

import pytest
import torch

from paravideo.cache.feature_cache import FeatureCache
from paravideo.runtime.driver import BlockDriver
from paravideo.generate import generate
from paravideo.models.text import TextEncoder
from paravideo.models.wan.adapter import WanStage
from paravideo.models.wan.loading import load_text_encoder, load_transformer_stage, read_scheduler_config
from paravideo.schedule.sampler import SchedulerBank, make_scheduler

BLOCKS = {"block_frames": 2, "context_frames": 1, "feature_cache": True}


def _spy(monkeypatch):
    windows, used = {}, []
    real_window, real_call = BlockDriver.window, FeatureCache.__call__

    def window(self, fwd):
        latents = real_window(self, fwd)
        windows[(fwd.iteration, fwd.block)] = latents.clone()
        return latents

    def call(self, attn_call, key, value):
        n = key.shape[1]
        key2, value2 = real_call(self, attn_call, key, value)
        info = attn_call.info
        if info.future_block is not None:
            used.append((info.block, info.step, attn_call.layer, key2[:, n:].clone(), value2[:, n:].clone()))
        return key2, value2

    monkeypatch.setattr(BlockDriver, "window", window)
    monkeypatch.setattr(FeatureCache, "__call__", call)
    return windows, used


class _Capture:
    def __init__(self):
        self.kv = {}

    def __call__(self, call, key, value):
        self.kv[call.layer] = (key.clone(), value.clone())
        return key, value


def test_cached_kv_equal_recomputed_head(make_config, monkeypatch, tiny_root):
    config = make_config(video={"num_frames": 25}, blocks=BLOCKS, sampling={"steps": 3})
    windows, used = _spy(monkeypatch)
    generate(config)
    assert used, "the feature cache was never read"

    stage = WanStage(load_transformer_stage(tiny_root, 0, 4, dtype=torch.float32, device=torch.device("cpu")),
                     lo=0, hi=4, num_layers=4)
    capture = _Capture()
    stage.hooks.add("capture", capture)
    tokenizer, encoder = load_text_encoder(tiny_root, dtype=torch.float32, device=torch.device("cpu"))
    embeds = TextEncoder(tokenizer, encoder, max_length=512).encode([config.video.prompt,
                                                                     config.video.negative_prompt])
    text = stage.project_text(embeds)
    timesteps = SchedulerBank(make_scheduler("unipc", read_scheduler_config(tiny_root)), 3).timesteps
    tokens_per_frame = (config.video.height // 16) * (config.video.width // 16)
    checked = 0
    for block, step, layer, key, value in used:
        iteration, newer = block + step, block + 1
        if newer != iteration:
            continue  # recompute only where the newer block had no newer neighbour of its own
        window = windows[(iteration, newer)]
        context = 1
        with torch.no_grad():  # the runner's own op sequence: embed once, expand to the CFG batch
            hidden = stage.embed(window).expand(2, -1, -1).contiguous()
            cond = stage.condition(timesteps[iteration - newer].expand(2), text, stage.grid(window.shape),
                                   frame_offset=2 * newer - context)
            stage.run_layers(hidden, cond)
        head = slice(context * tokens_per_frame, 2 * context * tokens_per_frame)
        assert torch.equal(capture.kv[layer][0][:, head], key), (block, step, layer)
        assert torch.equal(capture.kv[layer][1][:, head], value), (block, step, layer)
        checked += 1
    assert checked >= 4 * 3  # every layer, several forwards


@pytest.mark.parametrize("feature_cache", [True, False])
def test_runs_with_cache_on_and_off_complete(make_config, feature_cache):
    blocks = dict(BLOCKS, feature_cache=feature_cache)
    report = generate(make_config(video={"num_frames": 21}, blocks=blocks, sampling={"steps": 3}))
    assert report.complete and report.frames == 21 and report.blocks == 3
    assert report.plan["feature_cache"] is feature_cache


def test_cache_changes_the_result(make_config):
    on = generate(make_config(video={"num_frames": 21}, blocks=BLOCKS, sampling={"steps": 3}))
    off = generate(make_config(video={"num_frames": 21}, blocks=dict(BLOCKS, feature_cache=False),
                               sampling={"steps": 3}))
    # Block 0 attended to block 1's head only with the cache on, so its clean latents differ.
    assert on.block_digests[0] != off.block_digests[0]

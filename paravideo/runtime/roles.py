"""Role assembly, in one place: from the layout and the rank's model, build what this rank plays in the run —
its K/V hooks, its block driver (first stage), its output (driver rank: decode, sink, checkpoints, progress),
its prediction inbox, and the stage runner with its source and sink.

Adding an axis or a hook means editing this module and the mechanism's own file, nothing else.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from paravideo.cache.step_wiring import StepCacheParts, attach_step_cache
from paravideo.config import RunConfig
from paravideo.io.checkpoint import Checkpointer, CheckpointTimes
from paravideo.io.decode_pipeline import PipelinedFrameStream, RemoteDecodeStage, decode_timeout_s
from paravideo.io.decode_placement import DecodePlacement
from paravideo.io.decoder_pieces import DecoderRange
from paravideo.io.queue_state import BandQueues, SendBandQueue, cut_rows, receive_queue, send_queue
from paravideo.io.sink import PARTIAL_NAME, VideoSink
from paravideo.io.stream import FrameStream
from paravideo.parallel.cfg import COND, UNCOND, CombineWithPeer
from paravideo.parallel.cfg import KIND as CFG_KIND
from paravideo.parallel.comm import P2P
from paravideo.parallel.layout import DistContext, ParallelLayout
from paravideo.parallel.patch.hook import PatchKVHook, PatchSettings
from paravideo.parallel.patch.latents import BandNoise, GatherBandLatents, SendBandLatents
from paravideo.parallel.seq.attention import GatherTokens, SeqAttention
from paravideo.parallel.seq.backend import resolve_backend
from paravideo.parallel.seq.groups import Collectives, SeqGroups
from paravideo.parallel.stage_runner import (DRIVER_RANK, HeadSink, LatentSource, PredictionInbox, RecvSource,
                                             SendHiddenSink, StageRunner)
from paravideo.runtime.driver import BlockDriver
from paravideo.runtime.rank_model import RankModel
from paravideo.schedule.noise import NoiseSource
from paravideo.schedule.plan import Forward
from paravideo.telemetry.recorder import Recorder


@dataclass
class RankRoles:
    """What this rank plays: the runner (always), the p2p engine (with peers), the output side (driver rank)."""

    runner: StageRunner
    p2p: P2P | None
    start_seq: int  # the first forward this run takes (after a resume checkpoint, not 0)
    output: FrameStream | None = None
    checkpointer: Checkpointer | None = None
    step_cache: StepCacheParts | None = None  # with cache.step (its report goes into run.json)
    decode_stage: RemoteDecodeStage | None = None  # parallel.decode: pipeline, a decode rank other than 0


@dataclass
class RoleContext:
    """What role assembly reads: the run's config, this rank, the layout, its model and its recorder."""

    config: RunConfig
    ctx: DistContext
    layout: ParallelLayout
    model: RankModel
    recorder: Recorder


def assemble_roles(rc: RoleContext, stack: ExitStack, *, before_forward: Callable[[Forward], None],
                   on_output: Callable[[FrameStream], None]) -> RankRoles:
    """Build this rank's roles; finalisers (the mp4, the decode thread, the progress bar) go on `stack`."""
    ctx, cfg = rc.ctx, rc.config
    p2p = P2P(ctx.rank, device=ctx.device, recorder=rc.recorder, timeout_s=cfg.launch.timeout_s) \
        if ctx.distributed else None
    seq = sequence_parallel(rc)
    add_hooks(rc, p2p, seq)
    placement = decode_placement(rc)
    driver, output, checkpointer, start_seq = None, None, None, 0
    if ctx.is_driver:
        driver, output, checkpointer, progress = _driver_side(rc, stack, p2p, on_output, placement)
        start_seq = checkpointer.restore() if cfg.output.resume else 0
        progress.update(start_seq)
    elif rc.model.stage_index == 0:
        driver = BlockDriver(rc.model.plan, noise=_noise(rc), bank=rc.model.bank, recorder=rc.recorder,
                             on_block_done=_replica_done(rc, p2p))
        if rc.layout.band_of(ctx.rank):  # checkpoints hold every band's rows
            due = CheckpointTimes(rc.model.plan, cfg.output.checkpoint_every)
            driver.on_apply = SendBandQueue(p2p, DRIVER_RANK, due, driver.state)
    start_seq = _share_start(ctx, start_seq)
    if start_seq:
        _share_queue(rc, p2p, driver, checkpointer)
    decode_stage = _remote_decode_stage(rc, placement, start_seq)
    if decode_stage is not None:
        stack.callback(decode_stage.close)
        inner = before_forward

        def before_forward(fwd: Forward) -> None:
            decode_stage.check()  # a failed decode thread ends this rank's run too
            inner(fwd)
    runner, step_cache = _runner(rc, p2p, driver, before_forward, checkpointer, seq)
    return RankRoles(runner=runner, p2p=p2p, start_seq=start_seq, output=output, checkpointer=checkpointer,
                     step_cache=step_cache, decode_stage=decode_stage)


def decode_placement(rc: RoleContext) -> DecodePlacement | None:
    """Which ranks run which VAE decoder pieces (None: rank 0 decodes everything); the same on every rank.

    Chosen together with the layer partition (parallel/balance.py, `run_split`), so a rank with heavy
    decoder pieces holds fewer layers.
    """
    return rc.model.balance.decode


def _decode_p2p(rc: RoleContext) -> Callable[[], P2P]:
    # A decode thread waits for a block as long as the DiT takes to finish one.
    timeout = decode_timeout_s(rc.config.launch.timeout_s, rc.config.sampling.steps)
    return lambda: P2P(rc.ctx.rank, device=rc.ctx.device, recorder=rc.recorder, timeout_s=timeout)


def _output_stream(rc: RoleContext, vae, sink: VideoSink, p2p: P2P | None,
                   placement: DecodePlacement | None) -> FrameStream:
    """The driver's decode and write: all of it here, or the first decoder pieces plus the mp4 writer."""
    out = rc.config.output
    if placement is None:
        return FrameStream(rc.model.family.streaming_decoder(vae), sink, rc.recorder, keep_latents=out.save_latents,
                           background=out.background_decode)
    return PipelinedFrameStream(DecoderRange(vae, *placement.range_of(DRIVER_RANK)), sink, rc.recorder,
                                placement=placement, plan=rc.model.plan, main_p2p=p2p, make_p2p=_decode_p2p(rc),
                                keep_latents=out.save_latents, background=out.background_decode)


def _remote_decode_stage(rc: RoleContext, placement: DecodePlacement | None,
                         start_seq: int) -> RemoteDecodeStage | None:
    """A decode rank's helper thread (started), or None when this rank decodes nothing beside the driver."""
    rank = rc.ctx.rank
    if placement is None or rank == DRIVER_RANK or placement.range_of(rank) is None:
        return None
    vae = rc.model.family.load_vae(rc.model.root, device=rc.ctx.device)
    vae.encoder = None  # this rank only decodes
    stage = RemoteDecodeStage(DecoderRange(vae, *placement.range_of(rank)), rank=rank, placement=placement,
                              p2p=_decode_p2p(rc)(), recorder=rc.recorder, plan=rc.model.plan,
                              checkpoint_every=rc.config.output.checkpoint_every, start_seq=start_seq)
    stage.start()
    return stage


def _band_rows(rc: RoleContext) -> list[tuple[int, int]]:
    """Latent rows [lo, hi) of every band, top band first."""
    patch_rows = rc.model.geometry.patch_hw[0]
    return [(b.lo * patch_rows, b.hi * patch_rows) for b in rc.model.split.bands]


def _share_queue(rc: RoleContext, p2p: P2P | None, driver: BlockDriver | None,
                 checkpointer: Checkpointer | None) -> None:
    """On resume: the driver hands every other first-stage rank its part of the queue it read back (a band its
    rows, a CFG group's or sequence chunk's replica the whole), which continues from it."""
    layout = rc.layout
    holders = [rank for rank in range(layout.world_size) if rank != DRIVER_RANK and layout.stage_of(rank) == 0]
    if rc.ctx.is_driver:
        rows = _band_rows(rc)
        for rank in holders:
            state = cut_rows(checkpointer.queue, rows[layout.band_of(rank)]) if layout.patch > 1 else checkpointer.queue
            send_queue(p2p, state, rank)
    elif rc.ctx.rank in holders:
        driver.load_state(receive_queue(p2p, DRIVER_RANK, what="its part of the resumed block queue"))


def _replica_done(rc: RoleContext, p2p: P2P | None):
    """A first-stage rank other than the driver keeps a replica of the queue: a band sends its finished rows
    to the driver; a sequence chunk or the unconditional group holds whole frames the driver has too."""
    if rc.layout.band_of(rc.ctx.rank) and not rc.layout.cfg_of(rc.ctx.rank) and not rc.layout.seq_of(rc.ctx.rank):
        return SendBandLatents(p2p, DRIVER_RANK)
    return lambda block, latents: None


@dataclass
class SeqParallel:
    """This rank's sequence-parallel groups and the collectives on them."""

    groups: SeqGroups
    comm: Collectives


def sequence_parallel(rc: RoleContext) -> SeqParallel | None:
    """The groups of parallel.ulysses x parallel.ring (built collectively on every rank), or None."""
    if rc.layout.seq == 1:
        return None
    resolve_backend(rc.config.parallel.sp_backend, rc.ctx.device)
    return SeqParallel(SeqGroups.build(rc.layout, rc.ctx.rank),
                       Collectives(rc.ctx.rank, device=rc.ctx.device, recorder=rc.recorder,
                                   timeout_s=rc.config.launch.timeout_s))


def add_hooks(rc: RoleContext, p2p: P2P | None, seq: SeqParallel | None = None) -> None:
    """Register the K/V hooks (and the attention wrapper) this run needs on the rank's experts (one registry)."""
    hooks, par = rc.model.experts.hooks, rc.config.parallel
    if seq is not None:
        hooks.wrap_attention(SeqAttention(seq.groups, seq.comm))
    # The patch exchange runs first, so the feature cache keeps and appends K/V of the rows a band sees.
    if rc.layout.patch > 1:
        settings = PatchSettings(mode=par.patch_mode, fraction=par.pcpp_fraction, warmup_steps=par.warmup_steps,
                                 steps=rc.config.sampling.steps)
        hook = PatchKVHook(p2p, rc.model.split, rc.layout.band_of(rc.ctx.rank),
                           rc.layout.band_ranks(rc.model.stage_index), settings)
        hooks.add(hook.name, hook)
    if rc.model.plan.feature_cache:
        from paravideo.cache.feature_cache import FeatureCache

        # A step cache skips layers, so the K/V a block last computed must stay for its older neighbour.
        hooks.add(FeatureCache.name, FeatureCache(retain=rc.config.cache.step.policy != "off"))


def _noise(rc: RoleContext):
    """Initial noise from the seed; a band keeps only its own latent rows."""
    geo = rc.model.geometry
    noise = NoiseSource(rc.model.plan, mode=rc.config.blocks.noise, seed=rc.config.sampling.seed,
                        shape_chw=(geo.channels, geo.height, geo.width))
    return BandNoise(noise, geo.latent_rows) if rc.layout.patch > 1 else noise


def _driver_side(rc: RoleContext, stack: ExitStack, p2p: P2P | None, on_output: Callable[[FrameStream], None],
                 placement: DecodePlacement | None):
    """The driver rank's output (VAE decode, mp4 sink), block queue, checkpointer and progress bar."""
    cfg, model = rc.config, rc.model
    vae = model.family.load_vae(model.root, device=rc.ctx.device)
    sink = VideoSink(Path(cfg.output.dir), width=cfg.video.width, height=cfg.video.height,
                     fps=cfg.video.fps, frames_png=cfg.output.frames_png)
    output = _output_stream(rc, vae, sink, p2p, placement)
    on_output(output)
    # The mp4 is finalised on every path; a run that did not finish names it video.incomplete.mp4.
    keep = cfg.output.checkpoint_every > 0  # a later --resume needs the segments
    stack.callback(lambda: sink.close(complete=False, keep_segments=keep) if sink.path and
                   sink.path.name == PARTIAL_NAME else None)
    stack.callback(output.close)  # runs first (last in, first out): the decode thread ends before the sink
    progress = _progress(cfg, len(model.plan.forwards))
    stack.callback(progress.close)
    # With bands, the driver's queue holds band 0's rows; whole frames exist only to be decoded.
    emit = output.emit if rc.layout.patch == 1 else GatherBandLatents(
        p2p, rc.layout.band_ranks(0), [b.rows * model.geometry.patch_hw[0] for b in model.split.bands], output.emit)
    driver = BlockDriver(model.plan, noise=_noise(rc), bank=model.bank, on_block_done=emit,
                         on_apply=lambda fwd: (progress.update(1), checkpointer.after_apply(fwd)),
                         recorder=rc.recorder)
    bands = BandQueues(p2p, rc.layout.band_ranks(0), _band_rows(rc)) if rc.layout.patch > 1 else None
    checkpointer = Checkpointer(Path(cfg.output.dir), every=cfg.output.checkpoint_every, plan=model.plan,
                                driver=driver, output=output, config_json=json.dumps(cfg.resolved()), bands=bands)
    return driver, output, checkpointer, progress


def _progress(config: RunConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="denoise", unit="fwd", disable=not config.output.progress, dynamic_ncols=True)


def _share_start(ctx: DistContext, start_seq: int) -> int:
    """Every rank starts at the driver's first forward (0, or after a resume checkpoint)."""
    if not ctx.distributed:
        return start_seq
    import torch.distributed as dist

    value = torch.tensor([start_seq], dtype=torch.int64, device=ctx.device)
    dist.broadcast(value, src=DRIVER_RANK)
    return int(value.item())


def _runner(rc: RoleContext, p2p: P2P | None, driver: BlockDriver | None, before_forward: Callable[[Forward], None],
            checkpointer: Checkpointer | None, seq: SeqParallel | None = None
            ) -> tuple[StageRunner, StepCacheParts | None]:
    """The stage runner with this rank's source (latents or received hidden states) and sink (next stage or head).

    Hidden states and predictions stay within one (CFG group, band, sequence chunk); the conditional
    group's last stage combines guidance and feeds both groups' first stages.
    """
    layout, model, stage, rank = rc.layout, rc.model, rc.model.stage_index, rc.ctx.rank
    last = len(model.ranges) - 1
    band, group, chunk = layout.band_of(rank), layout.cfg_of(rank), layout.seq_of(rank)

    def peer(at_stage: int, cfg: int = group) -> int:
        return layout.rank_of(at_stage, band, cfg=cfg, seq=chunk)

    experts, geo = model.experts, model.geometry
    if stage == 0:
        needs_inbox = last > 0 or group == UNCOND
        inbox = PredictionInbox(p2p, peer(last, COND), driver, geo) if needs_inbox else None
        source = LatentSource(experts, driver, geo, rc.recorder, inbox)
    else:
        source = RecvSource(p2p, peer(stage - 1), model.plan, geo, experts.dtype)
    sink = SendHiddenSink(p2p, peer(stage + 1)) if stage < last else _head_sink(rc, p2p, driver, seq, peer)
    step_cache = attach_step_cache(
        rc.config, experts=experts, plan=model.plan, timesteps=model.bank.timesteps,
        num_train_timesteps=model.bank.prototype.config.num_train_timesteps, layout=layout, rank=rc.ctx.rank,
        stage_index=stage, last_stage=last, p2p=p2p, recorder=rc.recorder, source=source, sink=sink,
        checkpointer=checkpointer)
    if step_cache is not None:
        source, sink = step_cache.source, step_cache.sink
    patch_hook = experts.hooks.get(PatchKVHook.name)
    return StageRunner(experts, model.plan, texts=model.texts, block_prompt=model.block_prompt,
                       timesteps=model.bank.timesteps, geometry=geo, recorder=rc.recorder, source=source, sink=sink,
                       before_forward=before_forward,
                       kv_tokens_per_frame=patch_hook.tokens_per_frame if patch_hook else None,
                       layers=step_cache.cache if step_cache else None), step_cache


def _head_sink(rc: RoleContext, p2p: P2P | None, driver: BlockDriver | None, seq: SeqParallel | None,
               peer: Callable[..., int]) -> HeadSink:
    """The last stage's head: gather a sequence group's chunks, combine guidance, deliver the prediction."""
    layout, model = rc.layout, rc.model
    last, group = len(model.ranges) - 1, layout.cfg_of(rc.ctx.rank)
    gather = None
    if seq is not None:
        plan, geo = model.plan, model.geometry

        def window_tokens(fwd: Forward) -> int:
            lo, hi = plan.window(fwd)
            return (hi - lo) * geo.rows.rows * geo.token_cols

        gather = GatherTokens(seq.comm, seq.groups, window_tokens)
    finish = p2p.flush if p2p is not None else (lambda: None)
    if group == UNCOND:  # the unconditional prediction goes to the conditional peer, unguided
        return HeadSink(model.experts, rc.recorder, deliver=lambda fwd, pred: p2p.send(pred, peer(last, COND),
                                                                                       kind=CFG_KIND),
                        finish=finish, gather=gather, guide=lambda fwd, pred: pred)
    targets = [peer(0, UNCOND)] if layout.cfg > 1 else []
    if model.stage_index > 0:
        targets.append(peer(0))

    def deliver(fwd: Forward, pred: torch.Tensor) -> None:
        for dst in targets:
            p2p.send(pred, dst, kind="prediction")
        if model.stage_index == 0:
            driver.apply(fwd, pred)

    guide = CombineWithPeer(p2p, peer(last, UNCOND), model.experts.choice.guidance) if layout.cfg > 1 else None
    return HeadSink(model.experts, rc.recorder, deliver=deliver, finish=finish, gather=gather, guide=guide)

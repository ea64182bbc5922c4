"""Assembles a rank's step cache (policy, header, first-stage sums, checkpoint log) and reports what it saved."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paravideo.cache.step_cache import StepCache
from paravideo.cache.step_header import HeaderSink, HeaderSource, StageSum, StartLink
from paravideo.cache.step_policy import Decision, StepCachePolicy

CHECKPOINT_KEY = "step_cache"


@dataclass
class StepCacheParts:
    """What the stage runner uses: the cached layer call and the source and sink wrapped with the header."""

    cache: StepCache
    source: object
    sink: object


def attach_step_cache(config, *, experts, plan, timesteps: torch.Tensor, num_train_timesteps: int, layout,
                      rank: int, stage_index: int, last_stage: int, p2p, recorder, source, sink,
                      checkpointer=None) -> StepCacheParts | None:
    """This rank's step cache around `source` and `sink` (None with cache.step.policy: off)."""
    from paravideo.cache.feature_cache import FeatureCache

    cfg = config.cache.step
    if cfg.policy == "off":
        return None
    policy = StepCachePolicy.from_config(cfg, timesteps_unit=timesteps.double() / num_train_timesteps,
                                         expert_of_step=experts.choice.expert_of_step,
                                         checkpoint_every=config.output.checkpoint_every)
    band, group, chunk = layout.band_of(rank), layout.cfg_of(rank), layout.seq_of(rank)

    def peer(stage: int) -> int:
        """The rank holding this rank's share (band, CFG group, sequence chunk) at `stage`."""
        return layout.rank_of(stage, band, cfg=group, seq=chunk)

    first = stage_index == 0
    sharers = first_stage_ranks(layout)
    reduce = StageSum(p2p, sharers, rank) if first and len(sharers) > 1 else (lambda stats: stats)
    last = stage_index == last_stage
    link = None
    if last_stage > 0 and (first or last):
        link = StartLink(p2p, peer(last_stage if first else 0))
    cache = StepCache(experts, policy, first_stage=first, last_stage=last, recorder=recorder, reduce=reduce,
                      start_link=link, feature_cache=experts.hooks.get(FeatureCache.name), max_blocks=plan.max_queue)
    if stage_index > 0:
        source = HeaderSource(source, p2p, peer(stage_index - 1), plan, cache)
    if stage_index < last_stage:
        sink = HeaderSink(sink, p2p, peer(stage_index + 1), cache)
    if checkpointer is not None:  # the driver rank: its decision log spans a resumed run's report
        checkpointer.extras[CHECKPOINT_KEY] = lambda last_seq: log_state(cache, last_seq)
        load_log(cache, checkpointer.restored.get(CHECKPOINT_KEY))
    return StepCacheParts(cache, source, sink)


def first_stage_ranks(layout) -> list[int]:
    """Every rank of the first stage: each holds a share (band, CFG row, token chunk) of the one-rank statistic."""
    return sorted(layout.rank_of(0, band, cfg=group, seq=chunk) for group in range(layout.cfg)
                  for band in range(layout.patch) for chunk in range(layout.seq))


def log_state(cache: StepCache, last_seq: int) -> list[list]:
    """The decisions up to forward `last_seq` as plain data (decisions of later forwards may exist already)."""
    return [[d.seq, d.block, d.step, d.reuse, d.reason, d.change, d.accumulated, d.budget]
            for seq, d in sorted(cache.decisions.items()) if seq <= last_seq]


def load_log(cache: StepCache, state: list[list] | None) -> None:
    """Put a checkpoint's decisions back (reports only: the cache state itself is rebuilt by the refresh)."""
    for row in state or []:
        cache.decisions[int(row[0])] = Decision(*row)


def rank_row(parts: StepCacheParts | None) -> dict:
    """This rank's entry in run.json's `ranks` rows."""
    if parts is None:
        return {}
    return {"step_cache": {"reused_forwards": parts.cache.reused_seqs(), **parts.cache.memory()}}


def run_section(parts: StepCacheParts | None, plan, factors) -> dict | None:
    """run.json's `step_cache`: per block the steps computed and reused, the indicator, layer-forwards saved."""
    if parts is None or plan is None or factors is None:
        return None
    num_layers = factors.num_layers
    cache, policy = parts.cache, parts.cache.policy
    saved_per_reuse = num_layers - 1 if policy.name == "first_block" else num_layers
    blocks = []
    for block in plan.blocks:
        mine = [d for _, d in sorted(cache.decisions.items()) if d.block == block.index]
        blocks.append({"block": block.index, "computed": [d.step for d in mine if not d.reuse],
                       "reused": [d.step for d in mine if d.reuse],
                       "change": [None if d.change is None else round(d.change, 6) for d in mine]})
    reused = sum(len(b["reused"]) for b in blocks)
    total = len(plan.forwards) * num_layers
    return {"policy": policy.name, "threshold": policy.threshold,
            "budget_by_step": [round(policy.budget(s), 6) for s in range(len(policy.weights))],
            "forwards": len(plan.forwards), "forwards_reused": reused,
            "layer_forwards": total, "layer_forwards_saved": reused * saved_per_reuse,
            "saved_fraction": reused * saved_per_reuse / total if total else 0.0, "blocks": blocks}

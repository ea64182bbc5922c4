"""Step-cache policies: when a (block, step) may reuse its previous step's layer output. Pure: no tensors kept.

A block's indicator (TeaCache: the first layer's modulated input; first-block: layer 0's residual)
is compared with a reference: its relative L1 change is accumulated since the last computed step
(TeaCache compares step to step; first-block compares with the last computed step, which already
spans the gap). A step is reused while that change stays below `threshold x weight(step)`, where
the weight follows the timestep (bell: none at the ends of the trajectory). Some steps are always
computed, whatever the data says:

- warm-up and cool-down steps of every block;
- the first step of a Wan2.2 expert (the other expert's residual and indicator mean nothing);
- every forward of the first iteration after a resume checkpoint, so a resumed run meets exactly
  the cache state the uninterrupted run had (every residual, indicator and kept K/V recomputed),
  without any rank's cache in the checkpoint;
- a step after `max_consecutive` reused ones.

Statistics are integers (fixed point), so their sum is the same whatever the split into bands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paravideo.schedule.plan import Forward

# Fixed point for the L1 sums: 2**-20 resolution; each element is capped so that 2**31 of them cannot overflow.
FIXED_SCALE = 2.0 ** 20
ELEMENT_CAP = 2 ** 31 - 1


@dataclass(frozen=True)
class Decision:
    """The verdict for one forward, the same on every rank (only `reuse` travels; the rest is for reports)."""

    seq: int
    block: int
    step: int
    reuse: bool
    reason: str  # warm-up, cool-down, expert switch, refresh, max consecutive, over budget, within budget
    change: float | None = None  # the indicator's relative L1 change against its reference
    accumulated: float | None = None
    budget: float | None = None


@dataclass
class BlockIndicator:
    """A block's scalar cache state: change accumulated since its last computed step, reuses in a row."""

    accumulated: float = 0.0
    consecutive: int = 0


@dataclass(frozen=True)
class StepCachePolicy:
    """Everything a decision depends on besides the data: fixed by the config and the timesteps."""

    name: str  # teacache | first_block
    threshold: float
    weights: tuple[float, ...]  # per step; 0 where a step is never reused
    forced: dict[int, str] = field(default_factory=dict)  # step -> why it is always computed
    max_consecutive: int = 1
    checkpoint_every: int = 0  # iterations; the first of each later interval is computed in full

    @classmethod
    def from_config(cls, cfg, *, timesteps_unit: torch.Tensor, expert_of_step: tuple[int, ...],
                    checkpoint_every: int) -> StepCachePolicy:
        """The policy of `cfg` (a StepCacheConfig) for timesteps scaled to [0, 1]."""
        steps = len(timesteps_unit)
        forced = {}
        for step in range(steps):
            if step < cfg.warmup_steps:
                forced[step] = "warm-up"
            elif step >= steps - cfg.cooldown_steps:
                forced[step] = "cool-down"
            elif expert_of_step[step] != expert_of_step[step - 1]:
                forced[step] = "expert switch"
        weights = tuple(schedule_weight(cfg.schedule, float(u)) for u in timesteps_unit)
        return cls(name=cfg.policy, threshold=cfg.threshold, weights=weights, forced=forced,
                   max_consecutive=cfg.max_consecutive, checkpoint_every=checkpoint_every)

    @property
    def accumulates(self) -> bool:
        """TeaCache sums step-to-step changes; first-block measures against the last computed step."""
        return self.name == "teacache"

    def budget(self, step: int) -> float:
        """The largest accumulated change at which `step` may still be reused."""
        return self.threshold * self.weights[step]

    def forced_reason(self, fwd: Forward) -> str | None:
        """Why `fwd` must be computed whatever its indicator says (None: the data decides)."""
        if fwd.step in self.forced:
            return self.forced[fwd.step]
        if self.checkpoint_every and fwd.iteration % self.checkpoint_every == 0:
            return "refresh"  # the first iteration after a checkpoint: see the module docstring
        return None

    def decide(self, fwd: Forward, change: float | None, state: BlockIndicator) -> Decision:
        """Reuse or compute `fwd`, updating the block's `state`."""
        accumulated = (state.accumulated if self.accumulates else 0.0) + (change or 0.0)
        budget = self.budget(fwd.step)
        reason = self.forced_reason(fwd)
        if reason is None and change is None:
            reason = "no reference"
        if reason is None and state.consecutive >= self.max_consecutive:
            reason = "max consecutive"
        if reason is None:
            reason = "within budget" if accumulated < budget else "over budget"
        reuse = reason == "within budget"
        state.accumulated, state.consecutive = (accumulated, state.consecutive + 1) if reuse else (0.0, 0)
        return Decision(fwd.seq, fwd.block, fwd.step, reuse, reason, change, accumulated, budget)


def schedule_weight(schedule: str, unit: float) -> float:
    """The threshold's weight at timestep `unit` in [0, 1] (1 = pure noise)."""
    if schedule == "flat":
        return 1.0
    return max(0.0, 4.0 * unit * (1.0 - unit))


def change_stats(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """int64 `[sum |current - reference|, sum |reference|]` in fixed point: exact under any split and order."""
    def fixed_sum(x: torch.Tensor) -> torch.Tensor:
        return (x.abs().float() * FIXED_SCALE).clamp_(max=ELEMENT_CAP).to(torch.int64).sum()

    return torch.stack([fixed_sum(current.float() - reference.float()), fixed_sum(reference)]).cpu()


def relative_change(stats: torch.Tensor) -> float:
    """Relative L1 change from (band-summed) `change_stats`."""
    num, den = (int(v) for v in stats.tolist())
    return num / den if den else (0.0 if num == 0 else float("inf"))


def check_step_cache(config) -> None:
    """Cross-field checks of cache.step against the sampling and patch settings (raises ValueError)."""
    cache, steps, par = config.cache.step, config.sampling.steps, config.parallel
    if cache.policy == "off":
        return
    if cache.warmup_steps + cache.cooldown_steps >= steps:
        raise ValueError(f"cache.step.warmup_steps + cooldown_steps = {cache.warmup_steps} + {cache.cooldown_steps} "
                         f"leave none of sampling.steps = {steps} to reuse; lower them or set cache.step.policy: off")
    if par.patch > 1 and par.patch_mode != "exact":
        # Stale K/V are seeded at the last synchronous step and released at a block's last step: both must run.
        if cache.warmup_steps < par.warmup_steps or cache.cooldown_steps < 1:
            raise ValueError(f"cache.step with parallel.patch_mode = {par.patch_mode} needs cache.step.warmup_steps "
                             f">= parallel.warmup_steps = {par.warmup_steps} and cache.step.cooldown_steps >= 1 (got "
                             f"{cache.warmup_steps} and {cache.cooldown_steps}): the stale K/V buffers are filled and "
                             "released by computed steps")

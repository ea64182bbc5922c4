"""A rank's share of every expert of a model: the same layers [lo, hi) of each, one picked per forward.

Wan2.2-T2V-A14B has a high-noise and a low-noise expert switched at a boundary timestep. In the block
queue, blocks at different noise levels share an iteration, so one rank runs both experts within one
iteration: every stage keeps its layer range of both resident. A one-expert model is the same object
with one entry, so the runtime has a single code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paravideo.models.factors import ModelFactors
from paravideo.models.hooks import HookRegistry


@dataclass(frozen=True)
class ExpertChoice:
    """Which expert denoises each step of a run, and with which guidance scale."""

    expert_of_step: tuple[int, ...]
    guidance_scales: tuple[float, ...]  # per expert

    @classmethod
    def for_run(cls, factors: ModelFactors, timesteps: torch.Tensor, guidance_scale: float,
                guidance_scale_2: float | None) -> ExpertChoice:
        """WanPipeline's rule per timestep; `guidance_scale_2` (default: `guidance_scale`) after the switch."""
        scales = (guidance_scale,) if len(factors.experts) == 1 else (
            guidance_scale, guidance_scale if guidance_scale_2 is None else guidance_scale_2)
        return cls(tuple(factors.expert_for(float(t)) for t in timesteps), scales)

    def guidance(self, step: int) -> float:
        """The guidance scale of `step`."""
        return self.guidance_scales[self.expert_of_step[step]]


class ExpertStages:
    """Layers [lo, hi) of each expert (adapter stages sharing one hook registry), picked per step."""

    def __init__(self, stages: list, choice: ExpertChoice):
        assert stages and all(s.hooks is stages[0].hooks for s in stages), "experts share one hook registry"
        assert len(stages) == len(choice.guidance_scales)
        self.stages, self.choice = stages, choice

    def index(self, step: int) -> int:
        """The expert that denoises `step`."""
        return self.choice.expert_of_step[step]

    def at(self, step: int):
        """The adapter stage of the expert that denoises `step`."""
        return self.stages[self.index(step)]

    @property
    def first(self):
        """Expert 0's stage (shapes and the hook registry are common to all)."""
        return self.stages[0]

    @property
    def hooks(self) -> HookRegistry:
        return self.stages[0].hooks

    @property
    def lo(self) -> int:
        return self.stages[0].lo

    @property
    def hi(self) -> int:
        return self.stages[0].hi

    @property
    def dtype(self) -> torch.dtype:
        return self.stages[0].dtype

    def param_bytes(self) -> int:
        """Bytes of parameters this rank holds, all experts."""
        return sum(self.param_bytes_by_expert())

    def param_bytes_by_expert(self) -> list[int]:
        """Bytes of parameters this rank holds of each expert."""
        return [stage.param_bytes() for stage in self.stages]

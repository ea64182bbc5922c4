"""Diffusers schedulers by name, one independent copy per block (multistep schedulers keep history)."""

from __future__ import annotations

import copy

import torch

SCHEDULER_NAMES = ("default", "unipc", "flow_euler", "dpm")


def make_scheduler(name: str, checkpoint_config: dict, *, flow_shift: float | None = None):
    """Build the configured scheduler from the checkpoint's scheduler config."""
    from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                           UniPCMultistepScheduler)

    base = {k: v for k, v in checkpoint_config.items() if not k.startswith("_")}
    shift = flow_shift or base.get("flow_shift") or base.get("shift") or 3.0
    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift,
            "num_train_timesteps": base.get("num_train_timesteps", 1000)}
    if name == "default":
        cls_name = checkpoint_config.get("_class_name", "UniPCMultistepScheduler")
        classes = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "flow_euler",
                   "DPMSolverMultistepScheduler": "dpm"}
        if cls_name not in classes:
            raise ValueError(f"sampling.scheduler: the checkpoint's {cls_name} is not supported; "
                             f"set sampling.scheduler to one of {SCHEDULER_NAMES[1:]}")
        if flow_shift is None:
            import diffusers

            return getattr(diffusers, cls_name).from_config(checkpoint_config)
        name = classes[cls_name]
    if name == "unipc":
        return UniPCMultistepScheduler(**flow)
    if name == "dpm":
        return DPMSolverMultistepScheduler(**flow)
    if name == "flow_euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=flow["num_train_timesteps"])
    raise ValueError(f"sampling.scheduler must be one of {SCHEDULER_NAMES}, got {name!r}")


class SchedulerBank:
    """The timesteps of a run, and a fresh scheduler copy for each block entering the queue."""

    def __init__(self, prototype, steps: int):
        prototype.set_timesteps(steps, device="cpu")
        self.prototype = prototype
        self.timesteps: torch.Tensor = prototype.timesteps.clone()
        if len(self.timesteps) != steps:
            raise ValueError(f"the scheduler gives {len(self.timesteps)} timesteps for {steps} steps; "
                             "choose a first-order scheduler (flow_euler, unipc, dpm)")

    def new_block_scheduler(self):
        """An independent copy positioned at step 0."""
        sched = copy.deepcopy(self.prototype)
        sched.set_begin_index(0)
        return sched

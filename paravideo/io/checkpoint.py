"""Resume checkpoints: the driver's queue, decode cache and video position at an iteration boundary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
_PLAIN = (torch.Tensor, int, float, bool, str, type(None))


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def scheduler_state(scheduler) -> dict:
    """The mutable state of a diffusers scheduler as tensors and numbers (loadable with weights_only)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(scheduler).items()
            if k != "_internal_dict" and _plain(v)}


def load_scheduler_state(scheduler, state: dict) -> None:
    """Put a state from `scheduler_state` back into a fresh scheduler of the same config."""
    for key, value in state.items():
        setattr(scheduler, key, value)


def video_defining(config: dict) -> dict:
    """The part of a resolved config that shapes the video (how a run is launched may change on resume)."""
    data = json.loads(json.dumps(config))
    data.pop("launch", None)
    for key in ("resume", "overwrite", "progress", "trace"):
        data.get("output", {}).pop(key, None)
    return data


def save_checkpoint(out_dir: Path, state: dict) -> Path:
    """Write `state` atomically (temp file, then rename): a crash mid-write keeps the previous one."""
    path = Path(out_dir) / CHECKPOINT_NAME
    tmp = path.with_name(f".{CHECKPOINT_NAME}.tmp")
    torch.save({"version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: Path) -> dict:
    """Read a checkpoint with `weights_only=True` (tensors and plain data only, no code)."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CHECKPOINT_NAME} in {out_dir}: the run wrote no checkpoint "
                                "(set output.checkpoint_every to make runs resumable)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {state.get('version')}, this paravideo reads "
                         f"{FORMAT_VERSION}")
    return state


def checkpoint_config(out_dir: Path) -> dict:
    """The resolved config a checkpointed run was started with."""
    return json.loads(load_checkpoint(out_dir)["config_json"])


class Checkpointer:
    """Writes a checkpoint every `every` iterations on the driver rank and restores one on resume.

    A checkpoint is taken when the last forward of an iteration has been applied: every finished
    block is decoded and written, and no feature-cache entry outlives an iteration, so the driver's
    queue, the decoder's causal cache and the video position describe the whole run.
    """

    def __init__(self, out_dir: Path, *, every: int, plan, driver, output, config_json: str):
        self.out_dir, self.every, self.plan = Path(out_dir), every, plan
        self.driver, self.output, self.config_json = driver, output, config_json
        # Forwards come in iteration order, so the last one seen of an iteration closes it.
        last_of = {fwd.iteration: fwd.seq for fwd in plan.forwards}
        self._end_to_iteration = {seq: it for it, seq in last_of.items()}
        self.written = 0

    def after_apply(self, fwd) -> None:
        """Checkpoint if `fwd` closes an iteration that is due (never after the last one)."""
        iteration = self._end_to_iteration.get(fwd.seq)
        if not self.every or iteration is None or (iteration + 1) % self.every or \
                iteration == self.plan.iterations - 1:
            return
        self.output.flush()  # every finished block decoded and written before the cut
        self.output.sink.cut()
        save_checkpoint(self.out_dir, {"config_json": self.config_json, "iteration": iteration,
                                       "driver": self.driver.state(iteration), "output": self.output.state()})
        self.written += 1

    def restore(self) -> int:
        """Load the checkpoint into the driver and output; returns the first forward to run."""
        state = load_checkpoint(self.out_dir)
        if video_defining(json.loads(state["config_json"])) != video_defining(json.loads(self.config_json)):
            raise ValueError(f"the checkpoint in {self.out_dir} was written by a run with another config; "
                             "resume with `paravideo generate --resume DIR`, which reuses the checkpoint's config")
        self.driver.load_state(state["driver"])
        self.output.load_state(state["output"])
        return self.driver.applied + 1

    def discard(self) -> None:
        """Remove the checkpoint once the run has completed."""
        (self.out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)

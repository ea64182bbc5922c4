"""Resume checkpoints: the driver's queue, decode cache and video position at an iteration boundary."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable

import torch

from paravideo.errors import ConfigError
from paravideo.io.checkpoint_times import CheckpointTimes
from paravideo.io.queue_state import BandQueues, cut_rows
from paravideo.io.write_error import write_error
CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
VIDEO_SECTIONS = ("model", "video", "sampling", "blocks")  # what defines the frames (see video_defining)
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
    """The part of a resolved config that defines the video's frames: model, video, sampling, blocks, cache
    (and output.checkpoint_every with a step cache).

    Where the run writes (output.dir, however spelled), how it is launched and split over ranks
    (launch, parallel) and what else it reports may change on resume; the model folder is compared
    by its real path, and model.device not at all.
    """
    data = json.loads(json.dumps({key: config.get(key) for key in VIDEO_SECTIONS}))
    step_cache = (config.get("cache") or {}).get("step") or {}
    if step_cache.get("policy", "off") != "off":  # off (or a config from before step caching): exact frames
        # The iteration after each checkpoint is computed in full, so the checkpoint period shapes the frames too.
        data["cache"] = {"step": step_cache}
        data["output"] = {"checkpoint_every": (config.get("output") or {}).get("checkpoint_every")}
    model = data.get("model") or {}
    model.pop("device", None)
    path = model.get("path")
    if isinstance(path, str) and not path.startswith("builtin:"):
        model["path"] = os.path.realpath(os.path.expanduser(path))
    return data


def config_differences(stored: dict, current: dict) -> list[str]:
    """`field: stored -> current` for each video-defining field that differs (dotted names)."""
    flat_a, flat_b = _flatten(video_defining(stored)), _flatten(video_defining(current))
    return [f"{key}: {flat_a.get(key, '(unset)')!r} in the checkpoint, {flat_b.get(key, '(unset)')!r} now"
            for key in sorted(set(flat_a) | set(flat_b)) if flat_a.get(key) != flat_b.get(key)]


def _flatten(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def split_differences(stored: dict, current: dict) -> list[str]:
    """Why a run checkpointed under `stored`'s split cannot continue under `current`'s with the same frames.

    Every exact axis (pipeline, cfg, ulysses) gives the one-rank bits, so those degrees may change. Ring
    attention merges its chunks' softmax sums in an order set by the token split (ring x ulysses), so
    with ring > 1 on either side that split must stay as it was; so must the bands (a band of one token
    row is not bit-identical to one rank on CPU).
    """
    def split(config: dict) -> tuple[int, int]:
        par = config.get("parallel") or {}
        return int(par.get("ring", 1)), int(par.get("ulysses", 1))

    out = []
    (ring_a, uly_a), (ring_b, uly_b) = split(stored), split(current)
    if max(ring_a, ring_b) > 1 and (ring_a, uly_a) != (ring_b, uly_b):
        out.append(f"parallel.ring x parallel.ulysses: {ring_a} x {uly_a} in the checkpoint, {ring_b} x {uly_b} now "
                   "(ring attention rounds differently for each token split, so the frames would not continue the "
                   f"stopped run's); resume with parallel.ring: {ring_a} and parallel.ulysses: {uly_a}")
    patch_a, patch_b = ((c.get("parallel") or {}).get("patch", 1) for c in (stored, current))
    if max(patch_a, patch_b) > 1 and patch_a != patch_b:
        out.append(f"parallel.patch: {patch_a} in the checkpoint, {patch_b} now (bands of one token row round "
                   f"differently from whole frames, so other bands could change the frames); resume with "
                   f"parallel.patch: {patch_a}")
    return out


def _resume_mismatch(out_dir: Path, stored: dict, current: dict, *, hint: str = "") -> ConfigError | None:
    differences = config_differences(stored, current)
    if differences:
        return ConfigError(f"the checkpoint in {out_dir} was written for another video ("
                           + "; ".join(differences) + f"){hint}")
    splits = split_differences(stored, current)
    if splits:
        return ConfigError(f"the checkpoint in {out_dir} cannot be continued with this split: " + "; ".join(splits))
    return None


def save_checkpoint(out_dir: Path, state: dict) -> Path:
    """Write `state` atomically (temp file, then rename): a crash mid-write keeps the previous one."""
    path = Path(out_dir) / CHECKPOINT_NAME
    tmp = path.with_name(f".{CHECKPOINT_NAME}.tmp")
    # Serialised in memory first: torch's zip writer reports a failed write (a full disk) only as an
    # opaque RuntimeError, while a plain file write raises the OSError that says what happened.
    buffer = io.BytesIO()
    torch.save({"version": FORMAT_VERSION, **state}, buffer)
    try:
        tmp.write_bytes(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        kept = "the previous checkpoint is kept" if path.exists() else ""
        raise write_error(err, path, out_dir, note=kept) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _unresumable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} {why}, so output.dir {str(path.parent)!r} cannot be resumed; start a new run "
                       "(there with output.overwrite: true, or into another output.dir)")


def load_checkpoint(out_dir: Path, *, mmap: bool = False) -> dict:
    """Read a checkpoint with `weights_only=True` (tensors and plain data only, no code).

    With `mmap=True` tensors stay on disk until touched (reading only the config is cheap). A
    damaged or foreign file raises ConfigError naming it, never torch's own traceback.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CHECKPOINT_NAME} in {out_dir}: the run wrote no checkpoint "
                                "(set output.checkpoint_every to make runs resumable)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as err:
        raise _unresumable(path, f"cannot be read ({err.strerror or err})") from err
    except Exception as err:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise _unresumable(path, f"is damaged or not a paravideo checkpoint ({type(err).__name__}: "
                           f"{str(err).strip().splitlines()[0] if str(err).strip() else 'unreadable'})") from None
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise _unresumable(path, f"has checkpoint format {version}, this paravideo reads {FORMAT_VERSION}")
    missing = [key for key in ("config_json", "iteration", "driver", "output") if key not in state]
    if missing:
        raise _unresumable(path, f"lacks {', '.join(missing)}")
    try:
        json.loads(state["config_json"])
    except (TypeError, ValueError) as err:
        raise _unresumable(path, f"holds an unreadable config ({err})") from None
    return state


def checkpoint_config(out_dir: Path) -> dict:
    """The resolved config a checkpointed run was started with (tensors are not read)."""
    return json.loads(load_checkpoint(out_dir, mmap=True)["config_json"])


def check_resumable(out_dir: Path, config: dict) -> None:
    """Before any model loads: the checkpoint in `out_dir` reads back, was written for the video that
    `config` (resolved) describes, and every video segment it names is there and readable."""
    from paravideo.io.sink import SEGMENT_DIR, check_segment

    out_dir = Path(out_dir)
    state = load_checkpoint(out_dir, mmap=True)
    mismatch = _resume_mismatch(out_dir, json.loads(state["config_json"]), config,
                                hint="; resume with `paravideo generate --resume DIR`, which reuses the checkpoint's "
                                "config (--set may change only how the run is launched)")
    if mismatch is not None:
        raise mismatch
    try:
        segments = list(state["output"]["sink"]["segments"])
    except (KeyError, TypeError):
        raise _unresumable(out_dir / CHECKPOINT_NAME, "names no video segments") from None
    for name in segments:
        why = check_segment(out_dir / SEGMENT_DIR / name)
        if why:
            raise ConfigError(f"video segment {out_dir / SEGMENT_DIR / name} is {why}, so output.dir "
                              f"{str(out_dir)!r} cannot be resumed (the checkpoint needs it); start a new run "
                              "(there with output.overwrite: true, or into another output.dir)")


class Checkpointer:
    """Writes a checkpoint every `every` iterations on the driver rank and restores one on resume.

    A checkpoint is taken when the last forward of an iteration has been applied: every finished
    block is decoded and written, and no feature-cache entry outlives an iteration, so the driver's
    queue, the decoder's causal cache and the video position describe the whole run. (A step cache
    keeps K/V and residuals across iterations; it recomputes all of them in the iteration after each
    checkpoint, so a resumed run meets them as the uninterrupted run did: paravideo/cache/step_policy.py.)

    The queue is saved in whole frames (io/queue_state.py): with patch bands every band sends its rows
    at the checkpoint and a resume hands each its rows back; first-stage ranks of other CFG groups and
    sequence chunks keep replicas of the queue (the same guided predictions through their own scheduler
    copies, bit for bit) and a resume hands each a copy. So the checkpoint does not depend on the split.
    """

    def __init__(self, out_dir: Path, *, every: int, plan, driver, output, config_json: str,
                 bands: BandQueues | None = None):
        self.out_dir, self.plan = Path(out_dir), plan
        self.driver, self.output, self.config_json = driver, output, config_json
        self.due = CheckpointTimes(plan, every)
        self.bands = bands  # with patch bands: where the queue's other rows come from and go to
        self.written = 0
        # More state to save, by name: a function of the iteration's last forward (the step cache's log) ...
        self.extras: dict[str, Callable[[int], object]] = {}
        self.restored: dict[str, object] = {}  # ... and what a resume read back, by the same names
        self.queue: dict | None = None  # the driver's queue a resume read back (replicas get a copy)

    def after_apply(self, fwd) -> None:
        """Checkpoint if `fwd` closes an iteration that is due (never after the last one)."""
        iteration = self.due(fwd)
        if iteration is None:
            return
        queue = self.driver.state(iteration)
        if self.bands is not None:
            queue = self.bands.join(queue)
        self.output.flush()  # every finished block decoded and written before the cut
        self.output.sink.cut()
        save_checkpoint(self.out_dir, {"config_json": self.config_json, "iteration": iteration,
                                       "driver": queue, "output": self.output.state(),
                                       "extras": {name: save(fwd.seq) for name, save in self.extras.items()}})
        self.written += 1

    def restore(self) -> int:
        """Load the checkpoint into the driver and output; returns the first forward to run."""
        state = load_checkpoint(self.out_dir)
        # generate's preflight has made this check before loading; a worker started another way repeats it.
        mismatch = _resume_mismatch(self.out_dir, json.loads(state["config_json"]), json.loads(self.config_json))
        if mismatch is not None:
            raise mismatch
        self.queue = state["driver"]
        self.driver.load_state(cut_rows(self.queue, self.bands.rows[0]) if self.bands is not None else self.queue)
        self.output.load_state(state["output"])
        self.restored = state.get("extras", {})
        return self.driver.applied + 1

    def discard(self) -> None:
        """Remove the checkpoint once the run has completed."""
        (self.out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)

"""The sweep file of `paravideo bench`: a base run config and the axes to vary, loaded strictly."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from paravideo.config import RunConfig, apply_overrides, parse_config
from paravideo.config_yaml import load_yaml_file
from paravideo.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PlanVariant(_Strict):
    """One plan to compare: a name and the config fields it changes."""

    name: str = Field(min_length=1, description="label in tables and plots (letters, digits, - and _)")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted config keys to values, "
                                                                   "e.g. {blocks.block_frames: 2}")

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError(f"plan names become folder names; use letters, digits, - and _ (got {value!r})")
        return value


class SweepAxes(_Strict):
    """The grid: every combination of ranks, frames and plan is one real run."""

    ranks: list[int] = Field(default_factory=lambda: [1], min_length=1, description="pipeline ranks (local launcher)")
    frames: list[int] = Field(min_length=1, description="output frames (4k+1)")
    plans: list[PlanVariant] = Field(default_factory=lambda: [PlanVariant(name="base")], min_length=1,
                                     description="block plans to compare")

    @field_validator("ranks", "frames")
    @classmethod
    def _positive_unique(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"must be distinct positive integers, got {values}")
        return sorted(values)


class SweepConfig(_Strict):
    """A scaling sweep: where the base config is, what to override, the axes, and where to report."""

    name: str = Field("sweep", description="title of the report")
    base: str = Field(description="run config YAML, relative to the sweep file")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides applied to the base")
    axes: SweepAxes
    profile: str = Field("cpu-local", description="hardware profile for the predicted columns")
    output_dir: str = Field("outputs/bench", description="report folder (each run gets runs/<point>/)")
    timeline: str | None = Field(None, description="point whose trace is drawn (default: most ranks, most frames)")
    reference_plan: str | None = Field(None, description="plan the others are compared with (speed-up, PSNR and "
                                       "max error of the frames; e.g. an uncached plan beside cache.step "
                                       "thresholds); every point then also writes PNG frames")

    @model_validator(mode="after")
    def _reference_is_a_plan(self) -> SweepConfig:
        names = [plan.name for plan in self.axes.plans]
        if self.reference_plan is not None and self.reference_plan not in names:
            raise ValueError(f"reference_plan {self.reference_plan!r} is not one of the plans {names}")
        return self


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep."""

    name: str
    plan: str
    ranks: int
    frames: int
    config: RunConfig


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, dict]:
    """The sweep file and its base config's raw data (overrides applied), validated."""
    path = Path(path)
    raw = load_yaml_file(path) or {}  # the config loader's bounds; errors name the file
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ConfigError(f"invalid sweep file {path}:\n" + "\n".join(lines)) from None
    base_path = (path.parent / sweep.base) if not Path(sweep.base).is_absolute() else Path(sweep.base)
    base = load_yaml_file(base_path) or {}
    return sweep, apply_overrides(base, list(sweep.set) + list(overrides or []))


def sweep_points(sweep: SweepConfig, base: dict, out_dir: Path) -> list[SweepPoint]:
    """Every point's validated run config (all checked before anything runs)."""
    from paravideo.generate import preflight

    points = []
    for plan, frames, ranks in itertools.product(sweep.axes.plans, sweep.axes.frames, sweep.axes.ranks):
        name = f"{plan.name}-f{frames}-r{ranks}"
        # JSON is YAML flow syntax, so every value survives the KEY=VALUE round trip unchanged.
        data = apply_overrides(copy.deepcopy(base), [f"{k}={json.dumps(v)}" for k, v in plan.set.items()])
        data = apply_overrides(data, [
            f"video.num_frames={frames}", f"parallel.pipeline={ranks}", "launch.launcher=local",
            f"launch.nproc={ranks}", f"output.dir={out_dir / 'runs' / name}", "output.overwrite=true",
            "output.progress=false", "output.trace=true", "parallel.stage_layers=null"]
            + (["output.frames_png=true"] if sweep.reference_plan else []))
        config = parse_config(data, source=f"sweep point {name}")
        try:
            preflight(config)  # the checks that need the model's factors (frame and size multiples)
        except ConfigError as err:
            raise ConfigError(f"sweep point {name}: {err}") from None
        points.append(SweepPoint(name=name, plan=plan.name, ranks=ranks, frames=frames, config=config))
    return points

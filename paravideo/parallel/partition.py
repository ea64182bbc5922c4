"""Stage partition: contiguous layer ranges balanced by estimated cost."""

from __future__ import annotations

from paravideo.errors import ConfigError

# Extra work of the end stages in units of one layer: the first embeds, steps schedulers and
# decodes finished blocks; the last applies the output head and the CFG combine.
FIRST_STAGE_EXTRA = 0.5
LAST_STAGE_EXTRA = 0.25


def stage_ranges(num_layers: int, stages: int, counts: list[int] | None = None) -> list[tuple[int, int]]:
    """[lo, hi) per stage; `counts` (layers per stage) overrides the balanced split."""
    if stages > num_layers:
        raise ConfigError(f"parallel.pipeline = {stages} stages, but the model has only {num_layers} layers; "
                          f"use at most {num_layers}")
    if counts is None:
        counts = balanced_counts(num_layers, stages)
    elif len(counts) != stages or any(c < 1 for c in counts) or sum(counts) != num_layers:
        raise ConfigError(f"parallel.stage_layers = {counts} must list {stages} positive layer counts (one per "
                          f"stage) summing to the model's {num_layers} layers")
    bounds = [0]
    for count in counts:
        bounds.append(bounds[-1] + count)
    return list(zip(bounds[:-1], bounds[1:]))


def _extras(stages: int) -> list[float]:
    extra = [0.0] * stages
    extra[0] += FIRST_STAGE_EXTRA
    extra[-1] += LAST_STAGE_EXTRA
    return extra


def balanced_counts(num_layers: int, stages: int) -> list[int]:
    """Layer counts minimising the most loaded stage (layers plus end-stage extras)."""
    extra = _extras(stages)
    # The smallest cap on a stage's load under which all layers fit is the optimum.
    for cap in sorted({n + e for n in range(1, num_layers + 1) for e in extra}):
        counts = [max(1, int(cap - e + 1e-9)) for e in extra]
        if sum(counts) >= num_layers:
            break
    surplus = sum(counts) - num_layers
    while surplus:  # trim the most loaded stages first, keeping one layer each
        s = max((s for s in range(stages) if counts[s] > 1), key=lambda s: (counts[s] + extra[s], s))
        counts[s] -= 1
        surplus -= 1
    return counts

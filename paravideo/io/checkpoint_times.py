"""When checkpoints are due: one rule for the driver, band ranks and decode ranks."""

from __future__ import annotations


class CheckpointTimes:
    """When checkpoints are due: after every `every`-th iteration (never after the last), on every rank alike."""

    def __init__(self, plan, every: int):
        self.every, self.last = every, plan.iterations - 1
        # Forwards come in iteration order, so the last one seen of an iteration closes it.
        last_of = {fwd.iteration: fwd.seq for fwd in plan.forwards}
        self._end_to_iteration = {seq: it for it, seq in last_of.items()}

    def due_after(self, iteration: int) -> bool:
        """Whether a checkpoint is written once `iteration` is applied."""
        return bool(self.every) and (iteration + 1) % self.every == 0 and iteration != self.last

    def __call__(self, fwd) -> int | None:
        """The iteration `fwd` closes if a checkpoint is due once it is applied, else None."""
        iteration = self._end_to_iteration.get(fwd.seq)
        return iteration if iteration is not None and self.due_after(iteration) else None

    def iterations(self, *, after: int = -1) -> list[int]:
        """The iterations past `after` after which a checkpoint is written."""
        return [it for it in range(after + 1, self.last + 1) if self.due_after(it)]

"""Step caching on one rank: run this stage's layers for a forward, or skip them when the forward is reused.

A reused forward's output is `start + residual`, where `start` is what the cached layers begin
from (the embedded input; with the first-block policy, layer 0's output) and `residual` is what all
the remaining layers added at the block's last computed step. The residual is one tensor per block
for the whole network, held by the last stage, not one per stage: summing per-stage residuals
rounds at every stage boundary, so the video would depend on the split (measured: 2 and 3 ranks
gave other latents than 1). So on a reused forward the first stage sends `start`, middle stages
pass it on untouched, and the last stage adds the residual; on a computed forward the first stage
also sends `start` straight to the last stage, which keeps `output - start` with exactly the bits
one rank would compute. The decision is made once, on the first stage (`_decide`), from statistics
summed over every first-stage rank (bands, CFG groups, sequence chunks), and reaches the later
stages ahead of the hidden states (step_header.py), so every rank skips the same forwards.

Each rank holds only its share of the hidden states (a band's token rows, a sequence chunk's tokens,
a CFG group's row of the guidance batch), and so of `start`, the indicator and the residual: the
last stage's residual is split exactly as its hidden states are, element for element the one-rank
residual's, and a reused forward adds it share by share with the same bits.

Skipped layers run no attention, so their K/V hooks do not run: the feature cache keeps the K/V
its block last computed (retain mode), and the older neighbour attends to those. A block's state
is dropped when it leaves the queue, so memory is bounded by the queue depth; `memory()` reports
the high-water mark.
"""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.cache.step_policy import BlockIndicator, Decision, StepCachePolicy, change_stats, relative_change
from paravideo.models.wan.adapter import Conditioning
from paravideo.telemetry.recorder import BUSY, Recorder
from paravideo.schedule.plan import Forward

# Forced steps that start a block's indicator afresh: the other expert's layer 0, or the iteration after a checkpoint.
RESETS = ("expert switch", "refresh")
# Sums the (2,) int64 statistics over the first stage's ranks (identity when the first stage is one rank).
Reduce = Callable[[torch.Tensor], torch.Tensor]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class StepCache:
    """This rank's cached layers: `__call__(fwd, hidden, cond)` replaces the stage runner's layer call."""

    def __init__(self, experts, policy: StepCachePolicy, *, first_stage: bool, last_stage: bool, recorder: Recorder,
                 reduce: Reduce = lambda stats: stats, start_link=None, feature_cache=None,
                 max_blocks: int | None = None):
        self.experts, self.policy = experts, policy
        self.first_stage, self.last_stage = first_stage, last_stage
        self.recorder, self.reduce, self.feature_cache = recorder, reduce, feature_cache
        self.start_link = start_link  # first -> last stage with a pipeline (step_header.StartLink)
        self.max_blocks = max_blocks
        self.residuals: dict[int, torch.Tensor] = {}  # last stage: each block's residual over the cached layers
        self.indicators: dict[int, torch.Tensor] = {}  # first stage: each block's reference indicator
        self.states: dict[int, BlockIndicator] = {}
        self.decisions: dict[int, Decision] = {}  # by forward seq; later stages learn them from the header
        self.peak_bytes = 0
        self.peak_blocks = 0
        # Forces a decision (tests): seq -> reuse. The forced reuse still needs a stored residual.
        self.override: dict[int, bool] = {}

    # --- the decision -------------------------------------------------------------------------------------------
    def receive(self, seq: int, reuse: bool) -> None:
        """A later stage: the first stage's verdict for forward `seq` (from the header)."""
        self.decisions[seq] = Decision(seq, -1, -1, reuse, "header")

    def _decide(self, fwd: Forward, indicator: torch.Tensor) -> Decision:
        k = fwd.block
        # Kept in the model's dtype (half the memory in bf16); both sides of the change are rounded alike.
        indicator = indicator.detach().to(self.experts.dtype)
        state = self.states.setdefault(k, BlockIndicator())
        reference = self.indicators.get(k)
        if self.policy.forced_reason(fwd) in RESETS:
            reference = None  # measured against nothing, so a resumed run's report equals the uninterrupted one
        change = None if reference is None else relative_change(self.reduce(change_stats(indicator, reference)))
        decision = self.policy.decide(fwd, change, state)
        if fwd.seq in self.override:
            decision = Decision(fwd.seq, k, fwd.step, self.override[fwd.seq], "forced by test", change)
        if not decision.reuse or self.policy.accumulates:
            self.indicators[k] = indicator  # a fresh tensor, never written to
        self.decisions[fwd.seq] = decision
        return decision

    # --- the layers ---------------------------------------------------------------------------------------------
    def __call__(self, fwd: Forward, hidden: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """This stage's output for `fwd`: its layers, or (reused) `start` passed on / plus the residual."""
        stage = self.experts.at(fwd.step)
        first_block = self.policy.name == "first_block"
        start = hidden
        if self.first_stage and first_block:
            start = stage.run_layers(hidden, cond, layers=slice(0, 1))  # layer 0 always runs: it is the indicator
            decision = self._decide(fwd, start - hidden)
        elif self.first_stage:
            decision = self._decide(fwd, stage.modulated_input(hidden, cond))
        else:
            decision = self.decisions[fwd.seq]
        if decision.reuse:
            with self.recorder.span("step cache: reuse", BUSY, block=fwd.block, step=fwd.step,
                                    change=decision.change, budget=decision.budget):
                out = self._reuse(fwd, start)
        else:
            out = self._compute(fwd, stage, start, cond, slice(1, None) if self.first_stage and first_block
                                else slice(None))
        self._account()
        if fwd.is_last_step:
            self._leave(fwd.block)
        return out

    def _reuse(self, fwd: Forward, start: torch.Tensor) -> torch.Tensor:
        if self.last_stage:
            return start + self.residuals[fwd.block]
        # Passed on untouched; a copy, since a later stage's input buffer goes back to the pool before it is sent.
        return start if self.first_stage else start.clone()

    def _compute(self, fwd: Forward, stage, start: torch.Tensor, cond: Conditioning, layers: slice) -> torch.Tensor:
        if self.first_stage and not self.last_stage:
            self.start_link.send(start)  # before the layers: the transfer overlaps them
        pending = self.start_link.post(start) if self.last_stage and not self.first_stage else None
        out = stage.run_layers(start, cond, layers=layers)
        if self.last_stage:
            first_start = self.start_link.wait(pending) if pending is not None else start
            self.residuals[fwd.block] = out - first_start
            if pending is not None:
                self.start_link.give(first_start)
        return out

    def _account(self) -> None:
        held = _nbytes(self.residuals.values()) + _nbytes(self.indicators.values())
        self.peak_bytes = max(self.peak_bytes, held)
        blocks = max(len(self.residuals), len(self.indicators))
        self.peak_blocks = max(self.peak_blocks, blocks)
        assert self.max_blocks is None or blocks <= self.max_blocks, "step cache outgrew the queue"

    def _leave(self, block: int) -> None:
        """`block` left the queue: drop its state, and the K/V it kept for its newer neighbour's reader."""
        self.residuals.pop(block, None)
        self.indicators.pop(block, None)
        self.states.pop(block, None)
        if self.feature_cache is not None:
            self.feature_cache.forget(block + 1)  # block was the only reader of block+1's head K/V

    # --- reports ------------------------------------------------------------------------------------------------
    def reused_seqs(self) -> list[int]:
        """Forwards this rank reused, in plan order."""
        return sorted(seq for seq, d in self.decisions.items() if d.reuse)

    def memory(self) -> dict:
        """High-water marks of what the cache held on this rank."""
        return {"peak_bytes": self.peak_bytes, "peak_blocks": self.peak_blocks}

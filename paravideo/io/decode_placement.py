"""Which ranks run which decoder pieces (parallel.decode: pipeline), and where the cuts go by cost."""

from __future__ import annotations

from dataclasses import dataclass

from paravideo.errors import ConfigError

WRITER_RANK = 0  # the mp4 sink, run.json and checkpoints stay with the driver rank


@dataclass(frozen=True)
class DecodePlacement:
    """Decoder pieces [cuts[i], cuts[i+1]) run on ranks[i]; frames flow ranks[0] -> ... -> ranks[-1] -> writer.

    ranks[0] is the driver (it holds the clean latents); every other rank decodes on a helper
    thread beside its DiT stage, so a rank's total is its layers plus its decode share.
    """

    ranks: tuple[int, ...]
    cuts: tuple[int, ...]

    def __post_init__(self) -> None:
        assert len(self.cuts) == len(self.ranks) + 1 and self.cuts[0] == 0, (self.ranks, self.cuts)
        assert all(a < b for a, b in zip(self.cuts, self.cuts[1:])), self.cuts

    @property
    def pieces(self) -> int:
        return self.cuts[-1]

    def range_of(self, rank: int) -> tuple[int, int] | None:
        """The decoder pieces [lo, hi) of `rank`, or None when it decodes nothing."""
        if rank not in self.ranks:
            return None
        i = self.ranks.index(rank)
        return self.cuts[i], self.cuts[i + 1]

    def prev_of(self, rank: int) -> int:
        return self.ranks[self.ranks.index(rank) - 1]

    def next_of(self, rank: int) -> int:
        """Where `rank` sends its output: the next decode rank, or the writer after the last one."""
        i = self.ranks.index(rank)
        return self.ranks[i + 1] if i + 1 < len(self.ranks) else WRITER_RANK

    def to_json(self) -> dict:
        return {"ranks": list(self.ranks), "pieces": [b - a for a, b in zip(self.cuts, self.cuts[1:])]}


def chain_ranks(*, world_size: int, num_pieces: int, ranks: list[int] | None) -> list[int]:
    """The decode ranks in frame order (parallel.decode_ranks, checked); default: every rank in order, at most
    one per piece."""
    ranks = list(ranks) if ranks is not None else list(range(min(world_size, num_pieces)))
    if ranks[0] != 0 or len(set(ranks)) != len(ranks) or any(not 0 <= r < world_size for r in ranks):
        raise ConfigError(f"parallel.decode_ranks = {ranks} must start with rank 0 (it holds the finished latents) "
                          f"and name distinct ranks below the world size {world_size}")
    if len(ranks) < 2:
        raise ConfigError("parallel.decode: pipeline needs at least 2 decode ranks; use parallel.decode: rank0 "
                          "for a one-rank run")
    if len(ranks) > num_pieces:
        raise ConfigError(f"parallel.decode_ranks names {len(ranks)} ranks, but this model's VAE decoder has "
                          f"{num_pieces} pieces to share; name at most {num_pieces}")
    return ranks


def placement_of(ranks: list[int], counts: list[int], num_pieces: int) -> DecodePlacement:
    """The placement of `counts` pieces per decode rank (parallel.decode_pieces, checked)."""
    if len(counts) != len(ranks) or sum(counts) != num_pieces or min(counts) < 1:
        raise ConfigError(f"parallel.decode_pieces = {counts} must give each of the {len(ranks)} decode ranks at "
                          f"least one piece and sum to the decoder's {num_pieces} pieces")
    cuts = [0]
    for c in counts:
        cuts.append(cuts[-1] + c)
    return DecodePlacement(tuple(ranks), tuple(cuts))


def finished_frames_by_iteration(plan) -> list[int]:
    """Latent frames that have left the queue (and so been decoded) once each iteration is applied."""
    done_at: dict[int, int] = {}
    for fwd in plan.forwards:
        if fwd.is_last_step:
            done_at[fwd.iteration] = done_at.get(fwd.iteration, 0) + plan.blocks[fwd.block].frames
    out, total = [], 0
    for it in range(plan.iterations):
        total += done_at.get(it, 0)
        out.append(total)
    return out

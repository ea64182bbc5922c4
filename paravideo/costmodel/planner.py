"""`paravideo plan`: predict candidate plans (pipeline degree, block size) for a GPU count and rank them."""

from __future__ import annotations

from dataclasses import dataclass

from paravideo.costmodel.cost_model import Prediction, predict
from paravideo.costmodel.profiles import HardwareProfile
from paravideo.costmodel.scenario import DecodeShape, Scenario

GIB = 1024 ** 3
BLOCK_SIZES = (1, 2, 4, 6, 8, 12, 16, 24, 32)
PATCH_DEGREES = (1, 2, 4, 8)


@dataclass
class Candidate:
    """One plan and its prediction."""

    scenario: Scenario
    prediction: Prediction
    fits: bool

    @property
    def split(self) -> str:
        """Layers per stage, then decoder pieces per decode rank ("3+5 | 9+4"), as the engine will choose them."""
        balance = self.scenario.balance
        layers = "+".join(map(str, balance.stage_layers))
        if balance.decode is None:
            return layers
        return layers + " | " + "+".join(map(str, balance.decode.to_json()["pieces"]))

    @property
    def overrides(self) -> list[str]:
        s = self.scenario
        return [f"parallel.pipeline={s.pipeline}", f"parallel.patch={s.patch}", f"parallel.cfg={s.cfg_parallel}",
                f"parallel.ulysses={s.ulysses}", f"parallel.ring={s.ring}", f"launch.nproc={s.world_size}",
                f"blocks.block_frames={s.block_frames}", f"parallel.decode={s.decode}"]

    def row(self) -> dict:
        p, s = self.prediction, self.scenario
        return {"gpus_used": s.world_size, "pipeline": s.pipeline, "patch": s.patch, "cfg": s.cfg_parallel,
                "ulysses": s.ulysses, "ring": s.ring, "block_frames": s.block_frames, "decode": s.decode,
                "split": self.split, "blocks": len(s.plan.blocks), "wall_s": p.wall_s,
                "time_to_first_frame_s": p.first_frame_s,
                "max_memory_gib": p.max_peak_memory / GIB, "fits": self.fits, "bubble": p.bubble,
                "sent_gib": p.bytes_sent / GIB, "overrides": self.overrides}


def block_sizes(base: Scenario) -> list[int]:
    """The config's block size plus the usual ones that fit the video and hold the context."""
    sizes = {b for b in BLOCK_SIZES if max(1, base.context_frames) <= b <= base.latent_frames}
    sizes.add(base.block_frames)
    if base.context_frames == 0:
        sizes.add(0)  # one block: the whole video at once
    return sorted(sizes)


def meshes(base: Scenario, gpus: int) -> list[dict]:
    """Degrees to try: pipelines on up to `gpus` GPUs, times CFG groups (with guidance on) and Ulysses degrees
    that divide the heads (both exact); pipeline x patch using all of them.

    Patch degrees and ring go in only when the config asks for them (their approximation is the user's choice).
    """
    cfgs = (1, 2) if base.cfg else (1,)
    ulysses = [u for u in (1, 2, 4, 8) if base.shape.num_heads % u == 0]
    rings = sorted({1, base.ring})
    out = []
    for c in cfgs:
        for u in ulysses:
            for r in rings:
                out += [dict(pipeline=p, patch=1, cfg_parallel=c, ulysses=u, ring=r)
                        for p in range(1, min(gpus // (c * u * r), base.shape.num_layers) + 1)]
    if base.patch > 1:
        rows = base.split.token_rows
        out += [dict(pipeline=gpus // q, patch=q, cfg_parallel=1, ulysses=1, ring=1) for q in PATCH_DEGREES
                if 1 < q <= rows and gpus % q == 0 and gpus // q <= base.shape.num_layers]
    return out


def candidates(base: Scenario, gpus: int, profile: HardwareProfile) -> list[Candidate]:
    """Every mesh with every block size and decode placement, predicted."""
    decode = DecodeShape.of(base)
    base = base.but(decode_flops=tuple(p.flops for p in decode.pieces))  # counted once for every candidate
    out = []
    for mesh in meshes(base, gpus):
        # The decode pipeline is not combined with CFG groups or sequence chunks (config validation).
        plain = mesh["cfg_parallel"] * mesh["ulysses"] * mesh["ring"] == 1
        ranks = mesh["pipeline"] * mesh["patch"]
        placements = ("rank0", "pipeline") if plain and ranks > 1 and decode.pieces else ("rank0",)
        for block in block_sizes(base):
            seq = mesh["ulysses"] * mesh["ring"]
            smallest = min(b.frames for b in base.but(block_frames=block).plan.blocks) * base.tokens_per_frame
            if seq > smallest:
                continue  # the engine refuses chunks with no token
            for placement in placements:
                scenario = base.but(**mesh, block_frames=block, decode=placement)
                prediction = predict(scenario, profile, decode)
                out.append(Candidate(scenario, prediction, prediction.max_peak_memory <= profile.memory_gib * GIB))
    return rank(out)


def rank(items: list[Candidate]) -> list[Candidate]:
    """Plans that fit first, then by predicted wall time, then by fewer GPUs."""
    return sorted(items, key=lambda c: (not c.fits, c.prediction.wall_s, c.scenario.world_size))


def render(items: list[Candidate], *, top: int, profile: HardwareProfile, gpus: int) -> str:
    """A plain-text table of the best `top` candidates and the recommended overrides."""
    lines = [f"candidate plans for {gpus} GPU(s) on profile {profile.name} ({profile.description}); "
             "ranked by predicted wall time among plans that fit in memory",
             f"{'#':>3} {'gpus':>4} {'pipe':>4} {'patch':>5} {'cfg':>3} {'uly':>3} {'ring':>4} {'block':>5} "
             f"{'decode':>8} {'split (layers | pieces)':>23} {'blocks':>6} {'wall s':>10} {'1st frame s':>11} "
             f"{'GiB/GPU':>8} {'fits':>4} {'bubble':>6} {'GiB sent':>9}"]
    for i, c in enumerate(items[:top], 1):
        r = c.row()
        lines.append(f"{i:>3} {r['gpus_used']:>4} {r['pipeline']:>4} {r['patch']:>5} {r['cfg']:>3} {r['ulysses']:>3} "
                     f"{r['ring']:>4} {r['block_frames']:>5} {r['decode']:>8} {r['split']:>23} {r['blocks']:>6} "
                     f"{r['wall_s']:>10.1f} {r['time_to_first_frame_s']:>11.1f} {r['max_memory_gib']:>8.2f} "
                     f"{'yes' if r['fits'] else 'NO':>4} {r['bubble']:>6.2f} {r['sent_gib']:>9.2f}")
    if items and items[0].fits:
        lines.append("recommended: " + " ".join(f"--set {o}" for o in items[0].overrides))
    else:
        lines.append("no candidate fits in memory on this profile")
    lines.append("block size changes the video (the context each block sees); compare quality before adopting it")
    return "\n".join(lines)

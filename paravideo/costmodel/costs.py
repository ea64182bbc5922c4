"""Seconds of each piece of work and message of a scenario on a hardware profile (the replay's input)."""

from __future__ import annotations

from paravideo.costmodel.decode_cost import piece_seconds
from paravideo.costmodel.flops import (Window, condition_flops, embed_flops, head_flops, layer_flops,
                                       text_projection_flops)
from paravideo.costmodel.profiles import HardwareProfile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.costmodel.shapes import DiTShape, stage_param_bytes
from paravideo.costmodel.simulate import ScheduleCosts

MEGA = 1e6


def forward_dit_flops(s: Scenario) -> list[int]:
    """FLOPs of each block-forward through the whole DiT (every band, CFG group and sequence chunk: embed,
    conditioning, layers, head)."""
    out = []
    for fwd in s.plan.forwards:
        total = 0
        for band in range(s.patch):
            w = s.window(fwd, band)
            total += s.replicas * (s.shape.num_layers * sum(layer_flops(s.shape, w).values())
                                   + condition_flops(s.shape, s.batch) + embed_flops(s.shape, w.query_tokens)
                                   + head_flops(s.shape, s.rank_batch, w.query_tokens))
        out.append(total)
    return out


ATTENTION_TERMS = ("self_attn", "cross_attn")


def layer_compute_seconds(shape: DiTShape, w: Window, profile: HardwareProfile) -> float:
    """One layer's matrix products over window `w`: the attention products at the attention rate (a fused
    kernel), the projections and FFN at the DiT rate."""
    terms = layer_flops(shape, w)
    attention = sum(terms[k] for k in ATTENTION_TERMS)
    return (sum(terms.values()) - attention) / profile.dit_flops_per_s + attention / profile.attention_flops_per_s


def _exchange_s(s: Scenario, profile: HardwareProfile, seq: int) -> float:
    """Per layer: the synchronous K/V gather of an exact step, or completing a stale refresh later on.

    A stale (distrifusion, pcpp) refresh is started a whole iteration before it is completed, so
    only the wait call is charged; an exact gather moves every peer's rows before attention.
    """
    t = s.traffic
    step = s.plan.forwards[seq].step
    if not t.exact_at(step):
        return profile.wait_overhead_s
    remote = [p for p in t.pieces_of(0, step) if p.index != 0]
    return profile.wait_overhead_s + sum(profile.message_s(t.kv_bytes(seq, p)) for p in remote)


def _sequence_s(s: Scenario, profile: HardwareProfile, seq: int) -> tuple[float, float]:
    """Per layer: Ulysses' two all-to-alls and the ring's R-1 K/V steps; per forward: the head's token gather.

    A ring step overlaps the attention of the chunk held; the model charges its message in full (an upper bound).
    """
    if s.seq == 1:
        return 0.0, 0.0
    t, u, r = s.traffic, s.ulysses, s.ring
    sizes = t.chunk_sizes(seq)
    b, d, nbytes = s.rank_batch, s.shape.dim, s.dtype_bytes
    layer = 0.0
    if u > 1:
        mine, group = sizes[0], sum(sizes[:u])
        layer += 2 * profile.wait_overhead_s + profile.message_s(3 * b * mine * d // u * (u - 1) * nbytes) \
            + profile.message_s(b * (group - mine) * d // u * nbytes)
    if r > 1:
        ring = max(sum(sizes[i * u:(i + 1) * u]) for i in range(r))
        layer += (r - 1) * (profile.wait_overhead_s + profile.message_s(2 * b * ring * d // u * nbytes))
    gather = profile.wait_overhead_s + profile.message_s(b * max(sizes) * d * (s.seq - 1) * nbytes)
    return layer, gather


def schedule_costs(s: Scenario, profile: HardwareProfile, decode: DecodeShape, slow: float = 1.0, *,
                   decode_slow: float | None = None) -> ScheduleCosts:
    """Seconds of every piece of work and message of band 0 (the largest) of each stage; the DiT's work
    slowed by `slow`, the decode by `decode_slow` (default `slow`)."""
    decode_slow = slow if decode_slow is None else decode_slow
    rate = profile.dit_flops_per_s / slow
    call = profile.call_overhead_s * slow
    layers_s: list[list[float]] = [[] for _ in s.ranges]
    embed_s, head_s = [], []
    cond_s = call + condition_flops(s.shape, s.batch) / rate
    for fwd in s.plan.forwards:
        w = s.window(fwd)
        one_layer = (profile.layer_overhead_s + layer_compute_seconds(s.shape, w, profile)) * slow
        if s.patch > 1:
            one_layer += _exchange_s(s, profile, fwd.seq)
        seq_layer_s, gather_s = _sequence_s(s, profile, fwd.seq)
        one_layer += seq_layer_s
        for stage, (lo, hi) in enumerate(s.ranges):
            layers_s[stage].append(cond_s + (hi - lo) * one_layer)
        # Every chunk embeds the whole window and, after the gather, runs the head on all of it.
        full = w.query_tokens * s.seq
        embed_s.append(call + embed_flops(s.shape, full) / rate)
        # CFG parallelism: the conditional head waits for the unconditional prediction (same schedule, one message).
        uncond_s = profile.message_s(s.traffic.prediction_bytes(fwd.seq)) + profile.wait_overhead_s \
            if s.cfg_parallel > 1 else 0.0
        head_s.append(call + head_flops(s.shape, s.rank_batch, full) / rate + (gather_s if s.seq > 1 else 0.0)
                      + uncond_s)
    pixels = s.latent_height * s.latent_width * 64 / MEGA  # megapixels per output frame (VAE 8x8)
    write_frame_s = profile.write_frame_s + pixels * profile.write_s_per_mpixel
    t = s.traffic
    gather = [sum(profile.message_s(t.latent_bytes(b.frames, band)) for band in range(1, s.patch))
              for b in s.plan.blocks]
    frame_s = decode_frame_seconds(s, profile, decode)
    first = decode.first_frame_flops / decode.frame_flops if decode.frame_flops else 1.0
    # [rank][block]: seconds of the rank's decode pieces for the block's latent frames (video frame 0 is cheaper)
    decode_s = {r: [sum(later * (first if f == 0 else 1.0) for f in range(b.start, b.stop)) * decode_slow
                    for b in s.plan.blocks] for r, later in frame_s.items()}
    none = [0.0] * len(s.plan.blocks)
    received = _decode_input_s(s, profile, decode)
    # Bands of a stage run side by side: the stage's timeline carries the largest band's decode share.
    stage_decode = [[max((decode_s.get(s.patch * stage + band, none)[b.index]
                          + received.get(s.patch * stage + band, 0.0) * b.frames
                          for band in range(1 if stage == 0 else 0, s.patch)), default=0.0)
                     for b in s.plan.blocks] for stage in range(s.pipeline)]
    block_out = [max(d + s.block_output_frames(b.index) * write_frame_s + gather[b.index], other)
                 for b, d, other in zip(s.plan.blocks, decode_s[0], stage_decode[0])]
    block_out[0] += profile.video_open_s
    seqs = range(len(s.plan.forwards))
    return ScheduleCosts(layers_s=layers_s, embed_s=embed_s, head_s=head_s,
                         scheduler_step_s=profile.scheduler_step_s * slow, block_out_s=block_out,
                         hidden_msg_s=[profile.message_s(t.hidden_bytes(q)) for q in seqs],
                         prediction_msg_s=[profile.message_s(t.prediction_bytes(q)) for q in seqs],
                         wait_s=profile.wait_overhead_s, decode_s=stage_decode[1:])


def decode_frame_seconds(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> dict[int, float]:
    """Seconds per later latent frame each decoding rank spends in its decoder pieces (rank 0 alone
    unless parallel.decode=pipeline); pieces are priced by their ops (decode_cost.py) when counted."""
    overhead = profile.decode_frame_overhead_s
    if decode.traffic:
        piece_s = [piece_seconds(p, profile) + overhead / len(decode.traffic) for p in decode.traffic]
    elif decode.pieces:
        piece_s = [p.flops / profile.vae_flops_per_s + overhead / len(decode.pieces) for p in decode.pieces]
    else:
        piece_s = [decode.frame_flops / profile.vae_flops_per_s + overhead]
    placement = decode.placement(s)
    if placement is None:
        return {0: sum(piece_s)}
    return {r: sum(piece_s[slice(*placement.range_of(r))]) for r in placement.ranks}


def video_decode_seconds(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> float:
    """Seconds to decode all latent frames of the video on one rank (no placement: the one-process baselines)."""
    later = sum(decode_frame_seconds(s.but(decode="rank0"), profile, decode).values())
    first = decode.first_frame_flops / decode.frame_flops if decode.frame_flops else 1.0
    return later * (s.latent_frames - 1 + first)


def _decode_input_s(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> dict[int, float]:
    """Seconds per latent frame each decode rank spends taking its input activations off the wire."""
    placement = decode.placement(s)
    if placement is None:
        return {}
    return {r: profile.message_s(decode.pieces[placement.range_of(r)[0] - 1].out_bytes)
            for r in placement.ranks[1:]}


def text_encoder_flops(s: Scenario) -> int:
    """The text encoder's forward over every prompt (and the negative one): ~2 FLOPs per weight per token."""
    return 2 * (s.shape.text_encoder_params or 0) * s.text_tokens * (s.prompts + int(s.cfg))


def text_encoder_seconds(s: Scenario, profile: HardwareProfile) -> float:
    """Seconds of the text encoder's forward and the DiT's text projection (rank 0, before the first forward)."""
    return (text_projection_flops(s.shape, s.prompts + int(s.cfg), s.text_tokens)
            + text_encoder_flops(s)) / profile.dit_flops_per_s


def attention_seconds(s: Scenario, profile: HardwareProfile) -> float:
    """Seconds of band 0's attention products (self and cross) over all forwards of one rank: a part of
    the layers' time, reported on its own by benchmarks/cost_phases.py."""
    total = 0.0
    for fwd in s.plan.forwards:
        terms = layer_flops(s.shape, s.window(fwd))
        total += s.shape.num_layers * sum(terms[k] for k in ATTENTION_TERMS) / profile.attention_flops_per_s
    return total


def startup_seconds(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> float:
    """Fixed start-up plus reading rank 0's share (its stage, the float32 text encoder and VAE) and encoding
    the prompts there."""
    lo, hi = s.ranges[0]
    nbytes = stage_param_bytes(s.shape, hi - lo, s.dtype_bytes) + 4 * ((s.shape.text_encoder_params or 0)
                                                                       + decode.params)
    return profile.startup_s + nbytes / (profile.load_gbps * 1e9) + text_encoder_seconds(s, profile)

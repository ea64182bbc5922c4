"""Memory per rank: weights (exact), feature cache and buffers (from shapes), activations (working-set estimate)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from paravideo.parallel.comm import MAX_SENDS_IN_FLIGHT
from paravideo.costmodel.profiles import HardwareProfile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.costmodel.shapes import stage_param_bytes

GIB = 1024 ** 3
FP32 = 4
# rank 0 keeps per queued block its latents plus a multistep scheduler's history (UniPC, order 2).
LATENT_COPIES = 4


@dataclass
class MemoryBreakdown:
    """Bytes one rank holds; the peak is the larger of the loading phase and the denoise loop."""

    base: int
    weights: int
    activations: int
    feature_cache: int
    stale_buffers: int  # patch parallelism's one-step-stale K/V of other bands (none without it)
    comm_buffers: int
    driver: int  # rank 0: latent queue with scheduler state, and the VAE
    text_encoder: int  # rank 0: held only while the prompts are encoded, before the loop
    decode: int = 0  # decoder caches and activations of the rank's pieces; other decode ranks' VAE weights

    @property
    def peak(self) -> int:
        loop = (self.activations + self.feature_cache + self.stale_buffers + self.comm_buffers + self.driver
                + self.decode)
        return self.base + self.weights + max(self.text_encoder, loop)

    def to_json(self) -> dict:
        return {**asdict(self), "peak": self.peak}


def _activations(s: Scenario, profile: HardwareProfile, band: int) -> int:
    """Largest working set of one layer over the plan's forwards (residual stream + the widest sub-layer)."""
    d, f, heads, nbytes = s.shape.dim, s.shape.ffn_dim, s.shape.num_heads, s.dtype_bytes
    worst = 0
    for fwd in s.plan.forwards:
        w = s.window(fwd, band)
        b, q, kv, text = w.batch, w.query_tokens, w.key_tokens, w.text_tokens
        scores = b * heads * q * max(kv, text) * FP32 if profile.attention_scores_in_memory else 0
        ffn = b * q * (2 * d + 2 * f) * nbytes
        attn = b * (6 * q * d + 2 * kv * d) * nbytes + scores
        cross = b * (4 * q * d + 2 * text * d) * nbytes + scores
        worst = max(worst, b * q * d * nbytes + max(ffn, attn, cross))
    return worst


def _stale_buffers(s: Scenario, layers: int, band: int) -> int:
    """distrifusion / pcpp: per queued block and layer, two sets (read, being filled) of the remote pieces."""
    t = s.traffic
    if s.patch == 1 or s.patch_mode == "exact" or s.warmup_steps >= s.steps:
        return 0
    remote = [p for p in t.pieces_of(band, s.steps - 1) if p.index != band]
    widest = max(range(len(s.plan.forwards)), key=t.frames)
    return s.plan.max_queue * layers * 2 * sum(t.kv_bytes(widest, p) for p in remote)


def _feature_cache(s: Scenario, layers: int) -> int:
    """One block's head K/V per layer: stored by the newer block, read by the older in the same iteration."""
    if not s.plan.feature_cache:
        return 0
    frames = min(s.context_frames, max(b.frames for b in s.plan.blocks))
    # Under Ulysses a rank caches its heads' share; under ring every rank keeps the cached frames' whole K/V
    # (assembled from the chunks passing round the ring).
    return layers * 2 * s.rank_batch * frames * s.tokens_per_frame * s.shape.dim * s.dtype_bytes // s.ulysses


def _comm_buffers(s: Scenario, stage: int) -> int:
    """Pooled receive buffers and the tensors of sends still in flight."""
    if s.pipeline == 1:
        return 0
    layout = s.traffic
    seqs = range(len(s.plan.forwards))
    hidden = max(layout.hidden_bytes(q) for q in seqs)
    prediction = max(layout.prediction_bytes(q) for q in seqs)
    last = s.pipeline - 1
    held = 0
    if stage > 0:
        held += 2 * hidden  # the buffer being computed on, and the next receive posted ahead
    held += (MAX_SENDS_IN_FLIGHT + 1) * (prediction if stage == last else hidden)
    if stage == 0:
        held += (s.plan.max_queue + 1) * prediction  # a posted receive per forward in flight
    return held


def _driver(s: Scenario, decode: DecodeShape, band: int) -> int:
    """A first-stage band's queue of latent rows with scheduler state; rank 0 also holds the VAE."""
    block = max(b.frames for b in s.plan.blocks) + s.context_frames
    rows = s.split.bands[band].rows / s.split.token_rows
    latent = s.shape.out_channels * block * s.latent_height * s.latent_width * FP32 * rows
    return int(s.plan.max_queue * LATENT_COPIES * latent) + (decode.params * FP32 if band == 0 else 0)


def _decode(s: Scenario, decode: DecodeShape, rank: int) -> int:
    """The rank's decode working set; a decode rank other than 0 also loads the float32 VAE."""
    weights = decode.params * FP32 if rank != 0 and rank in decode.shares(s) else 0
    return weights + decode.memory(s, rank)


def _text_bytes(s: Scenario, profile: HardwareProfile) -> int:
    """Bytes per text-encoder parameter: the worker loads it in float32 on CPU, in the model dtype on GPU."""
    return FP32 if profile.device == "cpu" else s.dtype_bytes


def memory_by_rank(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> list[MemoryBreakdown]:
    """The breakdown for every rank (numbered as the engine's layout numbers them)."""
    activations = {band: _activations(s, profile, band) for band in range(s.patch)}
    out = []
    for rank in range(s.world_size):
        stage, band = s.layout.stage_of(rank), s.layout.band_of(rank)
        lo, hi = s.ranges[stage]
        out.append(MemoryBreakdown(
            base=int(profile.runtime_base_gib * GIB), weights=stage_param_bytes(s.shape, hi - lo, s.dtype_bytes),
            activations=activations[band], feature_cache=_feature_cache(s, hi - lo),
            stale_buffers=_stale_buffers(s, hi - lo, band), comm_buffers=_comm_buffers(s, stage),
            driver=_driver(s, decode, band) if stage == 0 else 0,
            text_encoder=(s.shape.text_encoder_params or 0) * _text_bytes(s, profile) if rank == 0 else 0,
            decode=_decode(s, decode, rank)))
    return out

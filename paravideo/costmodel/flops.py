"""FLOPs of one block-forward, counted from shapes (matmuls and attention; elementwise ops are not counted)."""

from __future__ import annotations

from dataclasses import dataclass

from paravideo.costmodel.shapes import DiTShape
from paravideo.schedule.plan import BlockPlan, Forward


@dataclass(frozen=True)
class Window:
    """Token counts of one block-forward: queries, self-attention keys (with feature-cache keys), text."""

    batch: int
    query_tokens: int
    key_tokens: int
    text_tokens: int


def matmul(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product (a multiply and an add per term)."""
    return 2 * m * k * n


def layer_flops(shape: DiTShape, w: Window) -> dict[str, int]:
    """One transformer layer, by term: self-attention, cross-attention over the text, FFN."""
    d, b, q = shape.dim, w.batch, w.query_tokens
    return {
        "self_proj": 4 * matmul(b * q, d, d),  # q, k, v, out
        "self_attn": 2 * matmul(b * q, d, w.key_tokens),  # QK^T and AV over all heads
        "cross_proj": 2 * matmul(b * q, d, d),  # q, out
        # Text K/V are projected again in every forward (diffusers does not cache them).
        "cross_kv": 2 * matmul(b * w.text_tokens, d, d),
        "cross_attn": 2 * matmul(b * q, d, w.text_tokens),
        "ffn": matmul(b * q, d, shape.ffn_dim) + matmul(b * q, shape.ffn_dim, d),
    }


def condition_flops(shape: DiTShape, batch: int) -> int:
    """Timestep embedding and modulation projection, done by every stage for every forward."""
    d = shape.dim
    return matmul(batch, shape.freq_dim, d) + matmul(batch, d, d) + matmul(batch, d, 6 * d)


def embed_flops(shape: DiTShape, tokens: int) -> int:
    """Patch embedding of one latent window (batch 1; CFG copies the tokens)."""
    return matmul(tokens, shape.in_channels * shape.patch_volume, shape.dim)


def head_flops(shape: DiTShape, batch: int, tokens: int) -> int:
    """Output projection to patches."""
    return matmul(batch * tokens, shape.dim, shape.out_channels * shape.patch_volume)


def text_projection_flops(shape: DiTShape, texts: int, text_tokens: int) -> int:
    """The text embedder, once per distinct text per rank."""
    return matmul(texts * text_tokens, shape.text_dim, shape.dim) + matmul(texts * text_tokens, shape.dim, shape.dim)


def window(plan: BlockPlan, fwd: Forward, *, tokens_per_frame: int, batch: int, text_tokens: int,
           key_tokens_per_frame: int | None = None, cached_tokens_per_frame: int | None = None) -> Window:
    """Tokens of forward `fwd`: context + block queries; keys add the newer neighbour's cached head.

    With patch bands the queries are one band's rows while keys cover the rows the band sees
    (`key_tokens_per_frame`), and the cached head keeps the layout of the step it was made at.
    """
    lo, hi = plan.window(fwd)
    keys = key_tokens_per_frame or tokens_per_frame
    cached = 0
    if fwd.future_block is not None:
        cached = min(plan.context_frames, plan.blocks[fwd.future_block].frames) * (cached_tokens_per_frame or keys)
    return Window(batch=batch, query_tokens=(hi - lo) * tokens_per_frame, key_tokens=(hi - lo) * keys + cached,
                  text_tokens=text_tokens)


def vae_decode_flops(vae_config: dict, latent_height: int, latent_width: int) -> tuple[int, int]:
    """FLOPs to decode the first latent frame and each later one, counted on meta tensors (no weights)."""
    import torch
    from diffusers import AutoencoderKLWan
    from torch.utils.flop_counter import FlopCounterMode

    from paravideo.io.vae_stream import StreamingDecoder

    kwargs = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLWan(**kwargs)
        decoder = StreamingDecoder(vae)
        z = torch.zeros(1, vae.config.z_dim, 1, latent_height, latent_width)
    counts = []
    for _ in range(2):
        with FlopCounterMode(display=False) as counter:
            decoder.decode(z)
        counts.append(int(counter.get_total_flops()))
    return counts[0], counts[1]




@dataclass(frozen=True)
class OpTraffic:
    """One tensor op of a decoder piece: FLOPs, bytes moved through memory, and the bytes it touches at once."""

    flops: int
    bytes: int
    working_set: int


@dataclass(frozen=True)
class PieceTraffic:
    """The ops one decoder piece runs for a later latent frame (views excluded: they move nothing)."""

    ops: tuple[OpTraffic, ...]

    @property
    def flops(self) -> int:
        return sum(o.flops for o in self.ops)


def conv_traffic(inputs: int, output: int, weight: int, *, in_channels: int, kernel_volume: int,
                 out_positions: int, out_channels: int, unfolds: bool) -> OpTraffic:
    """A convolution; with `unfolds` as CPU torch runs a 3-D one (slow_conv3d): the input is unfolded into an
    (in_channels x kernel volume) x positions float32 matrix, written once and read once by the matrix
    product. 2-D convolutions (oneDNN) and 1x1x1 ones read their input in place."""
    unfold = 4 * in_channels * kernel_volume * out_positions if unfolds else 0
    # What must stay cached between two passes is the unfolded matrix (written by the unfold, read by the
    # product); without one, the op streams its input and output once.
    return OpTraffic(flops=matmul(out_channels, in_channels * kernel_volume, out_positions),
                     bytes=inputs + output + weight + 2 * unfold, working_set=unfold or inputs + output + weight)


def decoder_piece_traffic(vae_config: dict, latent_height: int, latent_width: int) -> list[PieceTraffic]:
    """The ops of each decoder piece (io/decoder_pieces.py) for a later latent frame, recorded on meta
    tensors (no weights, no compute)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import flop_registry

    from paravideo.io.decoder_pieces import steady_state_pieces

    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[OpTraffic] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view:
                return out
            ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if func is torch.ops.aten.convolution.default:
                x, w, y = args[0], args[1], outs[0]
                positions = y.numel() // y.shape[1]
                self.ops.append(conv_traffic(nbytes([x]), nbytes([y]), nbytes(ins[1:]), in_channels=w.shape[1],
                                             kernel_volume=w[0, 0].numel(), out_positions=positions,
                                             out_channels=w.shape[0],
                                             unfolds=w.dim() == 5 and w[0, 0].numel() > 1))
            else:
                count = flop_registry.get(func.overloadpacket)  # matmuls (the mid-block's attention)
                flops = int(count(*args, **(kwargs or {}), out_val=out)) if count else 0
                moved = nbytes(ins) + nbytes(outs)
                self.ops.append(OpTraffic(flops=flops, bytes=moved, working_set=moved))
            return out

    return [PieceTraffic(tuple(record.ops))
            for record, _, _ in steady_state_pieces(vae_config, latent_height, latent_width, Record)]

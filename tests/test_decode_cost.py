"""The decoder's op-level price (costmodel/decode_cost.py): counted traffic, the fit, monotone seconds."""

import pytest

from paravideo.costmodel.decode_cost import fit_nonnegative, piece_seconds, piece_terms
from paravideo.costmodel.flops import OpTraffic, PieceTraffic, conv_traffic
from paravideo.costmodel.profiles import load_profile

MIB = 1024 ** 2


def test_a_3d_conv_pays_for_its_unfolded_input_and_a_2d_conv_does_not():
    kw = dict(in_channels=8, kernel_volume=27, out_positions=1000, out_channels=3)
    conv3d = conv_traffic(100, 200, 50, unfolds=True, **kw)
    conv2d = conv_traffic(100, 200, 50, unfolds=False, **kw)
    unfold = 4 * 8 * 27 * 1000
    assert conv3d.flops == conv2d.flops == 2 * 3 * 8 * 27 * 1000
    assert conv3d.bytes == 350 + 2 * unfold and conv3d.working_set == unfold
    assert conv2d.bytes == conv2d.working_set == 350


def _profile(**changes):
    return load_profile("cpu-local").model_copy(update=changes)


def test_piece_seconds_grow_with_every_term_and_cost_more_beyond_the_cache():
    profile = _profile(llc_bytes=32 * MIB, vae_cache_gbps=8.0, vae_dram_gbps=3.0)
    base = PieceTraffic((OpTraffic(flops=10 ** 8, bytes=16 * MIB, working_set=16 * MIB),))
    more_ops = PieceTraffic(base.ops + (OpTraffic(0, 0, 0),))
    more_flops = PieceTraffic((OpTraffic(2 * 10 ** 8, 16 * MIB, 16 * MIB),))
    more_bytes = PieceTraffic((OpTraffic(10 ** 8, 20 * MIB, 20 * MIB),))
    spilled = PieceTraffic((OpTraffic(10 ** 8, 16 * MIB, 48 * MIB),))
    t = piece_seconds(base, profile)
    assert all(piece_seconds(p, profile) > t for p in (more_ops, more_flops, more_bytes, spilled))
    assert piece_terms(spilled, profile.llc_bytes) == (1.0, 1e8, 0.0, 16.0 * MIB)
    # Without bandwidth terms (the datasheet GPU profiles) a piece costs its FLOPs alone.
    gpu = load_profile("h100-nvlink")
    assert gpu.vae_cache_gbps is None and piece_seconds(spilled, gpu) == pytest.approx(1e8 / gpu.vae_flops_per_s)


def test_the_fit_recovers_known_rates_and_never_goes_negative():
    truth = (2e-5, 1 / 20e9, 1 / 8e9, 1 / 3e9)
    rows = [(n, f, c, d) for n in (5, 30) for f in (1e6, 1e8) for c in (1e6, 5e7) for d in (0.0, 1e8)]
    ys = [sum(a * b for a, b in zip(truth, r)) for r in rows]
    assert fit_nonnegative(rows, ys) == pytest.approx(truth, rel=1e-6)
    # A term that only hurts the fit gets zero, not a negative rate.
    noisy = [y * (1.05 if r[3] else 1.0) - 1e-3 * (r[3] == 0) for r, y in zip(rows, ys)]
    assert min(fit_nonnegative(rows, noisy, [y + 0.01 for y in noisy])) >= 0.0


@pytest.fixture(scope="module")
def tiny_vae_config(tiny_root):
    import json

    return json.loads((tiny_root / "vae" / "config.json").read_text())


def test_counted_pieces_match_the_engines_pieces_and_grow_with_resolution(tiny_vae_config):
    from paravideo.costmodel.flops import decoder_piece_traffic
    from paravideo.io.decoder_pieces import decoder_piece_costs

    small, large = (decoder_piece_traffic(tiny_vae_config, h, w) for h, w in ((4, 6), (8, 12)))
    assert [p.flops for p in small] == [c.flops for c in decoder_piece_costs(tiny_vae_config, 4, 6)]
    assert [len(p.ops) for p in small] == [len(p.ops) for p in large]
    assert all(sum(o.bytes for o in a.ops) < sum(o.bytes for o in b.ops) for a, b in zip(small, large))
    profile = load_profile("cpu-local")
    assert all(piece_seconds(a, profile) < piece_seconds(b, profile) for a, b in zip(small, large))


def test_attention_products_are_priced_at_their_own_rate_and_grow_with_the_window():
    from paravideo.costmodel.costs import layer_compute_seconds
    from paravideo.costmodel.flops import Window, layer_flops
    from paravideo.costmodel.shapes import PRESETS

    shape = PRESETS["wan2.1-1.3b"]
    one_rate = _profile(attention_tflops=None)
    fast = _profile(attention_tflops=2 * one_rate.dit_flops_per_s / 1e12)
    windows = [Window(2, q, q, 512) for q in (64, 576, 2112)]
    flat = [layer_compute_seconds(shape, w, one_rate) for w in windows]
    assert flat == [pytest.approx(sum(layer_flops(shape, w).values()) / one_rate.dit_flops_per_s) for w in windows]
    faster = [layer_compute_seconds(shape, w, fast) for w in windows]
    assert faster == sorted(faster) and all(a < b for a, b in zip(faster, flat))
    # The attention share (quadratic in the window) gains the most from the faster kernel.
    assert faster[-1] / flat[-1] < faster[0] / flat[0]

import numpy as np
import pytest
import torch
import torch.nn as nn

from quantir.data.tiling import fit_tile, map_ordered, tile_plan, tile_starts, tiled_apply, tiled_bands
from tests.conftest import natural_image


def _conv_net(scale: int):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
              nn.Conv2d(8, 3 * scale * scale, 3, padding=1)]
    net = nn.Sequential(*layers, nn.PixelShuffle(scale)).eval()  # receptive radius 3 input pixels

    def fn(img):
        with torch.no_grad():
            x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
            return net(x)[0].permute(1, 2, 0).numpy()

    return fn


@pytest.mark.parametrize("scale", [1, 3])
def test_tiled_equals_untiled_for_a_conv_net(scale):
    img = natural_image(150, 211, seed=2)
    fn = _conv_net(scale)
    full = fn(img)
    calls = []
    tiled = tiled_apply(img, fn, scale=scale, tile=64, overlap=16, margin=5, on_tile=lambda k, n: calls.append(n))
    assert tiled.shape == full.shape and len(calls) > 4
    assert np.abs(tiled - full).max() < 1e-5


def test_uint8_outputs_and_rectangular_tiles():
    img = natural_image(100, 130)
    out = tiled_apply(img, lambda t: t, scale=1, tile=(40, 56), overlap=12)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


@pytest.mark.parametrize("size,tile,overlap,align", [(300, 128, 32, 1), (4000, 256, 32, 1), (1000, 512, 48, 8),
                                                      (5000, 512, 48, 8), (257, 256, 32, 1), (777, 64, 31, 1)])
def test_tile_starts_cover_evenly_with_the_fewest_tiles(size, tile, overlap, align):
    starts = tile_starts(size, tile, overlap, align)
    gaps = np.diff(starts)
    assert starts[0] == 0 and starts[-1] == size - tile and all(s % align == 0 for s in starts)
    assert gaps.max() <= tile - overlap  # every overlap at least the nominal one
    assert gaps.max() - gaps.min() <= align  # the slack spread evenly, not dumped on the last tile
    assert len(starts) == 1 + -(-(size - tile) // ((tile - overlap) // align * align))  # no tile more than needed


@pytest.mark.parametrize("size,tile,overlap,align", [(4000, 512, 32, 1), (3000, 512, 32, 1), (1000, 512, 48, 8),
                                                      (5000, 256, 48, 8), (513, 512, 32, 1), (300, 128, 32, 1)])
def test_fitted_tiles_are_smallest_with_the_same_count(size, tile, overlap, align):
    fitted = fit_tile(size, tile, overlap, align)
    n = len(tile_starts(size, tile, overlap, align))
    assert fitted <= tile and fitted % align == 0 and fitted > 2 * overlap
    assert len(tile_starts(size, fitted, overlap, align)) == n  # no more tiles than the bound needs
    if fitted - align > 2 * overlap:  # one step smaller would need another tile
        assert len(tile_starts(size, fitted - align, overlap, align)) > n
    th, tw = tile_plan(size, size, tile, overlap, None, align)[:2]
    assert th == tw == fitted


def test_tile_starts_refuse_a_misaligned_size():
    with pytest.raises(ValueError, match="align"):
        tile_starts(1001, 512, 48, 8)


@pytest.mark.parametrize("h,w,tile,overlap,margin,scale", [
    (150, 211, 64, 16, None, 3), (301, 97, (72, 40), 12, 5, 2), (200, 200, 104, 48, None, 1),
    (513, 777, 256, 32, None, 3), (90, 300, 40, 8, 0, 1), (64, 64, 64, 16, None, 3), (65, 130, 64, 31, None, 2),
    (513, 777, 256, 32, 16, 3), (301, 97, (72, 40), 13, 6, 2)])  # the last two: hard cuts (margin = overlap / 2)
def test_fast_stitching_is_the_full_weighted_sum_to_the_bit(h, w, tile, overlap, margin, scale):
    """Copying the weight-one cores and blending only the strips gives the bits of the full-image
    float32 weighted sum (the previous implementation, kept in _reference_tiling.py)."""
    from tests.data._reference_tiling import tiled_apply as reference

    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    calls = [0]

    def fn(t):  # tile-dependent output, so every blended pixel mixes different values
        calls[0] += 1
        up = np.repeat(np.repeat(t, scale, 0), scale, 1).astype(np.int16)
        return np.clip(up + rng.integers(-40, 41, up.shape), 0, 255).astype(np.uint8)

    rng_state = rng.bit_generator.state
    ours = tiled_apply(img, fn, scale=scale, tile=tile, overlap=overlap, margin=margin)
    rng.bit_generator.state = rng_state
    ref = reference(img, fn, scale=scale, tile=tile, overlap=overlap, margin=margin)
    assert ours.dtype == np.uint8 and np.array_equal(ours, ref)
    f32 = lambda t: np.repeat(np.repeat(t, scale, 0), scale, 1).astype(np.float32) * 0.37  # noqa: E731
    assert np.array_equal(tiled_apply(img, f32, scale, tile, overlap, margin),
                          reference(img, f32, scale, tile, overlap, margin))


@pytest.mark.parametrize("scale", [1, 3])
def test_hard_cut_copies_each_pixel_from_one_tile(scale):
    """margin = overlap / 2: every output pixel comes from exactly one tile (no blended value), the
    tile whose core holds it, so a tile-dependent fn shows which tile wrote each pixel."""
    img = natural_image(150, 211, seed=3)
    tiles = []

    def fn(t):
        tiles.append(len(tiles))
        return np.full((t.shape[0] * scale, t.shape[1] * scale, 1), len(tiles), np.uint8)

    out = tiled_apply(img, fn, scale=scale, tile=64, overlap=16, margin=8)[..., 0]
    assert set(np.unique(out)) == set(range(1, len(tiles) + 1))  # no value between two tiles' ids
    # and a conv net whose receptive field fits in half the overlap is reproduced (up to the
    # float rounding of convolutions of another size: no blending adds any)
    net = _conv_net(scale)
    assert np.abs(tiled_apply(img, net, scale=scale, tile=64, overlap=16, margin=8) - net(img)).max() < 1e-5


@pytest.mark.parametrize("margin", [None, 8])  # cross-fade strips; a hard cut
def test_workers_writing_into_the_band_give_the_bands_of_whole_tile_outputs(margin):
    """Tile workers that write their cores into the band (``into``, three of them, in parallel)
    give the bands of a function that returns whole tiles, bit for bit."""
    img = natural_image(150, 211, seed=4)
    scale = 3

    def fn(t):  # depends on the tile's pixels only, so the order the workers run in cannot matter
        up = np.repeat(np.repeat(t, scale, 0), scale, 1).astype(np.int16)
        return np.clip(up + int(t.sum()) % 41 - 20, 0, 255).astype(np.uint8)

    def into(t, cut):
        res = fn(t)
        cut.dest(res.dtype, res.shape[2])[...] = res[cut.rows, cut.cols]
        return res[cut.strip_rows], res[:, cut.strip_cols]

    plain = list(tiled_bands(img, fn, scale, tile=64, overlap=16, margin=margin))
    ours = list(tiled_bands(img, [fn] * 3, scale, tile=64, overlap=16, margin=margin, into=[into] * 3))
    assert len(plain) == len(ours) > 2
    assert all(r == q and np.array_equal(a, b) for (r, a), (q, b) in zip(plain, ours))


def test_map_ordered_keeps_order_and_gives_each_fn_one_thread_at_a_time():
    """Results come back in input order, whichever worker finished first, and no fn is ever entered
    by two threads at once (each stands for a runtime that owns its interpreter)."""
    import threading
    import time

    busy = [threading.Lock() for _ in range(3)]
    used = set()

    def make(k):
        def fn(x):
            assert busy[k].acquire(blocking=False), f"fn {k} entered by two threads"
            try:
                time.sleep(0.002 * (int(x[0]) % 3))  # finish out of order
                used.add(k)
                return x * 2
            finally:
                busy[k].release()
        return fn

    items = [np.array([i]) for i in range(40)]
    out = list(map_ordered([make(k) for k in range(3)], items))
    assert [int(o[0]) for o in out] == [2 * i for i in range(40)]
    assert len(used) > 1  # really in parallel


def test_map_ordered_raises_a_worker_error_and_stops():
    started = []

    def fn(x):
        started.append(int(x[0]))
        if x[0] == 5:
            raise ValueError("bad tile")
        return x

    with pytest.raises(ValueError, match="bad tile"):
        list(map_ordered([fn, fn], (np.array([i]) for i in range(1000))))
    assert len(started) < 20  # the lookahead is bounded: the rest was never submitted


@pytest.mark.parametrize("margin", [5, 8])  # a cross-fade, and a hard cut
def test_parallel_workers_give_the_same_bits_as_one(margin):
    img = natural_image(150, 211, seed=4)
    fn = _conv_net(3)
    one = tiled_apply(img, fn, scale=3, tile=64, overlap=16, margin=margin)
    three = tiled_apply(img, [_conv_net(3) for _ in range(3)], scale=3, tile=64, overlap=16, margin=margin)
    assert np.array_equal(one, three)

"""Run an image-to-image function over an arbitrarily large image in overlapping tiles.

Memory is bounded by one row of tiles (plus the output image, unless its bands are streamed to
a writer). Along every inner tile edge the outermost ``margin`` input pixels of a tile get zero
weight and the next stretch of the overlap is a linear cross-fade, so the weights of neighbouring
tiles sum to one. For a convolutional model whose receptive-field radius is at most ``margin``,
each output pixel is then a convex combination of identical values and the result equals the
untiled run up to float rounding; with ``margin`` = half the overlap there is no cross-fade, each
output pixel is copied from the one tile that owns it, and the result is the untiled run exactly.
Tiles can run on several worker threads (``map_ordered``): one callable per worker, results
taken in tile order, so the bands are the same bits whatever the number of workers. Each worker
writes its tile's weight-one core into the band itself (``TileCut``), so the stitching thread only
blends the strips.
numpy only, so the torch-free inference path can use it.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TileFn = Callable[[np.ndarray], np.ndarray]


class BandBuffer:
    """One band's output pixels, shared by the band's tiles. Allocated by the first tile worker that
    writes into it: only the model's output tells the dtype and the channels."""

    def __init__(self, rows: int, width: int):
        self.rows, self.width = rows, width
        self.pixels: np.ndarray | None = None  # rows x width x channels, once a tile has written
        self.flat = False  # the tiles' outputs are 2-D: the band is yielded without its channel axis
        self._lock = threading.Lock()

    def get(self, dtype, channels: int, flat: bool = False) -> np.ndarray:
        with self._lock:
            if self.pixels is None:
                self.pixels, self.flat = np.empty((self.rows, self.width, channels), dtype), flat
        return self.pixels


@dataclasses.dataclass(frozen=True)
class TileCut:
    """Where one tile's output goes in its band, handed to the tile worker with the tile.

    A band starts at its tiles' first output row, so tile rows are band rows; tile column c is
    band column ``at + c``. ``rows`` x ``cols`` is the part of the tile's output whose weight is
    exactly one (its pixels are final there); ``strip_rows`` / ``strip_cols`` are the tile's output
    rows / columns in cross-fade strips, which the stitching thread blends.
    """

    band: BandBuffer
    rows: slice
    cols: slice
    at: int
    strip_rows: np.ndarray
    strip_cols: np.ndarray

    def dest(self, dtype, channels: int, flat: bool = False) -> np.ndarray:
        """The band's pixels the tile's weight-one core goes to (a rows x cols x channels view)."""
        return self.band.get(dtype, channels, flat)[self.rows, self.at + self.cols.start:self.at + self.cols.stop]

    def write(self, res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a tile's whole output ``res``: store its core in the band; return its strip rows and
        columns (with a channel axis), the pixels the stitching thread still needs."""
        res3 = res if res.ndim == 3 else res[..., None]
        core = res3[self.rows, self.cols]
        self.dest(res.dtype, res3.shape[2], res.ndim == 2)[...] = \
            core if np.issubdtype(res.dtype, np.integer) else core.astype(np.float32).astype(res.dtype)
        return res3[self.strip_rows], res3[:, self.strip_cols]


# A tile worker's call: run the model on the tile, write its core where the TileCut says (always
# through ``cut.dest``, even for an empty core: that allocates the band) and return ``cut.write``'s pair.
TileIntoFn = Callable[[np.ndarray, TileCut], tuple[np.ndarray, np.ndarray]]


def _write_whole(fn: TileFn, tile: np.ndarray, cut: TileCut) -> tuple[np.ndarray, np.ndarray]:
    return cut.write(fn(tile))


def map_ordered(fns: Sequence[TileFn], items: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``fn(item)`` for every item, in order, on ``len(fns)`` threads; each ``fn`` is called by one
    thread at a time (a model runtime that owns its interpreter and its buffers).

    Why threads and not one runtime with more threads: the TFLite and ONNX runtimes release the GIL
    while they compute, and on 2 cores two single-threaded interpreters on different tiles
    do about 13 % more pixels per second than one interpreter on two threads, whose threads meet at
    a barrier after every op and wait there whenever the encoder thread takes a core
    (BENCHMARKS.md "Photo path"). At most ``len(fns) + 1`` results are held.
    """
    if len(fns) == 1:
        yield from map(fns[0], items)
        return
    free: queue.SimpleQueue = queue.SimpleQueue()
    for fn in fns:
        free.put(fn)

    def call(item):
        fn = free.get()
        try:
            return fn(item)
        finally:
            free.put(fn)

    pending: deque = deque()
    with ThreadPoolExecutor(len(fns), thread_name_prefix="tile") as pool:
        try:
            for item in items:
                pending.append(pool.submit(call, item))
                if len(pending) > len(fns):  # keep every worker busy, and no more
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (an error downstream): drop what has not started
            for fut in pending:
                fut.cancel()


def exact_overlap(radius: int | None, default: int, default_margin: int | None) -> tuple[int, int | None]:
    """(overlap, margin) for a model of receptive-field ``radius`` (input px; ``None``: unknown).

    Where the radius is known and twice it is no wider than ``default``, tiles overlap by exactly
    2 x radius and meet at a hard cut in the middle (margin = radius): every output pixel comes from
    a tile that holds its whole receptive field, so the result is the untiled run bit for bit, with
    the least recomputation. Otherwise ``(default, default_margin)``.
    """
    if tiles_meet_exactly(radius, default):
        return 2 * radius, radius
    return default, default_margin


def tiles_meet_exactly(radius: int | None, default: int) -> bool:
    """Whether a model of receptive-field ``radius`` gets exact tiles (:func:`exact_overlap`): then the
    tile size cannot change the output bits."""
    return radius is not None and 2 * radius <= default


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Tile origins along one axis: as few tiles as keep every overlap >= ``overlap``, evenly spaced.

    Even spacing spreads the slack over all overlaps; a last tile flush with the edge would overlap
    its neighbour by up to a whole tile, computed twice for nothing. Origins are multiples of
    ``align`` (``size - tile`` must be one), so tiles keep the whole image's downsampling phase.
    """
    if size <= tile:
        return [0]
    if (size - tile) % align or tile - overlap < align:
        raise ValueError(f"size {size} - tile {tile} must be a multiple of align {align} <= tile - overlap")
    span, stride = (size - tile) // align, (tile - overlap) // align  # in units of align
    gaps = -(-span // stride)
    return [(k * span // gaps) * align for k in range(gaps + 1)]


def _edge_weights(length: int, lead: int, trail: int, margin: int, scale: int,
                  overlap: int | None = None) -> np.ndarray:
    """1-D weights over an output span: cross-fade in over ``lead`` input px, out over ``trail``.

    The ramp is as long as the nominal ``overlap`` gives it; a wider overlap (the last tile, which
    ends at the image edge, can overlap most of its neighbour) gets wider zero margins instead of
    a longer ramp. A longer ramp would blend values no more exact, and all of it would have to go
    through the float path (it cost a second on a 12 MP photo).
    """
    w = np.ones(length * scale, dtype=np.float32)
    ramp_in = None if overlap is None else overlap - 2 * min(margin, overlap // 2)
    for ov, rising in ((lead, True), (trail, False)):
        if ov <= 0:
            continue
        m = min(margin, ov // 2)  # margin = overlap / 2: no ramp, a hard cut in the middle
        if ramp_in is not None and ov - 2 * m > ramp_in:
            m = (ov - ramp_in) // 2
        ramp_len = (ov - 2 * m) * scale
        ramp = (np.arange(ramp_len, dtype=np.float32) + 0.5) / ramp_len
        zone = np.concatenate([np.zeros(m * scale, np.float32), ramp, np.ones(m * scale, np.float32)])
        if rising:
            w[: ov * scale] *= zone
        else:
            w[len(w) - ov * scale:] *= zone[::-1]
    return w


def _blend(acc: np.ndarray, wsum: np.ndarray, dtype, chunk: int = 64) -> np.ndarray:
    """``acc / wsum`` (rounded and clipped for integer outputs), a few rows at a time so the float
    temporaries stay small when the last tile row overlaps most of the previous one."""
    out = np.empty(acc.shape, dtype)
    for k in range(0, len(acc), chunk):
        part = acc[k:k + chunk] / np.maximum(wsum[k:k + chunk], 1e-12)[..., None]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            part = np.clip(np.round(part), info.min, info.max)
        out[k:k + chunk] = part
    return out


def _ones(weights: np.ndarray) -> slice:
    """The (contiguous) span where a tile's 1-D weight is exactly one."""
    idx = np.flatnonzero(weights == 1.0)
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


def _axis_weights(starts: list[int], tile: int, size: int, margin: int, scale: int,
                  overlap: int) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Per tile along one axis: its 1-D output weights and its output span [a, b)."""
    weights, spans = [], []
    for k, a in enumerate(starts):
        b = min(a + tile, size)
        lead = (starts[k - 1] + tile - a) if k > 0 else 0
        trail = (b - starts[k + 1]) if k + 1 < len(starts) else 0
        weights.append(_edge_weights(b - a, lead, trail, margin, scale, overlap))
        spans.append((a * scale, b * scale))
    return weights, spans


def _strips(weights: list[np.ndarray], spans: list[tuple[int, int]], size: int) -> np.ndarray:
    """Output rows (or columns) not owned by a single tile: where the tiles with non-zero weight
    are not exactly one tile of weight one. Where tiles overlap three deep (the last tile of a
    short side) this includes rows a tile's zero margin meets another's ramp."""
    nonzero = np.zeros(size, np.int32)
    one = np.zeros(size, bool)
    for wgt, (a, b) in zip(weights, spans):
        nonzero[a:b] += wgt > 0
        one[a:b] |= wgt == 1.0
    return ~((nonzero == 1) & one)


def tile_plan(h: int, w: int, tile: int | tuple[int, int], overlap: int, margin: int | None, align: int = 1):
    """(tile height, tile width, margin, row starts, column starts) for an h x w image; checks the sizes."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if min(th, tw) <= 0 or overlap < 0 or 2 * overlap >= min(th, tw):
        raise ValueError("need tile > 2 * overlap >= 0")
    margin = overlap // 3 if margin is None else margin
    if not 0 <= margin <= overlap // 2:
        raise ValueError("need 0 <= margin <= overlap / 2")
    th, tw = fit_tile(h, th, overlap, align), fit_tile(w, tw, overlap, align)
    return th, tw, margin, tile_starts(h, th, overlap, align), tile_starts(w, tw, overlap, align)


def fit_tile(size: int, tile: int, overlap: int, align: int = 1) -> int:
    """The smallest tile side (a multiple of ``align``, at most ``tile``) that covers ``size`` with as
    few tiles as ``tile`` needs: ``tile`` is a bound, and fixed tiles would compute up to a tile of
    pixels past the image per row (4000 px in 512-px tiles: 9 tiles, 15 % more than the 473-px fit)."""
    if size <= tile:
        return tile  # one tile: the whole side
    n = len(tile_starts(size, tile, overlap, align))
    need = max(-(-(size - overlap) // n) + overlap, 2 * overlap + 1)  # keep a core between the overlaps
    fitted = need + (-need) % align
    # the fitted tile must still need no more tiles (rounding up to align can only help)
    return fitted if fitted <= tile and len(tile_starts(size, fitted, overlap, align)) == n else tile


def tiled_bands(image: np.ndarray, fn: TileFn | Sequence[TileFn], scale: int = 1,
                tile: int | tuple[int, int] = 256, overlap: int = 32, margin: int | None = None,
                on_tile: Callable[[int, int], None] | None = None,
                align: int = 1, into: Sequence[TileIntoFn] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, band)``: consecutive horizontal bands of the output ``fn`` would give on the whole image.

    Each band is final when yielded (every tile that touches it has run), so a streaming writer
    can store it and let it go: memory is bounded by one row of tiles, never by the output.
    ``tile`` is a side length or (height, width); ``overlap`` and ``margin`` are in input pixels,
    ``margin`` defaults to a third of the overlap; ``margin = overlap / 2`` is a hard cut in the middle
    of each overlap (no float blending at all: for models whose tiles agree exactly, whose
    receptive-field radius is at most half the overlap). Tile origins are multiples of ``align``.
    ``on_tile(done, total)`` is called after each tile. ``fn`` may be a sequence of equivalent
    callables, one per worker thread (:func:`map_ordered`): the tiles then run in parallel.
    ``into`` (optional, one per ``fn``) does what ``fn`` does, but writes the tile's output into the
    band itself (:data:`TileIntoFn`): a model runtime can then dequantize straight into it.

    Where one tile has weight exactly one (every other tile weight zero) its pixels are copied, by
    the worker that ran it; only the cross-fade strips (about a tenth of the pixels at the default
    sizes) are accumulated in float32, pixel by pixel with the same operations in the same order as
    a full-image weighted sum ``(sum of this tile row's terms + the previous row's) / sum of
    weights``, so the result is the same bits as that sum at a fraction of its memory traffic.
    """
    h, w = image.shape[:2]
    fns = list(fn) if isinstance(fn, Sequence) else [fn]
    th, tw, margin, ys, xs = tile_plan(h, w, tile, overlap, margin, align)
    total, done = len(ys) * len(xs), 0
    if total == 1:
        out = fns[0](image)
        if on_tile:
            on_tile(1, 1)
        yield 0, out
        return
    intos = list(into) if into is not None else [functools.partial(_write_whole, f) for f in fns]
    ow = w * scale
    wxs, x_spans = _axis_weights(xs, tw, w, margin, scale, overlap)
    wys, y_spans = _axis_weights(ys, th, h, margin, scale, overlap)
    cols = np.flatnonzero(_strips(wxs, x_spans, ow))  # the vertical strips (output columns)
    strip_rows = _strips(wys, y_spans, h * scale)
    # per tile column: its band columns [a, b), its weight-one columns, its strip columns (lo:hi in cols)
    col_cuts = []
    for (a, b), wx in zip(x_spans, wxs):
        lo, hi = (int(k) for k in np.searchsorted(cols, [a, b]))
        col_cuts.append((a, b, _ones(wx), lo, hi, cols[lo:hi] - a))
    # per band: its weight-one rows, the band rows of the horizontal strips
    row_cuts = [(_ones(wy), np.flatnonzero(strip_rows[ya:yb])) for wy, (ya, yb) in zip(wys, y_spans)]
    made: deque[BandBuffer] = deque()  # bands whose tiles have gone to the workers, not yet stitched

    def tiles() -> Iterator[tuple[np.ndarray, TileCut]]:
        for y0, wy, (ry, rows) in zip(ys, wys, row_cuts):
            band = BandBuffer(len(wy), ow)
            made.append(band)
            for x0, (a, _, rx, _, _, loc) in zip(xs, col_cuts):
                yield image[y0:min(y0 + th, h), x0:min(x0 + tw, w)], TileCut(band, ry, rx, a, rows, loc)

    results = map_ordered([(lambda item, f=f: f(*item)) for f in intos], tiles())
    carry = None  # (pixels, strip rows acc/wsum, strip columns acc/wsum) of rows shared with the next band
    for i, y0 in enumerate(ys):
        y1 = min(y0 + th, h)
        wy = wys[i]
        ry, rows = row_cuts[i]
        acc_r = ws_r = acc_c = ws_c = None
        for j in range(len(xs)):
            strip_r, strip_c = next(results)
            if acc_r is None:
                band = made.popleft()
                buf = band.pixels  # allocated by the worker of the band's first tile
                dtype, channels = buf.dtype, buf.shape[2]
                acc_r = np.zeros((len(rows), ow, channels), np.float32)
                ws_r = np.zeros((len(rows), ow), np.float32)
                acc_c = np.zeros((len(wy), len(cols), channels), np.float32)
                ws_c = np.zeros((len(wy), len(cols)), np.float32)
            a, b, _, lo, hi, loc = col_cuts[j]
            wx = wxs[j]
            if len(rows):
                wgt = wy[rows][:, None] * wx[None, :]
                acc_r[:, a:b] += strip_r.astype(np.float32) * wgt[..., None]
                ws_r[:, a:b] += wgt
            if hi > lo:
                wgt = wy[:, None] * wx[loc][None, :]
                acc_c[:, lo:hi] += strip_c.astype(np.float32) * wgt[..., None]
                ws_c[:, lo:hi] += wgt
            done += 1
            if on_tile:
                on_tile(done, total)
        if carry is not None:
            pixels, (c_acc_r, c_ws_r), (c_acc_c, c_ws_c) = carry
            n = len(pixels)
            fill = np.ones(n, bool)
            fill[ry] = False  # rows this band pasted itself
            buf[:n][fill] = pixels[fill]
            lead = rows < n  # the strip rows shared with the previous band, in the same order
            acc_r[lead] += c_acc_r
            ws_r[lead] += c_ws_r
            acc_c[:n] += c_acc_c
            ws_c[:n] += c_ws_c
        next_y0 = ys[i + 1] if i + 1 < len(ys) else y1
        final = (next_y0 - y0) * scale
        trail = rows >= final  # strips shared with the next band are blended there, once complete
        if len(cols):
            buf[:final, cols] = _blend(acc_c[:final], ws_c[:final], dtype)
        if (~trail).any():
            buf[rows[~trail]] = _blend(acc_r[~trail], ws_r[~trail], dtype)
        carry = (buf[final:], (acc_r[trail], ws_r[trail]), (acc_c[final:], ws_c[final:]))
        out = buf[:final]
        yield y0 * scale, out[..., 0] if band.flat else out


def tiled_apply(image: np.ndarray, fn: TileFn | Sequence[TileFn], scale: int = 1,
                tile: int | tuple[int, int] = 256,
                overlap: int = 32, margin: int | None = None,
                on_tile: Callable[[int, int], None] | None = None, align: int = 1) -> np.ndarray:
    """Apply ``fn`` (HxWxC -> sHxsWxC) tile by tile; returns an array like ``fn`` would on the whole image.

    The bands of :func:`tiled_bands`, stacked (arguments as there).
    """
    return stack_bands(tiled_bands(image, fn, scale, tile, overlap, margin, on_tile, align), image.shape[0] * scale)


def stack_bands(bands: Iterable[tuple[int, np.ndarray]], height: int) -> np.ndarray:
    """The image of ``height`` rows that consecutive ``(row, band)`` pairs cover (one band: itself)."""
    out = None
    for row, band in bands:
        if out is None:
            if row == 0 and len(band) == height:
                return band
            out = np.empty((height,) + band.shape[1:], dtype=band.dtype)
        out[row:row + len(band)] = band
    return out

# The tiled_apply of quantir before the band-wise stitcher (full-image float32 weighted sum),
# with today's tile weights: the reference the fast stitcher must equal bit for bit
# (tests/data/test_tiling.py).
"""Run an image-to-image function over an arbitrarily large image in overlapping tiles.

Memory is bounded by one row of tiles (plus the output image). Along every inner tile edge
the outermost ``margin`` input pixels of a tile get zero weight and the rest of the overlap
is a linear cross-fade, so the weights of neighbouring tiles sum to one. For a convolutional
model whose receptive-field radius is at most ``margin``, each output pixel is then a convex
combination of identical values and the result equals the untiled run up to float rounding.
numpy only, so the torch-free inference path can use it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantir.data.tiling import _edge_weights, tile_plan


def tiled_apply(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], scale: int = 1,
                tile: int | tuple[int, int] = 256,
                overlap: int = 32, margin: int | None = None,
                on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Apply ``fn`` (HxWxC -> sHxsWxC) tile by tile; returns an array like ``fn`` would on the whole image.

    ``tile`` is a side length or (height, width); ``overlap`` and ``margin`` are in input pixels,
    ``margin`` defaults to a third of the overlap.
    ``on_tile(done, total)`` is called after each tile (progress bars).
    """
    h, w = image.shape[:2]
    th, tw, margin, ys, xs = tile_plan(h, w, tile, overlap, margin)  # the grid is shared; the stitching is the oracle
    total, done = len(ys) * len(xs), 0
    if total == 1:
        out = fn(image)
        if on_tile:
            on_tile(1, 1)
        return out
    out = None
    carry = None  # (accumulator, weight) rows shared with the next tile row
    for i, y0 in enumerate(ys):
        y1 = min(y0 + th, h)
        lead_y = (ys[i - 1] + th - y0) if i > 0 else 0
        trail_y = (y1 - ys[i + 1]) if i + 1 < len(ys) else 0
        wy = _edge_weights(y1 - y0, lead_y, trail_y, margin, scale, overlap)
        acc = wsum = None
        for j, x0 in enumerate(xs):
            x1 = min(x0 + tw, w)
            res = fn(image[y0:y1, x0:x1])
            if out is None:
                out = np.empty((h * scale, w * scale) + res.shape[2:], dtype=res.dtype)
            if acc is None:
                acc = np.zeros(((y1 - y0) * scale, w * scale) + res.shape[2:], dtype=np.float32)
                wsum = np.zeros(((y1 - y0) * scale, w * scale), dtype=np.float32)
            lead_x = (xs[j - 1] + tw - x0) if j > 0 else 0
            trail_x = (x1 - xs[j + 1]) if j + 1 < len(xs) else 0
            wgt = wy[:, None] * _edge_weights(x1 - x0, lead_x, trail_x, margin, scale, overlap)[None, :]
            sl = np.s_[:, x0 * scale:x1 * scale]
            acc[sl] += res.astype(np.float32) * (wgt[..., None] if res.ndim == 3 else wgt)
            wsum[sl] += wgt
            done += 1
            if on_tile:
                on_tile(done, total)
        if carry is not None:
            rows = carry[0].shape[0]
            acc[:rows] += carry[0]
            wsum[:rows] += carry[1]
        next_y0 = ys[i + 1] if i + 1 < len(ys) else y1
        final = (next_y0 - y0) * scale
        block = acc[:final] / np.maximum(wsum[:final], 1e-12)[..., None] if acc.ndim == 3 else \
            acc[:final] / np.maximum(wsum[:final], 1e-12)
        if np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)
            block = np.clip(np.round(block), info.min, info.max)
        out[y0 * scale:next_y0 * scale] = block.astype(out.dtype)
        carry = (acc[final:], wsum[final:])
    return out

"""The receptive-field radius read from a TFLite graph, and the exact tile overlap built on it."""

import numpy as np
import pytest

from quantir.data.tiling import tiled_apply
from quantir.export.receptive_field import Node, Window, output_radius, tflite_radius
from quantir.errors import ConfigError
from quantir.export.runtime import load_runtime
from quantir.infer import OVERLAP, Processor, builtin_model, tile_overlap
from tests.conftest import natural_image


def _conv(src, dst, k=3, stride=1, dilation=1):
    return Node("window", (src,), (dst,), Window((k, k), (stride, stride), (dilation, dilation)))


def test_radius_rules_on_a_small_graph():
    # in -> conv3 (1) -> conv3 dil 2 (+2) -> strided conv3 (+2, step 2) -> conv3 at step 2 (+2)
    #    -> depth-to-space 2 (+1: a fine pixel sits one px from its coarse parent) -> add with the input
    nodes = [_conv(0, 1), _conv(1, 2, dilation=2), _conv(2, 3, stride=2), _conv(3, 4),
             Node("depth_to_space", (4,), (5,), block=2), Node("pointwise", (5, 0), (6,))]
    assert output_radius(nodes, 0, 6) == 1 + 2 + 2 + 2 + 1
    # an SR tail: depth-to-space at step 1 copies each output pixel from the LR pixel that holds it
    assert output_radius([_conv(0, 1), Node("depth_to_space", (1,), (2,), block=3)], 0, 2) == 1
    assert output_radius([_conv(0, 1), Node("pad", (1,), (2,), block=2)], 0, 2) == 3
    # an op the reader does not follow, on the output's path only, makes the radius unknown
    assert output_radius([_conv(0, 1), Node("unknown", (1,), (2,)), Node("pointwise", (1, 2), (3,))], 0, 3) is None
    assert output_radius([_conv(0, 1), Node("unknown", (0,), (2,))], 0, 1) == 1


def test_builtin_models_radius_from_their_graphs():
    # the built-in x3 net: ten 3x3 convs in a chain (and the input's own global skip)
    sr = builtin_model("sr")
    assert tflite_radius(sr.read_bytes()) == 10
    assert load_runtime(sr).radius == 10
    assert tile_overlap("sr", 10) == (20, 10)
    # the U-Net sees far: its tiles keep the default cross-fade instead of a 176-px overlap
    enh = load_runtime(builtin_model("enhance"))
    assert enh.radius is not None and 2 * enh.radius > OVERLAP["enhance"]
    assert tile_overlap("enhance", enh.radius) == (OVERLAP["enhance"], None)
    assert tile_overlap("sr", None) == (OVERLAP["sr"], OVERLAP["sr"] // 2)


def test_a_given_overlap_replaces_the_default_as_cross_fade_and_as_exactness_bound():
    assert tile_overlap("enhance", 88, 40) == (40, None)  # too wide: cross-fades over the given overlap
    assert tile_overlap("enhance", 12, 40) == (24, 12)  # fits: exact at twice the radius
    assert tile_overlap("sr", None, 24) == (24, 12)  # unknown SR field: hard cut in the middle
    assert tile_overlap("sr", 10, 16) == (16, None)  # known and wider than the bound: cross-fade
    with pytest.raises(ConfigError, match="at least 88"):
        Processor(builtin_model("enhance"), "enhance", 1, tile=80, overlap=40)
    with pytest.raises(ConfigError, match="overlap -1"):
        Processor(builtin_model("enhance"), "enhance", 1, overlap=-1)


@pytest.mark.parametrize("task,tile,overlap", [("enhance", 80, None), ("enhance", 96, 40), ("sr", 72, None)])
def test_model_pixels_counts_what_the_tiles_run(task, tile, overlap):
    """model_pixels (the benchmarks' recomputation cost) is the pixels the photo path's tiles really run."""
    proc = Processor(builtin_model(task), task, 3 if task == "sr" else 1, tile=tile, threads=1, overlap=overlap)
    ran = []
    run_into = proc.model.run_into  # what the tile workers call
    proc.model.run_into = lambda t, cut: ran.append(t.shape[0] * t.shape[1]) or run_into(t, cut)
    img = natural_image(150, 211)  # not a multiple of the U-Net's 8: the padding counts too
    proc.run(img)
    assert len(ran) > 1 and sum(ran) == proc.model_pixels(150, 211)


def test_overlap_of_twice_the_radius_is_exact_and_one_less_is_not(sr_model):
    """A hard cut at the radius reproduces the whole image bit for bit; at radius - 1 tiles see
    their own zero padding, so the radius read from the graph is not an overestimate either."""
    rt = load_runtime(sr_model)
    r = rt.radius
    assert r is not None and r > 1
    img = natural_image(97, 131)
    whole = rt.run(img)
    exact = tiled_apply(img, rt.run, scale=rt.scale, tile=48, overlap=2 * r, margin=r)
    assert np.array_equal(exact, whole)
    short = tiled_apply(img, rt.run, scale=rt.scale, tile=48, overlap=2 * (r - 1), margin=r - 1)
    assert not np.array_equal(short, whole)


@pytest.mark.parametrize("tile", [72, 100, (72, 180)])
def test_photo_path_tiles_at_the_graph_overlap_equal_the_whole_image(sr_model, tile):
    """Square tiles and the short, wide ones the CLI's SR default uses (several tiles per row)."""
    proc = Processor(sr_model, "sr", 3, tile=tile)
    th, tw = proc.tile
    assert proc.model.radius is not None
    img = natural_image(2 * th + 17, 2 * tw + 5, seed=3)
    assert len(list(proc.bands(img))) >= 3
    assert np.array_equal(proc.run(img), proc.model.run(img))

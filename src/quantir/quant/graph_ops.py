"""The aten ops quantir's PT2E quantizer knows, grouped by how their int8 kernels treat qparams,
and the node predicates its rules are written with (quant/quantizer.py)."""

from __future__ import annotations

import torch
from torch.fx import Node

from quantir.numerics import SIGMOID_QPARAMS, TANH_QPARAMS

aten = torch.ops.aten

COMPUTE_OPS = {aten.conv2d.default, aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor, aten.linear.default}
WEIGHTED_OPS = (aten.conv2d.default, aten.linear.default)  # the layers with weights (and kept-layer rules)
FUSABLE_ACTIVATIONS = {aten.relu.default, aten.relu_.default}
SHARED_OPS = {
    aten.pixel_shuffle.default, aten.pixel_unshuffle.default, aten.permute.default, aten.view.default,
    aten.reshape.default, aten.repeat.default, aten.max_pool2d.default, aten.avg_pool2d.default,
    aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default, aten.upsample_bilinear2d.vec,
    aten.upsample_bilinear2d.default, aten.clone.default, aten.contiguous.default,
    aten.relu.default, aten.relu_.default, aten.clamp.default, aten.hardtanh.default,
    aten.flatten.using_ints, aten.squeeze.dim, aten.unsqueeze.default, aten.slice.Tensor,
}
CLAMP_OPS = {aten.clamp.default, aten.hardtanh.default}
# Unary ops with a new output range of their own (their int8 kernels requantize).
UNARY_OPS = {aten.leaky_relu.default, aten.instance_norm.default, aten.gelu.default, aten.hardswish.default}
INSTANCE_NORM = aten.instance_norm.default
FIXED_QPARAMS = {aten.tanh.default: TANH_QPARAMS, aten.sigmoid.default: SIGMOID_QPARAMS}
CAT_OPS = {aten.cat.default, aten.concat.default}
BINARY_SHARED = {aten.minimum.default, aten.maximum.default}  # TFLite MINIMUM/MAXIMUM: one scale for all
REQUANT_META = "quantir_requantize"  # node.meta key of the MULs that requantize a concat input
ISLAND_META = "quantir_float_island"  # node.meta key of ops left in float (an InstanceNorm's statistics)
GRID_RESIDUAL_META = "quantir_grid_residual"  # node.meta key of the convs whose output takes the output grid
CLAMP_RANGE_META = "quantir_clamp_range"  # node.meta key: a layer whose symmetric clamp became its int8 range


def is_tensor_node(n) -> bool:
    return isinstance(n, Node) and isinstance(n.meta.get("val"), torch.Tensor)


def layout_root(t: Node) -> Node:
    """The tensor whose int8 codes ``t`` holds: back through layout ops (reshape, slice, nearest or
    bilinear resize...) and through concats of pieces of one tensor (the anchor's repeat, a mirror
    pad), which keep their source's scale and zero point."""
    while t.op == "call_function":
        if t.target in CAT_OPS:
            roots = {layout_root(a) for a in t.args[0] if is_tensor_node(a)}
            if len(roots) != 1:
                return t
            t = roots.pop()
        elif t.target in SHARED_OPS - FUSABLE_ACTIVATIONS - CLAMP_OPS and is_tensor_node(t.args[0]):
            t = t.args[0]
        else:
            return t
    return t


def clamp_bounds(n: Node) -> tuple:
    return (n.args[1] if len(n.args) > 1 else n.kwargs.get("min"),
            n.args[2] if len(n.args) > 2 else n.kwargs.get("max"))


def symmetric_clamp_of_layer(n: Node) -> bool:
    """clamp(-R, R) with constant R > 0 right after a conv/linear that nothing else reads."""
    lo, hi = clamp_bounds(n)
    layer = n.args[0]
    return (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and hi > 0 and lo == -hi
            and isinstance(layer, Node) and layer.op == "call_function" and layer.target in WEIGHTED_OPS
            and len(layer.users) == 1)


def edge_branch(t: Node) -> bool:
    """relu(conv) or clamp(conv, max=0): a conv branch that is zero wherever it is not needed."""
    if not (t.op == "call_function" and len(t.users) == 1 and isinstance(t.args[0], Node)):
        return False
    layer = t.args[0]
    is_layer = layer.op == "call_function" and layer.target in WEIGHTED_OPS and len(layer.users) == 1
    if t.target in FUSABLE_ACTIVATIONS:
        return is_layer
    return t.target in CLAMP_OPS and is_layer and clamp_bounds(t) == (None, 0.0)


def on_input_grid(t: Node) -> bool:
    """True when ``t``'s int8 codes lie on the graph input's grid (same scale and zero point)."""
    return layout_root(t).op == "placeholder"


def one_source_cat(n: Node) -> bool:
    """A concat of pieces of one tensor (see ``layout_root``): it keeps that tensor's qparams."""
    return len({layout_root(t) for t in n.args[0] if is_tensor_node(t)}) == 1


def needs_requantization(t: Node) -> bool:
    """True when a concat input carries qparams of its own that the concat's output cannot adopt.

    Compute and unary ops get a fresh range, which PT2E merges with the concat's; fixed-qparams
    ops, layout ops (which share their producer's) and graph inputs keep theirs.
    """
    return t.op == "placeholder" or (t.op == "call_function" and (
        t.target in FIXED_QPARAMS or t.target in BINARY_SHARED or
        (t.target in SHARED_OPS and t.target not in FUSABLE_ACTIVATIONS)))

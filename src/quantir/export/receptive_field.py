"""How far an artifact looks: the receptive-field radius of its output, read from the graph itself.

Tiles of a convolutional model agree exactly with the whole-image run when each output pixel is
taken from a tile that holds its whole receptive field, so the photo path's tile overlap only has
to be twice this radius (the built-in x3 net: 10 input px, where a fixed 32-px overlap computed
about 10 % more pixels for nothing on a 12 MP photo). The radius is derived from the ops, never probed
on pixels: an INT8 model can swallow a small probe, which would understate it.

Every tensor gets (radius, step): an upper bound on how many input pixels either side of its
pixel's centre it depends on, and how many input pixels one of its pixels spans. Convolutions and
pools add their half window (their full window when strided, whose SAME padding is asymmetric);
depth-to-space and space-to-depth change the step and add the sub-pixel offset; per-pixel ops take
the widest input. Anything else (a spatial MEAN, a RESHAPE, a resize of a size known only at run
time, an op not listed) makes the radius unknown: ``None``, and callers keep their default overlap.
Torch-free: the TFLite graph is read with the flatbuffer schema. quantir's ONNX exports spell
pixel shuffle and the integer ADD as RESHAPE/TRANSPOSE/Gather chains, which this reading cannot
follow, so ONNX models keep the default overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# Ops whose output pixel depends on the same pixel of each input only (channel-wise concat included).
POINTWISE = frozenset({
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "QUANTIZE", "DEQUANTIZE", "RELU", "RELU6",
    "RELU_N1_TO_1", "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "TANH", "LOGISTIC", "HARD_SWISH", "ABS", "NEG",
    "SQUARE", "SQRT", "RSQRT", "EXP", "SQUARED_DIFFERENCE", "GELU", "CAST", "POW",
})


@dataclass(frozen=True)
class Window:
    """A sliding window (conv or pool): kernel, stride and dilation per spatial axis."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Node:
    """One op, reduced to what decides how far it looks.

    ``kind``: "pointwise", "window" (with ``window``), "depth_to_space" / "space_to_depth" (with
    ``block``), "pad" (with ``block`` = the largest spatial pad) or "unknown". ``inputs`` are the
    activation inputs only (weights, biases and other constants left out).
    """

    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    window: Window | None = None
    block: int = 1


def output_radius(nodes: Iterable[Node], graph_input, graph_output) -> int | None:
    """Receptive-field radius (input px) of ``graph_output``; ``None`` when an op on its path is unknown.

    ``nodes`` in execution order (TFLite stores them topologically sorted).
    """
    reach: dict = {graph_input: (Fraction(0), Fraction(1))}
    unknown = object()
    for node in nodes:
        ins = [reach.get(t, unknown) for t in node.inputs]
        if not ins or any(r is unknown for r in ins):
            out = unknown  # fed by a tensor we cannot follow (or by constants alone: no spatial input)
        else:
            radius, step = max(r for r, _ in ins), ins[0][1]
            if node.kind == "pointwise":
                out = (radius, step)
            elif node.kind == "window":
                w = node.window
                strided = max(w.stride) > 1
                half = max((k - 1) * d if strided else math.ceil((k - 1) * d / 2)
                           for k, d in zip(w.kernel, w.dilation))
                out = (radius + half * step, step * max(w.stride))
            elif node.kind == "depth_to_space":
                out = (radius + _parent_offset(step, node.block), step / node.block)
            elif node.kind == "space_to_depth":
                out = (radius + (node.block - 1) * step, step * node.block)
            elif node.kind == "pad":
                out = (radius + node.block * step, step)
            else:
                out = unknown
        for t in node.outputs:
            reach[t] = out
    final = reach.get(graph_output, unknown)
    return None if final is unknown else math.ceil(final[0])


def _parent_offset(step: Fraction, block: int) -> int:
    """How far (input px) depth-to-space moves a pixel from the one it copies, both placed at the input
    pixel that holds their top-left corner: output ``j = block*q + r`` copies ``q``; at an integer step
    that is ``floor(r * step / block)`` (0 for an SR net's last op, whose step is 1), else at most one."""
    if step.denominator == 1:
        return math.floor((block - 1) * step / block)
    return math.ceil((block - 1) * step / block)


# --- TFLite -------------------------------------------------------------------------------------

def tflite_nodes(model, subgraph) -> tuple[list[Node], int, int]:
    """The nodes of a TFLite subgraph (``schema_py_generated`` objects), its input and output tensor."""
    from ai_edge_litert import schema_py_generated as fb

    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}

    def is_const(t: int) -> bool:
        buf = model.Buffers(subgraph.Tensors(t).Buffer())
        return buf is not None and (buf.DataLength() > 0 or buf.Size() > 0)

    def const_data(t: int) -> np.ndarray | None:
        tensor = subgraph.Tensors(t)
        buf = model.Buffers(tensor.Buffer())
        if buf is None or buf.DataLength() == 0:
            return None
        return np.frombuffer(bytes(buf.DataAsNumpy()), dtype=np.int32)

    nodes, sliced_from = [], {}  # sliced_from: a (STRIDED_)SLICE's output -> the tensor it slices
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [int(t) for t in op.InputsAsNumpy() if t >= 0]
        acts = tuple(t for t in ins if not is_const(t))
        outs = tuple(int(t) for t in op.OutputsAsNumpy())
        table = op.BuiltinOptions()
        kind, window, block = "unknown", None, 1
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            opts = (fb.Conv2DOptions() if name == "CONV_2D" else fb.DepthwiseConv2DOptions())
            opts.Init(table.Bytes, table.Pos)
            shape = subgraph.Tensors(ins[1]).ShapeAsNumpy()  # [O, KH, KW, I] / [1, KH, KW, C]
            window = Window((int(shape[1]), int(shape[2])), (opts.StrideH(), opts.StrideW()),
                            (opts.DilationHFactor(), opts.DilationWFactor()))
            kind, acts = "window", acts[:1]
        elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            opts = fb.Pool2DOptions()
            opts.Init(table.Bytes, table.Pos)
            window = Window((opts.FilterHeight(), opts.FilterWidth()), (opts.StrideH(), opts.StrideW()))
            kind = "window"
        elif name in ("DEPTH_TO_SPACE", "SPACE_TO_DEPTH"):
            opts = fb.DepthToSpaceOptions() if name == "DEPTH_TO_SPACE" else fb.SpaceToDepthOptions()
            opts.Init(table.Bytes, table.Pos)
            kind, block = name.lower(), opts.BlockSize()
        elif name == "CONCATENATION":
            opts = fb.ConcatenationOptions()
            opts.Init(table.Bytes, table.Pos)
            rank = subgraph.Tensors(outs[0]).ShapeLength()
            if opts.Axis() in (-1, rank - 1):
                kind = "pointwise"
            elif (mirror := _mirror_pad(acts, sliced_from)) is not None:
                kind, block, acts = "pad", mirror[1], (mirror[0],)
        elif name in ("SLICE", "STRIDED_SLICE"):
            sliced_from[outs[0]] = acts[0]
        elif name in ("PAD", "PADV2"):
            pads = const_data(ins[1])
            if pads is not None and len(pads) == 8 and not pads[:2].any() and not pads[6:].any():
                kind, block, acts = "pad", int(pads[2:6].max()), acts[:1]
        elif name in POINTWISE:
            kind = "pointwise"
        nodes.append(Node(kind, acts, outs, window, block))
    return nodes, int(subgraph.InputsAsNumpy()[0]), int(subgraph.OutputsAsNumpy()[0])


def _mirror_pad(inputs: tuple[int, ...], sliced_from: dict[int, int]) -> tuple[int, int] | None:
    """(source, pad) when a spatial concat is a pad made of slices of its source (``symmetric_pad``):
    rows or columns of the source before and after it. Equal counts on both sides move no pixel
    (pad 0: only pixels within the pad of the edge read the copies); unequal ones shift by at most
    their difference."""
    sources = [t for t in inputs if t not in sliced_from]
    if len(sources) != 1 or any(sliced_from[t] != sources[0] for t in inputs if t in sliced_from):
        return None
    before = inputs.index(sources[0])
    return sources[0], abs(before - (len(inputs) - 1 - before))


def tflite_radius(data: bytes) -> int | None:
    """Receptive-field radius of a .tflite model's first output (``None``: not derivable)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() != 1:
        return None
    graph = model.Subgraphs(0)
    if graph.InputsLength() != 1:
        return None
    return output_radius(*tflite_nodes(model, graph))

"""Which ops of a network the full-integer path can take: a report before any training.

The exported (and rewritten, see quant/rewrite.py) graph is read op by op:

* ops the quantizer annotates (quant/quantizer.py) run as int8 kernels;
* a few ops have no int8 kernel but lower to TFLite as a float island (DEQUANTIZE, float op,
  QUANTIZE): allowed unless a fully-integer artifact was asked for, and listed in parity.json;
* anything else cannot be exported (no TFLite kernel, or one quantir cannot emulate bit for bit).

Each problem is one line: op, module path, why, what to do.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Literal

import torch
from torch.fx import GraphModule, Node

from quantir.errors import ConfigError
from quantir.models.protocol import RestorationModel, WrappedModel
from quantir.quant.graph_ops import (BINARY_SHARED, CAT_OPS, COMPUTE_OPS, FIXED_QPARAMS, INSTANCE_NORM, SHARED_OPS,
                                     UNARY_OPS)
from quantir.quant.rewrite import RewrittenModel, export_nchw, module_path, rewrite_graph, source_line

aten = torch.ops.aten
INT8_OPS = COMPUTE_OPS | SHARED_OPS | CAT_OPS | BINARY_SHARED | UNARY_OPS | set(FIXED_QPARAMS) | {
    aten.relu_.default, aten.leaky_relu_.default, aten.hardtanh_.default, aten.clamp_.default, aten.sigmoid_.default,
    aten.tanh_.default}  # in-place forms: the quantized graph is functionalized
# No int8 kernel, but TFLite runs them in float between DEQUANTIZE and QUANTIZE.
FLOAT_ISLAND_OPS = {aten.elu.default, aten.softplus.default, aten.exp.default, aten.sqrt.default,
                    aten.rsqrt.default, aten.mean.dim, aten.var.correction, aten.pow.Tensor_Scalar,
                    aten.hardsigmoid.default}
# Known not to export, with what to do instead.
ADVICE = {
    aten.upsample_bicubic2d.vec: ("TFLite has no bicubic resize",
                                  "use a nearest or bilinear residual, or learn the upsampling as conv + PixelShuffle"),
    aten.grid_sampler_2d.default: ("no int8 (or TFLite builtin) grid sampling", "align features with convs instead"),
    aten._native_batch_norm_legit_no_training.default: (
        "BatchNorm is not folded", "fold it into the preceding conv (or give the block a reparameterize())"),
    aten.pixel_shuffle.default: ("this PixelShuffle's input does not come from a conv of its own",
                                 "put the conv that makes its channels directly before it"),
}
_STRUCTURAL = {operator.getitem, aten.sym_size.int, aten._assert_scalar.default, aten.sym_constrain_range_for_size.default,
               aten._assert_tensor_metadata.default}


@dataclasses.dataclass(frozen=True)
class OpProblem:
    """One op that will not run as an int8 kernel."""

    op: str
    module: str
    why: str
    fix: str
    # fixed_shape: int8, but the artifact cannot have dynamic H/W; float_island: exports with a
    # float op between DEQUANTIZE and QUANTIZE; unsupported: cannot be exported
    kind: Literal["fixed_shape", "float_island", "unsupported"]

    def line(self) -> str:
        return f"{self.op} at {self.module}: {self.why}; {self.fix}"


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0] if name.count(".") == 1 else name


def _where(node: Node) -> str:
    path = module_path(node) or "<top-level forward>"
    src = source_line(node)
    return f"{path} ({src})" if src and not module_path(node) else path


def _is_image_op(node: Node) -> bool:
    return node.op == "call_function" and node.target not in _STRUCTURAL and isinstance(node.meta.get("val"), torch.Tensor)


def op_report(gm: GraphModule) -> list[OpProblem]:
    """Every op of an exported NCHW graph that will not be an int8 kernel, in graph order."""
    problems = []
    for node in gm.graph.nodes:
        if not _is_image_op(node):
            continue
        t = node.target
        if t is aten.pixel_shuffle.default or (t not in INT8_OPS and t not in FLOAT_ISLAND_OPS):
            why, fix = ADVICE.get(t, ("no int8 kernel in quantir's quantizer and no known TFLite lowering",
                                      "replace it with supported ops (README: 'Quantize your own model')"))
            # a kept PixelShuffle still exports, as a RESHAPE/TRANSPOSE chain baked to one size
            kind = "fixed_shape" if t is aten.pixel_shuffle.default else "unsupported"
            problems.append(OpProblem(_op_name(t), _where(node), why, fix, kind))
        elif t is INSTANCE_NORM:
            problems.append(OpProblem(_op_name(t), _where(node), "int8 on the full tensor, but its per-channel mean "
                                      "and rsqrt(variance) run in float (quant/quantizer.py)",
                                      "allow float islands, or use BatchNorm (folded into the conv)", "float_island"))
        elif t in FLOAT_ISLAND_OPS:
            problems.append(OpProblem(_op_name(t), _where(node), "no int8 kernel: runs in float between "
                                      "DEQUANTIZE and QUANTIZE", "allow float islands, or replace the op", "float_island"))
    return problems


class UnsupportedModelError(ConfigError):
    """The network has ops the requested artifact cannot hold; the message lists them, one line each."""

    def __init__(self, message: str):
        Exception.__init__(self, "\n".join(" ".join(line.split()) for line in str(message).splitlines()))


def check_supported(problems: list[OpProblem], allow_float_ops: bool = False) -> None:
    """Raise, one line per op, when an op cannot export (or would be a float island and that is not allowed)."""
    fatal = [p for p in problems if p.kind == "unsupported" or (p.kind == "float_island" and not allow_float_ops)]
    if fatal:
        head = (f"{len(fatal)} op(s) cannot be integer-exported" if any(p.kind == "unsupported" for p in fatal)
                else f"{len(fatal)} op(s) would run in float (a fully-integer artifact was asked for)")
        raise UnsupportedModelError(head + ":\n" + "\n".join("  " + p.line() for p in fatal))


def inspect_model(model: RestorationModel, example: torch.Tensor,
                  allow_float_ops: bool = False) -> tuple[RestorationModel, list[OpProblem]]:
    """A user's model rewritten for the integer path, and the ops that will not be int8 kernels.

    Registered quantir models are returned as they are (written for the int8 path). Raises
    ``UnsupportedModelError`` before any training when an op cannot be exported.
    """
    if not isinstance(model, WrappedModel) or isinstance(model, RewrittenModel):
        return model, []
    try:
        gm = export_nchw(model.net, example, model.info.size_multiple)
    except Exception as err:  # torch.export's own errors are pages long; the first line says what
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        try:  # a graph at the example's size alone still names the ops that are in the way
            static = export_nchw(model.net, example, dynamic=False)
        except Exception:
            static = None
        if static is not None:
            check_supported(op_report(static), allow_float_ops)
        raise UnsupportedModelError(f"torch.export cannot trace {type(model.net).__name__} for any input size: "
                                    f"{first}") from err
    log = rewrite_graph(gm)
    # the rewrites call Python functions; export again to read the ATen ops they become
    problems = op_report(export_nchw(gm, example, model.info.size_multiple) if log.done else gm)
    check_supported(problems, allow_float_ops)
    # Returned as a RewrittenModel even with nothing rewritten: prepare_qat/prepare_ptq then take it
    # as inspected and do not export and check the network a second time.
    return RewrittenModel(gm, model.info, log, type(model.net).__name__), problems

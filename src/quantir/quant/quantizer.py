"""A PT2E quantizer that leaves nothing in float: every op of our models gets int8 qparams.

Rules (TFLite's int8 spec, which onnxruntime's QDQ kernels follow too):

* compute ops (conv, add, mul, sub) read their inputs at the producers' qparams and get a
  fresh output range; a following ReLU is fused (the ReLU output carries the range);
* layout and resampling ops (permute, reshape, pixel_shuffle, repeat, max/avg pool,
  nearest/bilinear resize, standalone ReLU/clamp) share their input's qparams, as TFLite's
  kernels require for TRANSPOSE, RESHAPE, DEPTH_TO_SPACE, pools and resizes;
* concatenation puts all inputs and the output on one scale;
* tanh and sigmoid get TFLite's fixed output qparams (1/128, 0) and (1/256, -128);
* the graph input and the tensor reaching the graph output use the model's declared I/O
  quantization (e.g. scale 1, zero point -128 for 0..255 pixels), so the artifact has int8 I/O;
* a clamp that only restates the I/O range (``clamp(x, 0, 255)`` before a 0..255 output) is
  removed from the quantized graph: quantizing to that range already clamps, bit for bit.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from quantir.numerics import INT8_MAX, INT8_MIN, SIGMOID_QPARAMS, TANH_QPARAMS

aten = torch.ops.aten

COMPUTE_OPS = {aten.conv2d.default, aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor, aten.linear.default}
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
FIXED_QPARAMS = {aten.tanh.default: TANH_QPARAMS, aten.sigmoid.default: SIGMOID_QPARAMS}
CAT_OPS = {aten.cat.default, aten.concat.default}
BINARY_SHARED = {aten.minimum.default, aten.maximum.default}  # TFLite MINIMUM/MAXIMUM: one scale for all


@dataclasses.dataclass(frozen=True)
class IOQuant:
    """Quantization of the model's input and output tensors (int8, per tensor)."""

    scale: float
    zero_point: int

    @property
    def representable(self) -> tuple[float, float]:
        return ((INT8_MIN - self.zero_point) * self.scale, (INT8_MAX - self.zero_point) * self.scale)

    def spec(self) -> FixedQParamsQuantizationSpec:
        return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=self.scale, zero_point=self.zero_point,
                                            quant_min=INT8_MIN, quant_max=INT8_MAX, qscheme=torch.per_tensor_affine)


def _is_tensor_node(n) -> bool:
    return isinstance(n, Node) and isinstance(n.meta.get("val"), torch.Tensor)


def _annotated(n: Node) -> bool:
    ann = n.meta.get("quantization_annotation")
    return ann is not None and ann.output_qspec is not None


def _mark(n: Node, inputs: dict, output) -> None:
    n.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=output,
                                                               _annotated=True)


@dataclasses.dataclass(frozen=True)
class _StaticConfig:
    is_dynamic: bool = False


class FullIntQuantizer(Quantizer):
    """Annotates every tensor op of an exported image model for full-integer int8 execution."""

    def __init__(self, act_spec: QuantizationSpec, weight_spec: QuantizationSpec, io: IOQuant):
        super().__init__()
        self.act_spec, self.weight_spec, self.io = act_spec, weight_spec, io
        # litert-torch only reads ``global_config.is_dynamic`` to pick its static int8 lowering.
        self.global_config = _StaticConfig()

    # -- graph clean-up -------------------------------------------------------------------
    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        lo, hi = self.io.representable
        for n in list(model.graph.nodes):
            if n.op == "call_function" and n.target in CLAMP_OPS and self._reaches_output(n):
                cmin = n.args[1] if len(n.args) > 1 else n.kwargs.get("min")
                cmax = n.args[2] if len(n.args) > 2 else n.kwargs.get("max")
                if cmin is not None and cmax is not None and cmin <= lo + 1e-9 and cmax >= hi - 1e-9:
                    n.replace_all_uses_with(n.args[0])
                    model.graph.erase_node(n)
        model.graph.lint()
        model.recompile()
        return model

    @staticmethod
    def _reaches_output(n: Node) -> bool:
        """True when ``n``'s value flows to a graph output only through layout-preserving ops."""
        frontier = [n]
        while frontier:
            cur = frontier.pop()
            for user in cur.users:
                if user.op == "output":
                    return True
                if user.op == "call_function" and user.target in SHARED_OPS - CLAMP_OPS:
                    frontier.append(user)
                elif user.op == "call_function" and user.target is operator.getitem:
                    frontier.append(user)
        return False

    # -- annotation ------------------------------------------------------------------------
    def annotate(self, model: GraphModule) -> GraphModule:
        graph = model.graph
        io_spec = self.io.spec()
        output_roots = self._output_roots(graph)
        self._out_spec = lambda node: io_spec if node in output_roots else None
        for n in graph.nodes:
            if n.op != "call_function" or _annotated(n):
                continue
            out_spec = io_spec if n in output_roots else None
            if n.target in COMPUTE_OPS:
                self._annotate_compute(n, out_spec)
            elif n.target in CAT_OPS:
                self._annotate_cat(n, out_spec)
            elif n.target in BINARY_SHARED:
                x, other = n.args[0], n.args[1]
                inputs = {x: self._input_spec(x)}
                if _is_tensor_node(other):
                    inputs[other] = SharedQuantizationSpec((x, n))
                _mark(n, inputs, SharedQuantizationSpec((x, n)))
            elif n.target in UNARY_OPS:
                inp = n.args[0]
                _mark(n, {inp: self._input_spec(inp)}, out_spec or self.act_spec)
            elif n.target in FIXED_QPARAMS:
                scale, zp = FIXED_QPARAMS[n.target]
                inp = n.args[0]
                spec = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zp, quant_min=INT8_MIN,
                                                    quant_max=INT8_MAX, qscheme=torch.per_tensor_affine)
                _mark(n, {inp: self._input_spec(inp)}, spec)
            elif n.target in SHARED_OPS:
                inp = n.args[0]
                if not _is_tensor_node(inp):
                    continue
                if not _annotated(inp) and inp.op == "placeholder":
                    _mark(n, {inp: io_spec}, SharedQuantizationSpec((inp, n)))
                elif n.target in FUSABLE_ACTIVATIONS and not _annotated(inp):
                    _mark(n, {inp: self.act_spec}, out_spec or self.act_spec)
                else:
                    _mark(n, {inp: self._input_spec(inp)}, SharedQuantizationSpec((inp, n)))
        return model

    def _input_spec(self, inp: Node):
        return SharedQuantizationSpec(inp) if _annotated(inp) else self.act_spec

    def _annotate_compute(self, n: Node, out_spec) -> None:
        inputs = {}
        tensor_args = [a for a in n.args if _is_tensor_node(a)]
        if n.target in (aten.conv2d.default, aten.linear.default):
            act, weight = n.args[0], n.args[1]
            inputs[act] = self._input_spec(act)
            inputs[weight] = self.weight_spec
        else:
            for a in tensor_args:
                inputs[a] = self._input_spec(a)
        users = list(n.users)
        fused = len(users) == 1 and users[0].op == "call_function" and users[0].target in FUSABLE_ACTIVATIONS
        if fused:
            _mark(n, inputs, None)
            relu = users[0]
            _mark(relu, {}, self._out_spec(relu) or self.act_spec)
        else:
            _mark(n, inputs, out_spec or self.act_spec)

    def _annotate_cat(self, n: Node, out_spec) -> None:
        tensors = [t for t in n.args[0] if _is_tensor_node(t)]
        if len(set(tensors)) == 1 and out_spec is None:
            # Repeating one tensor (e.g. ABPN's anchor) keeps its qparams: no requantization.
            src = tensors[0]
            _mark(n, {src: self._input_spec(src)}, SharedQuantizationSpec((src, n)))
            return
        inputs = {t: SharedQuantizationSpec(n) for t in tensors}
        _mark(n, inputs, out_spec or self.act_spec)

    @staticmethod
    def _output_roots(graph) -> set:
        """Nodes whose output reaches a graph output through shared-qparam ops only."""
        roots = set()
        out = next(n for n in graph.nodes if n.op == "output")
        stack = list(_flatten_nodes(out.args))
        while stack:
            cur = stack.pop()
            if cur.op == "call_function" and cur.target in SHARED_OPS - FUSABLE_ACTIVATIONS - CLAMP_OPS:
                stack.append(cur.args[0])
            else:
                roots.add(cur)
        return roots

    def validate(self, model: GraphModule) -> None:
        pass


def _flatten_nodes(args):
    if isinstance(args, Node):
        yield args
    elif isinstance(args, (list, tuple)):
        for a in args:
            yield from _flatten_nodes(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _flatten_nodes(a)

"""A PT2E quantizer that leaves nothing in float: every op of our models gets int8 qparams.

Rules (TFLite's int8 spec, which onnxruntime's QDQ kernels follow too):

* compute ops (conv, add, mul, sub) read their inputs at the producers' qparams and get a
  fresh output range; a following ReLU is fused (the ReLU output carries the range);
* layout and resampling ops (permute, reshape, pixel_shuffle, repeat, max/avg pool,
  nearest/bilinear resize, standalone ReLU/clamp) share their input's qparams, as TFLite's
  kernels require for TRANSPOSE, RESHAPE, DEPTH_TO_SPACE, pools and resizes;
* concatenation puts all inputs and the output on one scale; an input that cannot take that
  scale (a tanh/sigmoid output with its fixed qparams, the graph input, a layout op sharing
  its producer's qparams) is first requantized onto it by an int8 MUL with a constant 1 at
  scale 1 (see ``_requantize_cat_inputs`` for why a MUL and not a QUANTIZE);
* tanh and sigmoid get TFLite's fixed output qparams (1/128, 0) and (1/256, -128);
* the graph input and the tensor reaching the graph output use the model's declared I/O
  quantization (e.g. scale 1, zero point -128 for 0..255 pixels), so the artifact has int8 I/O;
* an add that forms the output from the input image through shared-qparams ops only (an
  image-space anchor: ABPN's repeated input, a resized input) and a conv's residual puts that
  residual on the output's grid (the output scale, zero point 0; ``align_residual``): the add is
  then an exact integer add and the output is rounded once, as an FP32 model's uint8 output is;
  with a range of its own the residual would be rounded twice (measured: the largest INT8 loss of
  the anchor nets on smooth photos, BENCHMARKS "Residual on the output grid");
* a clamp that only restates the I/O range (``clamp(x, 0, 255)`` before a 0..255 output) is
  removed from the quantized graph: quantizing to that range already clamps, bit for bit;
* a symmetric clamp right after a conv, ``clamp(conv(x), -R, R)``, is that conv's int8 range
  (scale R/127, zero point 0) and is removed the same way; the grid operand of such an output
  add may also be the input plus edge branches (``relu(conv)``, ``min(conv, 0)``), added on the
  input's grid (``_grid_base``; ``compose_stem``'s split direct conv).
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

from quantir.numerics import INT8_MAX, INT8_MIN, REQUANT_ONE_QPARAMS
from quantir.quant.config import KeepLayers
from quantir.quant.graph_ops import (
    BINARY_SHARED, CAT_OPS, CLAMP_OPS, CLAMP_RANGE_META, COMPUTE_OPS, FIXED_QPARAMS, FUSABLE_ACTIVATIONS,
    GRID_RESIDUAL_META, ISLAND_META, REQUANT_META, SHARED_OPS, UNARY_OPS, WEIGHTED_OPS, aten,
    clamp_bounds, edge_branch, is_tensor_node, needs_requantization, on_input_grid, one_source_cat,
    symmetric_clamp_of_layer,
)
from quantir.quant.instance_norm import decompose_instance_norms
from quantir.quant.layer_roles import kept_layers
from quantir.quant.rewrite import add_constant  # rank 4 like the image tensors: a scalar lowers with a RESHAPE


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


def _annotated(n: Node) -> bool:
    ann = n.meta.get("quantization_annotation")
    return ann is not None and ann.output_qspec is not None


def _marked(n: Node) -> bool:
    """Annotated already, possibly as float (output None: a layer kept in float and its fused ReLU)."""
    return "quantization_annotation" in n.meta


def _fixed_spec(scale: float, zero_point: int) -> FixedQParamsQuantizationSpec:
    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=INT8_MIN,
                                        quant_max=INT8_MAX, qscheme=torch.per_tensor_affine)


def _requantize_cat_inputs(model: GraphModule) -> int:
    """Put a requantizing int8 MUL by a constant 1 in front of every concat input that needs one.

    In the PT2E graph a requantization is dq -> q with new qparams, and litert-torch folds such a
    pair away in front of a same-scale op (tfl.concatenation then fails its same-scale check:
    measured with litert-torch 0.10). A MUL survives, and its int8 kernel requantizes with one
    float32 multiplier (s_in * 1 / s_out, rounded half to even), which ``exact_mul`` reproduces;
    XNNPACK's int8 QUANTIZE would round through an 8-bit fixed-point multiplier instead.
    """
    count = 0
    for n in list(model.graph.nodes):
        if n.op != "call_function" or n.target not in CAT_OPS:
            continue
        tensors = [t for t in n.args[0] if is_tensor_node(t)]
        if len(set(tensors)) < 2 or one_source_cat(n):
            continue  # pieces of one tensor keep its qparams (see _annotate_cat)
        new_inputs = list(n.args[0])
        for i, t in enumerate(new_inputs):
            if not (is_tensor_node(t) and needs_requantization(t)):
                continue
            count += 1
            one = add_constant(model, f"_quantir_requant_one_{count}", 1.0, n)
            with model.graph.inserting_before(n):
                mul = model.graph.call_function(aten.mul.Tensor, (t, one))
            mul.meta = {**t.meta, REQUANT_META: True}
            new_inputs[i] = mul
        n.args = (new_inputs, *n.args[1:])
    return count


def _mark(n: Node, inputs: dict, output) -> None:
    n.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=output,
                                                               _annotated=True)


@dataclasses.dataclass(frozen=True)
class _StaticConfig:
    is_dynamic: bool = False


class FullIntQuantizer(Quantizer):
    """Annotates every tensor op of an exported image model for full-integer int8 execution."""

    def __init__(self, act_spec: QuantizationSpec, weight_spec: QuantizationSpec, io: IOQuant,
                 keep: KeepLayers = KeepLayers(), kept_specs: tuple = (None, None), conv_inputs_only: bool = False,
                 align_residual: bool = False):
        """``keep`` picks layers whose weights and output use ``kept_specs`` = (act, weight) instead
        (8-bit specs, or None for float in simulation): the low-bit protocol of quant/config.py.
        ``conv_inputs_only``: quantize only conv inputs and weights (``QuantConfig.act_scope``).
        ``align_residual``: a conv residual added to the input image to form the output takes
        the output's grid (``QuantConfig.residual_on_output_grid``)."""
        super().__init__()
        self.act_spec, self.weight_spec, self.io = act_spec, weight_spec, io
        self.conv_inputs_only, self.align_residual = conv_inputs_only, align_residual
        self._aligned: set = set()
        self._base_adds: set = set()  # adds of edge branches onto the input grid (see _grid_base)
        self.keep, (self.kept_act_spec, self.kept_weight_spec) = keep, kept_specs
        self._kept: set = set()
        self._float: set = set()  # nodes whose output stays float (after layers kept in float)
        # litert-torch only reads ``global_config.is_dynamic`` to pick its static int8 lowering.
        self.global_config = _StaticConfig()

    # -- graph clean-up -------------------------------------------------------------------
    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        lo, hi = self.io.representable
        kept = kept_layers(model.graph, self.keep)  # their clamps stay: a kept layer may stay float
        for n in list(model.graph.nodes):
            if n.op == "call_function" and n.target in CLAMP_OPS and self._reaches_output(n):
                cmin, cmax = clamp_bounds(n)
                if cmin is not None and cmax is not None and cmin <= lo + 1e-9 and cmax >= hi - 1e-9:
                    n.replace_all_uses_with(n.args[0])
                    model.graph.erase_node(n)
            elif (n.op == "call_function" and n.target in CLAMP_OPS and not self.conv_inputs_only
                  and symmetric_clamp_of_layer(n) and n.args[0] not in kept):
                # layer -> clamp(-R, R): the layer's int8 output spans +-R (zero point 0) and saturates
                # there, which is the clamp; no MINIMUM/MAXIMUM op is left to export.
                layer = n.args[0]
                layer.meta[CLAMP_RANGE_META] = float(clamp_bounds(n)[1])
                n.replace_all_uses_with(layer)
                model.graph.erase_node(n)
        decompose_instance_norms(model)
        _requantize_cat_inputs(model)
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
        self._kept, self._float = kept_layers(graph, self.keep), set()
        if self.conv_inputs_only:
            return self._annotate_conv_inputs(model)
        output_roots = self._output_roots(graph)
        self._out_spec = lambda node: io_spec if node in output_roots else None
        self._base_adds = set()
        self._aligned = self._grid_residuals(output_roots) if self.align_residual else set()
        for n in graph.nodes:
            if n.op != "call_function" or _marked(n):
                continue
            out_spec = io_spec if n in output_roots else None
            island = n.meta.get(ISLAND_META)
            if island:
                if island == "output":  # the island's result is quantized; its inputs stay float
                    _mark(n, {}, out_spec or self.act_spec)
                continue  # inside: float ops reading the dequantized input
            if n.meta.get(REQUANT_META):
                x, one = n.args
                _mark(n, {x: self._input_spec(x), one: _fixed_spec(*REQUANT_ONE_QPARAMS)}, self.act_spec)
            elif n.target in COMPUTE_OPS:
                self._annotate_compute(n, out_spec)
            elif n.target in CAT_OPS:
                self._annotate_cat(n, out_spec)
            elif n.target in BINARY_SHARED:
                x, other = n.args[0], n.args[1]
                inputs = {x: self._input_spec(x)}
                if is_tensor_node(other):
                    inputs[other] = SharedQuantizationSpec((x, n))
                _mark(n, inputs, SharedQuantizationSpec((x, n)))
            elif n.target in UNARY_OPS:
                inp = n.args[0]
                _mark(n, {inp: self._input_spec(inp)}, out_spec or self.act_spec)
            elif n.target in FIXED_QPARAMS:
                inp = n.args[0]
                _mark(n, {inp: self._input_spec(inp)}, _fixed_spec(*FIXED_QPARAMS[n.target]))
            elif n.target in SHARED_OPS:
                inp = n.args[0]
                if not is_tensor_node(inp):
                    continue
                if inp in self._float:  # after a layer kept in float (KeepLayers): layout stays float too
                    if out_spec is None:
                        self._float.add(n)
                        continue
                    _mark(n, {inp: self.act_spec}, out_spec)
                elif not _annotated(inp) and inp.op == "placeholder":
                    _mark(n, {inp: io_spec}, SharedQuantizationSpec((inp, n)))
                elif n.target in FUSABLE_ACTIVATIONS and not _annotated(inp):
                    _mark(n, {inp: self.act_spec}, out_spec or self.act_spec)
                else:
                    _mark(n, {inp: self._input_spec(inp)}, SharedQuantizationSpec((inp, n)))
        return model

    def _annotate_conv_inputs(self, model: GraphModule) -> GraphModule:
        """The ODM lineage's simulation: a quantizer on each conv's input edge and on its weights,
        nothing else; a kept layer takes the kept specs (none in float mode, 8 bits in "8bit")."""
        for n in model.graph.nodes:
            if n.op != "call_function" or n.target not in WEIGHTED_OPS or _marked(n):
                continue
            act_spec, weight_spec = self._layer_specs(n)
            inputs = {n.args[0]: act_spec} if act_spec is not None else {}
            if weight_spec is not None:
                inputs[n.args[1]] = weight_spec
            _mark(n, inputs, None)
        return model

    def _layer_specs(self, n: Node) -> tuple:
        """(activation, weight) specs of a layer: the kept ones for a kept layer (KeepLayers)."""
        if n in self._kept:
            return self.kept_act_spec, self.kept_weight_spec
        return self.act_spec, self.weight_spec

    def _from_kept(self, inp: Node) -> bool:
        """Whether ``inp`` is the output of a kept layer (through its fused activation)."""
        if inp in self._kept:
            return True
        return (inp.op == "call_function" and inp.target in FUSABLE_ACTIVATIONS
                and isinstance(inp.args[0], Node) and inp.args[0] in self._kept)

    def _input_spec(self, inp: Node):
        return SharedQuantizationSpec(inp) if _annotated(inp) else self.act_spec

    def _annotate_compute(self, n: Node, out_spec) -> None:
        inputs = {}
        tensor_args = [a for a in n.args if is_tensor_node(a)]
        kept = n in self._kept
        act_spec, weight_spec = self._layer_specs(n)
        if n.target in WEIGHTED_OPS:
            act, weight = n.args[0], n.args[1]
            if not (kept and act_spec is None and act in self._float):  # float -> float: no quantizer between
                # A k-bit layer reading a kept layer's output requantizes it to k bits on that edge
                # (the ODM lineage quantizes every body conv's input, the first one's included).
                inputs[act] = self.act_spec if not kept and self._from_kept(act) else self._input_spec(act)
            if weight_spec is not None:
                inputs[weight] = weight_spec
        else:
            float_in = any(a in self._float for a in tensor_args)
            for a in tensor_args:
                if a not in self._float:
                    inputs[a] = self._input_spec(a)
            if float_in:  # an add or mul after a layer kept in float stays float (only weighted ops quantize)
                act_spec = None
        users = list(n.users)
        fused = len(users) == 1 and users[0].op == "call_function" and users[0].target in FUSABLE_ACTIVATIONS
        readers = list(users[0].users) if fused else users
        if self._kept and not kept and readers and all(r in self._kept for r in readers):
            # Only kept layers read it (the last body output into the tail/upsampler): it is their
            # input, so it takes their precision, as in the ODM lineage, where the tail reads float.
            act_spec = self.kept_act_spec
        if n in self._aligned:
            act_spec = _fixed_spec(self.io.scale, 0)
        elif n in self._base_adds:
            act_spec = self.io.spec()
        elif CLAMP_RANGE_META in n.meta:
            act_spec = self._symmetric_spec(n.meta[CLAMP_RANGE_META])
        if fused:
            _mark(n, inputs, None)
            relu = users[0]
            _mark(relu, {}, self._out_spec(relu) or act_spec)
            n = relu
        else:
            _mark(n, inputs, out_spec or act_spec)
        if n.meta["quantization_annotation"].output_qspec is None:
            self._float.add(n)  # a layer kept in float: its consumers quantize (or not) what they read

    def _annotate_cat(self, n: Node, out_spec) -> None:
        tensors = [t for t in n.args[0] if is_tensor_node(t)]
        if out_spec is None and one_source_cat(n):
            # Pieces of one tensor (ABPN's anchor repeats it, a mirror pad slices it) keep its
            # qparams: the concat moves int8 codes, no requantization.
            first = tensors[0]
            _mark(n, {t: self._input_spec(t) for t in dict.fromkeys(tensors)}, SharedQuantizationSpec((first, n)))
            return
        inputs = {t: SharedQuantizationSpec(n) for t in tensors}
        _mark(n, inputs, out_spec or self.act_spec)

    def _grid_residuals(self, output_roots: set) -> set:
        """Convs whose output, added to the input image (``on_input_grid``), is the model output.

        On the output's grid (its scale, zero point 0) ``round(r) + a`` is the add, exactly, and
        ``round(r + a)`` for the integer codes ``a`` of the input: one rounding, as in float. The
        residual may also be the sum of convs (``compose_stem``'s out + direct): then that add
        rounds once onto the grid.
        """
        aligned = set()
        for n in output_roots:
            if n.op != "call_function" or n.target is not aten.add.Tensor or len(n.args) < 2:
                continue
            a, b = n.args[0], n.args[1]
            for grid, residual in ((a, b), (b, a)):
                base_adds = set()
                if (is_tensor_node(grid) and is_tensor_node(residual) and self._grid_base(grid, base_adds)
                        and self._is_residual_layer(residual)):
                    aligned.add(residual)
                    residual.meta[GRID_RESIDUAL_META] = True  # api.grid_residual_clipping finds its quantizer
                    self._base_adds |= base_adds
        return aligned

    def _grid_base(self, t: Node, base_adds: set) -> bool:
        """``t`` holds codes on the input grid: a layout of the input, or such a tensor plus edge
        branches (``compose_stem``'s split direct conv), each add taking the input's qparams and
        collected in ``base_adds`` (it rounds only where the branch is non-zero)."""
        if on_input_grid(t):
            return True
        if not (t.op == "call_function" and t.target is aten.add.Tensor and len(t.users) == 1
                and all(is_tensor_node(a) for a in t.args[:2])):
            return False
        for base, branch in ((t.args[0], t.args[1]), (t.args[1], t.args[0])):
            if edge_branch(branch) and branch.args[0] not in self._kept and self._grid_base(base, base_adds):
                base_adds.add(t)
                return True
        return False

    def _is_residual_layer(self, r: Node) -> bool:
        """A quantized conv read by nothing else, or such convs added together."""
        if r.op != "call_function" or len(r.users) != 1 or r in self._kept:
            return False
        if r.target in WEIGHTED_OPS:
            return True
        parts = [a for a in r.args if is_tensor_node(a)]
        return r.target is aten.add.Tensor and len(parts) == 2 and all(self._is_residual_layer(a) for a in parts)

    def _symmetric_spec(self, bound: float) -> FixedQParamsQuantizationSpec:
        """Fixed qparams spanning +-bound at zero point 0 (the top code lands on ``bound``)."""
        qmax = self.act_spec.quant_max
        return FixedQParamsQuantizationSpec(dtype=self.act_spec.dtype, scale=bound / qmax, zero_point=0,
                                            quant_min=self.act_spec.quant_min, quant_max=qmax,
                                            qscheme=torch.per_tensor_affine)

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

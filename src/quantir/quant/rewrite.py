"""Rewrite a user's network into ops the full-integer path computes exactly (before quantization).

Every rewrite is an exact re-expression of the float function (up to float rounding of a
constant), so the FP32 model, the fake-quant model and the artifact all compute the rewritten
graph:

* ``nn.PixelShuffle`` (PyTorch's CRD order) -> TFLite's DCR depth-to-space, by permuting the
  output channels of the conv that produces it (what mobileone_sr does by hand); the artifact
  then has one DEPTH_TO_SPACE op and dynamic H/W instead of a RESHAPE/TRANSPOSE chain baked to
  one size;
* nearest upsampling by an integer factor s -> the input concatenated s*s times, then DCR
  depth-to-space (exact; no size constant, so the artifact stays dynamic);
* SiLU -> x * sigmoid(x) (int8 LOGISTIC and MUL); PReLU (a float island otherwise) -> max(x, a * x)
  when every slope is in [0, 1], else relu(x) + a * min(x, 0); LeakyReLU stays one int8 LEAKY_RELU
  (its XNNPACK arithmetic is emulated in quant/exact.py);
* x / c -> x * (1/c), x - c -> x + (-c); x + 0 and x * 1 disappear;
* Python-number operands of add/mul become constant tensors, so they are quantized like any
  other input and the integer ADD/MUL emulation (quant/exact.py) applies to them.

``quant.support.inspect_model`` applies them to user models (never to registered ones).
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
import torch.nn as nn
from torch.export import Dim
from torch.fx import GraphModule, Node

from quantir.models.layers import crd_to_dcr_channels, depth_to_space
from quantir.models.protocol import WrappedModel

aten = torch.ops.aten
# Ops that act on each channel alone: a channel permutation commutes with them.
_CHANNELWISE = {aten.relu.default, aten.relu_.default, aten.leaky_relu.default, aten.leaky_relu_.default,
                aten.hardtanh.default, aten.clamp.default, aten.prelu.default, aten.silu.default, aten.silu_.default,
                aten.sigmoid.default, aten.tanh.default, aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor,
                aten.div.Tensor}
_NEAREST = {aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default}


def silu_as_gate(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def prelu_as_max(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PReLU with every slope in [0, 1]: max(x, a * x), two int8 kernels XNNPACK runs (MUL, MAXIMUM)."""
    return torch.maximum(x, x * alpha.reshape(1, -1, 1, 1))


def prelu_as_int8(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Any PReLU: relu(x) + a * min(x, 0), exact too but about 3x the time of ``prelu_as_max`` at 32 channels."""
    alpha = alpha.reshape(1, -1, 1, 1)  # rank 4 like x (a rank-1 constant makes litert-torch add TRANSPOSEs)
    return torch.relu(x) + torch.clamp(x, max=0.0) * alpha


@dataclasses.dataclass
class RewriteLog:
    """What was rewritten, and pixel shuffles that could not be (their producer is not a plain conv)."""

    done: list[str] = dataclasses.field(default_factory=list)
    kept: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (module path, why)


def module_path(node: Node) -> str:
    """The dotted path of the module that ran ``node`` ('' for the top level), from torch.export's metadata."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def source_line(node: Node) -> str:
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    files = [t.strip() for t in trace if t.strip().startswith("File ")]
    return files[-1] if files else ""


def export_nchw(model: nn.Module, example: torch.Tensor, multiple: int = 1, lo: int = 4,
                dynamic: bool = True) -> GraphModule:
    """``torch.export`` with dynamic batch, height and width (the sizes the artifacts accept).

    ``multiple``: H and W are multiples of it (``ModelInfo.size_multiple``, e.g. a U-Net's 2^depth).
    ``dynamic=False``: the example's size only (enough to list a graph's ops).
    """
    example = example.repeat(2, 1, 1, 1) if example.shape[0] < 2 else example
    if multiple > 1:
        h, w = multiple * Dim("h", min=1, max=16384 // multiple), multiple * Dim("w", min=1, max=16384 // multiple)
    else:
        h, w = Dim("height", min=lo, max=16384), Dim("width", min=lo, max=16384)
    dims = ({0: Dim("batch", min=1, max=4096), 2: h, 3: w},) if dynamic else None
    if not isinstance(model, GraphModule):
        model.eval()
    gm = torch.export.export(model, (example,), dynamic_shapes=dims).module()
    return GraphModule(gm, gm.graph)  # a plain GraphModule: train()/eval() work, unlike on the exported one


def _is_number(a) -> bool:
    return isinstance(a, numbers.Number) and not isinstance(a, bool)


def add_constant(gm: GraphModule, name: str, value: float, before: Node, rank: int = 4,
                 persistent: bool = True) -> Node:
    """A float32 constant buffer of shape 1x...x1 (``rank`` dims) read by a get_attr node before ``before``.

    ``persistent=False`` keeps it out of the state dict (and so out of checkpoints written before it existed)."""
    gm.register_buffer(name, torch.full((1,) * rank, float(value), dtype=torch.float32), persistent=persistent)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = gm.get_buffer(name)
    return node


class _Rewriter:
    def __init__(self, gm: GraphModule):
        self.gm, self.graph, self.log, self._n = gm, gm.graph, RewriteLog(), 0

    def constant(self, value, like: Node, rank: int = 4) -> Node:
        """A constant tensor attribute (a quantizable graph input) holding a Python number.

        Shaped 1x1x1x1 like the image tensors: with a rank-1 constant litert-torch keeps the op in
        NCHW between TRANSPOSEs (and the depth-to-space chain is no longer recognised).
        """
        self._n += 1
        return add_constant(self.gm, f"_quantir_const_{self._n}", value, like, rank)

    def replace(self, node: Node, target, args: tuple, what: str) -> Node:
        with self.graph.inserting_after(node):
            new = self.graph.call_function(target, args)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        self.log.done.append(f"{what} at {module_path(new) or '<top>'}")
        return new

    def run(self) -> RewriteLog:
        for node in list(self.graph.nodes):  # first, while the ops between conv and shuffle are still aten ops
            if node.op == "call_function" and node.target is aten.pixel_shuffle.default:
                self.pixel_shuffle(node)
        for node in list(self.graph.nodes):
            if node.op != "call_function":
                continue
            t, args = node.target, node.args
            if t in _NEAREST and self.nearest_factor(node):
                s = self.nearest_factor(node)
                with self.graph.inserting_before(node):
                    cat = self.graph.call_function(aten.cat.default, ([args[0]] * (s * s), 1))
                self.replace(node, depth_to_space, (cat, s), "nearest upsampling -> concat + depth-to-space")
            elif t in (aten.silu.default, aten.silu_.default):
                self.replace(node, silu_as_gate, (args[0],), "SiLU -> x * sigmoid(x)")
            elif t is aten.prelu.default and node.args[1].op == "get_attr":
                alpha = _get(self.gm, node.args[1].target)
                if bool(((alpha >= 0) & (alpha <= 1)).all()):
                    self.replace(node, prelu_as_max, args[:2], "PReLU -> max(x, a * x)")
                else:
                    self.replace(node, prelu_as_int8, args[:2], "PReLU (a slope outside 0..1) -> relu + a * min(x, 0)")
            elif t in (aten.div.Tensor, aten.sub.Tensor, aten.add.Tensor, aten.mul.Tensor):
                self.scalar_op(node) or self.constant_sub(node)
        for node in list(self.graph.nodes):
            if node.op == "call_function" and node.target in (aten.add.Tensor, aten.mul.Tensor):
                self.elementwise_before_depth_to_space(node)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        self.gm.recompile()
        return self.log

    @staticmethod
    def nearest_factor(node: Node) -> int | None:
        scales = node.args[2] if len(node.args) > 2 else node.kwargs.get("scale_factors")
        if node.target is not aten.upsample_nearest2d.vec or not scales or (len(node.args) > 1 and node.args[1]):
            return None
        sh, sw = scales
        return int(sh) if sh == sw and float(sh).is_integer() and sh >= 2 else None

    def scalar_op(self, node: Node) -> bool:
        """x / c, x - c, x + c, x * c with a Python number c (either side for + and *)."""
        a, b = node.args[0], node.args[1]
        if len(node.args) > 2 or node.kwargs:
            return False  # sub/add with alpha: leave to the quantizer
        if _is_number(a) and node.target in (aten.add.Tensor, aten.mul.Tensor):
            a, b = b, a
        if not isinstance(a, Node) or not _is_number(b):
            return False
        t = node.target
        if t is aten.div.Tensor:
            t, b = aten.mul.Tensor, 1.0 / b
        elif t is aten.sub.Tensor:
            t, b = aten.add.Tensor, -b
        if (t is aten.add.Tensor and b == 0) or (t is aten.mul.Tensor and b == 1):
            node.replace_all_uses_with(a)
            self.graph.erase_node(node)
            self.log.done.append(f"identity {node.target.__name__} removed at {module_path(node) or '<top>'}")
            return True
        val = a.meta.get("val")
        rank = val.dim() if isinstance(val, torch.Tensor) else 4
        self.replace(node, t, (a, self.constant(b, node, rank)), "number operand -> constant tensor")
        return True

    def elementwise_before_depth_to_space(self, node: Node) -> None:
        """d2s(a) + d2s(b) -> d2s(a + b), d2s(a) * c -> d2s(a * c) for a one-element constant c.

        Exact (depth-to-space only moves values), and the graph ends in one depth-to-space as ABPN's
        does, which the TFLite writer turns into a single DEPTH_TO_SPACE op.
        """
        if len(node.args) != 2 or node.kwargs:
            return
        a, b = node.args

        def d2s(x):
            return isinstance(x, Node) and x.target is depth_to_space and len(x.users) == 1

        def scalar_const(x):
            return isinstance(x, Node) and x.op == "get_attr" and _get(self.gm, x.target).numel() == 1
        if d2s(a) and d2s(b) and a.args[1] == b.args[1]:
            inner_args, s = (a.args[0], b.args[0]), a.args[1]
        elif d2s(a) and scalar_const(b):
            inner_args, s = (a.args[0], b), a.args[1]
        elif d2s(b) and scalar_const(a):
            inner_args, s = (a, b.args[0]), b.args[1]
        else:
            return
        with self.graph.inserting_before(node):
            inner = self.graph.call_function(node.target, inner_args)
        inner.meta = dict(node.meta)
        self.replace(node, depth_to_space, (inner, s), f"{node.target.__name__} moved before depth-to-space")

    def constant_sub(self, node: Node) -> bool:
        """x - C with a constant tensor C of its own (a mean buffer) -> x + (-C): the add is emulated exactly."""
        if node.target is not aten.sub.Tensor or len(node.args) != 2 or node.kwargs or not self._own_attr(node.args[1]):
            return False
        attr = node.args[1]
        _set(self.gm, attr.target, -_get(self.gm, attr.target).detach())
        self.replace(node, aten.add.Tensor, (node.args[0], attr), "x - constant -> x + (-constant)")
        return True

    def pixel_shuffle(self, node: Node) -> None:
        x, s = node.args[0], node.args[1]
        chain, cur = [], x
        while (isinstance(cur, Node) and cur.op == "call_function" and cur.target in _CHANNELWISE
               and len(cur.users) == 1 and self._channelwise_args_ok(cur)):
            chain.append(cur)
            cur = cur.args[0]
        path = module_path(node) or "<top>"
        if not (isinstance(cur, Node) and cur.target is aten.conv2d.default and len(cur.users) == 1
                and self._own_attr(cur.args[1]) and (len(cur.args) < 3 or cur.args[2] is None or self._own_attr(cur.args[2]))):
            self.log.kept.append((path, "its input is not computed by a conv of its own (channels cannot be permuted)"))
            return
        weight = _get(self.gm, cur.args[1].target)
        idx = crd_to_dcr_channels(weight.shape[0], s)
        self._permute(cur.args[1], idx)
        if len(cur.args) > 2 and cur.args[2] is not None:
            self._permute(cur.args[2], idx)
        for op in chain:  # a per-channel PReLU between conv and shuffle follows the permutation
            if op.target is aten.prelu.default and _get(self.gm, op.args[1].target).numel() > 1:
                self._permute(op.args[1], idx)
        self.replace(node, depth_to_space, (x, s), "PixelShuffle (CRD) -> depth-to-space (DCR), conv channels permuted")

    def _own_attr(self, node) -> bool:
        return isinstance(node, Node) and node.op == "get_attr" and len(node.users) == 1

    def _channelwise_args_ok(self, node: Node) -> bool:
        others = [a for a in node.args[1:] if isinstance(a, Node)]
        if node.target is aten.prelu.default:
            return self._own_attr(node.args[1])
        return not others  # a tensor operand would have to be permuted too

    def _permute(self, attr: Node, idx: torch.Tensor) -> None:
        tensor = _get(self.gm, attr.target)
        _set(self.gm, attr.target, tensor.detach()[idx].clone())


def _get(gm: nn.Module, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _set(gm: nn.Module, target: str, value: torch.Tensor) -> None:
    owner, _, name = target.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    old = getattr(mod, name)
    if isinstance(old, nn.Parameter):
        setattr(mod, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        mod.register_buffer(name, value)


def rewrite_graph(gm: GraphModule) -> RewriteLog:
    """Apply the rewrites in place on an exported NCHW graph."""
    return _Rewriter(gm).run()


class RewrittenModel(WrappedModel):
    """A user's model as the rewritten graph (what gets quantized, and the FP32 reference of the artifacts)."""

    def __init__(self, graph: GraphModule, info, log: RewriteLog, name: str):
        super().__init__(graph, info)
        self.rewrites, self.model_name = log, name

"""Integer-exact convolutions in the fake-quant (and converted) PyTorch graph.

A float32 convolution over dequantized values rounds every product and partial sum, while int8
kernels accumulate exact int32 sums, add an int32 bias and requantize once. Near a rounding
boundary that difference flips an output by one level (about 1 % of outputs per layer), and in a
30-layer U-Net the flips compound to several LSB at the output (measured in BENCHMARKS.md).

``exact_conv2d`` recovers the integer grid values (q - zp) of the activation and q of the
weight, convolves those in float32 (exact while every partial sum is an integer below 2^24; wide
convs use float64), adds the bias rounded to its int32 grid (scale s_in * s_w, as TFLite/ONNX store it) and
applies s_in * s_w once. Gradients are those of the plain convolution (straight-through).

``emulate_integer_convs`` rewrites a prepared (fake-quant) graph to use it; ``restore_convs``
undoes that before ``convert_pt2e`` (whose pattern matching and the TFLite lowering want plain
convs); ``emulate_integer_convs_converted`` rewrites a converted graph the same way, so the
PyTorch integer reference stays bit-exact with the fake-quant model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

aten = torch.ops.aten
_qd = torch.ops.quantized_decomposed
_CONV_DEFAULTS = ([1, 1], [0, 0], [1, 1], 1)
_FLOAT32_EXACT_TERMS = (2**24) // (255 * 127)  # below this, float32 sums of int8 products stay integers


def _conv_args(node: Node):
    given = list(node.args[3:7])
    stride, padding, dilation, groups = given + list(_CONV_DEFAULTS[len(given):])
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # aten accepts 1 for [1, 1]
    return pair(stride), pair(padding), pair(dilation), groups


class _ExactConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w, b, s_in, s_w, s_out, stride, padding, dilation, groups):
        ctx.save_for_backward(a, w)
        ctx.conf = (stride, padding, dilation, groups, b is not None)
        s_in = torch.clamp(torch.as_tensor(s_in, dtype=torch.float32).reshape(()), min=2**-12)
        s_w = torch.as_tensor(s_w, dtype=torch.float32).reshape(-1)
        a_int = torch.round(a / s_in)
        w_int = torch.round(w / s_w.view(-1, 1, 1, 1))
        if w[0].numel() > _FLOAT32_EXACT_TERMS:  # wide convs: accumulate in float64, still exact
            a_int, w_int = a_int.double(), w_int.double()
        acc = F.conv2d(a_int, w_int, None, stride, padding, dilation, groups).float()
        scale = (s_in * s_w).view(1, -1, 1, 1)
        if b is not None:
            acc = acc + torch.round(b.view(1, -1, 1, 1) / scale)
        if s_out is None:
            return acc * scale
        # Requantize as XNNPACK and onnxruntime do: one float32 multiplier (s_in * s_w) / s_out
        # applied to the int32 accumulator, rounded half to even; the output fake-quant then
        # finds the value exactly on its grid.
        s_out = torch.clamp(torch.as_tensor(s_out, dtype=torch.float32).reshape(()), min=2**-12)
        return torch.round(acc * (scale / s_out)) * s_out

    @staticmethod
    def backward(ctx, grad):
        a, w = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        ga = gw = gb = None
        if ctx.needs_input_grad[0]:
            ga = torch.nn.grad.conv2d_input(a.shape, w, grad, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            gw = torch.nn.grad.conv2d_weight(a, w.shape, grad, stride, padding, dilation, groups)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(dim=(0, 2, 3))
        return ga, gw, gb, None, None, None, None, None, None, None


def exact_conv2d(a, w, b, s_in, s_w, s_out=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """conv2d of on-grid activations ``a`` (scale ``s_in``) and weights ``w`` (scales ``s_w``), integer-exact.

    With ``s_out`` (the scale of the fake quantizer that follows), the result is requantized the
    way the int8 kernels do it, so the following quantization reproduces their rounding.
    """
    return _ExactConv.apply(a, w, b, s_in, s_w, s_out, list(stride), list(padding), list(dilation), int(groups))


def _output_quantizer(node: Node, is_quant) -> Node | None:
    """The node that quantizes this conv's output, directly or after a fused ReLU."""
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and users[0].target in (aten.relu.default,
                                                                                  aten.relu_.default):
        users = list(users[0].users)
    return users[0] if len(users) == 1 and is_quant(users[0]) else None


def _module(gm: GraphModule, node: Node):
    return gm.get_submodule(node.target) if isinstance(node, Node) and node.op == "call_module" else None


def _swap(gm: GraphModule, node: Node, args: tuple) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(exact_conv2d, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def emulate_integer_convs(gm: GraphModule) -> int:
    """Rewrite conv2d(FQ_act(x), FQ_w(w), b) in a prepared graph to ``exact_conv2d``; returns the count."""
    from quantir.quant.fake_quant import WeightFakeQuantize

    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.conv2d.default:
            continue
        act, weight = node.args[0], node.args[1]
        act_fq, w_fq = _module(gm, act), _module(gm, weight)
        if act_fq is None or not isinstance(w_fq, WeightFakeQuantize) or not hasattr(act_fq, "scale"):
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        out_q = _output_quantizer(node, lambda u: u.op == "call_module" and hasattr(_module(gm, u), "scale")
                                  and not isinstance(_module(gm, u), WeightFakeQuantize))
        with gm.graph.inserting_before(node):
            s_in = gm.graph.get_attr(f"{act.target}.scale")
            s_w = gm.graph.get_attr(f"{weight.target}.scale")
            s_out = gm.graph.get_attr(f"{out_q.target}.scale") if out_q is not None else None
        _swap(gm, node, (act, weight, bias, s_in, s_w, s_out) + _conv_args(node))
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def restore_convs(gm: GraphModule) -> None:
    """Undo ``emulate_integer_convs`` (plain aten.conv2d again, as convert_pt2e expects)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is exact_conv2d:
            a, w, b, _, _, _, stride, padding, dilation, groups = node.args
            with gm.graph.inserting_before(node):
                conv = gm.graph.call_function(aten.conv2d.default, (a, w, b, stride, padding, dilation, groups))
            conv.meta = dict(node.meta)
            extra = [a for a in node.args[3:6] if isinstance(a, Node)]
            node.replace_all_uses_with(conv)
            gm.graph.erase_node(node)
            for n in extra:
                if not n.users:
                    gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()


def emulate_integer_convs_converted(gm: GraphModule) -> int:
    """Same rewrite on a converted graph: conv2d(dequant(q_a), dequant(q_w), b) -> ``exact_conv2d``."""
    dq_t = {_qd.dequantize_per_tensor.default}
    dq_c = {_qd.dequantize_per_channel.default}
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.conv2d.default:
            continue
        act, weight = node.args[0], node.args[1]
        if not (isinstance(act, Node) and act.target in dq_t and isinstance(weight, Node) and weight.target in dq_c):
            continue
        bias = node.args[2] if len(node.args) > 2 else None
        s_in, s_w = act.args[1], weight.args[1]
        out_q = _output_quantizer(node, lambda u: u.target == _qd.quantize_per_tensor.default)
        s_out = out_q.args[1] if out_q is not None else None
        _swap(gm, node, (act, weight, bias, s_in, s_w, s_out) + _conv_args(node))
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count

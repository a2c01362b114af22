"""Integer-exact int8 kernels in the fake-quant (and converted) PyTorch graph.

A float32 convolution over dequantized values rounds every product and partial sum, while int8
kernels accumulate exact int32 sums, add an int32 bias and requantize once. Near a rounding
boundary that difference flips an output by one level (about 1 % of outputs per layer), and in a
30-layer U-Net the flips compound to several LSB at the output (measured in BENCHMARKS.md).

``exact_conv2d`` recovers the integer grid values (q - zp) of the activation and q of the
weight, convolves those in float32 (exact while every partial sum is an integer below 2^24; wide
convs use float64), adds the bias rounded to its int32 grid (scale s_in * s_w, as TFLite/ONNX store it) and
applies s_in * s_w once. Gradients are those of the plain convolution (straight-through).

Element-wise ADD and MUL get the same treatment: XNNPACK adds with 20-bit fixed-point multipliers
and rounds half up, so a sum that lands on x.5 (common when two scales have a simple ratio) rounds
differently from PyTorch's round-half-even; ``exact_add`` / ``exact_mul`` reproduce the kernels'
integer arithmetic. While the graph is still observing ranges (calibration), every exact op
falls back to its float op.

``emulate_integer_convs`` rewrites a prepared (fake-quant) graph to use them; ``restore_convs``
undoes that before ``convert_pt2e`` (whose pattern matching and the TFLite lowering want plain
ops); ``emulate_integer_convs_converted`` rewrites a converted graph the same way, so the PyTorch
integer reference stays bit-exact with the fake-quant model.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from quantir.numerics import INT8_MAX, INT8_MIN, SCALE_FLOOR

aten = torch.ops.aten
_qd = torch.ops.quantized_decomposed
_CONV_DEFAULTS = ([1, 1], [0, 0], [1, 1], 1)
_FLOAT32_EXACT_TERMS = (2**24) // (255 * 127)  # below this, float32 sums of int8 products stay integers


def _no_tf32(t: torch.Tensor):
    """cuDNN without TF32 for a CUDA tensor (its default rounds inputs to 10 mantissa bits); no-op on the CPU."""
    if t.is_cuda:
        return torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                          deterministic=torch.backends.cudnn.deterministic, allow_tf32=False)
    return contextlib.nullcontext()


def _f32(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32).reshape(-1)


def _scale(v) -> torch.Tensor:
    """A per-tensor scale as the fake quantizers use it (clamped like their forward does)."""
    return torch.clamp(_f32(v).reshape(()), min=SCALE_FLOOR)


def _zp(v) -> torch.Tensor:
    return torch.clamp(torch.round(torch.as_tensor(v, dtype=torch.float32).reshape(())), INT8_MIN, INT8_MAX)


def _observing(flags) -> bool:
    return any(bool(f.reshape(-1)[0]) for f in flags)


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
        s_in = _scale(s_in)
        s_w = _f32(s_w)
        a_int = torch.round(a / s_in)
        w_int = torch.round(w / s_w.view(-1, 1, 1, 1))
        if w[0].numel() > _FLOAT32_EXACT_TERMS:  # wide convs: accumulate in float64, still exact
            a_int, w_int = a_int.double(), w_int.double()
        with _no_tf32(a_int):  # TF32 would round the integer products on GPUs: the sums must stay exact
            acc = F.conv2d(a_int, w_int, None, stride, padding, dilation, groups).float()
        scale = (s_in * s_w).view(1, -1, 1, 1)
        if b is not None:
            acc = acc + bias_codes(b, s_in, s_w).view(1, -1, 1, 1).to(acc.dtype)
        if s_out is None:
            return acc * scale
        # Requantize as XNNPACK and onnxruntime do: one float32 multiplier (s_in * s_w) / s_out
        # applied to the int32 accumulator, rounded half to even; the output fake-quant then
        # finds the value exactly on its grid.
        s_out = _scale(s_out)
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


def bias_codes(b: torch.Tensor, s_in, s_w) -> torch.Tensor:
    """The int32 bias a conv stores: round(b / (s_in * s_w)), in float64 as the TFLite converter
    computes it. In float32 one channel in a few hundred lands on the other side of a .5 (found on
    a trained mobileone_sr: one bias off by 1, 1e-4 of that conv's outputs off by one level);
    ``export.onnx_graph.snap_conv_biases`` stores the same codes for onnxruntime."""
    scale = torch.as_tensor(s_in, dtype=torch.float64).reshape(()) * torch.as_tensor(s_w).detach().double()
    return torch.round(b.detach().double() / scale)


def exact_conv2d(a, w, b, s_in, s_w, s_out=None, flags=(), stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 groups=1):
    """conv2d of on-grid activations ``a`` (scale ``s_in``) and weights ``w`` (scales ``s_w``), integer-exact.

    With ``s_out`` (the scale of the fake quantizer that follows), the result is requantized the
    way the int8 kernels do it, so the following quantization reproduces their rounding.
    """
    if _observing(flags):
        return F.conv2d(a, w, b, list(stride), list(padding), list(dilation), int(groups))
    return _ExactConv.apply(a, w, b, s_in, s_w, s_out, list(stride), list(padding), list(dilation), int(groups))


def _grid(x, scale, zp) -> torch.Tensor:
    return (torch.round(x / _scale(scale)) + _zp(zp)).to(torch.int64)


def xnnpack_add_multipliers(s_a: float, s_b: float, s_out: float) -> tuple[int, int, int]:
    """(ma, mb, shift) of XNNPACK's int8 ADD: s_a/s_out and s_b/s_out as integers with 20 fractional
    bits above the larger one, computed in float32 as the kernel's setup does."""
    ra, rb = np.float32(s_a) / np.float32(s_out), np.float32(s_b) / np.float32(s_out)
    shift = int(21 - np.frexp(max(ra, rb))[1])  # max = m * 2^exp, m in [0.5, 1): 20 - (IEEE exponent)
    ma, mb = (int(np.rint(r * np.float32(2.0**shift))) for r in (ra, rb))
    return ma, mb, shift


def exact_add(a, b, s_a, z_a, s_b, z_b, s_out, z_out, flags=()):
    """int8 ADD as XNNPACK computes it: 20-bit fixed-point multipliers, round half up, saturate."""
    plain = a + b
    if _observing(flags):
        return plain
    with torch.no_grad():
        s_o = _scale(s_out)
        ma, mb, shift = xnnpack_add_multipliers(float(_scale(s_a)), float(_scale(s_b)), float(s_o))
        za, zb, zo = int(_zp(z_a)), int(_zp(z_b)), int(_zp(z_out))
        acc = _grid(a, s_a, z_a) * ma + _grid(b, s_b, z_b) * mb + ((1 << (shift - 1)) - ma * za - mb * zb)
        q = torch.clamp(torch.div(acc, 1 << shift, rounding_mode="floor") + zo, INT8_MIN, INT8_MAX)
        y = (q - zo).float() * s_o
    return plain + (y - plain).detach()


def exact_mul(a, b, s_a, z_a, s_b, z_b, s_out, z_out, flags=()):
    """int8 MUL as XNNPACK computes it: exact integer product, one float32 multiplier, round half even."""
    plain = a * b
    if _observing(flags):
        return plain
    with torch.no_grad():
        s_o = _scale(s_out)
        scale = (_scale(s_a) * _scale(s_b)) / s_o
        za, zb, zo = _zp(z_a), _zp(z_b), _zp(z_out)
        prod = ((_grid(a, s_a, z_a) - za.long()) * (_grid(b, s_b, z_b) - zb.long())).float()
        q = torch.clamp(torch.round(prod * scale) + zo, INT8_MIN, INT8_MAX)
        y = (q - zo) * s_o
    return plain + (y - plain).detach()


def xnnpack_leaky_relu_multipliers(s_in: float, s_out: float, slope: float) -> tuple[int, int]:
    """XNNPACK's qs8 LEAKY_RELU setup: both slopes as integers with 8 fractional bits (float32 maths)."""
    positive = np.float32(s_in) / np.float32(s_out)
    negative = positive * np.float32(slope)
    return int(np.rint(np.float32(256.0) * positive)), int(np.rint(np.float32(256.0) * negative))


def exact_leaky_relu(x, slope, s_in, z_in, s_out, z_out, flags=()):
    """int8 LEAKY_RELU as XNNPACK computes it: (q - z_in) * m + (z_out << 8) + 128, shifted right by 8.

    Its multipliers carry only 8 fractional bits, so a float requantization of leaky_relu(x) is
    1 level off on about 2 % of outputs (measured); this is the kernel's arithmetic exactly.
    """
    plain = F.leaky_relu(x, slope)
    if _observing(flags):
        return plain
    with torch.no_grad():
        s_o = _scale(s_out)
        pos, neg = xnnpack_leaky_relu_multipliers(float(_scale(s_in)), float(s_o), float(slope))
        zi, zo = int(_zp(z_in)), int(_zp(z_out))
        acc = _grid(x, s_in, z_in) - zi
        acc = acc * torch.where(acc >= 0, pos, neg) + ((zo << 8) + 0x80)
        q = torch.clamp(torch.div(acc, 256, rounding_mode="floor"), INT8_MIN, INT8_MAX)
        y = (q - zo).float() * s_o
    return plain + (y - plain).detach()


_ELEMENTWISE = {aten.add.Tensor: exact_add, aten.mul.Tensor: exact_mul}
_ORIGINAL = {exact_add: aten.add.Tensor, exact_mul: aten.mul.Tensor, exact_leaky_relu: aten.leaky_relu.default}
_DEFAULT_SLOPE = 0.01  # aten.leaky_relu's default negative_slope
_LEAKY = {aten.leaky_relu.default, aten.leaky_relu_.default}  # nn.LeakyReLU(inplace=True) exports the second


def _module(gm: GraphModule, node: Node):
    return gm.get_submodule(node.target) if isinstance(node, Node) and node.op == "call_module" else None


def _output_quantizer(node: Node, is_quant) -> Node | None:
    """The node that quantizes this op's output, directly or after a fused ReLU."""
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and users[0].target in (aten.relu.default,
                                                                                  aten.relu_.default):
        users = list(users[0].users)
    return users[0] if len(users) == 1 and is_quant(users[0]) else None


def _swap(gm: GraphModule, node: Node, target, args: tuple) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(target, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def emulate_integer_convs(gm: GraphModule, elementwise: bool = True) -> int:
    """Rewrite conv2d / add / mul between fake quantizers to their exact forms; returns the count.

    ``elementwise=False`` keeps add/mul as they are (low-bit simulations: no int8 kernel to match).
    """
    from quantir.quant.fake_quant import ActFakeQuantize, WeightFakeQuantize

    def is_act_quant(u):
        m = _module(gm, u)
        return m is not None and hasattr(m, "scale") and not isinstance(m, WeightFakeQuantize)

    def attr(node, name):
        return gm.graph.get_attr(f"{node.target}.{name}")

    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.conv2d.default:
            act, weight = node.args[0], node.args[1]
            if not is_act_quant(act) or not isinstance(_module(gm, weight), WeightFakeQuantize):
                continue
            out_q = _output_quantizer(node, is_act_quant)
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            with gm.graph.inserting_before(node):
                flags = tuple(attr(n, "observer_enabled") for n in (act, out_q)
                              if n is not None and isinstance(_module(gm, n), ActFakeQuantize))
                args = (act, weight, bias, attr(act, "scale"), attr(weight, "scale"),
                        attr(out_q, "scale") if out_q is not None else None, flags)
            _swap(gm, node, exact_conv2d, args + _conv_args(node))
            count += 1
        elif elementwise and node.target in _ELEMENTWISE and len(node.args) == 2:
            a, b = node.args
            out_q = _output_quantizer(node, is_act_quant)
            if not (is_act_quant(a) and is_act_quant(b) and out_q is not None):
                continue
            with gm.graph.inserting_before(node):
                flags = tuple(attr(n, "observer_enabled") for n in (a, b, out_q)
                              if isinstance(_module(gm, n), ActFakeQuantize))
                args = (a, b, attr(a, "scale"), attr(a, "zero_point"), attr(b, "scale"), attr(b, "zero_point"),
                        attr(out_q, "scale"), attr(out_q, "zero_point"), flags)
            _swap(gm, node, _ELEMENTWISE[node.target], args)
            count += 1
        elif elementwise and node.target in _LEAKY:
            x, slope = node.args[0], node.args[1] if len(node.args) > 1 else _DEFAULT_SLOPE
            out_q = _output_quantizer(node, is_act_quant)
            if not (is_act_quant(x) and out_q is not None):
                continue
            with gm.graph.inserting_before(node):
                flags = tuple(attr(n, "observer_enabled") for n in (x, out_q) if isinstance(_module(gm, n), ActFakeQuantize))
                args = (x, slope, attr(x, "scale"), attr(x, "zero_point"), attr(out_q, "scale"),
                        attr(out_q, "zero_point"), flags)
            _swap(gm, node, exact_leaky_relu, args)
            count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def restore_convs(gm: GraphModule) -> None:
    """Undo ``emulate_integer_convs`` (plain aten ops again, as convert_pt2e expects)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is exact_conv2d:
            a, w, b, *_, stride, padding, dilation, groups = node.args
            target, args = aten.conv2d.default, (a, w, b, stride, padding, dilation, groups)
        elif node.target in _ORIGINAL:
            target, args = _ORIGINAL[node.target], node.args[:2]
        else:
            continue
        extra = [n for n in node.args[2:] if isinstance(n, Node)] + \
            [n for t in node.args if isinstance(t, tuple) for n in t if isinstance(n, Node)]
        _swap(gm, node, target, args)
        for n in extra:
            if not n.users:
                gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()


def emulate_integer_convs_converted(gm: GraphModule, elementwise: bool = True) -> int:
    """Same rewrite on a converted graph, with the qparams from its quantize/dequantize nodes."""
    dq_t = {_qd.dequantize_per_tensor.default}
    dq_c = {_qd.dequantize_per_channel.default}
    is_q = lambda u: u.op == "call_function" and u.target == _qd.quantize_per_tensor.default  # noqa: E731
    is_dq = lambda n: isinstance(n, Node) and n.target in dq_t  # noqa: E731
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        out_q = _output_quantizer(node, is_q)
        if node.target == aten.conv2d.default:
            act, weight = node.args[0], node.args[1]
            if not (is_dq(act) and isinstance(weight, Node) and weight.target in dq_c):
                continue
            bias = node.args[2] if len(node.args) > 2 else None
            s_out = out_q.args[1] if out_q is not None else None
            _swap(gm, node, exact_conv2d, (act, weight, bias, act.args[1], weight.args[1], s_out, ()) + _conv_args(node))
            count += 1
        elif elementwise and node.target in _ELEMENTWISE and len(node.args) == 2:
            a, b = node.args
            if not (is_dq(a) and is_dq(b) and out_q is not None):
                continue
            args = (a, b, a.args[1], a.args[2], b.args[1], b.args[2], out_q.args[1], out_q.args[2], ())
            _swap(gm, node, _ELEMENTWISE[node.target], args)
            count += 1
        elif elementwise and node.target in _LEAKY:
            x, slope = node.args[0], node.args[1] if len(node.args) > 1 else _DEFAULT_SLOPE
            if not (is_dq(x) and out_q is not None):
                continue
            _swap(gm, node, exact_leaky_relu, (x, slope, x.args[1], x.args[2], out_q.args[1], out_q.args[2], ()))
            count += 1
    gm.graph.lint()
    gm.recompile()
    return count

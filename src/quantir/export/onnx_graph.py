"""Rewrites of the ONNX QDQ graph so onnxruntime computes what the int8 TFLite kernels compute.

onnxruntime runs a QDQ model by fusing each DequantizeLinear -> op -> QuantizeLinear unit into
an integer kernel; a unit it does not fuse runs in float32 and rounds differently. Measured on
the tiny test U-Net, before these rewrites 25 of 41 convs ran in float and the output was up to
3 LSB off the fake-quant model; after them every conv is a QLinearConv and the output is
bit-exact (tests/export/test_onnx_graph.py). The rewrites, in the order applied:

* ``relu_after_quantize``: a Conv -> Relu -> Q whose zero point is above the int8 minimum (a
  ReLU branch sharing a concat's scale) cannot drop the Relu, so onnxruntime leaves the whole
  conv in float. Quantizing first and applying the Relu to the quantized values is exact
  (max(q, zp)), and lets the conv fuse.
* ``activations_to_uint8``: onnxruntime's x86 pass QDQS8ToU8 turns int8 Q/DQ pairs into uint8,
  but only pairs whose Q has one consumer; a conv reading a shared tensor is left with int8 in
  and uint8 out, and the conv selector rejects mixed types. Shifting every activation zero point
  by 128 ourselves gives uint8 everywhere (the same values); the int8 graph input and output
  stay int8 through exact float Q/DQ bridges.
* ``lookup_tables``: int8 tanh/sigmoid are 256-entry tables in TFLite; onnxruntime would run
  an approximate float tanh between DQ and Q. A Gather from the same table is exact. LeakyRelu
  gets the table of XNNPACK's 8-bit-multiplier kernel the same way.
* ``snap_conv_biases``: onnxruntime quantizes a conv's float bias itself, in float32; the TFLite
  converter (and quant/exact.py) round b / (s_in * s_w) in float64, and the two disagree on the
  odd channel. Each bias is replaced by its code times its scale, which float32 rounds back to the
  same code.
* ``integer_add_mul``: QLinearAdd rounds half to even on a float scale, XNNPACK's ADD uses 20-bit
  fixed-point multipliers and rounds half up (quant/exact.py); they differ when the two scales
  have a simple ratio. QLinearMul too rounds some products differently from XNNPACK's MUL (one in
  a thousand outputs of a test export's InstanceNorm product, measured). Each add and mul is
  checked on all 65536 input pairs at export: where onnxruntime's kernel already agrees it is
  kept, otherwise the op becomes a lookup in XNNPACK's 256x256 output table (5 cheap ops instead
  of the integer arithmetic spelled out).
* ``float_quantize_by_reciprocal``: a QuantizeLinear of a value computed in float (an
  InstanceNorm statistic) divides by the scale; XNNPACK's float -> int8 convert, and the fake
  quantizers, multiply by the float32 reciprocal. On the paper net one statistic landed on
  x / s = 198.5 exactly (x * (1/s) = 198.50002): onnxruntime took 198, TFLite and fake-quant 199,
  and 37 % of that photo's outputs moved by up to 4 LSB. The Q gets the multiplication first and
  scale 1.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantir.quant.exact import xnnpack_add_multipliers, xnnpack_leaky_relu_multipliers


def make_exact(model: onnx.ModelProto) -> onnx.ModelProto:
    for rewrite in (snap_conv_biases, relu_after_quantize, activations_to_uint8, lookup_tables, integer_add_mul,
                    float_quantize_by_reciprocal):
        rewrite(model)
    del model.graph.value_info[:]  # stale dtypes after the rewrites; onnxruntime re-infers them
    onnx.checker.check_model(model)
    return model


class _Graph:
    """Producers, consumers and constants of a graph, and a way to add constants."""

    def __init__(self, model: onnx.ModelProto):
        self.g = model.graph
        for k, n in enumerate(self.g.node):  # rewrites address nodes by name: give every node one
            n.name = n.name or f"_unnamed_{n.op_type}_{k}"
        self.const = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in self.g.node:
            for i in n.input:
                self.consumers[i].append(n)

    def add_const(self, name: str, value: np.ndarray) -> str:
        if name not in self.const:
            self.g.initializer.append(numpy_helper.from_array(value, name))
            self.const[name] = value
        return name

    def single_quantize_user(self, node) -> onnx.NodeProto | None:
        users = self.consumers[node.output[0]]
        return users[0] if len(users) == 1 and users[0].op_type == "QuantizeLinear" else None

    def qparams(self, qdq) -> tuple[np.float32, np.ndarray]:
        return np.float32(self.const[qdq.input[1]]), self.const[qdq.input[2]]

    def replace(self, replaced: dict, dropped: set) -> None:
        """Rebuild the node list: each key node becomes its list of nodes, dropped ones vanish."""
        nodes = []
        for n in self.g.node:
            if n.name in replaced:
                nodes += replaced[n.name]
            elif n.name not in dropped:
                nodes.append(n)
        del self.g.node[:]
        self.g.node.extend(nodes)


def _is_dq(node) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def snap_conv_biases(model: onnx.ModelProto) -> None:
    gr = _Graph(model)
    initializers = {t.name: t for t in gr.g.initializer}
    for n in gr.g.node:
        if n.op_type != "Conv" or len(n.input) < 3 or n.input[2] not in gr.const:
            continue
        act, weight = gr.producer.get(n.input[0]), gr.producer.get(n.input[1])
        if not (_is_dq(act) and _is_dq(weight) and act.input[1] in gr.const and weight.input[1] in gr.const):
            continue
        s_in = np.float64(gr.const[act.input[1]].reshape(()))
        s_w = gr.const[weight.input[1]].astype(np.float64).reshape(-1)
        bias = gr.const[n.input[2]]
        codes = np.round(bias.astype(np.float64) / (s_in * s_w))
        snapped = (codes * (np.float32(s_in) * s_w.astype(np.float32))).astype(np.float32)
        initializers[n.input[2]].CopyFrom(numpy_helper.from_array(snapped, n.input[2]))
        gr.const[n.input[2]] = snapped


def relu_after_quantize(model: onnx.ModelProto) -> None:
    gr = _Graph(model)
    replaced = {}
    for n in gr.g.node:
        src = gr.producer.get(n.input[0])
        q = gr.single_quantize_user(n) if n.op_type == "Relu" else None
        if q is None or src is None or src.op_type not in ("Conv", "Add"):
            continue
        _, zp = gr.qparams(q)
        if int(zp) == np.iinfo(zp.dtype).min:
            continue  # onnxruntime drops this Relu itself
        pre_q = helper.make_node("QuantizeLinear", [n.input[0], *q.input[1:]], [n.name + "_q"], name=n.name + "_q")
        pre_dq = helper.make_node("DequantizeLinear", [n.name + "_q", *q.input[1:]], [n.name + "_dq"],
                                  name=n.name + "_dq")
        n.input[0] = n.name + "_dq"
        replaced[n.name] = [pre_q, pre_dq, n]
    gr.replace(replaced, set())


def activations_to_uint8(model: onnx.ModelProto) -> None:
    gr = _Graph(model)
    inp, out = gr.g.input[0].name, gr.g.output[0].name

    def u8(zp_name: str) -> str:
        return gr.add_const(zp_name + "_u8", (gr.const[zp_name].astype(np.int16) + 128).astype(np.uint8))

    def feeds_elementwise_only(dq) -> bool:  # a constant operand of Add/Mul, not a conv weight
        return all(c.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") for c in gr.consumers[dq.output[0]])

    def int8_per_tensor(n) -> bool:
        zp = gr.const.get(n.input[2]) if len(n.input) > 2 else None
        return zp is not None and zp.dtype == np.int8 and zp.size == 1

    # Constant operands of elementwise ops (a user model's mean, a number made a tensor) become
    # uint8 like the activations they meet, so the integer add sees one type; conv weights stay int8.
    const_q = {n.output[0]: n for n in gr.g.node if n.op_type == "QuantizeLinear" and n.input[0] in gr.const}
    shifted_q = {name for name, q in const_q.items() if int8_per_tensor(q) and all(
        feeds_elementwise_only(d) for d in gr.consumers[name] if d.op_type == "DequantizeLinear")}
    replaced = {}
    for n in gr.g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or not int8_per_tensor(n):
            continue  # weights (per channel) and int32 biases keep their types
        if n.input[0] in gr.const:  # a folded constant: shift its codes, or leave a weight alone
            if n.op_type == "DequantizeLinear" and feeds_elementwise_only(n):
                codes = (gr.const[n.input[0]].astype(np.int16) + 128).astype(np.uint8)
                n.input[0] = gr.add_const(n.input[0] + "_u8", codes)
                n.input[2] = u8(n.input[2])
            elif n.op_type == "QuantizeLinear" and n.output[0] in shifted_q:
                n.input[2] = u8(n.input[2])
            continue
        if n.input[0] in const_q and n.input[0] not in shifted_q:
            continue
        scale, zp = n.input[1], n.input[2]
        if n.op_type == "DequantizeLinear" and n.input[0] == inp:  # int8 input -> float -> uint8 Q/DQ
            target = n.output[0]
            n.output[0] = target + "_from_int8"
            q = helper.make_node("QuantizeLinear", [n.output[0], scale, u8(zp)], [target + "_u8"], name=n.name + "_u8q")
            dq = helper.make_node("DequantizeLinear", [target + "_u8", scale, u8(zp)], [target], name=n.name + "_u8dq")
            replaced[n.name] = [n, q, dq]
        elif n.op_type == "QuantizeLinear" and n.output[0] == out:  # uint8 Q/DQ -> float -> int8 output
            src = n.input[0]
            q = helper.make_node("QuantizeLinear", [src, scale, u8(zp)], [out + "_u8"], name=n.name + "_u8q")
            dq = helper.make_node("DequantizeLinear", [out + "_u8", scale, u8(zp)], [out + "_u8f"],
                                  name=n.name + "_u8dq")
            n.input[0] = out + "_u8f"
            replaced[n.name] = [q, dq, n]
        else:
            n.input[2] = u8(zp)
    gr.replace(replaced, set())


def _table(fn, scale_in, zp_in, scale_out, zp_out) -> np.ndarray:
    """TFLite's int8 lookup table: out[q] = round(fn((q - zp_in) * s_in) / s_out) + zp_out."""
    lo, hi = np.iinfo(zp_in.dtype).min, np.iinfo(zp_in.dtype).max
    x = (np.arange(lo, hi + 1).astype(np.float32) - np.float32(zp_in)) * scale_in
    info = np.iinfo(zp_out.dtype)
    y = np.rint(fn(x).astype(np.float32) / scale_out) + int(zp_out)
    return np.clip(y, info.min, info.max).astype(zp_out.dtype)


_TABLE_FNS = {"Tanh": np.tanh, "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x))}


def _leaky_relu_table(alpha, scale_in, zp_in, scale_out, zp_out) -> np.ndarray:
    """XNNPACK's int8 LEAKY_RELU (quant/exact.py exact_leaky_relu) for every input code.

    The kernel's arithmetic does not depend on the codes' offset, so the same formula holds for the
    uint8 codes this graph uses: acc = q - zp_in; out = (acc * m + (zp_out << 8) + 128) >> 8.
    """
    pos, neg = xnnpack_leaky_relu_multipliers(float(scale_in), float(scale_out), float(alpha))
    info = np.iinfo(zp_in.dtype)
    acc = np.arange(info.min, info.max + 1, dtype=np.int64) - int(zp_in)
    out = (acc * np.where(acc >= 0, pos, neg) + (int(zp_out) << 8) + 0x80) >> 8
    return np.clip(out, np.iinfo(zp_out.dtype).min, np.iinfo(zp_out.dtype).max).astype(zp_out.dtype)


def lookup_tables(model: onnx.ModelProto) -> None:
    gr = _Graph(model)
    replaced, dropped = {}, set()
    for n in gr.g.node:
        dq = gr.producer.get(n.input[0])
        q = gr.single_quantize_user(n) if n.op_type in _TABLE_FNS or n.op_type == "LeakyRelu" else None
        if q is None or not _is_dq(dq):
            continue
        (s_in, z_in), (s_out, z_out) = gr.qparams(dq), gr.qparams(q)
        p = n.name + "_lut"
        if n.op_type == "LeakyRelu":
            alpha = next((a.f for a in n.attribute if a.name == "alpha"), 0.01)
            table = gr.add_const(p, _leaky_relu_table(np.float32(alpha), s_in, z_in, s_out, z_out))
        else:
            table = gr.add_const(p, _table(_TABLE_FNS[n.op_type], s_in, z_in, s_out, z_out))
        offset = gr.add_const(p + "_offset", np.array(-np.iinfo(z_in.dtype).min, np.int32))
        replaced[n.name] = [
            helper.make_node("Cast", [dq.input[0]], [p + "_i32"], to=TensorProto.INT32, name=p + "_cast"),
            helper.make_node("Add", [p + "_i32", offset], [p + "_index"], name=p + "_index"),
            helper.make_node("Gather", [table, p + "_index"], [q.output[0]], axis=0, name=p + "_gather"),
        ]
        dropped.add(q.name)
        if len(gr.consumers[dq.output[0]]) == 1:
            dropped.add(dq.name)
    gr.replace(replaced, dropped)


def _xnnpack_add_table(sa, za, sb, zb, so, zo) -> np.ndarray:
    """out[qa, qb] of XNNPACK's int8 ADD (quant/exact.py exact_add) for every input pair."""
    ma, mb, shift = xnnpack_add_multipliers(sa, sb, so)
    info = np.iinfo(zo.dtype)
    qa, qb = np.meshgrid(np.arange(info.min, info.max + 1), np.arange(info.min, info.max + 1), indexing="ij")
    acc = qa * ma + qb * mb + ((1 << (shift - 1)) - ma * int(za) - mb * int(zb))
    return np.clip((acc >> shift) + int(zo), info.min, info.max).astype(zo.dtype)  # >> = floor division


def _xnnpack_mul_table(sa, za, sb, zb, so, zo) -> np.ndarray:
    """out[qa, qb] of XNNPACK's int8 MUL (quant/exact.py exact_mul) for every input pair."""
    info = np.iinfo(zo.dtype)
    qa, qb = np.meshgrid(np.arange(info.min, info.max + 1), np.arange(info.min, info.max + 1), indexing="ij")
    prod = ((qa - int(za)) * (qb - int(zb))).astype(np.float32)
    scale = (np.float32(sa) * np.float32(sb)) / np.float32(so)
    return np.clip(np.rint(prod * scale) + int(zo), info.min, info.max).astype(zo.dtype)


_TABLES = {"Add": _xnnpack_add_table, "Mul": _xnnpack_mul_table}


def _qlinear_matches(op_type: str, qparams: list, table: np.ndarray) -> bool:
    """Does onnxruntime's own (fused) kernel give the table's value for every input pair?

    Checked on flat tensors and with either operand broadcast (a per-channel vector meeting a
    feature map, as in InstanceNorm's product): onnxruntime runs those through other loops, so
    agreement on one is not taken for agreement on the others.
    """
    import onnxruntime as ort

    info = np.iinfo(table.dtype)
    codes = np.arange(info.min, info.max + 1).astype(table.dtype)
    qa, qb = np.meshgrid(codes, codes, indexing="ij")
    tail = 13  # a tail the SIMD loop leaves over
    flat = ({"a": np.append(qa.ravel(), qa.ravel()[:tail]), "b": np.append(qb.ravel(), qb.ravel()[:tail])},
            np.append(table.ravel(), table.ravel()[:tail]))
    wide = np.tile(np.append(codes, codes[:tail]), (codes.size, 1))  # rows: every code, plus a tail
    cases = [flat, ({"a": wide, "b": codes[:, None]}, table[np.append(np.arange(codes.size), np.arange(tail))].T),
             ({"a": codes[:, None], "b": wide}, table[:, np.append(np.arange(codes.size), np.arange(tail))])]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for feed, want in cases:
        model = _single_op_model(op_type, qparams, table.dtype, rank=feed["a"].ndim)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        if not np.array_equal(sess.run(None, feed)[0], want):
            return False
    return True


def _single_op_model(op_type: str, scale_zp: list, dtype, rank: int = 1) -> onnx.ModelProto:
    (sa, za), (sb, zb), (so, zo) = scale_zp
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    c = lambda name, v: numpy_helper.from_array(np.array(v), name)  # noqa: E731
    inits = [c("sa", sa), c("za", za), c("sb", sb), c("zb", zb), c("so", so), c("zo", zo)]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
             helper.make_node(op_type, ["fa", "fb"], ["y"]), helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["q"])]
    io = lambda n: helper.make_tensor_value_info(n, t, [None] * rank)  # noqa: E731
    graph = helper.make_graph(nodes, op_type.lower(), [io("a"), io("b")], [io("q")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def integer_add_mul(model: onnx.ModelProto) -> None:
    """Int8 Add and Mul as XNNPACK computes them: onnxruntime's fused kernel where it agrees on
    every input pair, else a lookup in the kernel's 256x256 output table."""
    gr = _Graph(model)
    replaced, dropped = {}, set()
    for n in gr.g.node:
        dqs = [gr.producer.get(i) for i in n.input]
        q = gr.single_quantize_user(n) if n.op_type in _TABLES else None
        if q is None or len(dqs) != 2 or not all(_is_dq(d) for d in dqs):
            continue
        qparams = [gr.qparams(dqs[0]), gr.qparams(dqs[1]), gr.qparams(q)]
        table = _TABLES[n.op_type](*qparams[0], *qparams[1], *qparams[2])
        if _qlinear_matches(n.op_type, qparams, table):
            continue  # onnxruntime's fused kernel already computes XNNPACK's numbers: keep it
        p = n.name + "_table"
        flat = gr.add_const(p, table.ravel())
        c = lambda suffix, v: gr.add_const(p + suffix, np.array(v, np.int32))  # noqa: E731
        offset = -int(np.iinfo(table.dtype).min)  # int8 codes: shift both to 0..255
        index = p + "_index"
        nodes = [
            helper.make_node("Cast", [dqs[0].input[0]], [p + "_a"], to=TensorProto.INT32, name=p + "_cast_a"),
            helper.make_node("Cast", [dqs[1].input[0]], [p + "_b"], to=TensorProto.INT32, name=p + "_cast_b"),
            helper.make_node("Mul", [p + "_a", c("_row", 256)], [p + "_a_row"], name=p + "_row"),
            helper.make_node("Add", [p + "_a_row", p + "_b"], [p + "_ab" if offset else index], name=p + "_ab"),
        ]
        if offset:
            nodes.append(helper.make_node("Add", [p + "_ab", c("_offset", offset * 257)], [index], name=p + "_offset"))
        nodes.append(helper.make_node("Gather", [flat, index], [q.output[0]], axis=0, name=p + "_gather"))
        replaced[n.name] = nodes
        dropped.add(q.name)
        dropped.update(d.name for d in dqs if len(gr.consumers[d.output[0]]) == 1)
    gr.replace(replaced, dropped)


def _standalone_quantizes(model: onnx.ModelProto) -> set[str]:
    """Names of the QuantizeLinear nodes onnxruntime runs on their own (not fused into an integer kernel)."""
    import tempfile

    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # stale dtypes after the earlier rewrites
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
    return {n.name for n in optimized.graph.node if n.op_type == "QuantizeLinear"}


RECIPROCAL_SUFFIX = "_by_reciprocal"  # the Mul that is the first half of a QuantizeLinear (qdq_report)
# Ops whose outputs are some of their first input's values (so a dequantized grid stays a grid).
_GRID_PRESERVING = {"Transpose", "Reshape", "Relu", "Squeeze", "Unsqueeze", "Slice", "MaxPool", "Identity",
                    "DepthToSpace", "SpaceToDepth"}


def float_quantize_by_reciprocal(model: onnx.ModelProto) -> None:
    """Q(x, s, z) of a float-computed x -> Q(x * float32(1 / s), 1, z), as XNNPACK and fake-quant round.

    Only the Qs that onnxruntime's optimizer leaves standalone (the others close a DQ -> op -> Q
    unit it fuses into an integer kernel), and not those of values already on a grid (the int8 I/O
    bridges, ``relu_after_quantize``'s Relu): their x / s is an integer up to rounding, never a tie.
    """
    standalone = _standalone_quantizes(model)
    gr = _Graph(model)
    replaced = {}
    for n in gr.g.node:
        if n.name not in standalone or n.input[1] not in gr.const or gr.const[n.input[1]].size != 1:
            continue
        producer = gr.producer.get(n.input[0])
        while producer is not None and producer.op_type in _GRID_PRESERVING:
            producer = gr.producer.get(producer.input[0])
        if producer is None or _is_dq(producer):
            continue  # values on a grid already (a bridge, a Relu or Transpose of dequantized codes): no ties
        scale = np.float32(gr.const[n.input[1]])
        inverse = gr.add_const(n.name + "_inverse_scale", np.array(np.float32(1.0) / scale, np.float32))
        one = gr.add_const("_quantir_unit_scale", np.array(1.0, np.float32))  # added once, then reused
        scaled = n.name + "_scaled"
        mul = helper.make_node("Mul", [n.input[0], inverse], [scaled], name=n.name + RECIPROCAL_SUFFIX)
        n.input[0], n.input[1] = scaled, one
        replaced[n.name] = [mul, n]
    gr.replace(replaced, set())

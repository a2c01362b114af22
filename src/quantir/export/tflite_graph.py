"""Reading, checking and rewriting TFLite flatbuffers (no TensorFlow needed).

litert-torch lowers a depth-to-space to a RESHAPE/TRANSPOSE chain with the spatial size baked
into the reshape constants. That chain is slow at 1080p and it is the reason a dynamic-shape
conversion fails. ``replace_depth_to_space`` finds such chains, proves by simulating them on
an index tensor that they compute TFLite's (DCR) DEPTH_TO_SPACE, and swaps in that single op;
``make_dynamic_hw`` then marks every activation's height and width as dynamic, so one static
conversion yields the dynamic-shape artifact. It also turns litert-torch's SLICEs, whose sizes are
baked, into STRIDED_SLICEs counted from the nearer end of each spatial axis (a mirror pad's edge
rows and columns, ``models.layers.symmetric_pad``).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

_OP_NAMES = {v: k for k, v in fb.BuiltinOperator.__dict__.items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in fb.TensorType.__dict__.items() if not k.startswith("_")}
_RESHAPE, _TRANSPOSE, _D2S = fb.BuiltinOperator.RESHAPE, fb.BuiltinOperator.TRANSPOSE, fb.BuiltinOperator.DEPTH_TO_SPACE


def read(data: bytes) -> fb.ModelT:
    return flatbuffer_utils.convert_bytearray_to_object(bytearray(data))


def to_bytes(model: fb.ModelT) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_name(model: fb.ModelT, op: fb.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return _OP_NAMES.get(builtin, f"OP_{builtin}")


def _is_constant(model: fb.ModelT, tensor: fb.TensorT) -> bool:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and ((buf.data is not None and len(buf.data) > 0) or bool(getattr(buf, "size", 0)))


def _const_array(model: fb.ModelT, tensor: fb.TensorT) -> np.ndarray:
    dtype = {fb.TensorType.INT32: np.int32, fb.TensorType.INT64: np.int64}[tensor.type]
    return np.frombuffer(bytes(bytearray(model.buffers[tensor.buffer].data)), dtype=dtype)


def op_table(model: fb.ModelT) -> list[dict]:
    """Every operator of the main subgraph with the dtypes of its activation inputs and outputs."""
    sg = model.subgraphs[0]
    rows = []
    for op in sg.operators:
        ins = [sg.tensors[i] for i in op.inputs if i >= 0]
        outs = [sg.tensors[i] for i in op.outputs]
        rows.append({
            "op": op_name(model, op),
            "inputs": [_TYPE_NAMES[t.type] for t in ins if not _is_constant(model, t)],
            "weights": [_TYPE_NAMES[t.type] for t in ins if _is_constant(model, t)],
            "outputs": [_TYPE_NAMES[t.type] for t in outs],
        })
    return rows


def io_details(model: fb.ModelT) -> dict:
    sg = model.subgraphs[0]

    def describe(idx):
        t = sg.tensors[idx]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else None
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else None
        sig = list(t.shapeSignature) if t.shapeSignature is not None and len(t.shapeSignature) else list(t.shape)
        return {"dtype": _TYPE_NAMES[t.type], "shape": [int(v) for v in sig], "scale": scale, "zero_point": zp}

    return {"inputs": [describe(i) for i in sg.inputs], "outputs": [describe(i) for i in sg.outputs]}


def _consumers(sg: fb.SubGraphT) -> dict[int, list[int]]:
    users: dict[int, list[int]] = {}
    for k, op in enumerate(sg.operators):
        for i in op.inputs:
            if i >= 0:
                users.setdefault(int(i), []).append(k)
    return users


def _simulate(model, sg, chain, array):
    for k in chain:
        op = sg.operators[k]
        if op_name(model, op) == "TRANSPOSE":
            array = np.transpose(array, _const_array(model, sg.tensors[op.inputs[1]]))
        else:
            array = array.reshape([int(v) for v in sg.tensors[op.outputs[0]].shape])
    return array


def depth_to_space_dcr(x: np.ndarray, s: int) -> np.ndarray:
    n, h, w, c = x.shape
    y = x.reshape(n, h, w, s, s, c // (s * s)).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h * s, w * s, c // (s * s))


def _opcode_index(model: fb.ModelT, builtin: int, version: int) -> int:
    for k, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return k
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def replace_depth_to_space(model: fb.ModelT) -> int:
    """Replace every RESHAPE/TRANSPOSE chain that computes a DCR depth-to-space; return the count."""
    sg = model.subgraphs[0]
    replaced = 0
    while True:
        users = _consumers(sg)
        graph_outputs = {int(i) for i in sg.outputs}
        found = None
        for k, op in enumerate(sg.operators):
            if op_name(model, op) not in ("RESHAPE", "TRANSPOSE"):
                continue
            src = sg.tensors[op.inputs[0]]
            if len(src.shape) != 4:
                continue
            chain, cur = [k], k
            while True:
                out_idx = int(sg.operators[cur].outputs[0])
                out = sg.tensors[out_idx]
                n, h, w, c = src.shape
                if len(out.shape) == 4 and out.shape[1] % h == 0 and out.shape[1] > h:
                    s = out.shape[1] // h
                    if list(out.shape) == [n, h * s, w * s, c // (s * s)] and c % (s * s) == 0:
                        probe = np.arange(n * h * w * c).reshape(n, h, w, c)
                        if np.array_equal(_simulate(model, sg, chain, probe), depth_to_space_dcr(probe, s)):
                            found = (chain, int(op.inputs[0]), out_idx, s)
                            break
                nxt = users.get(out_idx, [])
                if out_idx in graph_outputs or len(nxt) != 1 or op_name(model, sg.operators[nxt[0]]) not in (
                        "RESHAPE", "TRANSPOSE"):
                    break
                cur = nxt[0]
                chain.append(cur)
            if found:
                break
        if not found:
            return replaced
        chain, src_idx, out_idx, s = found
        new = fb.OperatorT()
        new.opcodeIndex = _opcode_index(model, _D2S, 2)
        new.inputs, new.outputs = [src_idx], [out_idx]
        new.builtinOptionsType = fb.BuiltinOptions.DepthToSpaceOptions
        new.builtinOptions = fb.DepthToSpaceOptionsT()
        new.builtinOptions.blockSize = s
        sg.operators[chain[0]] = new
        for k in sorted(chain[1:], reverse=True):
            del sg.operators[k]
        replaced += 1


def _const_tensor(model: fb.ModelT, sg: fb.SubGraphT, values, name: str) -> int:
    """Append an int32 constant tensor (and its buffer); return its index."""
    buf = fb.BufferT()
    buf.data = np.asarray(values, dtype=np.int32).tobytes()
    model.buffers.append(buf)
    t = fb.TensorT()
    t.shape, t.type, t.buffer, t.name = np.array([len(values)], dtype=np.int32), fb.TensorType.INT32, \
        len(model.buffers) - 1, name.encode()
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _relative_bounds(begin: int, size: int, dim: int) -> tuple[int, int, bool, bool] | None:
    """(begin, end, begin_mask, end_mask) of a slice of one spatial axis, valid at any size.

    Whole axis: both masks. Within the first half: counted from the start. Within the second
    half: counted from the end (a slice that reaches the end keeps the end mask). A slice across
    the middle has no such reading: None.
    """
    end = dim if size < 0 else begin + size
    if begin == 0 and end == dim:
        return 0, 0, True, True
    if end <= dim // 2:
        return begin, end, False, False
    if begin >= (dim + 1) // 2:
        return begin - dim, end - dim, False, end == dim
    return None


def relative_slices(model: fb.ModelT) -> int:
    """Replace every rank-4 SLICE whose spatial bounds ``_relative_bounds`` can read by the
    STRIDED_SLICE that takes the same pixels at any height and width; return the count."""
    sg = model.subgraphs[0]
    replaced = 0
    for k, op in enumerate(sg.operators):
        if op_name(model, op) != "SLICE":
            continue
        src, begin_t, size_t = (sg.tensors[i] for i in op.inputs[:3])
        if src.shape is None or len(src.shape) != 4 or not (_is_constant(model, begin_t) and _is_constant(model, size_t)):
            continue
        begin, size = _const_array(model, begin_t).astype(int), _const_array(model, size_t).astype(int)
        bounds = [(int(b), int(b + sz if sz >= 0 else d), False, False) for b, sz, d in zip(begin, size, src.shape)]
        for axis in (1, 2):  # NHWC: batch and channels keep their absolute bounds
            bounds[axis] = _relative_bounds(int(begin[axis]), int(size[axis]), int(src.shape[axis]))
        if any(b is None for b in bounds):
            continue
        new = fb.OperatorT()
        new.opcodeIndex = _opcode_index(model, fb.BuiltinOperator.STRIDED_SLICE, 2)
        name = sg.tensors[op.outputs[0]].name.decode() if sg.tensors[op.outputs[0]].name else f"slice{k}"
        new.inputs = [op.inputs[0], _const_tensor(model, sg, [b[0] for b in bounds], f"{name}/begin"),
                      _const_tensor(model, sg, [b[1] for b in bounds], f"{name}/end"),
                      _const_tensor(model, sg, [1, 1, 1, 1], f"{name}/strides")]
        new.outputs = list(op.outputs)
        new.builtinOptionsType = fb.BuiltinOptions.StridedSliceOptions
        new.builtinOptions = fb.StridedSliceOptionsT()
        new.builtinOptions.beginMask = sum(1 << a for a, b in enumerate(bounds) if b[2])
        new.builtinOptions.endMask = sum(1 << a for a, b in enumerate(bounds) if b[3])
        sg.operators[k] = new
        replaced += 1
    return replaced


def make_dynamic_hw(model: fb.ModelT) -> None:
    """Mark height and width of every rank-4 activation tensor as dynamic (-1).

    SLICEs become size-independent STRIDED_SLICEs first (``relative_slices``). Raises ValueError
    when an op that bakes spatial sizes into constants (RESHAPE, resize with a size tensor, ...)
    is left, since such a graph would compute garbage at another size.
    """
    sg = model.subgraphs[0]
    baked_strided = {id(op) for op in sg.operators if op_name(model, op) == "STRIDED_SLICE"}
    relative_slices(model)
    baked = {"RESHAPE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "STRIDED_SLICE", "SLICE", "BROADCAST_TO"}
    left = sorted({op_name(model, op) for op in sg.operators
                   if op_name(model, op) in baked and not _reshapes_statistics(sg, op, model)
                   and (op_name(model, op) != "STRIDED_SLICE" or id(op) in baked_strided)})
    if left:
        raise ValueError(f"cannot make H/W dynamic: the graph still has {', '.join(left)}")
    for t in sg.tensors:
        if _is_constant(model, t) or t.shape is None or len(t.shape) != 4 or _is_statistic(t):
            continue
        t.shapeSignature = np.array([t.shape[0], -1, -1, t.shape[3]], dtype=np.int32)


def _is_statistic(t: fb.TensorT) -> bool:
    """A per-channel vector (an InstanceNorm's mean or variance): no spatial extent at any size."""
    return t.shape is not None and int(np.count_nonzero(np.asarray(t.shape[1:]) != 1)) <= 1


def _reshapes_statistics(sg: fb.SubGraphT, op: fb.OperatorT, model: fb.ModelT) -> bool:
    """A RESHAPE between layouts of a per-channel vector ([1,1,1,C] <-> [1,C,1,1]) bakes no H or W."""
    return op_name(model, op) == "RESHAPE" and all(_is_statistic(sg.tensors[i]) for i in (op.inputs[0], op.outputs[0]))

"""ONNX QDQ artifact from the same fake-quant graph, with the same scales, int8 input and output."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from torch.export import Dim

from quantir.export.onnx_graph import RECIPROCAL_SUFFIX, make_exact
from quantir.utils import atomic_path, silence_stderr

METADATA_KEY = "quantir"


def _int8_io(model) -> None:
    """Drop the QuantizeLinear after the graph input and the DequantizeLinear before the output.

    The exporter emits float I/O around Q/DQ pairs; removing the outer pair makes the ONNX file
    take and return int8 exactly like the TFLite one (the scales travel in the metadata).
    """
    import onnx
    from onnx import TensorProto

    graph = model.graph
    inp, out = graph.input[0], graph.output[0]
    q_in = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == inp.name]
    dq_out = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == out.name]
    if len(q_in) != 1 or len(dq_out) != 1:
        raise RuntimeError("unexpected ONNX graph: no unique input QuantizeLinear / output DequantizeLinear")
    q, dq = q_in[0], dq_out[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == q.output[0]:
                node.input[i] = inp.name
    new_out_name = dq.input[0]
    graph.node.remove(q)
    graph.node.remove(dq)
    inp.type.tensor_type.elem_type = TensorProto.INT8
    out.name = new_out_name
    out.type.tensor_type.elem_type = TensorProto.INT8
    onnx.checker.check_model(model)


def export_int8(converted, path: str | Path, meta: dict, io: dict) -> dict:
    """Export a converted model's folded-weight integer graph (``onnx_graph``) as ONNX QDQ."""
    import onnx

    graph = converted.onnx_graph
    info = converted.info
    m = info.size_multiple
    h, w = (Dim("H", min=4, max=16384), Dim("W", min=4, max=16384)) if m == 1 else \
        (m * Dim("h", min=1, max=16384 // m), m * Dim("w", min=1, max=16384 // m))
    example = torch.rand(1, 64, 64, 3) * info.pixel_max
    path = Path(path)
    with atomic_path(path) as tmp, silence_stderr():
        torch.onnx.export(graph, (example,), str(tmp), dynamo=True, external_data=False, opset_version=18,
                          dynamic_shapes=({1: h, 2: w},), verbose=False)
        model = onnx.load(str(tmp))
        _int8_io(model)
        make_exact(model)
        full = dict(meta, io=io)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(full, sort_keys=True)
        onnx.save(model, str(tmp))
    return {"path": str(path)}


def qdq_report(path: str | Path) -> tuple[bool, list[str]]:
    """(every op on image data runs between DequantizeLinear and QuantizeLinear, the offending ops).

    Integer shape arithmetic (Shape/Squeeze/Mul/Concat feeding a Reshape's shape input) is not
    image data and is ignored; a Relu/Clip directly after a compute op counts as fused with it;
    ops whose image inputs are all integer tensors (onnx_graph's table lookups and integer adds)
    are integer compute.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    data = {graph.input[0].name}
    for n in graph.node:  # nodes are topologically sorted
        if n.op_type == "Shape":
            continue  # a tensor's shape is integer metadata, not image data
        if n.op_type == "DequantizeLinear" or any(i in data for i in n.input):
            data.update(n.output)
    fusable = {"Relu", "Clip"}

    def quantize(c) -> bool:  # a QuantizeLinear, or float_quantize_by_reciprocal's Mul in front of one
        if c.name.endswith(RECIPROCAL_SUFFIX) and c.op_type == "Mul":
            return all(u.op_type == "QuantizeLinear" for u in consumers.get(c.output[0], []))
        return c.op_type == "QuantizeLinear"

    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    integer = {graph.input[0].name} if graph.input[0].type.tensor_type.elem_type not in float_types else set()
    bad = []
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            integer.update(n.output)
        if (n.op_type in ("QuantizeLinear", "DequantizeLinear", "Shape") or quantize(n)
                or not any(i in data for i in n.input)):
            continue
        data_inputs = [i for i in (n.input[:1] if n.op_type in ("Reshape", "Expand", "Tile") else n.input) if i in data]
        if all(i in integer for i in data_inputs):
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if n.op_type != "Cast" or to not in float_types:
                integer.update(n.output)
                continue
        if n.op_type in fusable and all(producers.get(i) is not None and producers[i].op_type in ("Conv", "Add")
                                        for i in data_inputs):
            ok_in = True
        else:
            ok_in = all(i in producers and producers[i].op_type == "DequantizeLinear" for i in data_inputs)
        users = [c for o in n.output for c in consumers.get(o, [])]
        ok_out = all(quantize(c) or (c.op_type in fusable and all(quantize(u) for o in c.output
                                                                  for u in consumers.get(o, [])))
                     for c in users)
        if not (ok_in and ok_out):
            bad.append(n.op_type)
    return not bad, sorted(set(bad))

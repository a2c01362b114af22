"""Checks on a converted graph: does any float compute run between the int8 input and output?"""

from __future__ import annotations

import torch

_qd = torch.ops.quantized_decomposed
QUANT = {_qd.quantize_per_tensor.default, _qd.quantize_per_channel.default}
DEQUANT = {_qd.dequantize_per_tensor.default, _qd.dequantize_per_channel.default}
FUSED_ACTIVATIONS = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default}


def float_islands(graph_module: torch.fx.GraphModule) -> list[str]:
    """Ops on image data whose inputs are not all dequantized or whose output is not requantized.

    A ReLU right after a compute op counts as fused with it (int8 kernels fuse it). An empty list
    means the integer runtime can execute every op in int8.
    """
    bad = []
    for n in graph_module.graph.nodes:
        if n.op != "call_function" or n.target in QUANT | DEQUANT:
            continue
        val = n.meta.get("val")
        if val is not None and not isinstance(val, torch.Tensor):
            continue  # shape arithmetic (sym_size, ...), not image data
        args = n.args[0] if isinstance(n.args[0], (list, tuple)) else n.args  # cat takes a list
        # get_attr inputs are parameters (a conv bias becomes int32 in the integer kernels)
        # (nodes inserted by convert carry no metadata; those with a non-tensor value are shapes)
        tensors = [a for a in args if isinstance(a, torch.fx.Node) and a.op != "get_attr"
                   and isinstance(a.meta.get("val", torch.empty(0)), torch.Tensor)]
        if not tensors:
            continue
        if n.target in FUSED_ACTIVATIONS:
            inputs_ok = all(a.target not in QUANT | DEQUANT and a.op == "call_function" or a.target in DEQUANT
                            for a in tensors)
        else:
            inputs_ok = all(a.op == "call_function" and a.target in DEQUANT for a in tensors)
        users = list(n.users)
        outputs_ok = bool(users) and all(
            u.target in QUANT or (u.target in FUSED_ACTIVATIONS and all(v.target in QUANT for v in u.users))
            for u in users)
        if not (inputs_ok and outputs_ok):
            bad.append(str(n.target))
    return bad

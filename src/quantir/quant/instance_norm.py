"""InstanceNorm as int8 ops on the full tensor, with statistics every runtime computes to the same bit.

``d = x + q(-mean(x))``, ``y = d * q(rsqrt(mean(d * d) + eps) * weight) + bias``: the ADD, MUL,
ADD on the full tensor are int8 kernels that fake-quant reproduces exactly; the two per-channel
vectors are computed in float (a float island, named in parity.json and the model card) and
quantized to int8 before use. aten's fused kernel is not kept: it lowers with a RESHAPE baked to
one size.

Why the statistics are sums of integer codes: a float mean over a photo depends on the summation
order (tests/quant/test_concat_and_norm.py shuffles the pixels and the plain mean's last bits move),
and torch, TFLite and onnxruntime each vectorise their sums differently, so a mean lying within
float rounding of a boundary of its int8 grid would take another level in another runtime: rare,
not impossible. Here the island first turns ``x`` into its integer codes ``q - z``
(``round(x / s)``, exact as x sits on its grid), sums codes and squared codes in pieces whose
float32 partial sums stay below 2**24 (numerics.NORM_*_SPLIT), so every partial sum is exact in any
order, and then divides by the pixel count (counted the same way) and multiplies by ``s`` once:
identical IEEE operations on identical numbers, in every runtime. (The paper net's 4 LSB ONNX gap
had another cause: QuantizeLinear's division, see export/onnx_graph.py.)

The codes need the input's scale, which exists only once the graph is prepared: ``level_codes`` and
``level_step`` nodes are written with no scale, ``bind_level_scales`` points them at the input's
fake quantizer (live: QAT moves the scale), and ``freeze_level_scales`` turns them into a DIV, ROUND
and a constant for ``convert``. While a quantizer still observes (calibration sees float
activations) or where the input has no quantizer, the codes are the float values themselves.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from quantir.numerics import NORM_COUNT_TINY, NORM_ROW_SPLIT, NORM_SQUARE_SPLIT, SCALE_FLOOR
from quantir.quant.fake_quant import ActFakeQuantize
from quantir.quant.graph_ops import INSTANCE_NORM, ISLAND_META, aten
from quantir.quant.rewrite import add_constant


class _RoundSTE(torch.autograd.Function):
    """round(x / s) with the straight-through gradient 1/s for x (the statistics stay differentiable)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(scale)
        return torch.round(x / scale)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad / scale, None


def _live_scale(scale: torch.Tensor | None, observing: torch.Tensor | None) -> torch.Tensor | None:
    if scale is None or (observing is not None and bool(observing[0])):
        return None  # no grid (yet): the island sums float values
    return torch.clamp(scale.detach(), min=SCALE_FLOOR).reshape(1, 1, 1, 1)  # the grid fake-quant uses


def level_codes(x: torch.Tensor, scale: torch.Tensor | None = None, observing: torch.Tensor | None = None):
    """``x`` in units of its int8 step: the integers ``q - z`` once ``x`` is fake-quantized."""
    s = _live_scale(scale, observing)
    return x if s is None else _RoundSTE.apply(x, s)


def level_step(x: torch.Tensor, scale: torch.Tensor | None = None, observing: torch.Tensor | None = None):
    """The step ``level_codes`` divided by (1 where it returned float values), shaped 1x1x1x1."""
    s = _live_scale(scale, observing)
    return x.new_ones((1, 1, 1, 1)) if s is None else s


class _Builder:
    """Inserts island nodes before an instance_norm node, copying its metadata."""

    def __init__(self, model: GraphModule, norm: Node, index: int):
        self.model, self.g, self.norm, self.index = model, model.graph, norm, index
        self._consts: dict[str, Node] = {}

    def op(self, target, *args, island=True) -> Node:
        with self.g.inserting_before(self.norm):
            node = self.g.call_function(target, args)
        node.meta = {"val": self.norm.meta.get("val"), "stack_trace": self.norm.meta.get("stack_trace"),
                     "nn_module_stack": self.norm.meta.get("nn_module_stack", {})}
        if island:
            node.meta[ISLAND_META] = True
        return node

    def const(self, name: str, value: float, persistent: bool = False) -> Node:
        """One constant per name and norm (``persistent``: in the state dict, as the first ones were)."""
        if name not in self._consts:
            self._consts[name] = add_constant(self.model, f"_quantir_norm_{name}_{self.index}", value, self.norm,
                                              persistent=persistent)
        return self._consts[name]

    def exact_total(self, codes: Node) -> Node:
        """Sum over H and W of integer ``codes`` (|c| <= 255): every float partial sum exact."""
        rows = self.op(aten.sum.dim_IntList, codes, [3], True)
        down, up = self.const("row_down", 1.0 / NORM_ROW_SPLIT), self.const("row_up", NORM_ROW_SPLIT)
        hi = self.op(aten.floor.default, self.op(aten.mul.Tensor, rows, down))
        lo = self.op(aten.sub.Tensor, rows, self.op(aten.mul.Tensor, hi, up))
        return self.op(aten.add.Tensor, self.op(aten.mul.Tensor, self.op(aten.sum.dim_IntList, hi, [2], True), up),
                       self.op(aten.sum.dim_IntList, lo, [2], True))


def decompose_instance_norms(model: GraphModule) -> int:
    """Replace each aten instance_norm by the int8 ops and exact float island described above."""
    count = 0
    for n in list(model.graph.nodes):
        if n.op != "call_function" or n.target is not INSTANCE_NORM:
            continue
        x, weight, bias = n.args[0], n.args[1], n.args[2]
        eps = n.args[7] if len(n.args) > 7 else n.kwargs.get("eps", 1e-5)
        b = _Builder(model, n, count)
        minus_one, eps_node = b.const("minus_one", -1.0, persistent=True), b.const("eps", eps, persistent=True)

        codes_x, step_x = b.op(level_codes, x), b.op(level_step, x)
        channel0 = b.op(aten.slice.Tensor, codes_x, 1, 0, 1)
        ones = b.op(aten.add.Tensor, b.op(aten.mul.Tensor, channel0, b.const("tiny", NORM_COUNT_TINY)), b.const("one", 1.0))
        pixels = b.exact_total(ones)
        mean = b.op(aten.mul.Tensor, b.op(aten.div.Tensor, b.exact_total(codes_x), pixels), step_x)
        neg_mean = b.op(aten.mul.Tensor, mean, minus_one)
        neg_mean.meta[ISLAND_META] = "output"
        d = b.op(aten.add.Tensor, x, neg_mean, island=False)

        codes_d, step_d = b.op(level_codes, d), b.op(level_step, d)
        squares = b.op(aten.mul.Tensor, codes_d, codes_d)
        sq_hi = b.op(aten.floor.default, b.op(aten.mul.Tensor, squares, b.const("square_down", 1.0 / NORM_SQUARE_SPLIT)))
        square_up = b.const("square_up", NORM_SQUARE_SPLIT)
        sq_lo = b.op(aten.sub.Tensor, squares, b.op(aten.mul.Tensor, sq_hi, square_up))
        total = b.op(aten.add.Tensor, b.op(aten.mul.Tensor, b.exact_total(sq_hi), square_up),
                     b.exact_total(sq_lo))
        var = b.op(aten.mul.Tensor, b.op(aten.div.Tensor, total, pixels), b.op(aten.mul.Tensor, step_d, step_d))
        inv_std = b.op(aten.rsqrt.default, b.op(aten.add.Tensor, var, eps_node))
        if weight is not None:
            inv_std = b.op(aten.mul.Tensor, inv_std, b.op(aten.view.default, weight, [1, -1, 1, 1]))
        inv_std.meta[ISLAND_META] = "output"
        y = b.op(aten.mul.Tensor, d, inv_std, island=False)
        if bias is not None:
            y = b.op(aten.add.Tensor, y, b.op(aten.view.default, bias, [1, -1, 1, 1], island=False), island=False)
        n.replace_all_uses_with(y)
        model.graph.erase_node(n)
        count += 1
    return count


def _level_nodes(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (level_codes, level_step)]


def _quantizer_of(gm: GraphModule, x: Node) -> ActFakeQuantize | None:
    if x.op == "call_module" and isinstance(gm.get_submodule(x.target), ActFakeQuantize):
        return gm.get_submodule(x.target)
    return None


# Constants of the first formulation, in every QAT checkpoint written since; the others stay out of
# the state dict, so those checkpoints load unchanged.
_STORED_CONSTANTS = ("_quantir_norm_minus_one_", "_quantir_norm_eps_")


def bind_level_scales(gm: GraphModule) -> int:
    """After PT2E prepare: point each level node at the live scale of its input's fake quantizer.

    Also keeps the island's newer constants out of the state dict: PT2E rebuilds the graph module
    and re-registers every constant as a persistent buffer.
    """
    for name, _ in gm.named_buffers(recurse=False):
        if name.startswith("_quantir_norm_") and not name.startswith(_STORED_CONSTANTS):
            gm._non_persistent_buffers_set.add(name)
    bound = 0
    for n in _level_nodes(gm):
        x = n.args[0]
        if _quantizer_of(gm, x) is None:
            continue  # a float input (a layer kept in float, conv-inputs-only scope): float sums
        with gm.graph.inserting_before(n):
            scale, observing = gm.graph.get_attr(f"{x.target}.scale"), gm.graph.get_attr(f"{x.target}.observer_enabled")
        n.args = (x, scale, observing)
        bound += 1
    gm.recompile()
    return bound


@torch.no_grad()
def freeze_level_scales(gm: GraphModule) -> None:
    """Before convert: ``level_codes`` -> ``round(x / s)`` and ``level_step`` -> ``s``, s a constant."""
    steps: dict[Node, Node] = {}  # input -> its step constant, shared by its codes and step nodes

    def step_of(x: Node, value: float, before: Node) -> Node:
        if x not in steps:
            steps[x] = add_constant(gm, f"_quantir_norm_step_{len(steps)}", value, before, persistent=False)
        return steps[x]

    for n in _level_nodes(gm):
        x = n.args[0]
        fq = _quantizer_of(gm, x) if len(n.args) > 1 else None
        if fq is None:
            n.replace_all_uses_with(x if n.target is level_codes else step_of(x, 1.0, n))
            continue
        s = step_of(x, float(fq.calculate_qparams()[0]), n)
        if n.target is level_codes:
            with gm.graph.inserting_before(n):
                div = gm.graph.call_function(aten.div.Tensor, (x, s))
                out = gm.graph.call_function(aten.round.default, (div,))
            div.meta, out.meta = dict(n.meta), dict(n.meta)
        else:
            out = s
        n.replace_all_uses_with(out)
    for n in _level_nodes(gm):
        args = [a for a in n.args[1:] if isinstance(a, Node)]
        gm.graph.erase_node(n)
        for a in args:
            if not a.users:
                gm.graph.erase_node(a)
    gm.graph.lint()
    gm.recompile()

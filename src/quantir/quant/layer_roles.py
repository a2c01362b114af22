"""Which convolutions of an exported graph are its head, tail and upsampler (for ``KeepLayers``).

Found from the data flow, not from names, so any network gets them: the head is a conv with no
conv before it (it reads the image), the tail a conv with no conv after it (it writes the image),
an upsampler a conv whose output reaches a depth-to-space (a PixelShuffle, or the rank-6
view/permute form quantir's models and rewrites use) before the next conv.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch.fx import Node

from quantir.quant.config import KeepLayers
from quantir.quant.rewrite import module_path

aten = torch.ops.aten
WEIGHTED_OPS = {aten.conv2d.default, aten.linear.default}
_D2S_OPS = {aten.pixel_shuffle.default}
_WRAPPER = "model."  # models.layers.NHWC keeps the exported network as ``.model``


def _is_weighted(n: Node) -> bool:
    return n.op == "call_function" and n.target in WEIGHTED_OPS


def _is_d2s(n: Node) -> bool:
    if n.op != "call_function":
        return False
    if n.target in _D2S_OPS:
        return True
    val = n.meta.get("val")  # depth_to_space's (b, s, s, c, h, w) view
    return n.target in (aten.view.default, aten.reshape.default) and isinstance(val, torch.Tensor) and val.dim() == 6


def _reaches(start: list[Node], step, stop) -> bool:
    """Walk ``step`` (inputs or users) from ``start`` without passing a weighted op; True if ``stop`` holds."""
    seen, frontier = set(), list(start)
    while frontier:
        n = frontier.pop()
        if n in seen:
            continue
        seen.add(n)
        if stop(n):
            return True
        if not _is_weighted(n):
            frontier.extend(step(n))
    return False


def layer_roles(graph: torch.fx.Graph) -> dict[Node, set[str]]:
    """Each conv/linear node and its roles among head, tail, upsampler (possibly none: the body)."""
    roles = {}
    for n in graph.nodes:
        if not _is_weighted(n):
            continue
        inputs = lambda m: [a for a in m.all_input_nodes if a.op != "get_attr"]  # noqa: E731 (data, not weights)
        users = lambda m: list(m.users)  # noqa: E731
        r = set()
        if not _reaches(inputs(n), inputs, _is_weighted):
            r.add("head")
        if not _reaches(users(n), users, _is_weighted):
            r.add("tail")
        if _reaches(users(n), users, _is_d2s):
            r.add("upsampler")
        roles[n] = r
    return roles


def kept_layers(graph: torch.fx.Graph, keep: KeepLayers) -> set[Node]:
    """The weighted nodes ``keep`` holds off the k-bit grid (by role or module-path pattern)."""
    if not keep.enabled:
        return set()
    return {n for n, r in layer_roles(graph).items()
            if r & set(keep.roles) or any(fnmatch(model_path(n), p) for p in keep.patterns)}


def model_path(n: Node) -> str:
    """``n``'s module path in the model given to prepare_* (without the NHWC wrapper's ``model.``)."""
    path = module_path(n)
    return path[len(_WRAPPER):] if path.startswith(_WRAPPER) else path

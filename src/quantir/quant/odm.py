"""ODM (Hong & Lee, ECCV 2024): mismatch regulariser with cooperative gradient updates.

* ``mismatch_loss``: L_M = sum over quantized activations X of ||X - q(X)||_2.
* ``cooperative_backward``: instead of descending on L_R + lambda L_M, set
  grad = lambda_R g_R + lambda_M sim(g_R, g_M) g_M with sim = (cos + 1) / 2 in [0, 1], computed
  over all parameters ("model") or separately for each layer ("layer"), so the regulariser
  only pushes where it agrees with reconstruction. Costs a second backward pass.
* The weight clipping correction lives in ``WeightFakeQuantize(clip_percentile=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from quantir.quant.fake_quant import ActFakeQuantize


def enable_mismatch(model: nn.Module, detach_q: bool = True) -> int:
    """Make every activation fake quantizer record its mismatch; returns how many do."""
    n = 0
    for m in model.modules():
        if isinstance(m, ActFakeQuantize):
            m.mismatch_mode = "detached" if detach_q else "ste"
            n += 1
    return n


def mismatch_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the mismatches recorded in the last forward pass."""
    terms = [m.mismatch for m in model.modules() if isinstance(m, ActFakeQuantize) and m.mismatch is not None]
    if not terms:
        raise RuntimeError("no mismatch recorded: call enable_mismatch() and run a forward pass first")
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _layer_key(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    denom = a.norm() * b.norm()
    return (a @ b) / denom if denom > 0 else a.new_zeros(())


@torch.no_grad()
def combine_gradients(named_grads_r: list[tuple[str, torch.Tensor | None]], grads_m: list[torch.Tensor | None],
                      lambda_r: float, lambda_m: float, granularity: str) -> tuple[list[torch.Tensor], list[float]]:
    """lambda_r g_R + lambda_m sim g_M per parameter; returns the gradients and the similarities used."""
    names = [n for n, _ in named_grads_r]
    gr = [g for _, g in named_grads_r]
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        key = "model" if granularity == "model" else _layer_key(n)
        groups.setdefault(key, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(names)
    sims = []
    for idx in groups.values():
        r = [gr[i] for i in idx]
        m = [grads_m[i] for i in idx]
        present = [k for k in range(len(idx)) if r[k] is not None and m[k] is not None]
        sim = None
        if present:
            flat_r = torch.cat([r[k].flatten() for k in present])
            flat_m = torch.cat([m[k].flatten() for k in present])
            sim = float((torch.clamp(_cos(flat_r, flat_m), -1.0, 1.0) + 1.0) / 2.0)
            sims.append(sim)
        for k, i in enumerate(idx):
            g = lambda_r * r[k] if r[k] is not None else None
            if m[k] is not None and sim is not None:
                g = g + lambda_m * sim * m[k] if g is not None else lambda_m * sim * m[k]
            out[i] = g
    return out, sims


def cooperative_backward(named_params: list[tuple[str, torch.nn.Parameter]], loss_r: torch.Tensor,
                         loss_m: torch.Tensor, lambda_m: float, lambda_r: float = 1.0, granularity: str = "layer",
                         reduce: Callable[[list[torch.Tensor | None]], None] | None = None) -> list[float]:
    """Fill ``.grad`` of ``named_params`` with ODM's cooperative combination; returns the similarities.

    ``reduce`` averages a gradient list across processes (DDP) before the similarity is taken,
    so every rank applies the same update.
    """
    params = [p for _, p in named_params]
    g_r = list(torch.autograd.grad(loss_r, params, retain_graph=True, allow_unused=True))
    g_m = list(torch.autograd.grad(loss_m, params, allow_unused=True))
    if reduce is not None:
        reduce(g_r)
        reduce(g_m)
    grads, sims = combine_gradients([(n, g) for (n, _), g in zip(named_params, g_r)], g_m, lambda_r, lambda_m,
                                    granularity)
    for p, g in zip(params, grads):
        if g is None:
            continue
        p.grad = g.clone() if p.grad is None else p.grad + g
    return sims

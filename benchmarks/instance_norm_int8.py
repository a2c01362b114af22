"""How integer can QATIE's InstanceNorm be? Its statistics in float (what ships) vs in int8.

The shipped formulation (quant/instance_norm.py ``decompose_instance_norms``) runs every op on the
full tensor as an int8 kernel and keeps only the per-channel statistics in float, snapped to int8
before use. An all-int8 norm would also quantize the square ``d * d``, the variance and the
reciprocal standard deviation (TFLite has int8 MUL, MEAN and RSQRT kernels). This script
simulates that on a trained QAT checkpoint of the paper net: per-tensor int8 fake quantizers
(min/max over training patches, never evaluation photos) after those three tensors, then the
evaluation PSNR next to the shipped model's. No retraining: it measures what the int8 grid costs
the statistics, the reason the island is there.

    python benchmarks/instance_norm_int8.py --run runs/qatie_paper_quick [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch

from quantir.config import load
from quantir.evaluate.evaluate import evaluate
from quantir.models.apply import run_uint8
from quantir.quant import checkpoint
from quantir.quant.graph_ops import ISLAND_META
from quantir.quant.instance_norm import level_codes
from quantir.train.config import TrainConfig
from quantir.train.data import build_splits, calibration_batches, eval_pairs

aten = torch.ops.aten


class MinMaxInt8(torch.nn.Module):
    """Per-tensor affine int8 fake quantization with a min/max range observed first."""

    def __init__(self):
        super().__init__()
        self.lo, self.hi, self.observing = float("inf"), float("-inf"), True

    def forward(self, x):
        if self.observing:
            self.lo, self.hi = min(self.lo, float(x.min()), 0.0), max(self.hi, float(x.max()), 0.0)
            return x
        scale = max(self.hi - self.lo, 1e-12) / 255.0
        zp = int(round(-128 - self.lo / scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)


def int8_statistics(gm: torch.fx.GraphModule, which: tuple[str, ...]) -> list[MinMaxInt8]:
    """Put a MinMaxInt8 after each norm's square, variance and/or rsqrt (``which``); returns them."""
    picks = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.meta.get(ISLAND_META) is not True:
            continue
        if (n.target is aten.mul.Tensor and n.args[0] is n.args[1] and "square" in which
                and n.args[0].target is level_codes):  # the squared codes, not the squared step
            picks.append(n)
        elif (n.target is aten.add.Tensor and "variance" in which  # mean(d*d) + eps, read by the rsqrt
              and any(u.target is aten.rsqrt.default for u in n.users)):
            picks.append(n)
        elif n.target is aten.rsqrt.default and "rsqrt" in which:
            picks.append(n)
    quantizers = []
    for k, n in enumerate(picks):
        fq = MinMaxInt8()
        gm.add_submodule(f"_int8_stat_{k}", fq)
        with gm.graph.inserting_after(n):
            new = gm.graph.call_module(f"_int8_stat_{k}", (n,))
        n.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        quantizers.append(fq)
    gm.graph.lint()
    gm.recompile()
    return quantizers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a qatie_unet training run (its config.yaml and QAT checkpoint)")
    ap.add_argument("--calib", type=int, default=16, help="training batches for the int8 statistic ranges")
    ap.add_argument("--json")
    a = ap.parse_args()
    run = Path(a.run)
    cfg = load(TrainConfig, run / "config.yaml")
    pairs = eval_pairs(cfg)
    record = checkpoint.load(run / "checkpoints" / f"qat_final{checkpoint.SUFFIX}")
    rows = {}
    for label, which in (("shipped: statistics in float, snapped to int8", ()),
                         ("int8 square d*d", ("square",)), ("int8 variance", ("variance",)),
                         ("int8 rsqrt", ("rsqrt",)), ("all int8 (square, variance, rsqrt)", ("square", "variance", "rsqrt"))):
        q = checkpoint.build_qat(record)
        q.eval()
        fqs = int8_statistics(q.graph_module, which)
        with torch.no_grad():
            for x in calibration_batches(cfg, build_splits(cfg, q.info.size_multiple).sources, a.calib, q.info.pixel_max):
                q(x)
        for fq in fqs:
            fq.observing = False
        r = evaluate(partial(run_uint8, q), pairs, border=q.info.border)
        rows[label] = {"psnr_rgb": r["psnr_rgb"], "ssim_y": r["ssim_y"], "quantized_tensors": len(fqs)}
        print(f"| {label} | {len(fqs)} | {r['psnr_rgb']:.3f} | {r['ssim_y']:.4f} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

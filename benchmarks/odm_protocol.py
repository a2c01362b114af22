"""The ODM lineage's protocol against "fully k-bit" QAT (issue 17): which layers stay off the grid.

From one FP32 deploy checkpoint, QAT at WkAk in three layouts: every layer at k bits (the layout
of BENCHMARKS.md table 2), head/tail/upsampler in float (PAMS/DAQ/DDTB/ODM's default) and at
8 bits (their "fully quantized" mode), each with table 2's rows (a) baseline and (e) ODM.
Fake-quant PSNR-RGB on the evaluation photos, next to bicubic and FP32; Y-PSNR with shave = scale.

    python benchmarks/odm_protocol.py --init RUN/checkpoints/deploy_fp32.safetensors --bits 2 4 --out runs/odm_protocol
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import BenchSettings, make_config, run_training
from odm_ablation import VARIANTS, _qat_base

from quantir.quant import checkpoint

LAYOUTS = {"fully k-bit": {}, "paper: head/tail/upsampler float": {"keep": {"mode": "float"}},
           "paper: head/tail/upsampler 8-bit": {"keep": {"mode": "8bit"}}}
ROWS = ("(a) baseline", "(e) WCC + cooperative MR (ODM)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", required=True, help="FP32 deploy checkpoint (quantir train's deploy_fp32)")
    ap.add_argument("--bits", type=int, nargs="+", default=[2])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--out", default="runs/odm_protocol")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", nargs="+", choices=["a", "e"], default=["a", "e"], help="table 2's rows to run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    record = checkpoint.load(a.init)
    spec = {"model": record["model_name"]}
    options = {k: v for k, v in record["model_cfg"].items() if k != "deploy"}
    settings = BenchSettings(Path(a.out), quick=True, threads=a.threads)
    results = {}
    print("| bits | layout | row | PSNR-RGB | PSNR-Y | bicubic | FP32 |\n|---|---|---|---:|---:|---:|---:|")
    for bits in a.bits:
        for layout, keep in LAYOUTS.items():
            for row in (r for r in ROWS if r[1] in a.rows):
                base = _qat_base(spec, dict(VARIANTS[row], **keep), bits, a.steps, patch=32)
                base["model_options"] = options
                slug = f"w{bits}/{list(LAYOUTS).index(layout)}_{row[1]}"
                ev = run_training(make_config(settings, "sr", base), settings.out / slug, init=a.init)["eval"]
                fq, bic, fp = ev["INT8 fake-quant"], ev["bicubic"], ev["FP32 (fused)"]
                results[f"W{bits}A{bits} | {layout} | {row}"] = {"psnr_rgb": fq["psnr_rgb"], "psnr_y": fq["psnr_y"],
                                                                 "bicubic": bic["psnr_rgb"], "fp32": fp["psnr_rgb"]}
                print(f"| W{bits}A{bits} | {layout} | {row} | {fq['psnr_rgb']:.3f} | {fq['psnr_y']:.3f} | "
                      f"{bic['psnr_rgb']:.3f} | {fp['psnr_rgb']:.3f} |", flush=True)
    (settings.out / "odm_protocol.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

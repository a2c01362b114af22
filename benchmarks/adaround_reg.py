"""AdaRound's regulariser weight: each conv's output error after learned rounding, relative to nearest.

From one FP32 checkpoint, ``quant.weight_start`` learns every conv's rounding on 16 crops of the
training photos (never the scored ones) once per regulariser weight and prints the summed layer
output MSE relative to nearest rounding's, and per conv. Chooses ``ADAROUND_REG`` on calibration data
alone: no photo that any report scores plays a part.

    python benchmarks/adaround_reg.py --init runs/builtin_sr/checkpoints/deploy_fp32.safetensors
"""

from __future__ import annotations

import argparse
import copy

import torch

from quantir.quant.config import QuantConfig
from quantir.quant.weight_start import weight_start
from quantir.train.quantize_run import crop_pool, load_any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", required=True, help="FP32 quantir checkpoint or run directory")
    ap.add_argument("--calib", default="data/samples/train")
    ap.add_argument("--regs", type=float, nargs="+", default=[1.0, 5.0, 20.0, 50.0, 200.0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, info = load_any(a.init)
    calib = crop_pool(info, a.calib, 16, 48, 0)
    print("| regulariser weight | summed layer MSE / nearest's | per conv |\n|---:|---:|---|")
    for reg in a.regs:
        report = weight_start(copy.deepcopy(model), calib, QuantConfig(), adaround=True, reg=reg)
        rule = sum(r["mse_rule"] for r in report.values())
        kept = sum(min(r["mse_rule"], r["mse_adaround"]) for r in report.values())
        per = " ".join(f"{r['mse_adaround'] / r['mse_rule']:.2f}" for r in report.values())
        print(f"| {reg:g} | {kept / rule:.3f} | {per} |", flush=True)


if __name__ == "__main__":
    main()

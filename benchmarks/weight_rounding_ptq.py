"""Sum-preserving against nearest weight rounding, without QAT: INT8 minus FP32 on the stress photos.

From one FP32 model, ``quantir quantize`` runs PTQ (MSE calibration on crops of the training
photos) once per rounding rule and exports the INT8 TFLite; each is scored against the FP32 model on
the stress photos' validation split (``stress_val``, where a choice would be made), on the stress
evaluation split (``stress``, reported) and on the usual evaluation photos (PSNR-RGB, no shave).
PTQ has no training that could adapt the weights to their rounding, so this isolates the rule.

    python benchmarks/weight_rounding_ptq.py --init runs/quick_fp32/checkpoints/deploy_fp32.safetensors \
        --out runs/rounding_ptq_quick [--variants nearest adaround ...]

Needs `quantir data fetch samples --out data/samples --sets train eval stress stress-val`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import ROOT, eval_artifact, eval_fn

from quantir.evaluate.predictors import load_model
from quantir.export.config import ExportConfig
from quantir.train.quantize_run import QuantizeConfig, load_any, quantize_model

SAMPLES = ROOT / "data" / "samples"
# name -> (weight rounding, adaround, bias correction); auto: quantize's own choice, on held-out calibration crops
VARIANTS = {
    "nearest": ("nearest", False, False),
    "sum_preserving": ("sum_preserving", False, False),
    "auto": ("auto", False, False),
    "nearest+bias_correction": ("nearest", False, True),
    "sum_preserving+bias_correction": ("sum_preserving", False, True),
    "adaround": ("nearest", True, False),
    "adaround+sum_preserving": ("sum_preserving", True, False),
    "adaround+bias_correction": ("nearest", True, True),
}
SPLITS = ("stress_val", "stress", "eval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", required=True, help="FP32 quantir checkpoint or run directory")
    ap.add_argument("--out", default="runs/rounding_ptq")
    ap.add_argument("--calib", default=str(SAMPLES / "train"), help="calibration photos (never the scored ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["nearest", "sum_preserving", "auto"],
                    help="rows to run (each writes OUT/NAME)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, info = load_any(a.init)
    splits = {name: info.eval_pairs(SAMPLES / name) for name in SPLITS}
    fp32 = load_model(a.init, threads=a.threads)
    reference = {name: eval_fn(fp32.run, pairs, info.border)["psnr_rgb"] for name, pairs in splits.items()}
    rows = {}
    for rule in a.variants:
        rounding, adaround, bias_correction = VARIANTS[rule]
        out = Path(a.out) / rule
        cfg = QuantizeConfig(model=a.init, calib=a.calib, weight_rounding=rounding, adaround=adaround,
                             bias_correction=bias_correction,
                             export=ExportConfig(formats=("tflite",), threads=a.threads))
        print(f"[rounding-ptq] {rule}", flush=True)
        res = quantize_model(model, info, cfg, out)
        scores = {name: eval_artifact(out / "model_int8.tflite", pairs, info.border)["psnr_rgb"]
                  for name, pairs in splits.items()}
        rows[rule] = {name: scores[name] - reference[name] for name in SPLITS}
        rows[rule]["max_lsb"] = res["parity"].backends["tflite"].max_lsb
        if res["weight_rounding"]:
            rows[rule]["chosen"] = res["weight_rounding"]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / "rounding_ptq.json"  # rows of earlier invocations on the same model are kept
    if path.is_file() and json.loads(path.read_text())["init"] == a.init:
        rows = {**json.loads(path.read_text())["rows"], **rows}
    path.write_text(json.dumps({"init": a.init, "fp32": reference, "rows": rows}, indent=2) + "\n")
    print("\nFP32 PSNR-RGB: " + ", ".join(f"{k} {v:.3f}" for k, v in reference.items()))
    print("\n| weight rounding (PTQ) | INT8 - FP32 stress_val | stress | eval | max LSB vs fake-quant |\n"
          "|---|---:|---:|---:|---:|")
    for rule, r in rows.items():
        name = f"auto ({r['chosen']['chosen']})" if "chosen" in r else rule
        print(f"| {name} | {r['stress_val']:+.3f} | {r['stress']:+.3f} | {r['eval']:+.3f} | {r['max_lsb']} |")


if __name__ == "__main__":
    main()
